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
from jobs.iteration.data import read_records, write_records
from jobs.iteration.train_step import pair_batch, policy_logps
from jobs.metrics import ScoreSummary
from jobs.progress import Stage
from jobs.records import PAIR_SCHEMA


class ScorerSpec(BaseModel):
    """What a ReferenceScorer needs: one frozen bundle across the actor boundary."""

    model_config = ConfigDict(frozen=True)

    model_path: str
    dtype: str
    pad_id: int
    micro_batch_size: int
    use_gpu: bool


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
            pairs = pair_batch(batch.slice(i, step), self.spec.pad_id, self.device, with_reference=False)
            real, generated, _ = policy_logps(self.model, pairs)
            ref_real += real.double().tolist()
            ref_generated += generated.double().tolist()
        batch = batch.append_column("ref_logp_real", pa.array(ref_real, pa.float64()))
        return batch.append_column("ref_logp_generated", pa.array(ref_generated, pa.float64())).cast(PAIR_SCHEMA)


def run_score(ctx: IterationContext, stage: Stage) -> ScoreSummary:
    """Add the reference log-probs to every generation record, giving the iteration's pair records."""
    storage, path, source = ctx.storage, ctx.storage.pairs(ctx.k), ctx.storage.generations(ctx.k)
    if storage.is_complete(path):
        stage.already_done()
        return ScoreSummary.model_validate(storage.marker(path))
    total = storage.marker(source)["rows"]
    stage.update(0, total)
    t = ctx.train
    spec = ScorerSpec(
        model_path=ctx.model_uri,
        dtype=ctx.compute_dtype,
        pad_id=ctx.pad_id,
        micro_batch_size=t.micro_batch_size,
        use_gpu=t.use_gpu,
    )
    resources: dict[str, Any] = {"num_gpus": 1} if t.use_gpu else {"num_cpus": 1.0}
    pairs = read_records(storage, [source]).map_batches(
        ReferenceScorer,
        fn_constructor_kwargs={"spec": spec},
        batch_size=max(64, t.micro_batch_size),
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=1),
        **resources,
    )
    meta = {"dtype": ctx.compute_dtype}
    write_records(
        pairs, storage, path, PAIR_SCHEMA, meta=meta, on_batch=lambda rows, _: stage.update(rows), expected=total
    )
    return ScoreSummary.model_validate(storage.marker(path))
