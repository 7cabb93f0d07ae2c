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

from jobs.context import IterationContext
from jobs.datasets import read_records, write_records
from jobs.progress import Stage
from jobs.records import PAIR_SCHEMA
from jobs.spin import collate_pairs
from jobs.storage import local_copy
from jobs.train_step import policy_logps


class ReferenceScorer:
    """A Ray Data actor holding the reference model."""

    def __init__(self, *, model_path: str, dtype: str, pad_id: int, micro_batch_size: int, use_gpu: bool):
        from jobs.modeling import load_causal_lm

        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.model = load_causal_lm(local_copy(model_path), dtype, self.device).eval()
        self.pad_id = pad_id
        self.micro_batch_size = micro_batch_size

    @torch.no_grad()
    def __call__(self, batch: pa.Table) -> pa.Table:
        prompts, reals, gens = (batch.column(c).to_pylist() for c in ("prompt_ids", "real_ids", "generated_ids"))
        ref_real: list[float] = []
        ref_generated: list[float] = []
        for i in range(0, len(prompts), self.micro_batch_size):
            window = slice(i, i + self.micro_batch_size)
            pairs = collate_pairs(prompts[window], reals[window], gens[window], pad_id=self.pad_id)
            real, generated, _ = policy_logps(self.model, pairs.to(self.device))
            ref_real += real.double().tolist()
            ref_generated += generated.double().tolist()
        batch = batch.append_column("ref_logp_real", pa.array(ref_real, pa.float64()))
        return batch.append_column("ref_logp_generated", pa.array(ref_generated, pa.float64())).cast(PAIR_SCHEMA)


def scored_dataset(
    generations: ray.data.Dataset,
    *,
    model_path: str,
    dtype: str,
    pad_id: int,
    micro_batch_size: int,
    use_gpu: bool,
    scorers: int = 1,
    cpus_per_scorer: float = 1.0,
) -> ray.data.Dataset:
    """`generations` with reference log-prob columns added by `scorers` actors."""
    kwargs: dict[str, Any] = {"num_gpus": 1} if use_gpu else {"num_cpus": cpus_per_scorer}
    return generations.map_batches(
        ReferenceScorer,
        fn_constructor_kwargs=dict(
            model_path=model_path, dtype=dtype, pad_id=pad_id, micro_batch_size=micro_batch_size, use_gpu=use_gpu
        ),
        batch_size=max(64, micro_batch_size),
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=scorers),
        **kwargs,
    )


def run_score(ctx: IterationContext, stage: Stage, pad_id: int) -> dict[str, Any]:
    """Add the reference log-probs to every generation record, giving the iteration's pair records."""
    storage, path, source = ctx.storage, ctx.path("pairs"), ctx.path("generations")
    if storage.is_complete(path):
        stage.already_done()
        return storage.marker(path)
    total = storage.marker(source)["rows"]
    stage.update(0, total)
    t = ctx.cfg.train
    pairs = scored_dataset(
        read_records(storage, [source]),
        model_path=ctx.model_uri,
        dtype=ctx.compute_dtype,
        pad_id=pad_id,
        micro_batch_size=t.micro_batch_size,
        use_gpu=t.use_gpu,
    )
    rows = write_records(
        pairs,
        storage,
        path,
        PAIR_SCHEMA,
        meta={"dtype": ctx.compute_dtype},
        on_batch=lambda rows, _: stage.update(rows),
    )
    if rows != total:
        storage.discard(path)
        raise RuntimeError(f"scored {rows} pairs of {total} generation records")
    return storage.marker(path)
