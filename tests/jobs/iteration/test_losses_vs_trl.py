"""Our losses against TRL 1.16's DPOTrainer on the same first batch of the tiny model, with a reference that
differs from the policy: the loss types TRL has agree to fp32 rounding, 1e-5 or 5e-6 of the value (our LM head runs
in chunks, so its sums round differently; sppo_hard's loss of ~50 is 50x more sensitive to that than sigmoid's)."""

import pytest

from tests.bench.bench_training import TRL_LOSSES, losses_on_first_batch
from tests.bench.common import Size


@pytest.fixture(scope="module")
def losses():
    return losses_on_first_batch(Size.smoke(), list(TRL_LOSSES))


@pytest.mark.parametrize("loss_type", list(TRL_LOSSES))
def test_loss_equals_trls_on_the_same_tokens(losses, loss_type):
    values = losses[loss_type]
    assert values["same_tokens"]
    assert values["spin_loss"] == pytest.approx(values["trl_loss"], abs=1e-5, rel=5e-6), values
    assert values["spin_loss"] != pytest.approx(losses["sigmoid"]["spin_loss"]) or loss_type == "sigmoid"
