"""The records the stages exchange, as Arrow schemas.

Pair records: what the generate stage writes (iter_<k>/generations/), the score stage completes with reference
log-probs (iter_<k>/pairs/, and iter_<k>/carried/ for the previous iteration's pairs rescored) and training reads.
Evaluation records: the run's validation and test prompts (eval_prompts/), and each evaluated model's answer to
every one of them (.../evaluation/), which paired comparisons read. Token ids are stored with the text, so
scoring, training and evaluation use exactly the tokens the generator produced and saw, never a re-tokenisation.
"""

from __future__ import annotations

import pyarrow as pa

_TOKENS = pa.list_(pa.int32())

SFT_ROW_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("messages", pa.string()),  # the prompt's chat messages as JSON
        ("real", pa.string()),
        ("source", pa.string()),
        ("row", pa.int64()),
        ("error", pa.string()),  # null for a usable row
    ]
)

GENERATION_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("split", pa.string()),  # "train", or "validation" (evaluated on, never trained on)
        ("iteration", pa.int32()),
        ("model_version", pa.int32()),
        ("prompt", pa.string()),  # rendered with the chat template
        ("real", pa.string()),
        ("generated", pa.string()),
        ("prompt_ids", _TOKENS),
        ("real_ids", _TOKENS),  # ends with EOS unless truncated
        ("generated_ids", _TOKENS),  # ends with EOS when finish_reason is "stop"
        # The log-prob of each of generated_ids under the model that sampled them (model_version), from the
        # generator (pairs.sample_logps "generator"); null when not asked or when the generated side is not the
        # sample as drawn (a replay, an EOS added). Carried pairs keep them but are scored by a forward pass.
        ("generated_token_logps", pa.list_(pa.float64())),
        ("prompt_tokens", pa.int32()),
        ("real_tokens", pa.int32()),
        ("generated_tokens", pa.int32()),
        ("real_truncated", pa.bool_()),
        ("prompt_truncated", pa.bool_()),  # its oldest turns or the start of its text cut, the template kept whole
        ("finish_reason", pa.string()),
        ("samples", pa.int32()),  # drawn for this prompt (pairs.samples_per_prompt)
        ("sampled_tokens", pa.int32()),  # tokens of all of them
        ("pick", pa.int32()),  # the sample that became the generated side; -1: none qualified (pairs.rule)
        ("kept", pa.bool_()),  # false: no sample qualified and pairs.no_negative is "skip"
    ]
)

REFERENCE_COLUMNS = ("ref_logp_real", "ref_logp_generated")  # the reference's summed log-probs of each side
PAIR_SCHEMA = GENERATION_SCHEMA.append(pa.field(REFERENCE_COLUMNS[0], pa.float64())).append(
    pa.field(REFERENCE_COLUMNS[1], pa.float64())
)

EVAL_PROMPT_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("split", pa.string()),  # "validation" or "test"
        ("prompt", pa.string()),
        ("real", pa.string()),
        ("prompt_ids", _TOKENS),
        ("real_ids", _TOKENS),
        ("real_tokens", pa.int32()),
    ]
)

EVAL_RESULT_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("split", pa.string()),
        ("answer", pa.string()),  # the model's greedy answer
        ("answer_tokens", pa.int32()),
        ("correct", pa.bool_()),  # the task metric's verdict; null without a task, or where the real has no answer
        ("nll", pa.float64()),  # the real answer's per-token negative log-likelihood under the model
    ]
)
