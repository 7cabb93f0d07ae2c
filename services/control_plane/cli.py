"""`spin server` and `spin runs ...`: the control plane and its command-line client."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from jobs.metrics import IterationMetrics
from jobs.progress import shown_info
from services.control_plane.client import SpinClient, token_file

runs = typer.Typer(no_args_is_help=True, help="Create, launch, watch and cancel runs on a control plane.")
console = Console()

RunId = Annotated[str, typer.Argument(help="A run's id or its name.")]


def _client() -> SpinClient:
    return SpinClient()


def _run(client: SpinClient, ref: str) -> dict[str, Any]:
    return client.find_run(ref)


def serve_control_plane(host: str, port: int, local_ray: bool, num_cpus: float | None) -> None:
    """Run the control plane; with `local_ray`, start (or reuse) a local Ray head on 127.0.0.1 first."""
    import os

    from cluster.runtime import apply_env, start_head

    apply_env(local=local_ray)
    if local_ray:
        os.environ.setdefault("SPIN_RAY_DASHBOARD_URL", start_head(num_cpus=num_cpus))
    if not os.environ.get("SPIN_API_TOKEN"):
        path = token_file()
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(32))
        os.environ["SPIN_API_TOKEN"] = path.read_text().strip()
        console.print(f"API token in {path} (the CLI and client read it from there, from any folder)")
    import uvicorn

    from cluster.logs import setup_logging
    from services.control_plane.main import create_app

    setup_logging()
    uvicorn.run(create_app(), host=host, port=port, log_level="warning")


def run_table(items: list[dict[str, Any]]) -> Table:
    table = Table()
    for column in ("id", "name", "state", "iterations", "created"):
        table.add_column(column)
    for run in items:
        done = sum(it["state"] == "succeeded" for it in run["iterations"])
        table.add_row(run["id"], run["name"], run["state"], f"{done}/{run['num_iterations']}", run["created_at"][:19])
    return table


def iteration_table(run: dict[str, Any]) -> Table:
    table = Table(title=f"run {run['id']} ({run['name']}): {run['state']}")
    for column in ("iteration", "state", "stage", "progress", "loss", "reward acc", "attempts"):
        table.add_column(column)
    for it in run["iterations"]:
        p = it.get("progress") or {}
        progress = f"{p.get('completed')}/{p.get('total')}" if p.get("total") else ""
        final = IterationMetrics.model_validate(it["metrics"]).train.final if it.get("metrics") else None
        table.add_row(
            str(it["index"]),
            it["state"],
            it.get("stage") or "",
            progress,
            f"{final.loss:.4f}" if final else "",
            f"{final.rewards_accuracies:.3f}" if final else "",
            str(it["attempts"]),
        )
    return table


@runs.command("create")
def create(
    config: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="SPIN config YAML.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="section.field=value")] = None,
) -> None:
    """Create a run from a config file (validated here and by the server)."""
    from jobs.config import SpinConfig

    run = _client().create_run(SpinConfig.from_yaml(config, set_))
    console.print(f"created run [bold]{run['id']}[/bold] ({run['num_iterations']} iterations)")


@runs.command("list")
def list_() -> None:
    console.print(run_table(_client().list_runs()["data"]))


@runs.command("get")
def get(run_id: RunId, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    run = _run(_client(), run_id)
    console.print_json(json.dumps(run)) if as_json else console.print(iteration_table(run))


@runs.command("launch")
def launch(run_id: RunId, iterations: Annotated[int, typer.Option("-n", help="How many iterations.")] = 1) -> None:
    """Queue the next N iterations."""
    client = _client()
    run = client.launch(_run(client, run_id)["id"], iterations)
    console.print(iteration_table(run))


def watch_run(client: SpinClient, run_id: str, out: Console | None = None) -> dict[str, Any]:
    """Follow a run until nothing is queued or running, with a progress bar per iteration stage."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=out or console,
    ) as bars:
        tasks: dict[tuple[int, str], Any] = {}

        def show(run: dict[str, Any]) -> None:
            for it in run["iterations"]:
                p, stage = it.get("progress") or {}, it.get("stage")
                if it["state"] == "succeeded" or (stage and it["state"] == "running"):
                    # Stages before the current one (or all, once it succeeded) are complete.
                    for (index, name), task in tasks.items():
                        if index == it["index"] and (name != stage or it["state"] == "succeeded"):
                            bars.update(task, completed=bars.tasks[task].total or 1, total=bars.tasks[task].total or 1)
                if stage and it["state"] == "running":
                    key = (it["index"], stage)
                    if key not in tasks:
                        tasks[key] = bars.add_task(f"iteration {it['index']} {stage:<8}", total=p.get("total"), info="")
                    info = shown_info(p.get("info") or {})
                    bars.update(tasks[key], completed=p.get("completed") or 0, total=p.get("total"), info=info)

        return client.wait(run_id, on_update=show, timeout_s=7 * 24 * 3600)


@runs.command("watch")
def watch(run_id: RunId) -> None:
    """Follow a run until nothing is queued or running, with a progress bar for the current stage."""
    client = _client()
    run = watch_run(client, _run(client, run_id)["id"])
    console.print(iteration_table(run))
    if run["state"] == "failed":
        console.print(f"[red]{run['error']}[/red]")
        raise typer.Exit(1)


@runs.command("cancel")
def cancel(run_id: RunId) -> None:
    client = _client()
    console.print(iteration_table(client.cancel(_run(client, run_id)["id"])))


@runs.command("delete")
def delete(run_id: RunId) -> None:
    """Forget a run (its storage is kept)."""
    client = _client()
    run = _run(client, run_id)
    client.delete(run["id"])
    console.print(f"deleted run {run['id']} ({run['name']}); its storage stays at {run['storage_uri']}")
