import math

import pytest
import torch

from jobs.spin.loss import spin_loss, spin_objective
from jobs.spin.names import LOSS_TYPES


def _logps(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_sigmoid_matches_hand_computation():
    """policy real −10, generated −20; reference real −12, generated −15.

    margin = (−10 − −12) − (−20 − −15) = 2 − (−5) = 7; β = 0.1 → β·margin = 0.7
    loss = −log σ(0.7) = log(1 + e^−0.7) = 0.403186...
    """
    out = spin_loss(_logps(-10), _logps(-20), _logps(-12), _logps(-15), beta=0.1)
    assert out.margin.item() == pytest.approx(7.0)
    assert out.losses.item() == pytest.approx(math.log1p(math.exp(-0.7)), abs=1e-12)
    assert out.reward_real.item() == pytest.approx(0.2)
    assert out.reward_generated.item() == pytest.approx(-0.5)


def test_hinge_and_ipo_match_hand_computation():
    """margin 7, β 0.1: hinge = max(0, 1 − 0.7) = 0.3; ipo = (7 − 1/0.2)² = (7 − 5)² = 4.

    A margin of 20 saturates the hinge: max(0, 1 − 2) = 0.
    """
    args = (_logps(-10, -10), _logps(-20, -33), _logps(-12, -12), _logps(-15, -15))
    hinge = spin_loss(*args, beta=0.1, loss_type="hinge")
    ipo = spin_loss(*args, beta=0.1, loss_type="ipo")
    assert hinge.losses.tolist() == pytest.approx([0.3, 0.0])
    assert ipo.losses.tolist() == pytest.approx([4.0, (20 - 5) ** 2])


def test_losses_against_likelihood_displacement_match_hand_computation():
    """policy real −10, generated −20; reference real −12, generated −15: r_real = +2, r_gen = −5, margin 7; β 0.1.

    sppo_hard = (2 − 5)² + (−5 + 5)² = 9;  bco_pair = −log σ(0.2) − log σ(0.5) = log(1 + e^−0.2) + log(1 + e^−0.5).
    dpop with r_real ≥ 0 is the sigmoid loss: −log σ(0.7).
    """
    args = (_logps(-10), _logps(-20), _logps(-12), _logps(-15))
    assert spin_loss(*args, beta=0.1, loss_type="sppo_hard").losses.item() == pytest.approx(9.0)
    bco = spin_loss(*args, beta=0.1, loss_type="bco_pair").losses.item()
    assert bco == pytest.approx(math.log1p(math.exp(-0.2)) + math.log1p(math.exp(-0.5)))
    assert spin_loss(*args, beta=0.1, loss_type="dpop").losses.item() == pytest.approx(math.log1p(math.exp(-0.7)))


def test_dpop_penalises_a_real_answer_below_its_reference_inside_the_sigmoid():
    """r_real = −1, r_gen = −4 (margin 3, a 'win' by the margin alone); λ 2, β 0.5:
    −log σ(0.5 · (3 − 2 · 1)) = −log σ(0.5), where plain sigmoid gives −log σ(1.5)."""
    args = (_logps(-11), _logps(-14), _logps(-10), _logps(-10))
    dpop = spin_loss(*args, beta=0.5, loss_type="dpop", dpop_lambda=2.0).losses.item()
    assert dpop == pytest.approx(math.log1p(math.exp(-0.5)))
    assert spin_loss(*args, beta=0.5).losses.item() == pytest.approx(math.log1p(math.exp(-1.5)))


@pytest.mark.parametrize("loss_type", ["dpop", "sppo_hard", "bco_pair"])
def test_when_both_answers_fall_the_new_losses_pull_the_real_one_up_harder(loss_type):
    """Real 2 nats and generated 15 nats below their references: a wide margin, the state likelihood displacement
    leads to. The sigmoid loss, almost saturated, barely lifts the real answer; these losses lift it harder."""

    def real_gradient(kind: str) -> float:
        policy_real = torch.tensor([-12.0], requires_grad=True)
        out = spin_loss(
            policy_real, torch.tensor([-25.0]), torch.tensor([-10.0]), torch.tensor([-10.0]), beta=0.1, loss_type=kind
        )
        out.losses.sum().backward()
        return policy_real.grad.item()

    assert real_gradient(loss_type) < real_gradient("sigmoid") < 0  # descent raises log pθ(real)


@pytest.mark.parametrize("beta", [0.01, 0.1, 5.0])
def test_policy_equal_to_reference_gives_zero_margin_and_ln2(beta):
    real, generated = _logps(-3.5, -120.0, -0.1), _logps(-7.0, -80.0, -44.4)
    out = spin_loss(real, generated, real.clone(), generated.clone(), beta=beta)
    assert torch.all(out.margin == 0)
    assert out.losses.tolist() == pytest.approx([math.log(2)] * 3, abs=1e-15)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gradient_raises_real_and_lowers_generated(loss_type):
    # Start the margin below each loss's optimum so every variant still has something to push.
    policy_real = torch.tensor([-10.0], requires_grad=True)
    policy_generated = torch.tensor([-10.0], requires_grad=True)
    out = spin_loss(
        policy_real, policy_generated, torch.tensor([-10.0]), torch.tensor([-10.0]), beta=0.1, loss_type=loss_type
    )
    out.losses.sum().backward()
    # Gradient descent moves against the gradient: real up (negative grad), generated down (positive grad).
    assert policy_real.grad.item() < 0
    assert policy_generated.grad.item() > 0
    assert policy_real.grad.item() == pytest.approx(-policy_generated.grad.item())


def test_sigmoid_gradient_at_zero_margin_is_beta_over_two():
    """d/dm −log σ(βm) = −β σ(−βm) = −β/2 at m = 0."""
    policy_real = torch.zeros(1, requires_grad=True)
    spin_loss(policy_real, torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=0.1).losses.sum().backward()
    assert policy_real.grad.item() == pytest.approx(-0.05)


def test_rewards_are_detached():
    policy_real = torch.tensor([-1.0], requires_grad=True)
    out = spin_loss(policy_real, torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-2.5]), beta=0.1)
    assert not out.reward_real.requires_grad and not out.reward_generated.requires_grad
    assert out.losses.requires_grad


def test_bad_arguments_are_named():
    x = torch.zeros(1)
    with pytest.raises(
        ValueError, match="loss_type must be one of sigmoid, hinge, ipo, dpop, sppo_hard, bco_pair; got 'kto'"
    ):
        spin_loss(x, x, x, x, beta=0.1, loss_type="kto")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta must be positive"):
        spin_loss(x, x, x, x, beta=0.0)


def test_objective_defaults_to_the_spin_loss_and_adds_the_safeguards():
    pr, pg, rr, rg = (torch.tensor([v], dtype=torch.float64) for v in (-10.0, -20.0, -12.0, -15.0))
    nr, ng = torch.tensor([5.0], dtype=torch.float64), torch.tensor([10.0], dtype=torch.float64)
    plain = spin_objective(pr, pg, rr, rg, nr, ng, beta=0.1)
    assert torch.equal(plain.losses, spin_loss(pr, pg, rr, rg, beta=0.1).losses)
    # Length-normalised: margin = (−10/5 + 12/5) − (−20/10 + 15/10) = 0.4 + 0.5 = 0.9.
    normalised = spin_objective(pr, pg, rr, rg, nr, ng, beta=0.1, length_normalize=True)
    assert normalised.margin.item() == pytest.approx(0.9)
    assert normalised.losses.item() == pytest.approx(math.log1p(math.exp(-0.09)))
    # NLL term: α · 10/5 = 0.5 · 2 = 1.0 added.
    anchored = spin_objective(pr, pg, rr, rg, nr, ng, beta=0.1, real_nll_weight=0.5)
    assert anchored.losses.item() == pytest.approx(plain.losses.item() + 1.0)


def test_nll_term_pulls_the_real_response_up_even_at_zero_margin():
    pr = torch.tensor([-10.0], requires_grad=True)
    spin_objective(
        pr,
        torch.tensor([-10.0]),
        torch.tensor([-10.0]),
        torch.tensor([-10.0]),
        torch.tensor([4.0]),
        torch.tensor([4.0]),
        beta=0.1,
        real_nll_weight=1.0,
    ).losses.sum().backward()
    assert pr.grad.item() == pytest.approx(-0.05 - 0.25)  # −β/2 from the SPIN term, −1/|real| from the NLL
