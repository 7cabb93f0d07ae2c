"""The pair record: what the generate stage writes, the score stage completes and training reads.

One Parquet file set per iteration under iter_<k>/pairs/. Token ids are stored with the text, so scoring
and training use exactly the tokens the generator produced and saw, never a re-tokenisation.
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
        ("split", pa.string()),  # "train", or "held_out" (evaluated on, never trained on)
        ("iteration", pa.int32()),
        ("model_version", pa.int32()),
        ("prompt", pa.string()),  # rendered with the chat template
        ("real", pa.string()),
        ("generated", pa.string()),
        ("prompt_ids", _TOKENS),
        ("real_ids", _TOKENS),  # ends with EOS unless truncated
        ("generated_ids", _TOKENS),  # ends with EOS when finish_reason is "stop"
        ("prompt_tokens", pa.int32()),
        ("real_tokens", pa.int32()),
        ("generated_tokens", pa.int32()),
        ("real_truncated", pa.bool_()),
        ("finish_reason", pa.string()),
    ]
)

PAIR_SCHEMA = GENERATION_SCHEMA.append(pa.field("ref_logp_real", pa.float64())).append(
    pa.field("ref_logp_generated", pa.float64())
)
