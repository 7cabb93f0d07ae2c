"""Two models compared prompt by prompt on one split: difference, 95% paired bootstrap interval, the exact
McNemar p for exact match, and a verdict (jobs/spin/stats.py has the math)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from jobs.spin.stats import Verdict, mcnemar_exact, paired_bootstrap, verdict

# metric → (column of the per-prompt results, whether higher is better, how a value is shown)
METRICS = {
    "exact match": ("correct", True),
    "real NLL": ("nll", False),
}


@dataclass(frozen=True)
class Comparison:
    model: str
    baseline: str
    metric: str
    split: str
    prompts: int
    value: float
    baseline_value: float
    difference: float  # model − baseline
    low: float  # the 95% paired bootstrap interval of the difference
    high: float
    p_value: float | None  # exact McNemar, for exact match
    verdict: Verdict

    def line(self) -> str:
        """One line a person reads: 'SPIN iteration 0 vs SFT, exact match on 2000 test prompts: ...'."""
        scale, unit = (100.0, " points") if self.metric == "exact match" else (1.0, "")
        p = f", McNemar p {self.p_value:.2g}" if self.p_value is not None else ""
        return (
            f"{self.model} vs {self.baseline}, {self.metric} on {self.prompts} {self.split} prompts: "
            f"{self.value:.4f} vs {self.baseline_value:.4f}, {scale * self.difference:+.2f}{unit} "
            f"[{scale * self.low:+.2f}, {scale * self.high:+.2f}]{p}: {self.verdict}"
        )

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def compare(model: str, results: pa.Table, baseline: str, baseline_results: pa.Table, split: str) -> list[Comparison]:
    """Every metric both tables have on `split`, over the prompts both answered (joined by prompt id)."""
    a = results.filter(pc.equal(results.column("split"), split))
    b = baseline_results.filter(pc.equal(baseline_results.column("split"), split))
    joined = a.join(b, "prompt_id", join_type="inner", left_suffix="", right_suffix="_baseline")
    out = []
    for metric, (column, higher_is_better) in METRICS.items():
        both = joined.filter(
            pc.and_(pc.is_valid(joined.column(column)), pc.is_valid(joined.column(f"{column}_baseline")))
        )
        if both.num_rows == 0:
            continue
        ours, theirs = both.column(column).to_pylist(), both.column(f"{column}_baseline").to_pylist()
        interval = paired_bootstrap([float(x) for x in ours], [float(x) for x in theirs])
        out.append(
            Comparison(
                model=model,
                baseline=baseline,
                metric=metric,
                split=split,
                prompts=both.num_rows,
                value=sum(map(float, ours)) / both.num_rows,
                baseline_value=sum(map(float, theirs)) / both.num_rows,
                difference=interval.difference,
                low=interval.low,
                high=interval.high,
                p_value=mcnemar_exact(ours, theirs) if column == "correct" else None,
                verdict=verdict(interval, higher_is_better),
            )
        )
    return out
