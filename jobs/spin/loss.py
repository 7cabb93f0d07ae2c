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


def _sigmoid(scaled_margin: torch.Tensor, beta: float, margin: torch.Tensor) -> torch.Tensor:
    # The paper's logistic loss ℓ(t) = log(1 + e^{−t}) = −log σ(t); logsigmoid is the stable form.
    return -F.logsigmoid(scaled_margin)


def _hinge(scaled_margin: torch.Tensor, beta: float, margin: torch.Tensor) -> torch.Tensor:
    # ℓ(t) = max(0, 1 − t), the SLiC hinge that the official SPINTrainer carries.
    return torch.relu(1.0 - scaled_margin)


def _ipo(scaled_margin: torch.Tensor, beta: float, margin: torch.Tensor) -> torch.Tensor:
    # IPO (Azar et al. 2023) regresses the margin onto 1/(2β) instead of pushing it to infinity.
    return (margin - 1.0 / (2.0 * beta)) ** 2


_LOSSES: dict[str, Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor]] = {
    "sigmoid": _sigmoid,
    "hinge": _hinge,
    "ipo": _ipo,
}


def spin_loss(
    policy_real: torch.Tensor,
    policy_generated: torch.Tensor,
    ref_real: torch.Tensor,
    ref_generated: torch.Tensor,
    *,
    beta: float,
    loss_type: LossType = "sigmoid",
) -> SpinLossOutput:
    """SPIN loss per pair from summed response log-probs, each (B,).

        margin = (log pθ(real) − log pref(real)) − (log pθ(gen) − log pref(gen))
        sigmoid: −log σ(β · margin)      hinge: max(0, 1 − β · margin)      ipo: (margin − 1/(2β))²

    At pθ = pref the margin is 0 and the sigmoid loss is ln 2, whatever the log-probs.
    """
    if loss_type not in _LOSSES:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}; got {loss_type!r}")
    if beta <= 0:
        raise ValueError(f"beta must be positive; got {beta}")
    real_gain = policy_real - ref_real
    generated_gain = policy_generated - ref_generated
    margin = real_gain - generated_gain
    return SpinLossOutput(
        losses=_LOSSES[loss_type](beta * margin, beta, margin),
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
    out = spin_loss(policy_real, policy_generated, ref_real, ref_generated, beta=beta, loss_type=loss_type)
    if real_nll_weight:
        per_token = policy_real if length_normalize else policy_real / real_tokens
        out = SpinLossOutput(
            out.losses - real_nll_weight * per_token, out.margin, out.reward_real, out.reward_generated
        )
    return out
