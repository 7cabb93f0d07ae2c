"""A guard against SPIN's known failure: the human answers' likelihood being pushed down with the model's own.

In a trial on arithmetic problems, held-out exact match peaked and then fell once the real responses'
log-prob gain (log pθ − log pref on the real response) turned negative: the model was lowering the human
answers along with its own (DPO's likelihood displacement). The guard watches that gain at evaluation
points and, after `patience` negative readings in a row, lowers the learning rate or ends the iteration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

GuardAction = Literal["none", "lower_lr", "stop"]


@dataclass
class GainGuard:
    action: GuardAction = "none"
    patience: int = 1
    threshold: float = 0.0  # a gain below this counts as negative
    lr_factor: float = 0.5
    negatives: int = 0
    fired_at: list[int] = field(default_factory=list)

    def observe(self, step: int, real_gain: float) -> GuardAction:
        """Record the real-response gain measured at `step`; returns what to do now ("none" to carry on)."""
        if self.action == "none":
            return "none"
        self.negatives = self.negatives + 1 if real_gain < self.threshold else 0
        if self.negatives < self.patience:
            return "none"
        self.negatives = 0  # a lowered lr gets `patience` fresh readings before it is lowered again
        self.fired_at.append(step)
        return self.action
