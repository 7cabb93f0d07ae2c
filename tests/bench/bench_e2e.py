"""End to end: one iteration on the local Ray cluster against the sum of the same stages run bare, and how
wall time and memory grow with the number of prompts.

    python -m tests.bench.run e2e

The iteration is the real thing (Serve + vLLM, Ray Data, Ray Train with 2 FSDP2 workers, storage commits,
weight publish); held-out evaluation is off so that the stages match the bare ones: bare vLLM generation of
the same prompts, then reference log-probs and one epoch of the SPIN update on the iteration's own pairs, in a
single process. Memory is the peak of the summed RSS of every process on the machine above what ran before the
iteration started.

A second iteration follows, timed on its own: what every iteration after the first costs in a run, the generator
already serving (the first iteration published its model into it). It trains on its own pairs only
(`mix_previous: false`), so that its work is again the bare stages' work.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tests.bench.common import Row, Size, case_main, compare, prepare_model, run_case

TRAIN_BATCH = 8


def _machine_rss_mb() -> float:
    import psutil

    total = 0
    for p in psutil.process_iter(["memory_info"]):
        info = p.info.get("memory_info")
        total += info.rss if info else 0
    return total / 2**20


class PeakMemory:
    """Samples the machine's summed RSS every `every_s` while active; `peak_mb` is above the starting level."""

    def __init__(self, every_s: float = 0.5):
        self.every_s, self.base, self.peak = every_s, _machine_rss_mb(), 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, _machine_rss_mb())

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return max(0.0, self.peak - self.base)


def iteration(size: Size, extra: dict[str, Any]) -> dict[str, Any]:
    """One SPIN iteration of `extra["prompts"]` prompts through the project's stages."""
    from cluster.runtime import connect, head_running, start_head, stop_head
    from jobs.config import SpinConfig
    from jobs.demo.arithmetic import make_problems, write_jsonl
    from jobs.iteration.context import generator_app_name
    from jobs.storage import RunStorage
    from services.generator.client import stop_serving

    n, model_dir = int(extra["prompts"]), prepare_model(size.model)
    started_head = not head_running()
    start_head(num_cpus=4)
    connect("127.0.0.1:6379")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.jsonl"
        write_jsonl(make_problems(n, seed=size.seed), data)
        cfg = SpinConfig.model_validate(
            {
                "name": f"bench-e2e-{n}",
                "storage_uri": f"{tmp}/storage",
                "model": {"path": model_dir, "dtype": "float32"},
                "data": {"path": str(data)},
                "sampling": {"max_new_tokens": size.max_new_tokens, "seed": size.seed},
                "train": {
                    "num_workers": 2,
                    "use_gpu": False,
                    "precision": "fp32",
                    "cpus_per_worker": 1,
                    "micro_batch_size": TRAIN_BATCH // 2,  # per worker: 2 workers make one batch
                    "global_batch_size": TRAIN_BATCH,
                    "optimizer": "adamw",
                    "max_prompt_length": 256,
                    "max_length": 512,
                    "epochs": 1,
                    "drop_identical_pairs": False,
                },
                "prompts_per_iteration": n,
                "iterations": [{}, {"mix_previous": False}],
            }
        )
        try:
            with PeakMemory() as memory:
                first = _timed_iteration(cfg, 0)
            if extra.get("keep_pairs"):
                pairs = RunStorage(cfg.storage_uri).pairs(0)
                shutil.copytree(pairs, extra["keep_pairs"], ignore=shutil.ignore_patterns("_*", ".*"))
            second = _timed_iteration(cfg, 1)
        finally:
            stop_serving(generator_app_name(cfg))
            if started_head:
                stop_head()
    return {"prompts": n, **first, "peak_memory_mb": memory.peak_mb, "next": second}


def _timed_iteration(cfg: Any, k: int) -> dict[str, Any]:
    from jobs.iteration import run_iteration

    start = time.perf_counter()
    metrics = run_iteration(cfg, k)
    return {
        "pairs": metrics.train.pairs,
        "wall_s": time.perf_counter() - start,
        "stage_seconds": metrics.stage_seconds,
        "stage_parts": metrics.stage_parts,
    }


CASES = {"iteration": iteration}


def measure(size: Size) -> dict[str, Any]:
    """Each prompt count: the iteration, then its stages bare (generation, then scoring and training)."""
    out = {}
    for n in size.e2e_prompts:
        steps = max(1, n // TRAIN_BATCH)
        bare = replace(size, prompts=n, train_pairs=steps * TRAIN_BATCH, train_batch=TRAIN_BATCH, train_steps=steps)
        with tempfile.TemporaryDirectory() as tmp:
            pairs = f"{tmp}/pairs"
            out[str(n)] = {
                "iteration": run_case("bench_e2e", "iteration", size, prompts=n, keep_pairs=pairs),
                "bare_generation": run_case("bench_generation", "bare_vllm", bare),
                "bare_training": run_case("bench_training", "spin_update", bare, pairs_path=pairs),
            }
    return out


def rows(results: dict[str, Any]) -> list[Row]:
    out, first = [], None
    for n, r in results.items():
        it, gen, train = r["iteration"], r["bare_generation"], r["bare_training"]
        bare = gen["seconds"] + gen["startup_s"] + train["score_seconds"] + train["seconds"]
        out.append(compare("e2e", f"{n} prompts", "wall time", it["wall_s"], "s", "bare stages", bare, at_most=2.0))
        out += breakdown_rows(f"{n} prompts", it)
        if "next" in it:  # results from before the second iteration was measured have none
            case = f"{n} prompts, next iteration"
            out.append(compare("e2e", case, "wall time", it["next"]["wall_s"], "s", "bare stages", bare, at_most=2.0))
            out += breakdown_rows(case, it["next"])
        if first is None:
            first = (int(n), it)
        else:
            scale = int(n) / first[0]
            time_growth = it["wall_s"] / first[1]["wall_s"]
            out.append(Row("e2e", f"{n} prompts", "time growth / prompt growth", time_growth / scale, "", target="~1"))
        out.append(Row("e2e", f"{n} prompts", "peak memory", it["peak_memory_mb"], "MiB"))
        if first[0] != int(n):
            growth = it["peak_memory_mb"] / max(first[1]["peak_memory_mb"], 1.0)
            out.append(Row("e2e", f"{n} prompts", f"peak memory / at {first[0]}", growth, "", target="~1 (flat)"))
    return out


def breakdown_rows(case: str, it: dict[str, Any]) -> list[Row]:
    """Where the iteration's wall time went: each stage's seconds, then what the stages record of it
    (`IterationMetrics.stage_parts`): parts as a share of the wall time; milestones ("_at", seconds into their
    stage) without one, as they overlap the parts."""
    wall, out = it["wall_s"], []
    for stage, seconds in it.get("stage_seconds", {}).items():
        out.append(Row("e2e", case, stage, seconds, "s", "wall time", seconds / wall or None))
        for name, value in it.get("stage_parts", {}).items():
            if not name.startswith(f"{stage}/"):
                continue
            if name.endswith("_at"):
                out.append(Row("e2e", case, f"  {name}", value, "s into the stage"))
            else:
                out.append(Row("e2e", case, f"  {name}", value, "s", "wall time", value / wall or None))
    return out


if __name__ == "__main__":
    case_main(CASES)
