"""Run metrics for Prometheus and the Ray dashboard, through `ray.util.metrics`: gauges for what the run is doing
now (stage, last step's loss and margins), counters for what it has done (tokens, pairs), a histogram of the
seconds each weight publish took.

Exported by each node's metrics agent with Ray's `ray_` prefix (ray_spin_train_loss, ...), tagged with the
run and the iteration; k8s/base/spin-dashboard.json charts them. This is the one place where SPIN's metric
names (jobs/spin/names.py) are renamed, because Prometheus needs snake_case.
"""

from __future__ import annotations

import threading
from typing import Any, get_args

from jobs.metrics import StageName

# Descriptions stay ASCII: Ray encodes them as ASCII in the metrics agent.
TRAIN_GAUGES = {
    "loss": ("spin_train_loss", "SPIN loss of the last optimizer step, mean over all ranks"),
    "margin": ("spin_train_margin", "(log p_theta - log p_ref)(real) - (same)(generated), last step"),
    "rewards/margins": ("spin_train_reward_margin", "beta * margin, last step"),
    "rewards/accuracies": (
        "spin_train_reward_accuracy",
        "share of pairs whose real reward beats the generated one, last step",
    ),
    "gain/real": ("spin_train_gain_real", "log p_theta - log p_ref of the real responses, last step"),
    "gain/generated": ("spin_train_gain_generated", "log p_theta - log p_ref of the generated responses, last step"),
    "tokens_per_s": ("spin_train_tokens_per_second", "training tokens per second, all ranks"),
}
STAGES: tuple[str, ...] = get_args(StageName)
OTHER_GAUGES = {
    "spin_iteration": "Iteration a run is in",
    "spin_stage": "1 for the stage the iteration is in, else 0",
    "spin_stage_completed": "Units of the current stage done",
    "spin_stage_total": "Units of the current stage in all",
    "spin_pairs_done": "Pairs generated in this iteration",
    "spin_generation_tokens_per_second": "Generated tokens per second",
}
# Counts only grow: Prometheus counters, which Ray exports with `_total` appended (ray_spin_generated_tokens_total).
COUNTERS = {
    "spin_generated_tokens": "Tokens the generator sampled for the run's pairs",
    "spin_pairs_generated": "Prompts answered by the generator (training and validation pairs)",
    "spin_train_tokens": "Tokens the SPIN update trained on, all ranks",
}
PUBLISH_SECONDS = "spin_weight_publish_seconds"
# Moving the generator to new weights: seconds on a small model on CPU, minutes for a 7B model from remote storage.
PUBLISH_BUCKETS = [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600]
EXPORTED = (
    {f"ray_{name}" for name in OTHER_GAUGES}
    | {f"ray_{name}" for name, _ in TRAIN_GAUGES.values()}
    | {f"ray_{name}_total" for name in COUNTERS}
    | {f"ray_{PUBLISH_SECONDS}_{part}" for part in ("bucket", "count", "sum")}
)


_LATEST: dict[str, MetricsSink] = {}  # run → the sink of its latest iteration in this process


class MetricsSink:
    """A progress sink that mirrors stage progress and training metrics into Ray metrics.

    Ray's OpenTelemetry export drops a gauge series that is not recorded again within about 20 s, so a slow
    stage (evaluation, a long optimizer step) would blank the dashboard. The sink re-records its last values
    every `refresh_s` from a daemon thread, after its iteration too, so the endpoint keeps serving an ended
    iteration's final values, until the process exits or the run's next iteration takes over.
    """

    def __init__(self, run: str, iteration: int, refresh_s: float = 5.0):
        from ray.util.metrics import Counter, Gauge, Histogram

        tags = {"run": run, "iteration": str(iteration)}
        keys = ("run", "iteration")

        def gauge(name: str, description: str, extra: tuple[str, ...] = ()) -> Any:
            g = Gauge(name, description=description, tag_keys=keys + extra)
            g.set_default_tags(tags)
            return g

        g = OTHER_GAUGES
        self._values: dict[tuple[int, tuple[tuple[str, str], ...]], tuple[Any, float, dict[str, str] | None]] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.stage = gauge("spin_stage", g["spin_stage"], ("stage",))
        self.completed = gauge("spin_stage_completed", g["spin_stage_completed"], ("stage",))
        self.total = gauge("spin_stage_total", g["spin_stage_total"], ("stage",))
        self.pairs = gauge("spin_pairs_done", g["spin_pairs_done"])
        self.generation_tps = gauge("spin_generation_tokens_per_second", g["spin_generation_tokens_per_second"])
        self.train = {key: gauge(name, text) for key, (name, text) in TRAIN_GAUGES.items()}
        self.counters = {name: Counter(name, description=text, tag_keys=keys) for name, text in COUNTERS.items()}
        for counter in self.counters.values():
            counter.set_default_tags(tags)
        self.publish_seconds = Histogram(
            PUBLISH_SECONDS,
            description="Seconds the generator took to move to an iteration's published weights",
            boundaries=PUBLISH_BUCKETS,
            tag_keys=keys,
        )
        self.publish_seconds.set_default_tags(tags)
        self._counted: dict[str, float] = {}  # what each count stood at when last exported
        iteration_gauge = Gauge("spin_iteration", description=g["spin_iteration"], tag_keys=("run",))
        self._set(iteration_gauge, iteration, {"run": run})
        previous = _LATEST.get(run)
        if previous is not None:
            previous.close()
        _LATEST[run] = self
        threading.Thread(target=self._refresh, args=(refresh_s,), name="spin-metrics", daemon=True).start()

    def _set(self, gauge: Any, value: float, tags: dict[str, str] | None = None) -> None:
        with self._lock:
            gauge.set(value, tags=tags)
            self._values[(id(gauge), tuple(sorted((tags or {}).items())))] = (gauge, value, tags)

    def _refresh(self, every_s: float) -> None:
        while not self._closed.wait(every_s):
            with self._lock:
                for gauge, value, tags in self._values.values():
                    gauge.set(value, tags=tags)

    def close(self) -> None:
        """Stop re-recording: the series fade from the export about 20 s later."""
        self._closed.set()

    def start(self, stage: str, total: int | None) -> None:
        for name in STAGES:
            self._set(self.stage, 1.0 if name == stage else 0.0, {"stage": name})

    def _count(self, name: str, running_total: float) -> None:
        """Add to counter `name` what the stage's running total gained since it was last seen."""
        gained = running_total - self._counted.get(name, 0.0)
        if gained > 0:
            self.counters[name].inc(gained)
        self._counted[name] = max(running_total, self._counted.get(name, 0.0))

    def update(self, stage: str, completed: int, total: int | None, info: dict[str, Any]) -> None:
        self._set(self.completed, completed, {"stage": stage})
        if total is not None:
            self._set(self.total, total, {"stage": stage})
        if stage == "generate":
            self._set(self.pairs, completed)
            self._count("spin_pairs_generated", completed)
            if "sampled_tokens" in info:
                self._count("spin_generated_tokens", info["sampled_tokens"])
            if "tokens_per_s" in info:
                self._set(self.generation_tps, info["tokens_per_s"])
        if stage == "train":
            if info.get("tokens"):
                self.counters["spin_train_tokens"].inc(info["tokens"])  # one step's tokens
            for key, value in info.items():
                if key in self.train and value is not None:
                    self._set(self.train[key], float(value))
        if stage == "publish" and "seconds" in info:
            self.publish_seconds.observe(info["seconds"])

    def end(self, stage: str, seconds: float | None, error: str | None) -> None:
        self._set(self.stage, 0.0, {"stage": stage})
