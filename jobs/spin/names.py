"""The names the core shares with the config, the metrics files and the dashboards (no torch needed).

Metric names follow TRL's DPO trainer with SPIN's vocabulary ("real" and "generated" where DPO says "chosen"
and "rejected"):

    loss                  mean per-pair loss
    rewards/real          β · (log pθ − log pref)(real)
    rewards/generated     β · (log pθ − log pref)(generated)
    rewards/margins       rewards/real − rewards/generated
    rewards/accuracies    share of pairs with rewards/real > rewards/generated
    logps/real            log pθ(real), summed over response tokens
    logps/generated       log pθ(generated)
    gain/real             log pθ(real) − log pref(real): negative means the human answers are being pushed down
    gain/generated        log pθ(generated) − log pref(generated)
    margin                gain/real − gain/generated (0 at the first step of an iteration)
"""

from __future__ import annotations

from typing import Literal, get_args

LossType = Literal["sigmoid", "hinge", "ipo", "dpop", "sppo_hard", "bco_pair"]
LOSS_TYPES: tuple[str, ...] = get_args(LossType)

# Which of k samples becomes a pair's generated side: the first (the paper), the first that differs from the real
# answer, or the first the task metric scores wrong; and what a prompt with no such sample becomes.
PairRule = Literal["first", "differs", "incorrect"]
NoNegative = Literal["replay", "skip"]

METRIC_NAMES: tuple[str, ...] = (
    "loss",
    "rewards/real",
    "rewards/generated",
    "rewards/margins",
    "rewards/accuracies",
    "logps/real",
    "logps/generated",
    "gain/real",
    "gain/generated",
    "margin",
)
