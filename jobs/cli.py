"""`spin`: the command line.

spin demo                         SPIN on the embedded default (tiny model, arithmetic, local Ray), two iterations
spin sft CONFIG                   make the config's starting model: SFT until its validation split stops improving
spin run CONFIG [--iteration K]   run a config's iterations (resuming; finished ones are skipped)
spin baseline CONFIG              train and evaluate continued SFT at equal compute, after the iterations
spin report RUN                   the run's table, report.json and plots (RUN: a run id or a storage URI)
spin server                       the control plane (REST API, monitoring page)
spin runs create|list|get|launch|watch|cancel|delete   runs on a control plane
spin tiny-model OUT               write the offline tiny Llama model and tokenizer
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from jobs.config import SpinConfig
from services.control_plane.cli import runs, serve_control_plane

# Plain tracebacks: they end up in Ray Job logs and the control plane's error fields, not only on terminals.
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="SPIN self-play fine-tuning on Ray.",
)
app.add_typer(runs, name="runs")

ConfigArg = Annotated[str, typer.Argument(help="A SPIN config YAML: a local file or a pyarrow.fs URI.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a config field: section.field=value.")]


def _load_and_connect(config: str, overrides: list[str] | None) -> SpinConfig:
    """Read a config, set the project's environment for where it runs, and join (or start) Ray."""
    from cluster.files import read_text
    from cluster.runtime import apply_env

    cfg = SpinConfig.from_yaml_text(read_text(config), overrides, source=config)
    apply_env(local=not (os.environ.get("RAY_ADDRESS") or cfg.ray.address))
    from cluster.logs import setup_logging
    from cluster.runtime import connect

    setup_logging()
    connect(cfg.ray.address, num_cpus=cfg.ray.num_cpus, object_store_memory=cfg.ray.object_store_memory)
    return cfg


@app.command()
def demo(
    config: Annotated[Path | None, typer.Option(help="Demo config (default: jobs/configs/demo_cpu.yaml).")] = None,
    set_: SetOpt = None,
) -> None:
    """Run SPIN on the tiny model and arithmetic problems on a local Ray cluster, then the baseline and report."""
    from cluster.runtime import apply_env

    apply_env(local=True)
    from jobs.demo.driver import DEMO_CONFIG, run_demo

    run_demo(config or DEMO_CONFIG, set_)


@app.command()
def sft(config: ConfigArg, set_: SetOpt = None) -> None:
    """Fine-tune the config's `sft.base_model` into its `model.path` on the run's training split, until the
    validation split stops improving; the run's validation and test prompts are never trained on."""
    from cluster.files import read_text
    from cluster.logs import setup_logging
    from jobs.baseline.sft import run_sft

    setup_logging()
    cfg = SpinConfig.from_yaml_text(read_text(config), set_, source=config)
    result = run_sft(cfg, on_step=_echo_every(100))
    scores = "  ".join(f"step {step}: {score:.4f}" for step, score in result["validation"])
    typer.echo(f"SFT: {result['steps']} steps, best at step {result['best_step']}; validation {scores}")
    typer.echo(f"wrote {cfg.model.path}")


def _echo_every(n: int) -> Any:
    def show(step: int, loss: float) -> None:
        if step % n == 0:
            typer.echo(f"step {step}: loss {loss:.4f}", err=True)

    return show


@app.command()
def run(
    config: ConfigArg,
    iteration: Annotated[int | None, typer.Option(help="Run only this iteration (default: all).")] = None,
    set_: SetOpt = None,
) -> None:
    """Run (or resume) iterations of a config: locally, or on the cluster in $RAY_ADDRESS (as a Ray Job)."""
    cfg = _load_and_connect(config, set_)
    from jobs.iteration import run_iteration
    from jobs.iteration.context import generator_app_name
    from jobs.iteration.controller import serve_best
    from jobs.progress import LogSink, Progress, RichSink
    from services.generator.client import stop_serving

    # `ray job stop` sends SIGTERM: unwind normally so the generator's resources are released.
    signal.signal(signal.SIGTERM, _interrupt)
    todo = [iteration] if iteration is not None else list(range(cfg.num_iterations))
    try:
        for k in todo:
            sink = RichSink() if sys.stderr.isatty() else LogSink()
            try:
                run_iteration(cfg, k, Progress(sink))
            finally:
                if isinstance(sink, RichSink):
                    sink.close()
            if iteration is None and _stopped_by_rule(cfg, k):
                break
        # An iteration job of the control plane ends the run when it is the last one or its rule stops the run (the
        # control plane records the stop); otherwise the next job samples from the generator as it was left.
        ended = (
            iteration is None or iteration == cfg.num_iterations - 1 or _stopped_by_rule(cfg, iteration, record=False)
        )
        if ended and cfg.generator.keep_serving:
            serve_best(cfg)
    except BaseException:
        stop_serving(generator_app_name(cfg))  # failed, stopped or interrupted: release its CPUs or GPUs
        raise
    if ended and not cfg.generator.keep_serving:
        stop_serving(generator_app_name(cfg))


def _stopped_by_rule(cfg: SpinConfig, k: int, record: bool = True) -> bool:
    """Whether the stopping rule ends the run after iteration k; headless runs `record` the stop (the control plane
    records its runs')."""
    from jobs.report.results import load_run
    from jobs.report.stopping import record_stop, stop_decision
    from jobs.storage import RunStorage

    decision = stop_decision(cfg.stopping, load_run(cfg.storage_uri).iterations)
    if decision.stop and decision.reason and record:
        record_stop(RunStorage(cfg.storage_uri), k, decision.reason)
        logging.getLogger("spin").info("run stopped by its stopping rule", extra={"reason": decision.reason})
    return decision.stop


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@app.command()
def release(config: ConfigArg) -> None:
    """Delete the run's generator (its Serve application and vLLM engine), freeing its CPUs or GPUs."""
    cfg = _load_and_connect(config, None)
    from jobs.iteration.context import generator_app_name
    from services.generator.client import stop_serving

    stop_serving(generator_app_name(cfg))
    typer.echo(f"released {generator_app_name(cfg)}")


@app.command()
def server(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    local_ray: Annotated[bool, typer.Option(help="Start a local Ray head on 127.0.0.1 if none answers.")] = True,
    num_cpus: Annotated[float | None, typer.Option(help="Logical CPUs of a local Ray head.")] = 4,
) -> None:
    """Run the control plane (REST API at /, OpenAPI at /docs)."""
    serve_control_plane(host, port, local_ray, num_cpus)


@app.command()
def baseline(config: ConfigArg, set_: SetOpt = None) -> None:
    """Train and evaluate the continued-SFT-at-equal-compute baseline of a run whose iterations are done."""
    cfg = _load_and_connect(config, set_)
    from jobs.baseline.continued_sft import run_continued_sft

    metrics = run_continued_sft(cfg)
    test = metrics.test.task_metric if metrics.test else None
    lr, steps = metrics.train.learning_rate, metrics.train.steps
    typer.echo(f"continued SFT (lr {lr:g}, chosen on validation): test task metric {test}, {steps} steps")


@app.command()
def report(
    run: Annotated[str, typer.Argument(help="A run's id or name (asked of the control plane), or its storage URI.")],
    out: Annotated[Path | None, typer.Option(help="Folder for report.json and the plots.")] = None,
) -> None:
    """Print the run's table (each model against the SFT model) and write report.json and PNG plots."""
    from rich.console import Console

    from jobs.report.render import rich_table, selection_lines, verdict_lines, write_report
    from jobs.report.results import load_run, report_rows
    from jobs.storage import RunStorage

    storage_uri = run
    if "/" not in run:
        from services.control_plane.client import SpinClient

        storage_uri = SpinClient().find_run(run)["storage_uri"]
    record = load_run(storage_uri)
    if not record.iterations:
        raise typer.BadParameter(f"no finished iteration in {storage_uri}", param_hint="RUN")
    console = Console()
    console.print(rich_table(report_rows(record), title=f"SPIN report: {storage_uri}"))
    if record.stopped:
        console.print(f"stopped after iteration {record.stopped.after_iteration}: {record.stopped.reason}")
    for line in selection_lines(record) + verdict_lines(record):
        console.print(line)
    storage = RunStorage(storage_uri)
    for path in write_report(record, out or (storage.report() if storage.uri == storage.root else "spin-report")):
        console.print(f"wrote {path}")


@app.command("tiny-model")
def tiny_model(out: Annotated[Path, typer.Argument(help="Folder to write the model into.")]) -> None:
    """Write the offline tiny Llama model, tokenizer and chat template."""
    from jobs.demo.tiny_model import build_tiny_model

    typer.echo(build_tiny_model(out))


def _final_errors() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from jobs.sft_rows import BadRowsError, UnreadableFile
    from jobs.storage import FolderInUse

    return (BadRowsError, UnreadableFile, ValidationError, FolderInUse, ValueError)


def main() -> None:
    """The command line. An error is one clear line for a person (the traceback too when not on a terminal, as in
    a Ray Job's log, or with SPIN_VERBOSE=1)."""
    import traceback

    from jobs.progress import FINAL_ERROR_MARK
    from services.control_plane.client import SpinAPIError

    final_errors = _final_errors()
    shown: tuple[type[BaseException], ...] = (SpinAPIError, FileNotFoundError, *final_errors)
    try:
        app()
    except shown as e:
        if not sys.stderr.isatty() or os.environ.get("SPIN_VERBOSE", "0") not in ("", "0"):
            traceback.print_exc()
        final = isinstance(e, final_errors)
        if final:  # the control plane does not resubmit such a job
            print(f"{FINAL_ERROR_MARK}: retrying cannot help", file=sys.stderr)
        message = e.detail if isinstance(e, SpinAPIError) else f"{type(e).__name__}: {e}"
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(3 if final else 1) from None
