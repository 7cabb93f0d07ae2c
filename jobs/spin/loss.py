"""The SPIN objective (Chen et al. 2024, "Self-Play Fine-Tuning Converts Weak Language Models to Strong
Language Models", eq. 4.7) and the variants the official code and its descendants offer.

SPIN's "real" and "generated" responses play the roles DPO calls "chosen" and "rejected"; the reference is
the previous iteration's model (the opponent).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from jobs.spin.names import LOSS_TYPES, LossType


@dataclass(frozen=True)
class SpinLossOutput:
    """Per-pair values, all of shape (B,).

    margin:            (log pθ(real) − log pref(real)) − (log pθ(gen) − log pref(gen))
    reward_real:       β · (log pθ(real) − log pref(real))     (detached)
    reward_generated:  β · (log pθ(gen) − log pref(gen))       (detached)
    """

    losses: torch.Tensor
    margin: torch.Tensor
    reward_real: torch.Tensor
    reward_generated: torch.Tensor


# Each loss sees the log-ratio gains r = log pθ − log pref of both sides, per pair, and the hyperparameters.
LossFn = Callable[[torch.Tensor, torch.Tensor, float, float], torch.Tensor]


def _sigmoid(real_gain: torch.Tensor, generated_gain: torch.Tensor, beta: float, lam: float) -> torch.Tensor:
    # The paper's logistic loss ℓ(t) = log(1 + e^{−t}) = −log σ(t); logsigmoid is the stable form.
    return -F.logsigmoid(beta * (real_gain - generated_gain))


def _hinge(real_gain: torch.Tensor, generated_gain: torch.Tensor, beta: float, lam: float) -> torch.Tensor:
    # ℓ(t) = max(0, 1 − t), the SLiC hinge that the official SPINTrainer carries.
    return torch.relu(1.0 - beta * (real_gain - generated_gain))


def _ipo(real_gain: torch.Tensor, generated_gain: torch.Tensor, beta: float, lam: float) -> torch.Tensor:
    # IPO (Azar et al. 2023) regresses the margin onto 1/(2β) instead of pushing it to infinity.
    return (real_gain - generated_gain - 1.0 / (2.0 * beta)) ** 2


def _dpop(real_gain: torch.Tensor, generated_gain: torch.Tensor, beta: float, lam: float) -> torch.Tensor:
    # DPO-Positive (Pal et al. 2024, "Smaug"): the penalty λ·max(0, −r_real) sits inside the sigmoid, so the loss
    # rises as soon as the real answer falls below its reference likelihood, whatever the margin does.
    return -F.logsigmoid(beta * (real_gain - generated_gain - lam * torch.relu(-real_gain)))


def _sppo_hard(real_gain: torch.Tensor, generated_gain: torch.Tensor, beta: float, lam: float) -> torch.Tensor:
    # SPPO with hard win probabilities (Wu et al. 2024), as TRL's `sppo_hard`: each side's log-ratio regressed onto
    # ±1/(2β) on its own, so the real answer is pulled to +1/(2β) and can never be pushed down with the other.
    return (real_gain - 0.5 / beta) ** 2 + (generated_gain + 0.5 / beta) ** 2


def _bco_pair(real_gain: torch.Tensor, generated_gain: torch.Tensor, beta: float, lam: float) -> torch.Tensor:
    # An absolute form, as TRL's `bco_pair`: each side against its own reference, not against the other side.
    return -F.logsigmoid(beta * real_gain) - F.logsigmoid(-beta * generated_gain)


_LOSSES: dict[str, LossFn] = {
    "sigmoid": _sigmoid,
    "hinge": _hinge,
    "ipo": _ipo,
    "dpop": _dpop,
    "sppo_hard": _sppo_hard,
    "bco_pair": _bco_pair,
}


def spin_loss(
    policy_real: torch.Tensor,
    policy_generated: torch.Tensor,
    ref_real: torch.Tensor,
    ref_generated: torch.Tensor,
    *,
    beta: float,
    loss_type: LossType = "sigmoid",
    dpop_lambda: float = 50.0,
) -> SpinLossOutput:
    """SPIN loss per pair from summed response log-probs, each (B,).

        r_real = log pθ(real) − log pref(real),  r_gen = log pθ(gen) − log pref(gen),  margin = r_real − r_gen
        sigmoid:   −log σ(β · margin)                      hinge:   max(0, 1 − β · margin)
        ipo:       (margin − 1/(2β))²                      dpop:    −log σ(β · (margin − λ · max(0, −r_real)))
        sppo_hard: (r_real − 1/(2β))² + (r_gen + 1/(2β))²  bco_pair: −log σ(β r_real) − log σ(−β r_gen)

    At pθ = pref the margin is 0 and the sigmoid and dpop losses are ln 2, whatever the log-probs.
    """
    if loss_type not in _LOSSES:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}; got {loss_type!r}")
    if beta <= 0:
        raise ValueError(f"beta must be positive; got {beta}")
    real_gain = policy_real - ref_real
    generated_gain = policy_generated - ref_generated
    margin = real_gain - generated_gain
    return SpinLossOutput(
        losses=_LOSSES[loss_type](real_gain, generated_gain, beta, dpop_lambda),
        margin=margin,
        reward_real=beta * real_gain.detach(),
        reward_generated=beta * generated_gain.detach(),
    )


def spin_objective(
    policy_real: torch.Tensor,
    policy_generated: torch.Tensor,
    ref_real: torch.Tensor,
    ref_generated: torch.Tensor,
    real_tokens: torch.Tensor,
    generated_tokens: torch.Tensor,
    *,
    beta: float,
    loss_type: LossType = "sigmoid",
    dpop_lambda: float = 50.0,
    length_normalize: bool = False,
    real_nll_weight: float = 0.0,
) -> SpinLossOutput:
    """The SPIN loss with the two optional safeguards against pushing the human answers down.

    length_normalize: compare mean per-token log-probs, log p(y)/|y|, instead of sums, so a long answer
        cannot dominate a margin just by its length.
    real_nll_weight α: add α · (−log pθ(real) / |real|), the real response's per-token NLL (an SFT term),
        to each pair's loss, anchoring the human answers' likelihood.
    """
    if length_normalize:
        policy_real, ref_real = policy_real / real_tokens, ref_real / real_tokens
        policy_generated, ref_generated = policy_generated / generated_tokens, ref_generated / generated_tokens
    out = spin_loss(
        policy_real, policy_generated, ref_real, ref_generated, beta=beta, loss_type=loss_type, dpop_lambda=dpop_lambda
    )
    if real_nll_weight:
        per_token = policy_real if length_normalize else policy_real / real_tokens
        out = SpinLossOutput(
            out.losses - real_nll_weight * per_token, out.margin, out.reward_real, out.reward_generated
        )
    return out
