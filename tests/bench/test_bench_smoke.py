"""The benchmark harness at tiny sizes: every bench runs and writes a well-formed result. No timing is asserted;
timings live in tests/bench/README.md, measured by `make bench`."""

import json
import math
import subprocess
import sys

import pytest

from tests.bench.common import ROOT

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.bench.run", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SPIN benchmarks" in proc.stdout
    return json.loads(out.read_text())


def test_every_bench_reports_every_case(report):
    results = report["results"]
    assert set(results["generation"]) == {
        *("hf_generate", "bare_vllm", "serve_handle", "ray_data", "sample_logps_parity"),
        *("bare_vllm_many", "ray_data_many"),
    }
    assert set(results["training"]) == {
        "spin_update",
        "spin_update_full_logits",
        "spin_update_checkpointed",
        "spin_update_fsdp2",
        "trl_dpo",
        "same_loss",
        "score_forward",
        "score_sample_logps",
    }
    assert set(results["e2e"]) == {"8"}
    assert report["machine"]["cpus"] and report["size"]["model"] == "tiny"


def test_generation_counts_the_same_work_in_every_engine(report):
    size = report["size"]
    for name in ("hf_generate", "bare_vllm", "serve_handle", "ray_data"):
        r = report["results"]["generation"][name]
        assert 0 < r["tokens"] <= size["prompts"] * size["max_new_tokens"], name
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["seconds"]), name
    for name in ("ray_data", "ray_data_many"):
        assert 0 < report["results"]["generation"][name]["pool_startup_s"], name
    generation = report["results"]["generation"]
    assert generation["ray_data_many"]["prompts"] == generation["bare_vllm_many"]["prompts"] == size["prompts"] * 16


def test_the_generators_sample_log_probs_match_the_trainers(report):
    parity = report["results"]["generation"]["sample_logps_parity"]
    assert parity["answers"] == report["size"]["prompts"] and parity["tokens"] > 0
    assert parity["max_abs_diff"] < 0.01 < parity["mean_abs_logp"]


def test_both_trainers_compute_the_same_loss_on_the_same_tokens(report):
    training = report["results"]["training"]
    check = training["same_loss"]
    assert check["same_tokens"] and check["abs_diff"] < 1e-4
    assert check["spin_loss"] != pytest.approx(math.log(2), abs=1e-6)  # the reference differs from the policy
    assert training["spin_update"]["tokens"] == training["trl_dpo"]["tokens"]
    assert training["spin_update"]["losses"][0] == pytest.approx(math.log(2), abs=1e-5)
    assert training["trl_dpo"]["losses"][0] == pytest.approx(math.log(2), abs=1e-5)
    assert 0 < training["spin_update"]["mfu"] < 1
    # The memory variants and the 2-rank FSDP2 update do the same work on the same batches.
    for variant in ("spin_update_full_logits", "spin_update_checkpointed", "spin_update_fsdp2"):
        assert training[variant]["tokens"] == training["spin_update"]["tokens"], variant
    for variant in ("spin_update_full_logits", "spin_update_checkpointed"):
        assert training[variant]["losses"] == pytest.approx(training["spin_update"]["losses"], abs=1e-5), variant
    assert len(training["spin_update_fsdp2"]["rank_peak_memory_mb"]) == 2
    assert (
        training["score_forward"]["pairs"] == training["score_sample_logps"]["pairs"] == report["size"]["train_pairs"]
    )


def test_end_to_end_runs_each_size_and_its_bare_stages(report):
    for n, r in report["results"]["e2e"].items():
        assert r["iteration"]["prompts"] == r["iteration"]["pairs"] == int(n)
        assert r["iteration"]["wall_s"] > 0 and r["iteration"]["peak_memory_mb"] > 0
        assert {"generate", "score", "train", "publish"} <= set(r["iteration"]["stage_seconds"])
        parts = set(r["iteration"]["stage_parts"])
        assert {"generate/serve", "generate/first_records", "train/load", "train/workers_ready_at"} <= parts
        assert r["bare_generation"]["tokens"] > 0 and r["bare_training"]["tokens"] > 0
        # The next iteration, on the generator the first one published into, does the same work on its own pairs.
        following = r["iteration"]["next"]
        assert following["pairs"] == int(n) and following["wall_s"] > 0
        assert {"generate", "score", "train", "publish"} <= set(following["stage_seconds"])
        assert {"generate/serve", "train/load"} <= set(following["stage_parts"])


def test_rows_are_finite_and_ratios_name_their_peer(report):
    assert report["rows"]
    for row in report["rows"]:
        assert math.isfinite(row["value"]) and row["value"] >= 0, row
        if row["ratio"] is not None:
            assert row["peer"] and math.isfinite(row["ratio"]) and row["ratio"] > 0, row
