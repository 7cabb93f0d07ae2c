"""The benchmark harness: runs the benches, prints one table and writes the JSON behind it.

python -m tests.bench.run                       # all benches, SmolLM2-135M (what `make bench` runs)
python -m tests.bench.run generation training   # some of them
python -m tests.bench.run --smoke               # tiny sizes: proves the harness works (CI)
python -m tests.bench.run effect                # SPIN vs SFT vs continued SFT on SmolLM2 (about 2.5 h)
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from tests.bench import bench_e2e, bench_effect, bench_generation, bench_training
from tests.bench.common import ROOT, Row, Size, markdown_table, print_table, run_case

BENCHES = ("generation", "training", "e2e")  # what `make bench` runs
OPT_IN = ("effect",)  # asked for by name: a job of about 2.5 hours on 2 cores
app = typer.Typer(add_completion=False)


def machine() -> dict[str, object]:
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "gpu": gpu, "torch": torch.__version__}


def run_cases(module: str, cases: dict[str, object], size: Size, skip_missing: bool) -> dict[str, dict]:
    """Every case of a bench; with `skip_missing`, a case whose engine is not installed is recorded as skipped."""
    out: dict[str, dict] = {}
    for case in cases:
        try:
            result = run_case(module, case, size)
        except RuntimeError as e:
            if not (skip_missing and "ModuleNotFoundError" in str(e)):
                raise
            result = {"skipped": str(e).strip().splitlines()[-1]}
        # A case that measures several in one process (one deployment shared) returns them under "cases".
        out.update(result["cases"] if "cases" in result else {case: result})
    return out


def run_benches(
    names: list[str], size: Size, skip_missing: bool = False, e2e_model: str = "tiny"
) -> tuple[dict[str, object], list[Row]]:
    results: dict[str, object] = {}
    rows: list[Row] = []
    on_gpu = bool(machine()["gpu"])
    if "generation" in names:
        gen = run_cases("bench_generation", bench_generation.CASES, size, skip_missing)
        results["generation"] = gen
        rows += bench_generation.rows(gen, on_gpu)
    if "training" in names:
        train = run_cases("bench_training", bench_training.CASES, size, skip_missing)
        results["training"] = train
        rows += bench_training.rows(train)
    if "e2e" in names:
        e2e = bench_e2e.measure(replace(size, model=e2e_model, dtype="float32"))
        results["e2e"] = e2e
        rows += bench_e2e.rows(e2e)
    if "effect" in names:
        effect = bench_effect.run_effect()
        results["effect"] = effect
        rows += bench_effect.rows(effect)
    return results, rows


@app.command()
def main(
    benches: Annotated[list[str] | None, typer.Argument(help=f"Any of {', '.join(BENCHES)}; all by default.")] = None,
    smoke: Annotated[bool, typer.Option(help="Tiny sizes and the tiny model: checks the harness only.")] = False,
    model: Annotated[
        str | None, typer.Option(help="tiny, smollm2 or a Hugging Face folder (default: smollm2; e2e: tiny).")
    ] = None,
    e2e_prompts: Annotated[
        list[int] | None, typer.Option(help="The e2e bench's prompt counts (repeat the option; default 64, 256, 1024).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the JSON results go.")] = ROOT / ".cache" / "bench" / "results.json",
    skip_missing: Annotated[bool, typer.Option(help="Record cases whose engine is not installed as skipped.")] = False,
    allocator: Annotated[
        str, typer.Option(help="fixed: peak memory measures tensors; glibc: the allocator users get, for speed.")
    ] = "fixed",
) -> None:
    if allocator not in ("fixed", "glibc"):
        raise typer.BadParameter(f"--allocator {allocator!r}: choose fixed or glibc")
    os.environ["SPIN_BENCH_ALLOCATOR"] = allocator  # read by common.case_env for every case's interpreter
    names = benches or list(BENCHES)
    unknown = sorted(set(names) - set(BENCHES) - set(OPT_IN))
    if unknown:
        raise typer.BadParameter(f"unknown bench {unknown}; choose from {BENCHES + OPT_IN}")
    size = Size.smoke() if smoke else Size()
    if model:
        size = replace(size, model=model)
    if e2e_prompts:
        size = replace(size, e2e_prompts=e2e_prompts)
    results, rows = run_benches(names, size, skip_missing, e2e_model=model or "tiny")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "size": asdict(size),
        "allocator": allocator,
        "results": results,
        "rows": [asdict(r) for r in rows],
    }
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown_table(rows))
    print_table(rows, f"SPIN benchmarks ({size.model}, {machine()['gpu'] or str(machine()['cpus']) + ' CPUs'})")
    print(f"results: {out} (and {out.with_suffix('.md').name})")


if __name__ == "__main__":
    app()
