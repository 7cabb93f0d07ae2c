"""The pure core of SPIN: losses, log-probs, pair shaping, collation and metrics.

Imports torch and the standard library only (tests/spin/test_core_is_pure.py enforces it), so the math can be
read, tested and reused without Ray, vLLM or transformers.
"""

from jobs.spin.collate import PairBatch, collate_pairs, pad_sequences
from jobs.spin.guard import GainGuard
from jobs.spin.logprobs import sequence_logps, token_logps
from jobs.spin.loss import LOSS_TYPES, LossType, SpinLossOutput, spin_loss, spin_objective
from jobs.spin.metrics import METRIC_NAMES, answer_match, metrics_from_sums, pair_metric_sums, real_nll
from jobs.spin.pairs import (
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
from jobs.spin.stopping import IterationScores, StopDecision, StoppingRule, should_stop

__all__ = [
    "LOSS_TYPES",
    "METRIC_NAMES",
    "LossType",
    "PairBatch",
    "PromptSelection",
    "RowRef",
    "SpinLossOutput",
    "collate_pairs",
    "completed_response",
    "metrics_from_sums",
    "pad_sequences",
    "pair_metric_sums",
    "response_budget",
    "sample_key",
    "select_prompts",
    "sequence_logps",
    "spin_loss",
    "token_logps",
    "training_iterations",
    "spin_objective",
    "real_nll",
    "answer_match",
    "GainGuard",
    "IterationScores",
    "StoppingRule",
    "StopDecision",
    "should_stop",
    "truncate_prompt",
    "truncate_response",
]
