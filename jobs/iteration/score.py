"""Score stage: reference log-probs of both responses of every pair, under the iteration's starting model.

The reference is frozen for the whole iteration, so its log-probs are computed once here, by the same
forward pass the trainer runs (`train_step.policy_logps`), and stored in the pair records. The trainer
then never holds a second model, and at its first step policy and reference agree to float precision.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import ray.data
import torch
from pydantic import BaseModel, ConfigDict

from cluster.files import local_copy
from jobs.hf import load_causal_lm
from jobs.iteration.context import IterationContext
from jobs.iteration.data import read_pairs, read_records, write_records
from jobs.iteration.train_step import pair_batch, policy_logps
from jobs.metrics import ScoreSummary
from jobs.progress import Stage
from jobs.records import PAIR_SCHEMA, REFERENCE_COLUMNS


class ScorerSpec(BaseModel):
    """What a ReferenceScorer needs: one frozen bundle across the actor boundary."""

    model_config = ConfigDict(frozen=True)

    model_path: str
    dtype: str
    pad_id: int
    micro_batch_size: int
    use_gpu: bool
    mask_after_divergence: bool = False
    logprob_chunk_tokens: int | None = None  # the trainer's, so reference and policy are computed alike


class ReferenceScorer:
    """A Ray Data actor holding the reference model."""

    def __init__(self, spec: ScorerSpec):
        self.spec = spec
        self.device = torch.device("cuda" if spec.use_gpu else "cpu")
        self.model = load_causal_lm(local_copy(spec.model_path), spec.dtype, self.device).eval()

    @torch.no_grad()
    def __call__(self, batch: pa.Table) -> pa.Table:
        ref_real: list[float] = []
        ref_generated: list[float] = []
        step = self.spec.micro_batch_size
        for i in range(0, batch.num_rows, step):
            pairs = pair_batch(
                batch.slice(i, step),
                self.spec.pad_id,
                self.device,
                with_reference=False,
                mask_after_divergence=self.spec.mask_after_divergence,
            )
            real, generated, _ = policy_logps(self.model, pairs, self.spec.logprob_chunk_tokens)
            ref_real += real.double().tolist()
            ref_generated += generated.double().tolist()
        batch = batch.append_column("ref_logp_real", pa.array(ref_real, pa.float64()))
        return batch.append_column("ref_logp_generated", pa.array(ref_generated, pa.float64())).cast(PAIR_SCHEMA)


def run_score(ctx: IterationContext, stage: Stage) -> ScoreSummary:
    """Add model k's log-probs to every generation record of iteration k (its pairs), and, when iteration k also
    trains on iteration k−1's pairs, to those (carried): model k is the reference of every pair it trains on."""
    storage, k, path = ctx.storage, ctx.k, ctx.storage.pairs(ctx.k)
    carrying = ctx.iteration.mix_previous and k > 0
    if storage.is_complete(path) and (not carrying or storage.is_complete(storage.carried(k))):
        stage.already_done()
        return ScoreSummary.model_validate(storage.marker(path))
    fresh = storage.marker(storage.generations(k))["rows"]
    carried = read_pairs(storage, [k - 1], "train").drop_columns(list(REFERENCE_COLUMNS)) if carrying else None
    carried_rows = carried.count() if carried is not None else 0
    stage.update(0, fresh + carried_rows)
    meta = {"dtype": ctx.compute_dtype, "carried": carried_rows}
    if not storage.is_complete(path):
        _score(ctx, read_records(storage, [storage.generations(k)]), path, fresh, stage, 0, meta)
    if carried is not None and not storage.is_complete(storage.carried(k)):
        _score(ctx, carried, storage.carried(k), carried_rows, stage, fresh, meta)
    return ScoreSummary.model_validate(storage.marker(path))


def _score(
    ctx: IterationContext, records: Any, path: str, total: int, stage: Stage, done: int, meta: dict[str, Any]
) -> None:
    t = ctx.train
    spec = ScorerSpec(
        model_path=ctx.model_uri,
        dtype=ctx.compute_dtype,
        pad_id=ctx.pad_id,
        micro_batch_size=t.micro_batch_size,
        use_gpu=t.use_gpu,
        mask_after_divergence=t.mask_after_divergence,
        logprob_chunk_tokens=t.logprob_chunk_tokens,
    )
    resources: dict[str, Any] = {"num_gpus": 1} if t.use_gpu else {"num_cpus": 1.0}
    pairs = records.map_batches(
        ReferenceScorer,
        fn_constructor_kwargs={"spec": spec},
        batch_size=max(64, t.micro_batch_size),
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=1),
        **resources,
    )
    progress = lambda rows, _: stage.update(done + rows)  # noqa: E731
    write_records(pairs, ctx.storage, path, PAIR_SCHEMA, meta=meta, on_batch=progress, expected=total)
