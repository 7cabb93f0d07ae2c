"""The pure core of SPIN: losses, log-probs, pair shaping, collation, metrics and the run's rules.

Imports torch and the standard library only (tests/spin/test_core_is_pure.py enforces it), so the math can be
read, tested and reused without Ray, vLLM or transformers. Names are loaded on first use, so modules that
need no torch (the stopping rule, the guard, prompt sampling) can be imported where torch is absent.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "PairBatch": "collate",
    "collate_pairs": "collate",
    "pad_sequences": "collate",
    "sequence_logps": "logprobs",
    "token_logps": "logprobs",
    "LOSS_TYPES": "loss",
    "LossType": "loss",
    "SpinLossOutput": "loss",
    "spin_loss": "loss",
    "spin_objective": "loss",
    "METRIC_NAMES": "metrics",
    "answer_match": "metrics",
    "metrics_from_sums": "metrics",
    "pair_metric_sums": "metrics",
    "real_nll": "metrics",
    "GainGuard": "guard",
    "IterationScores": "stopping",
    "StopDecision": "stopping",
    "StoppingRule": "stopping",
    "should_stop": "stopping",
    "PromptSelection": "pairs",
    "RowRef": "pairs",
    "completed_response": "pairs",
    "response_budget": "pairs",
    "sample_key": "pairs",
    "select_prompts": "pairs",
    "training_iterations": "pairs",
    "truncate_prompt": "pairs",
    "truncate_response": "pairs",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jobs.spin' has no attribute {name!r}")
    return getattr(importlib.import_module(f"jobs.spin.{_EXPORTS[name]}"), name)


if TYPE_CHECKING:
    from jobs.spin.collate import PairBatch, collate_pairs, pad_sequences  # noqa: F401
    from jobs.spin.guard import GainGuard  # noqa: F401
    from jobs.spin.logprobs import sequence_logps, token_logps  # noqa: F401
    from jobs.spin.loss import LOSS_TYPES, LossType, SpinLossOutput, spin_loss, spin_objective  # noqa: F401
    from jobs.spin.metrics import (  # noqa: F401
        METRIC_NAMES,
        answer_match,
        metrics_from_sums,
        pair_metric_sums,
        real_nll,
    )
    from jobs.spin.pairs import (  # noqa: F401
        PromptSelection,
        RowRef,
        completed_response,
        response_budget,
        sample_key,
        select_prompts,
        training_iterations,
        truncate_prompt,
        truncate_response,
    )
    from jobs.spin.stopping import IterationScores, StopDecision, StoppingRule, should_stop  # noqa: F401
