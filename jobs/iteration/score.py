"""Score stage: reference log-probs of both responses of every pair, under the iteration's starting model.

The reference is frozen for the whole iteration, so its log-probs are computed once here, by the same
forward pass the trainer runs (`train_step.policy_logps`), and stored in the pair records. The trainer
then never holds a second model, and at its first step policy and reference agree to float precision.
With `pairs.sample_logps: generator`, a fresh sample's log-prob is the sum of the generator's log-probs of the
tokens it sampled (the generator serves the reference), so only the real answers need the forward pass; the
generated side's reference then comes from vLLM's kernels, not the trainer's, and at the first step policy and
reference agree on it only as closely as the two engines do (tests/integration/test_iteration.py measures it).
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
import ray.data
import torch
from pydantic import BaseModel, ConfigDict

from cluster.files import local_copy
from jobs.hf import load_causal_lm
from jobs.iteration.context import IterationContext
from jobs.iteration.data import read_pairs, read_records, write_records
from jobs.iteration.train_step import pair_batch, policy_logps, summed_logps
from jobs.metrics import ScoreSummary
from jobs.progress import Stage
from jobs.records import PAIR_SCHEMA, REFERENCE_COLUMNS
from jobs.spin.collate import pad_sequences
from jobs.spin.pairs import scored_generated_length


class ScorerSpec(BaseModel):
    """What a ReferenceScorer needs: one frozen bundle across the actor boundary."""

    model_config = ConfigDict(frozen=True)

    model_path: str
    dtype: str
    pad_id: int
    micro_batch_size: int
    use_gpu: bool
    mask_after_divergence: bool = False
    logprob_chunk_tokens: int | None  # the trainer's, so reference and policy are computed alike
    sample_logps: bool = False  # take a sample's log-prob from the generator's, where the record has them


class ReferenceScorer:
    """A Ray Data actor holding the reference model."""

    def __init__(self, spec: ScorerSpec):
        self.spec = spec
        self.device = torch.device("cuda" if spec.use_gpu else "cpu")
        self.model = load_causal_lm(local_copy(spec.model_path), spec.dtype, self.device).eval()

    def __call__(self, batch: pa.Table) -> pa.Table:
        if "generated_token_logps" not in batch.column_names:  # records written before the column existed
            batch = batch.append_column("generated_token_logps", pa.nulls(batch.num_rows, pa.list_(pa.float64())))
        ref_real: list[float] = []
        ref_generated: list[float] = []
        for i in range(0, batch.num_rows, self.spec.micro_batch_size):
            real, generated = self.reference_logps(batch.slice(i, self.spec.micro_batch_size))
            ref_real += real
            ref_generated += generated
        batch = batch.append_column("ref_logp_real", pa.array(ref_real, pa.float64()))
        batch = batch.append_column("ref_logp_generated", pa.array(ref_generated, pa.float64()))
        return batch.select(PAIR_SCHEMA.names).cast(PAIR_SCHEMA)

    @torch.no_grad()
    def reference_logps(self, rows: pa.Table) -> tuple[list[float], list[float]]:
        """The reference's summed log-probs of the real and the generated answer of each of a micro-batch's pairs."""
        if self.spec.sample_logps:
            return self._with_sample_logps(rows)
        pairs = pair_batch(
            rows,
            self.spec.pad_id,
            self.device,
            with_reference=False,
            mask_after_divergence=self.spec.mask_after_divergence,
        )
        real, generated, _ = policy_logps(self.model, pairs, self.spec.logprob_chunk_tokens)
        return real.double().tolist(), generated.double().tolist()

    def _with_sample_logps(self, rows: pa.Table) -> tuple[list[float], list[float]]:
        """The real answers by a forward pass; a generated answer by summing the generator's log-probs of its
        scored tokens, or by the forward pass where it has none (a replay, an EOS added)."""
        prompts, reals = rows.column("prompt_ids").to_pylist(), rows.column("real_ids").to_pylist()
        generated, given = rows.column("generated_ids").to_pylist(), rows.column("generated_token_logps").to_pylist()
        scored = [
            scored_generated_length(r, g) if self.spec.mask_after_divergence else len(g)
            for r, g in zip(reals, generated, strict=True)
        ]
        missing = [j for j, logps in enumerate(given) if logps is None]
        tensors = pad_sequences(
            prompts + [prompts[j] for j in missing],
            reals + [generated[j] for j in missing],
            self.spec.pad_id,
            scored=[None] * len(reals) + [scored[j] for j in missing],
        )
        ids, attention, positions, loss_mask = (t.to(self.device) for t in tensors)
        sums, _ = summed_logps(self.model, ids, attention, positions, loss_mask, self.spec.logprob_chunk_tokens)
        forward = dict(zip(missing, sums[len(reals) :].double().tolist(), strict=True))
        out = [forward[j] if logps is None else math.fsum(logps[: scored[j]]) for j, logps in enumerate(given)]
        return sums[: len(reals)].double().tolist(), out


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
        # A fresh sample was drawn from model k, the reference: its log-probs from the generator are the reference's.
        sample_logps = ctx.cfg.pairs.sample_logps == "generator"
        _score(ctx, read_records(storage, [storage.generations(k)]), path, fresh, stage, 0, meta, sample_logps)
    if carried is not None and not storage.is_complete(storage.carried(k)):
        _score(ctx, carried, storage.carried(k), carried_rows, stage, fresh, meta)
    return ScoreSummary.model_validate(storage.marker(path))


def _score(
    ctx: IterationContext,
    records: Any,
    path: str,
    total: int,
    stage: Stage,
    done: int,
    meta: dict[str, Any],
    sample_logps: bool = False,
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
        sample_logps=sample_logps,
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
    write_records(pairs, ctx.storage, path, PAIR_SCHEMA, meta=meta, on_batch=progress, expected=total, stage=stage)
