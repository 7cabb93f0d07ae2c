"""PNG plots of a run (matplotlib, no display): what `spin report` writes and the monitoring page shows."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jobs.report.results import CONTINUED_SFT_ROW, RunRecord, report_rows  # noqa: E402


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _per_step(record: RunRecord, key: str, ax: Any) -> None:
    """Plot a training metric (a name of jobs/spin/names.py) over the run's steps, one colour per iteration."""
    offset = 0
    for m in record.iterations:
        history = [h.model_dump() for h in m.train.history]
        ax.plot([offset + h["step"] for h in history], [h[key] for h in history], label=f"iteration {m.iteration}")
        offset += len(history)


def _per_model(record: RunRecord, key: str, ax: Any) -> None:
    """Held-out values of each model: the SFT model, then each iteration's."""
    rows = [r for r in report_rows(record) if r.get(key) is not None]
    spin = [r for r in rows if r["model"] != CONTINUED_SFT_ROW]
    ax.plot(range(len(spin)), [r[key] for r in spin], marker="o", label="SFT, then SPIN iterations")
    ax.set_xticks(range(len(spin)), [r["model"].replace("SPIN iteration ", "it ") for r in spin])
    for r in rows:
        if r["model"] == CONTINUED_SFT_ROW:
            ax.axhline(r[key], linestyle="--", color="grey", label=CONTINUED_SFT_ROW)


def loss(record: RunRecord) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    _per_step(record, "loss", ax)
    ax.set(title="SPIN loss (training, all ranks)", xlabel="optimizer step", ylabel="loss")
    ax.axhline(0.6931, linestyle=":", color="grey", linewidth=1)
    ax.legend(fontsize=7)
    return _png(fig)


def margins(record: RunRecord) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    _per_step(record, "rewards/margins", ax)
    ax.set(title="reward margin β·[(log pθ−log pref)(real) − (…)(generated)]", xlabel="optimizer step", ylabel="margin")
    ax.legend(fontsize=7)
    return _png(fig)


def accuracies(record: RunRecord) -> bytes:
    fig, (train_ax, held_ax) = plt.subplots(1, 2, figsize=(8, 3.5))
    _per_step(record, "rewards/accuracies", train_ax)
    train_ax.set(title="reward accuracy (training)", xlabel="optimizer step", ylim=(-0.05, 1.05))
    train_ax.legend(fontsize=7)
    _per_model(record, "reward_accuracy", held_ax)
    held_ax.axhline(0.5, linestyle=":", color="grey", linewidth=1)
    held_ax.set(title="validation reward accuracy", ylim=(-0.05, 1.05))
    return _png(fig)


def task_metric(record: RunRecord) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    _per_model(record, "task_metric", ax)
    ax.set(title="test task metric (greedy answers)", ylabel="exact match")
    ax.legend(fontsize=7)
    return _png(fig)


PLOTS: dict[str, Callable[[RunRecord], bytes]] = {
    "loss": loss,
    "margins": margins,
    "accuracies": accuracies,
    "task_metric": task_metric,
}
