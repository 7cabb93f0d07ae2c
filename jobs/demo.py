"""The embedded default: SPIN on a tiny model and arithmetic word problems, on this machine, in minutes.

    python -m jobs demo        (what `make demo` runs)

1. prepare  a tiny Llama and its tokenizer, built offline; SFT data; a supervised fine-tune (cached)
2. ray      a local Ray cluster on 127.0.0.1
3. spin     one SPIN iteration: generate (Serve + vLLM) → score → train (Ray Train, 2 FSDP2 workers)
4. report   per-stage wall time, pair counts and the training metrics
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from jobs.config import SpinConfig

DEMO_CONFIG = Path(__file__).parent / "configs" / "demo_cpu.yaml"

# The SFT recipe of the demo model; a cached model is reused only if it was made with these settings.
SFT_RECIPE = {
    "model": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 512},
    "train_problems": 4000,
    "steps": 600,
    "batch_size": 32,
    "learning_rate": 2e-3,
    "data_seed": 1,
}


def prepare(cfg: SpinConfig, console: Console) -> None:
    """Build the demo's model and data where `cfg` expects them, unless already there."""
    from jobs.arithmetic import make_problems, write_jsonl
    from jobs.sft import sft
    from jobs.tiny_model import build_tiny_model

    assert cfg.data.path is not None
    data_path, sft_dir = Path(cfg.data.path), Path(cfg.model.path)
    problems = make_problems(SFT_RECIPE["train_problems"], seed=SFT_RECIPE["data_seed"])
    if not data_path.exists():
        write_jsonl(problems, data_path)
        console.print(f"wrote {len(problems)} arithmetic problems to {data_path}")
    recipe_file = sft_dir / "demo_recipe.json"
    if recipe_file.exists() and json.loads(recipe_file.read_text()) == SFT_RECIPE:
        console.print(f"using the cached SFT model in {sft_dir}")
        return
    base = build_tiny_model(sft_dir.parent / "base", **SFT_RECIPE["model"])
    examples = [([{"role": "user", "content": p.question}], p.solution) for p in problems]
    with console.status("") as status:

        def show(step: int, loss: float) -> None:
            status.update(f"supervised fine-tuning the tiny model: step {step}/{SFT_RECIPE['steps']}, loss {loss:.3f}")

        result = sft(
            str(base),
            sft_dir,
            examples,
            steps=SFT_RECIPE["steps"],
            batch_size=SFT_RECIPE["batch_size"],
            learning_rate=SFT_RECIPE["learning_rate"],
            on_step=show,
        )
    recipe_file.write_text(json.dumps(SFT_RECIPE))
    console.print(f"SFT: {result['steps']} steps in {result['seconds']:.0f}s, final loss {result['final_loss']:.3f}")


def summary_tables(metrics: dict[str, Any]) -> list[Table]:
    stages = Table(title=f"iteration {metrics['iteration']}: stages")
    stages.add_column("stage")
    stages.add_column("wall time (s)", justify="right")
    for stage, seconds in metrics["stage_seconds"].items():
        stages.add_row(stage, f"{seconds:.1f}")

    g = metrics["generate"]
    pairs = Table(title="pairs")
    pairs.add_column("what")
    pairs.add_column("count", justify="right")
    for label, value in [
        ("prompts sampled (= pairs)", g["prompts"]),
        ("unique prompts in the data", g["unique_prompts"]),
        ("duplicate rows dropped", g["duplicate_rows"]),
        ("unusable rows skipped", g["bad_rows"]),
        ("pairs trained on (with mixing)", metrics["train"]["pairs"]),
        ("optimizer steps", metrics["train"]["steps"]),
    ]:
        pairs.add_row(label, str(value))

    history = metrics["train"]["history"]
    training = Table(title="training, means over all ranks (Δ = log pθ − log pref)")
    columns = {
        "loss": "loss",
        "rewards/margins": "reward margin",
        "rewards/accuracies": "reward acc",
        "gain/real": "Δ real",
        "gain/generated": "Δ generated",
        "tokens_per_s": "tokens/s",
    }
    names = list(columns)
    training.add_column("step", justify="right")
    for header in columns.values():
        training.add_column(header, justify="right")
    shown = history if len(history) <= 12 else history[:3] + history[3:-3][:: max(1, len(history) // 6)] + history[-3:]
    for h in shown:
        training.add_row(str(h["step"]), *(f"{h[n]:.4f}" if n != "tokens_per_s" else f"{h[n]:.0f}" for n in names))
    return [stages, pairs, training]


def run_demo(config_path: Path = DEMO_CONFIG, overrides: list[str] | None = None) -> dict[str, Any]:
    from cluster.runtime import connect
    from jobs.iteration import run_iteration
    from jobs.progress import Progress, RichSink

    console = Console(stderr=True)
    cfg = SpinConfig.from_yaml(config_path, overrides)
    prepare(cfg, console)
    with console.status("starting a local Ray cluster on 127.0.0.1"):
        resources = connect(num_cpus=cfg.ray.num_cpus, object_store_memory=cfg.ray.object_store_memory)
    console.print(f"Ray is up: {resources.get('CPU', 0):.0f} logical CPUs on 127.0.0.1")
    sink = RichSink(console)
    try:
        metrics = run_iteration(cfg, 0, Progress(sink))
    finally:
        sink.close()
    out = Console()
    for table in summary_tables(metrics):
        out.print(table)
    out.print(f"model after iteration 0: {metrics['model_out']}")
    return metrics
