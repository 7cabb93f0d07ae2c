"""The embedded default: SPIN on a tiny model and arithmetic word problems, on this machine, in minutes.

    python -m jobs demo        (what `make demo` runs)

1. prepare  a tiny Llama and its tokenizer, built offline; SFT data; a supervised fine-tune (cached)
2. ray      a local Ray cluster on 127.0.0.1 (head with dashboard and Jobs API)
3. control  the control plane (FastAPI, SQLite) on 127.0.0.1
4. spin     a two-iteration run created and launched over REST; each iteration is a Ray Job:
            generate (Serve + vLLM) → score → train (Ray Train, 2 FSDP2 workers) → publish
5. baseline continued SFT at equal compute, from the same SFT model
6. report   the per-iteration table, then SFT vs each SPIN iteration vs continued SFT on held-out problems
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from jobs.config import SpinConfig
from jobs.metrics import IterationMetrics

DEMO_CONFIG = Path(__file__).parents[1] / "configs" / "demo_cpu.yaml"

# The demo's task and tiny model; its SFT recipe is the config's `sft:` section (made by the same code as `spin sft`).
PROBLEMS = {"count": 30000, "seed": 1, "style": "answer"}
TINY_MODEL = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 256}


def prepare(cfg: SpinConfig, console: Console) -> None:
    """Write the demo's data, build the tiny base model and fine-tune it into the run's SFT model, unless done.

    The SFT trains on the run's own training split only: the validation and test problems SPIN is judged on are
    chosen by the same rule and never trained on.
    """
    from jobs.baseline.sft import run_sft
    from jobs.demo.arithmetic import make_problems, write_jsonl
    from jobs.demo.tiny_model import build_tiny_model

    assert cfg.data.path is not None and cfg.sft is not None
    data_path, base = Path(cfg.data.path), Path(cfg.sft.base_model)
    if not data_path.exists():
        problems = make_problems(PROBLEMS["count"], seed=PROBLEMS["seed"], style=PROBLEMS["style"])  # type: ignore[arg-type]
        write_jsonl(problems, data_path)
        console.print(f"wrote {len(problems)} arithmetic problems to {data_path}")
    if not (base / "config.json").exists():
        build_tiny_model(base, **TINY_MODEL)
    with console.status("") as status:

        def show(step: int, loss: float) -> None:
            status.update(f"supervised fine-tuning the tiny model: step {step}/{cfg.sft.max_steps}, loss {loss:.3f}")

        result = run_sft(cfg, on_step=show)
    scores = ", ".join(f"{score:.3f} at step {step}" for step, score in result["validation"][-3:])
    console.print(
        f"SFT model: {result['steps']} steps on {result['train_examples']} problems, validation exact match "
        f"{scores} (kept: step {result['best_step']})"
    )


def iteration_table(run: dict[str, Any]) -> Table:
    """One row per iteration: what it trained on, how training ended, and how long each stage took."""
    table = Table(title=f"run {run['id']} ({run['name']}): {run['state']}   (Δ = log pθ − log pref, last step)")
    for column in (
        "iter",
        "state",
        "pairs",
        "steps",
        "loss first→last",
        "reward acc",
        "margin",
        "Δ real",
        "Δ gen",
        "seconds gen/score/train/publish",
    ):
        table.add_column(column, justify="right")
    for it in run["iterations"]:
        if it.get("metrics") is None:
            table.add_row(str(it["index"]), it["state"], *[""] * 8)
            continue
        m = IterationMetrics.model_validate(it["metrics"])
        first, final, seconds = m.train.history[0], m.train.final, m.stage_seconds
        assert final is not None
        table.add_row(
            str(it["index"]),
            it["state"],
            str(m.train.pairs),
            str(m.train.steps),
            f"{first.loss:.3f}→{final.loss:.3f}",
            *(
                f"{v:.3f}"
                for v in (final.rewards_accuracies, final.rewards_margins, final.gain_real, final.gain_generated)
            ),
            "/".join(f"{seconds[s]:.0f}" for s in ("generate", "score", "train", "publish") if s in seconds),
        )
    return table


def run_demo(config_path: Path = DEMO_CONFIG, overrides: list[str] | None = None) -> dict[str, Any]:
    """Prepare the model and data, start Ray and the control plane, and drive the run over REST."""
    from cluster.runtime import head_running, start_head, stop_head

    console = Console(stderr=True)
    cfg = SpinConfig.from_yaml(config_path, overrides)
    prepare(cfg, console)
    ours = not head_running()
    with console.status("starting a local Ray cluster on 127.0.0.1 (head, dashboard, Jobs API)"):
        dashboard = start_head(num_cpus=cfg.ray.num_cpus, object_store_memory=cfg.ray.object_store_memory)
    console.print(f"Ray is up; its dashboard is {dashboard}")
    try:
        run = _drive(cfg, dashboard, console)
        if run["state"] in ("completed", "stopped") and cfg.eval.continued_sft_learning_rates:
            _continued_sft(cfg, console)
    finally:
        if ours:
            stop_head()
    out = Console()
    if not out.is_terminal:
        out = Console(width=150)  # logs and pipes: keep the tables whole
    out.print(iteration_table(run))
    if run.get("stop_reason"):
        out.print(f"stopped by the stopping rule: {run['stop_reason']}")
    if run["state"] not in ("completed", "stopped"):
        raise SystemExit(f"the run ended {run['state']}: {run.get('error')}")
    _report(cfg, out)
    return run


def _continued_sft(cfg: SpinConfig, console: Console) -> None:
    """The baseline SPIN must beat: as many SFT steps as SPIN took, from the same SFT model (cached)."""
    from cluster.runtime import connect
    from jobs.baseline.continued_sft import run_continued_sft
    from jobs.storage import CONTINUED_SFT, RunStorage

    storage = RunStorage(cfg.storage_uri)
    if storage.exists(storage.baseline(CONTINUED_SFT, "metrics.json")):
        return
    import ray

    with console.status("training and evaluating the continued-SFT baseline at equal compute"):
        connect("127.0.0.1:6379")
        try:
            run_continued_sft(cfg)
        finally:
            ray.shutdown()  # leave the cluster before it stops, or its shutdown floods this console


def _report(cfg: SpinConfig, out: Console) -> None:
    from jobs.report.render import rich_table, selection_lines, verdict_lines, write_report
    from jobs.report.results import load_run, report_rows
    from jobs.storage import RunStorage

    record = load_run(cfg.storage_uri)
    title = f"SPIN, SFT and continued SFT on {cfg.data.test_prompts} test problems (change vs SFT in brackets)"
    out.print(rich_table(report_rows(record), title=title))
    out.print(operation_shares(cfg))
    for line in selection_lines(record) + verdict_lines(record):
        out.print(line)
    folder = RunStorage(cfg.storage_uri).report()
    write_report(record, folder)
    out.print(f"report.json and plots (loss, margins, accuracies, task_metric) in {folder}")


def _drive(cfg: SpinConfig, dashboard: str, console: Console) -> dict[str, Any]:
    import secrets

    from services.control_plane.cli import watch_run
    from services.control_plane.client import SpinClient
    from services.control_plane.main import create_app
    from services.control_plane.server import BackgroundServer
    from services.control_plane.settings import Settings

    demo_root = Path(cfg.storage_uri).parent.parent
    token = secrets.token_urlsafe(24)
    settings = Settings(
        database_url=f"sqlite:///{demo_root}/control/state.db",
        ray_dashboard_url=dashboard,
        api_token=token,
        storage_roots=[str(demo_root)],
        data_roots=[str(demo_root)],
        poll_interval_s=1.0,
    )
    with BackgroundServer(create_app(settings)) as server:
        console.print(f"control plane on {server.url} (OpenAPI at {server.url}/docs)")
        client = SpinClient(server.url, token)
        run = next((r for r in client.list_runs()["data"] if r["storage_uri"] == cfg.storage_uri), None)
        if run is None:
            run = client.create_run(cfg)
            console.print(f"created run {run['id']} with {run['num_iterations']} iterations")
        remaining = run["num_iterations"] - sum(it["state"] == "succeeded" for it in run["iterations"])
        if remaining:
            client.launch(run["id"], remaining)
            console.print(f"launched {remaining} iteration(s), each a Ray Job; following them:")
            run = watch_run(client, run["id"], console)
        else:
            console.print(f"run {run['id']} is already complete (delete {demo_root}/runs to start over)")
    return run


def operation_shares(cfg: SpinConfig) -> str:
    """Which operations the informative (non-identical) training pairs of each iteration ask about: a skewed
    share predicts what SPIN's contrast can and cannot teach."""
    import pyarrow.parquet as pq

    from jobs.demo.arithmetic import operation
    from jobs.storage import RunStorage

    storage, lines = RunStorage(cfg.storage_uri), []
    for k in range(cfg.num_iterations):
        if not storage.is_complete(storage.pairs(k)):
            break
        rows = pq.read_table(storage.pairs(k), filesystem=storage.fs).to_pylist()
        kept = [r for r in rows if r["split"] == "train" and r["real_ids"] != r["generated_ids"]]
        counts: dict[str, int] = {}
        for r in kept:
            counts[operation(r["prompt"])] = counts.get(operation(r["prompt"]), 0) + 1
        shares = ", ".join(f"{op} {n / max(1, len(kept)):.0%}" for op, n in sorted(counts.items()))
        lines.append(
            f"iteration {k}: {len(kept)} of {sum(r['split'] == 'train' for r in rows)} pairs differ ({shares})"
        )
    return "\n".join(lines)
