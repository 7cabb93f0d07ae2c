"""One SPIN iteration end to end on real parts: local Ray, Ray Data, a Serve deployment running vLLM on the
CPU, Ray Train with two FSDP2 workers, and the checkpoint loaded back by transformers and by vLLM."""

import math
import os
import time
from collections import defaultdict

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jobs.chat import encode_prompt, pad_id
from jobs.hf import load_causal_lm, load_tokenizer
from jobs.iteration.context import generator_app_name
from jobs.iteration.train_step import policy_logps
from jobs.report.results import load_run
from jobs.sft_rows import BadRowsError
from jobs.spin.collate import collate_pairs
from jobs.spin.schedule import StepPlan
from jobs.storage import RunStorage
from services.generator.client import generator_handle, generator_info
from services.generator.schemas import GenerateRequest
from tests.integration.conftest import TEST, TRAIN, UNIQUE, VALIDATION, PrometheusScraper, tiny_config

pytestmark = [pytest.mark.ray, pytest.mark.vllm]


def read_pairs(cfg, split="train"):
    storage = RunStorage(cfg.storage_uri)
    return [p for p in pq.read_table(storage.pairs(0)).to_pylist() if p["split"] == split]


def eval_prompts(cfg, split):
    storage = RunStorage(cfg.storage_uri)
    return [p for p in storage.read_table(storage.eval_prompts()).to_pylist() if p["split"] == split]


def test_one_pair_per_unique_prompt_and_the_evaluation_prompts_recorded_once(iteration):
    cfg, metrics, problems = iteration
    pairs, validation = read_pairs(cfg), read_pairs(cfg, "validation")
    assert len(pairs) == TRAIN and len(validation) == VALIDATION
    test = eval_prompts(cfg, "test")
    assert {p["prompt_id"] for p in eval_prompts(cfg, "validation")} == {p["prompt_id"] for p in validation}
    assert sorted(p["prompt_id"] for p in pairs + validation + test) == sorted(p.prompt_id for p in problems)
    gen = metrics.generate
    assert (gen.prompts, gen.unique_prompts, gen.duplicate_rows, gen.bad_rows) == (TRAIN, UNIQUE, 6, 3)
    assert (gen.validation_prompts, gen.test_prompts, gen.rows) == (VALIDATION, TEST, TRAIN + VALIDATION)
    assert "a.jsonl line 37: 'response' is missing" in gen.bad_row_examples[0]
    assert gen.generated_tokens == gen.sampled_tokens == sum(p["generated_tokens"] for p in pairs + validation)
    assert gen.identical_pairs == sum(p["real_ids"] == p["generated_ids"] for p in pairs) and gen.tokens_per_s > 0


def test_validation_and_test_prompts_are_never_trained_on(iteration):
    cfg, metrics, _ = iteration
    held = {p["prompt_id"] for p in eval_prompts(cfg, "validation") + eval_prompts(cfg, "test")}
    assert len(held) == VALIDATION + TEST and not held & {p["prompt_id"] for p in read_pairs(cfg)}
    assert metrics.train.pairs == TRAIN  # only the training split reached the trainer


def test_pairs_use_one_chat_template_and_the_generators_tokens(iteration, sft_model_dir):
    cfg, _, problems = iteration
    tok = load_tokenizer(sft_model_dir)
    by_id = {p.prompt_id: p for p in problems}
    for pair in read_pairs(cfg):
        problem = by_id[pair["prompt_id"]]
        assert pair["prompt_ids"] == encode_prompt(tok, [{"role": "user", "content": problem.question}])
        assert pair["prompt"] == tok.decode(pair["prompt_ids"]) and pair["real"] == problem.solution
        assert pair["model_version"] == 0 and pair["finish_reason"] in ("stop", "length")
        if pair["finish_reason"] == "stop":
            assert pair["generated_ids"][-1] == tok.eos_token_id
            # The text is vLLM's detokenization, which leaves special tokens out; training reads the ids.
            assert tok.decode(pair["generated_ids"][:-1], skip_special_tokens=True) == pair["generated"]
        assert pair["generated_tokens"] == len(pair["generated_ids"]) <= 24 + 1
        assert math.isfinite(pair["ref_logp_real"]) and pair["ref_logp_real"] < 0


def test_first_step_starts_at_the_reference_and_the_loss_falls(iteration):
    cfg, metrics, _ = iteration
    history = metrics.train.history
    plan = StepPlan(TRAIN, 2, 4, cfg.train.accumulation_steps, 4)
    assert len(history) == plan.total_steps == 20
    first = history[0]
    assert abs(first.margin) < 1e-3
    assert first.loss == pytest.approx(math.log(2), abs=1e-4)
    # The policy is the reference: rewards are float rounding (the score stage and the trainer batch the pairs
    # differently, and a matmul's rounding can depend on its shape), so rewards/accuracies at step 0 counts noise.
    assert abs(first.rewards_real) < 1e-5 and abs(first.rewards_generated) < 1e-5
    # Per step the loss is noisy (each step sees other pairs); over epochs of the same pairs it must fall.
    epoch_mean = [sum(h.loss for h in history if h.epoch == e) / 5 for e in range(4)]
    assert epoch_mean[-1] < epoch_mean[0] - 0.15, [round(h.loss, 4) for h in history]
    last_epoch = [h for h in history if h.epoch == 3]
    assert sum(h.rewards_accuracies for h in last_epoch) / 5 > 0.6
    assert set(metrics.stage_seconds) == {"generate", "score", "baseline", "train", "publish", "evaluate"}
    parts = metrics.stage_parts
    assert {
        *("generate/serve", "generate/first_records", "generate/commit", "score/first_records", "score/commit"),
        *("baseline/serve", "train/load", "train/checkpoints", "train/evaluations"),
        *("train/datasets_at", "train/workers_ready_at", "train/first_step_at"),
    } <= set(parts)
    for name, seconds in parts.items():
        assert 0 <= seconds <= metrics.stage_seconds[name.split("/")[0]], (name, parts, metrics.stage_seconds)
    assert parts["train/datasets_at"] < parts["train/workers_ready_at"] < parts["train/first_step_at"]
    assert parts["train/load"] < parts["train/workers_ready_at"]


def test_checkpoint_loads_in_transformers_and_vllm_with_the_same_greedy_tokens(iteration):
    import torch

    from cluster.runtime import vllm_env

    cfg, metrics, problems = iteration
    model_dir = metrics.model_out
    assert RunStorage(cfg.storage_uri).is_complete(model_dir)
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"} <= set(os.listdir(model_dir))
    tok = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir).eval()
    prompts = [encode_prompt(tok, [{"role": "user", "content": p.question}]) for p in problems[:8]]
    hf = []
    with torch.no_grad():
        for ids in prompts:
            out = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=16,
                do_sample=False,
                pad_token_id=pad_id(tok),
            )
            hf.append(out[0, len(ids) :].tolist())

    os.environ.update(vllm_env(use_gpu=False))
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(
        model=model_dir,
        dtype="float32",
        max_model_len=128,
        enforce_eager=True,
        seed=0,
        kv_cache_memory_bytes=64 * 2**20,
    )
    outs = llm.generate(
        [TokensPrompt(prompt_token_ids=p) for p in prompts],
        SamplingParams(temperature=0.0, max_tokens=16),
        use_tqdm=False,
    )
    vl = [list(o.outputs[0].token_ids) for o in outs]
    del llm
    # transformers keeps the EOS it stopped on and so does vLLM; both stop at the first EOS.
    assert vl == [h[: len(v)] for h, v in zip(hf, vl, strict=True)] and all(len(v) for v in vl)
    assert len({tuple(v) for v in vl}) > 1, "greedy outputs are all identical: the check would be vacuous"

    # The publish stage moved the running generator to this checkpoint: same replica, same engine,
    # and the same greedy tokens as the fresh engine above.
    app = generator_app_name(cfg)
    info = generator_info(app)
    assert (info.model_version, info.model_path) == (1, model_dir)
    # The engine's own weight label moved with it, and the OpenAI model ids name the iteration that made it (and
    # `:best` when its validation scores beat the SFT model's: the higher task metric, ties to the lower NLL).
    sft, spin = (m.evaluation.validation for m in load_run(cfg.storage_uri).models[:2])
    spin_best = (spin.task_metric, -spin.nll) > (sft.task_metric, -sft.nll)
    assert (info.weight_version, info.best) == ("1", spin_best)
    assert info.model_ids == ["it-test:iter0", *(["it-test:best"] if spin_best else []), "it-test"]
    storage = RunStorage(cfg.storage_uri)
    before = storage.marker(storage.generations(0))["generator"]
    assert (before["model_version"], before["weight_version"]) == (0, "0")
    assert (info.replica_id, info.engine_started_at) == (before["replica_id"], before["engine_started_at"])
    request = GenerateRequest(prompt_token_ids=prompts, max_tokens=[16] * len(prompts), temperature=0.0)
    served = generator_handle(app).generate.remote(request).result(timeout_s=300)
    assert served.produced_by(1) and {tuple(c.weight_versions) for c in served.completions} == {("1",)}
    assert [c.token_ids for c in served.completions] == vl


def test_bad_rows_fail_by_default_naming_them_and_nothing_is_written(ray_cluster, sft_model_dir, dataset, tmp_path):
    from jobs.iteration.context import IterationContext
    from jobs.iteration.generate import run_generate
    from jobs.progress import Progress

    root, _ = dataset
    cfg = tiny_config(tmp_path, sft_model_dir, root)
    with pytest.raises(BadRowsError) as e, Progress().stage("generate") as stage:
        run_generate(IterationContext.create(cfg, 0), stage)
    text = str(e.value)
    assert "3 SFT row(s) cannot be used" in text
    for line, reason in [
        (37, "'response' is missing"),
        (38, "'response' must be a string, got int"),
        (39, "'response' is empty"),
    ]:
        assert f"a.jsonl line {line}: {reason}" in text
    # Nothing but the folder's owner record: no stage output.
    assert [p.name for p in (tmp_path / "storage").rglob("*")] == ["run.json"]


def test_a_failing_write_leaves_nothing_behind(ray_cluster, tmp_path):
    import ray.data

    from jobs.iteration.data import write_records

    def explode(batch):
        if batch["id"].max() >= 60:
            raise ValueError("disk on fire")
        return batch

    storage = RunStorage(str(tmp_path))
    ds = ray.data.range(100, override_num_blocks=10).map_batches(explode, batch_size=10)
    with pytest.raises(Exception, match="disk on fire"):
        write_records(ds, storage, storage.pairs(0), pa.schema([("id", pa.int64())]))
    assert list((tmp_path / "iter_0").iterdir()) == []


def test_small_batches_are_written_as_parts_of_thousands_of_rows(ray_cluster, tmp_path):
    """One generator request's records per batch: gathered, so a folder holds a few parts, every row once."""
    import ray.data

    from jobs.iteration.data import ROWS_PER_BLOCK, write_records

    storage = RunStorage(str(tmp_path))
    ds = ray.data.range(10_000, override_num_blocks=100)
    assert write_records(ds, storage, storage.pairs(0), pa.schema([("id", pa.int64())]), expected=10_000) == 10_000
    parts = sorted((tmp_path / "iter_0" / "pairs").glob("*.parquet"))
    sizes = [pq.read_metadata(p).num_rows for p in parts]  # whole batches of 100, at least ROWS_PER_BLOCK a part
    assert len(sizes) == 3 and all(ROWS_PER_BLOCK <= n < ROWS_PER_BLOCK + 100 for n in sizes[:-1])
    assert sorted(pa.concat_tables(pq.read_table(p) for p in parts).column("id").to_pylist()) == list(range(10_000))


def _weights(model_dir):
    from safetensors.torch import load_file

    return load_file(os.path.join(model_dir, "model.safetensors"))


def test_the_published_model_is_the_best_validation_checkpoint(iteration):
    cfg, metrics, _ = iteration
    train = metrics.train
    evals = train.evals
    assert [e.step for e in evals] == [0, 8, 16, 20]
    assert abs(evals[0].margin) < 1e-3 and evals[0].task_prompts == VALIDATION
    scores = [e.task_metric for e in evals]
    selected = train.selected
    assert selected.step == evals[scores.index(max(scores))].step  # the first of the best
    assert metrics.evaluation.selected_step == selected.step
    storage = RunStorage(cfg.storage_uri)
    source = storage.best(0, selected.step) if selected.step else metrics.model_in
    published, best = _weights(metrics.model_out), _weights(source)
    assert published.keys() == best.keys() and all(published[k].equal(best[k]) for k in best)
    # The published model and the SFT model, evaluated on the same validation and test prompts.
    for evaluation in (metrics.evaluation, metrics.baseline):
        assert (evaluation.validation.prompts, evaluation.test.prompts) == (VALIDATION, TEST)
    # The served model's validation score equals the training loop's own evaluation of the checkpoint it published.
    assert metrics.evaluation.validation.task_metric == pytest.approx(selected.task_metric)
    # The SFT model's per-prompt NLL, by the evaluation's forward pass, equals the reference's in the pairs.
    nll = {p["prompt_id"]: -p["ref_logp_real"] / p["real_tokens"] for p in read_pairs(cfg, "validation")}
    results = storage.read_table(storage.baseline("sft", "evaluation")).to_pylist()
    assert {r["prompt_id"]: r["nll"] for r in results if r["split"] == "validation"} == pytest.approx(nll, rel=1e-4)
    assert metrics.baseline.validation.nll == pytest.approx(sum(nll.values()) / VALIDATION, rel=1e-4)


def test_the_published_model_and_its_pairs_carry_cards(iteration):
    from huggingface_hub import DatasetCard, ModelCard

    from jobs.report.cards import pairs_card_path

    cfg, metrics, _ = iteration
    storage = RunStorage(cfg.storage_uri)
    card = ModelCard.load(f"{storage.model(0)}/README.md")
    assert card.data.base_model == metrics.model_in and "spin" in card.data.tags
    assert f"on {TEST} test prompts" in card.text  # the comparison with the SFT model, on the test split
    assert "synthetic" in DatasetCard.load(pairs_card_path(storage, 0)).data.tags


def test_prometheus_serves_the_runs_metrics(iteration, scraped):
    _, metrics, _ = iteration
    samples = scraped.samples
    assert {
        "ray_spin_iteration",
        "ray_spin_stage",
        "ray_spin_pairs_done",
        "ray_spin_train_loss",
        "ray_spin_train_reward_accuracy",
        "ray_spin_train_reward_margin",
        "ray_spin_train_tokens_per_second",
        "ray_spin_generation_tokens_per_second",
        "ray_spin_generated_tokens_total",
        "ray_spin_pairs_generated_total",
        "ray_spin_train_tokens_total",
    } <= set(samples), sorted(samples)
    assert max(samples["ray_spin_pairs_done"]) == TRAIN + VALIDATION  # the test split is not sampled
    # Each count reaches the endpoint with Ray's next export (every few seconds) after its last increment: wait for
    # the values the run recorded, bounded, rather than hope a scrape during the run caught them.
    history = metrics.train.history
    expected = {
        "ray_spin_pairs_generated_total": [TRAIN + VALIDATION],
        "ray_spin_generated_tokens_total": [metrics.generate.sampled_tokens],
        "ray_spin_train_tokens_total": [sum(h.tokens for h in history)],
        "ray_spin_weight_publish_seconds_count": [1.0],
        "ray_spin_train_loss": [pytest.approx(metrics.train.final.loss)],
    }
    served = wait_for_samples(expected, timeout_s=60)
    assert {name: served[name] for name in expected} == expected
    assert all(h.tokens > 0 for h in history)
    # Ray's export sums a histogram's bucket midpoints, not the values observed: only its count is exact.
    assert served["ray_spin_weight_publish_seconds_sum"][0] > 0
    # Longer than Ray's ~20 s expiry of idle gauges later, the endpoint still serves the final values.
    time.sleep(30)
    after = scrape_once()
    assert after["ray_spin_train_loss"] == [pytest.approx(metrics.train.final.loss)]
    assert after["ray_spin_pairs_done"] == [TRAIN + VALIDATION]
    # vLLM's own engine metrics, labelled with the run's name (the Serve LLM dashboard's model_name filter).
    engine = scrape_once(prefix="ray_vllm_", label='model_name="it-test"')
    assert max(engine["ray_vllm_generation_tokens_total"]) >= metrics.generate.sampled_tokens
    assert sum(engine["ray_vllm_request_success_total"]) >= TRAIN + VALIDATION, sorted(engine)


def wait_for_samples(expected, timeout_s):
    deadline = time.monotonic() + timeout_s
    while True:
        served = scrape_once()
        if all(served[name] == values for name, values in expected.items()) or time.monotonic() > deadline:
            return served
        time.sleep(2)


def scrape_once(prefix="ray_spin_", label='run="it-test"') -> defaultdict[str, list[float]]:
    scraper = PrometheusScraper(label, prefix=prefix)
    scraper.scrape()
    return defaultdict(list, scraper.samples)


def test_mlflow_holds_what_metrics_json_records(iteration, tmp_path):
    """Read back through MLflow's own client from the tracking server the run logged to."""
    import mlflow

    from jobs.iteration.tracking import RUN_TAG

    cfg, metrics, _ = iteration
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri)
    experiment = client.get_experiment_by_name("it-test")
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{cfg.identity}'")
    assert run.info.run_name == "it-test" and run.data.params["train.beta"] == str(cfg.train.beta)

    def logged(name):
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))

    history = metrics.train.history
    for name in ("loss", "rewards/accuracies", "rewards/margins", "logps/real", "learning_rate", "tokens"):
        assert logged(name) == [(h.step, pytest.approx(getattr(h, name.replace("/", "_")))) for h in history], name
    evals = metrics.train.evals
    assert logged("eval_rewards/accuracies") == [(e.step, pytest.approx(e.rewards_accuracies)) for e in evals]
    assert logged("eval_nll/real") == [(e.step, pytest.approx(e.nll_real)) for e in evals]
    # The iteration's summary at the step its training ended, and its model card as an artifact.
    test = metrics.evaluation.test
    assert logged("iteration_eval_test/task_metric") == [(len(history), pytest.approx(test.task_metric))]
    assert logged("stage_seconds/train") == [(len(history), pytest.approx(metrics.stage_seconds["train"]))]
    card = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="iter_0/README.md", dst_path=str(tmp_path), tracking_uri=cfg.tracking.uri
    )
    storage = RunStorage(cfg.storage_uri)
    assert open(card).read() == storage.read_text(f"{storage.model(0)}/README.md")


def test_seeded_prompts_beyond_one_scheduler_step(iteration):
    """More prompt tokens than vLLM prefills in one step, every request seeded as the generate stage sends them:
    vLLM's CPU runner died splitting such a prefill until the deployment turned chunked prefill off there."""
    cfg, _, _ = iteration
    prompts = [[5 + (i + j) % 400 for j in range(100)] for i in range(64)]  # 6,400 tokens; one step takes 2,048
    request = GenerateRequest(prompt_token_ids=prompts, max_tokens=[8] * 64, seeds=list(range(64)))
    response = generator_handle(generator_app_name(cfg)).generate.remote(request).result(timeout_s=600)
    assert len(response.completions) == 64
    assert all(c.finish_reason in ("stop", "length") and len(c.token_ids) > 0 for c in response.completions)


def test_prompts_in_one_block_go_out_one_request_per_block(iteration):
    """SFT rows read as one big block still go out one request per task, so the callers can share them: a caller
    takes a whole block per task, and one block kept one request in flight (half the engine's batch with 2)."""
    import json

    import ray.data

    from jobs.config import SamplingConfig
    from jobs.iteration.generate import CallerSpec, generation_dataset

    cfg, _, problems = iteration
    chosen = problems[:48]
    app = generator_app_name(cfg)
    info = generator_info(app)
    rows = pa.table(
        {
            "prompt_id": [p.prompt_id for p in chosen],
            "split": ["train"] * len(chosen),
            "messages": [json.dumps([{"role": "user", "content": p.question}]) for p in chosen],
            "real": [p.solution for p in chosen],
        }
    )
    spec = CallerSpec(
        tokenizer_path=info.model_path,
        app_name=app,
        iteration=info.model_version,
        model_version=info.model_version,
        sampling=SamplingConfig(max_new_tokens=4),
        max_prompt_length=cfg.train.max_prompt_length,
        max_length=cfg.train.max_length,
        timeout_s=600,
    )
    records = generation_dataset(ray.data.from_arrow(rows), spec, prompts_per_request=16, callers=2).materialize()
    assert records.count() == 48 and records.num_blocks() == 3  # one per request of 16


# Before the tests that run other iterations on the same Ray cluster: this one needs the run's generator up.
def test_the_generators_sample_log_probs_equal_the_reference_forward(iteration):
    """pairs.sample_logps "generator": summing vLLM's log-probs of the tokens it sampled gives what the score
    stage's forward pass computes for them, under the model the generator serves (fp32 on both sides)."""
    from jobs.iteration.score import ReferenceScorer, ScorerSpec

    cfg, _, _ = iteration
    app = generator_app_name(cfg)
    info = generator_info(app)
    pairs = read_pairs(cfg)[:12]
    prompts = [p["prompt_ids"] for p in pairs]
    request = GenerateRequest(
        prompt_token_ids=prompts, max_tokens=[24] * len(prompts), seeds=list(range(len(prompts))), token_logps=True
    )
    completions = generator_handle(app).generate.remote(request).result(timeout_s=600).completions
    assert all(len(c.token_logps) == len(c.token_ids) > 0 for c in completions)
    given = [c.token_logps for c in completions]
    given[0] = None  # a replay, say: scored by the forward pass
    rows = pa.table(
        {
            "prompt_ids": prompts,
            "real_ids": [p["real_ids"] for p in pairs],
            "generated_ids": [c.token_ids for c in completions],
            "generated_token_logps": given,
        }
    )
    spec = dict(model_path=info.model_path, dtype="float32", pad_id=pad_id(load_tokenizer(info.model_path)))
    spec |= dict(
        micro_batch_size=len(pairs),
        use_gpu=False,
        logprob_chunk_tokens=cfg.train.logprob_chunk_tokens,
        sample_logps=True,
    )
    scorer = ReferenceScorer(ScorerSpec(**spec))
    real, from_generator = scorer.reference_logps(rows)
    with torch.no_grad():
        columns = [rows.column(c).to_pylist() for c in ("prompt_ids", "real_ids", "generated_ids")]
        forward_real, forward_generated, _ = policy_logps(
            scorer.model, collate_pairs(*columns, pad_id=spec["pad_id"]), cfg.train.logprob_chunk_tokens
        )
    assert real == pytest.approx(forward_real.tolist(), abs=1e-4)
    assert from_generator[0] == pytest.approx(float(forward_generated[0]), abs=1e-4)
    # Tolerance per answer of up to 24 tokens: vLLM's CPU kernels and transformers' differ in rounding only.
    differences = [abs(a - b) for a, b in zip(from_generator[1:], forward_generated[1:].tolist(), strict=True)]
    assert max(differences) < 1e-2, differences


def test_after_the_run_the_generator_serves_its_best_model_as_best(iteration):
    """What `keep_serving` leaves up: the run's best model on validation (the SFT model here, unless iteration 0's
    beat it), named `<run>:best` on the OpenAI routes of Serve's proxy; a weight move when it is not the last model."""
    import openai

    from cluster.runtime import serve_http_options
    from jobs.iteration.controller import serve_best
    from services.generator.client import route_prefix

    cfg, _, _ = iteration
    app = generator_app_name(cfg)
    sft, spin = (m.evaluation.validation for m in load_run(cfg.storage_uri).models[:2])
    which = "iter0" if (spin.task_metric, -spin.nll) > (sft.task_metric, -sft.nll) else "sft"
    best = serve_best(cfg)
    assert best is not None and best.label == ("SPIN iteration 0" if which == "iter0" else "SFT")
    info = generator_info(app)
    assert (info.model_version, info.model_path, info.best) == (
        best.evaluation.model_version,
        best.evaluation.model,
        True,
    )
    assert info.weight_version == str(best.evaluation.model_version)
    http = serve_http_options()
    base_url = f"http://127.0.0.1:{http['port']}{route_prefix(app)}/v1"
    client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == [f"it-test:{which}", "it-test:best", "it-test"]
    answer = client.completions.create(model="it-test:best", prompt="What is 2 + 2?", max_tokens=4, temperature=0)
    # vLLM names an answer by the model's first id, whichever id the request used.
    assert answer.model == f"it-test:{which}" and answer.usage.completion_tokens <= 4


def test_choices_never_read_the_test_split(iteration, tmp_path):
    """The test split's real answers poisoned: the same checkpoint is chosen, with the same validation scores, while
    the test metric sees the poison. Only training and evaluation are redone, on the undisturbed run's pairs."""
    import shutil

    from jobs.iteration import run_iteration
    from jobs.iteration.context import generator_app_name
    from services.generator.client import stop_serving

    undisturbed_cfg, undisturbed, _ = iteration
    cfg = undisturbed_cfg.model_copy(update={"storage_uri": str(tmp_path / "storage"), "name": "poisoned"})
    source, target = RunStorage(undisturbed_cfg.storage_uri), RunStorage(cfg.storage_uri)
    target.claim(cfg.identity, cfg.fingerprint())  # as if this run had made them: the same settings
    for folder in (source.generations(0), source.pairs(0), source.baseline("sft", "evaluation")):
        shutil.copytree(folder, folder.replace(source.root, target.root))
    prompts = source.read_table(source.eval_prompts())
    poisoned = [
        r if s == "validation" else "The answer is -7."
        for r, s in zip(prompts.column("real").to_pylist(), prompts.column("split").to_pylist(), strict=True)
    ]
    target.write_table(
        target.eval_prompts(), prompts.set_column(prompts.schema.get_field_index("real"), "real", pa.array(poisoned))
    )
    try:
        metrics = run_iteration(cfg, 0)
    finally:
        stop_serving(generator_app_name(cfg))
    assert metrics.train.selected.step == undisturbed.train.selected.step
    assert [e.task_metric for e in metrics.train.evals] == [e.task_metric for e in undisturbed.train.evals]
    assert metrics.evaluation.validation == undisturbed.evaluation.validation
    assert metrics.evaluation.test.task_metric == 0.0  # no answer is "-7": the poison reached the test split


def test_continued_sft_takes_spins_steps_and_picks_its_lr_on_validation(iteration):
    """The baseline joins the run whoever launched it (here a config with another launcher's run id, as a config
    run by hand lacks the control plane's): as many steps as SPIN's, twice its batch, each lr scored on the
    validation split alone, the best one evaluated on both splits."""
    import json

    from jobs.baseline.continued_sft import run_continued_sft
    from jobs.storage import CONTINUED_SFT

    run_cfg, spin, _ = iteration
    storage = RunStorage(run_cfg.storage_uri)
    owner = json.loads(open(storage.identity()).read())
    grid = [1e-4, 1e-3]
    cfg = run_cfg.model_copy(
        update={
            "run_id": "launched-elsewhere",
            "eval": run_cfg.eval.model_copy(update={"continued_sft_learning_rates": grid}),
        }
    )
    baseline = run_continued_sft(cfg)
    assert json.loads(open(storage.identity()).read()) == owner  # joined, not taken over
    assert (baseline.train.steps, baseline.train.batch_size) == (spin.train.steps, 2 * cfg.train.global_batch_size)
    assert [c.learning_rate for c in baseline.candidates] == grid
    scores = [c.validation.task_metric for c in baseline.candidates]
    assert baseline.train.learning_rate == grid[scores.index(max(scores))]
    assert all(c.validation.prompts == VALIDATION for c in baseline.candidates)
    chosen = baseline.candidates[scores.index(max(scores))].validation
    assert baseline.validation.task_metric == chosen.task_metric
    assert baseline.validation.nll == pytest.approx(chosen.nll, rel=1e-4)
    assert baseline.test.prompts == TEST
    for lr in grid:  # the candidates never answered the test split
        rows = storage.read_table(storage.baseline(CONTINUED_SFT, "candidates", f"lr_{lr:g}", "evaluation"))
        assert set(rows.column("split").to_pylist()) == {"validation"}
