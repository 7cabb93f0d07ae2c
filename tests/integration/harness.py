"""lm-evaluation-harness run as its users run it: a task YAML over a JSONL of problems, `lm_eval run` with
`local-chat-completions` against an OpenAI base URL on 127.0.0.1, the score read back from its results file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from jobs.demo.arithmetic import Problem

TASK = "spin_arithmetic"


def write_task(folder: Path, problems: list[Problem], answer_pattern: str, max_new_tokens: int) -> Path:
    """A generate-until task over `problems`: the model answers the question in a chat turn, greedily, and the
    first capture of `answer_pattern` in its answer must equal the problem's answer (the project's task metric)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "problems.jsonl"
    data.write_text("".join(json.dumps({"question": p.question, "answer": str(p.answer)}) + "\n" for p in problems))
    task = {
        "task": TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{question}}",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": [], "max_gen_toks": max_new_tokens, "do_sample": False, "temperature": 0.0},
        "filter_list": [
            {
                "name": "answer",
                "filter": [
                    {"function": "regex", "regex_pattern": answer_pattern, "group_select": 0},
                    {"function": "take_first"},
                ],
            }
        ],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }
    (folder / f"{TASK}.yaml").write_text(yaml.safe_dump(task))
    return folder


def run_harness(task_folder: Path, base_url: str, model: str, api_key: str, out: Path, timeout_s: float) -> float:
    """`lm_eval run` on the task; returns its exact-match score."""
    model_args = f"model={model},base_url={base_url}/chat/completions,num_concurrent=1,max_retries=1"
    command = [
        *(sys.executable, "-m", "lm_eval", "run", "--model", "local-chat-completions"),
        *("--model_args", model_args, "--tasks", TASK, "--include_path", str(task_folder)),
        *("--apply_chat_template", "--output_path", str(out), "--log_samples"),
    ]
    env = os.environ | {"OPENAI_API_KEY": api_key, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stderr[-4000:]
    (results,) = out.rglob("results_*.json")
    return float(json.loads(results.read_text())["results"][TASK]["exact_match,answer"])
