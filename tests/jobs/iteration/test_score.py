"""The score stage's reference log-probs with and without the generator's sample log-probs (no Ray, no vLLM:
the token log-probs are the model's own, computed here, as a generator serving the same weights reports them)."""

import pyarrow as pa
import pytest
import torch

from jobs.chat import encode_prompt, encode_response, pad_id
from jobs.demo.arithmetic import make_problems
from jobs.hf import load_tokenizer
from jobs.iteration.score import ReferenceScorer, ScorerSpec
from jobs.spin.logprobs import token_logps


def _rows(model_dir: str) -> pa.Table:
    tok = load_tokenizer(model_dir)
    problems = make_problems(6, seed=4)
    prompts = [encode_prompt(tok, [{"role": "user", "content": p.question}]) for p in problems]
    real = [encode_response(tok, p.solution) for p in problems]
    # Generated answers that share a prefix with the real one, then differ (for mask_after_divergence).
    generated = [r[:3] + encode_response(tok, f"{p.answer + 1}.") for r, p in zip(real, problems, strict=True)]
    return pa.table({"prompt_ids": prompts, "real_ids": real, "generated_ids": generated})


def _scorer(model_dir: str, **spec) -> ReferenceScorer:
    pad = pad_id(load_tokenizer(model_dir))
    return ReferenceScorer(
        ScorerSpec(model_path=model_dir, dtype="float32", pad_id=pad, micro_batch_size=6, use_gpu=False, **spec)
    )


def _own_token_logps(scorer: ReferenceScorer, prompt: list[int], response: list[int]) -> list[float]:
    """What a generator serving the scorer's weights reports for each sampled token."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = scorer.model(input_ids=ids, use_cache=False).logits
    return token_logps(logits, ids)[0, len(prompt) - 1 :].double().tolist()


@pytest.mark.parametrize("mask_after_divergence", [False, True])
def test_sample_log_probs_give_the_forward_passes_reference(tiny_model_dir, mask_after_divergence):
    rows = _rows(tiny_model_dir)
    settings = {"mask_after_divergence": mask_after_divergence, "logprob_chunk_tokens": 512}
    forward = _scorer(tiny_model_dir, **settings)
    real, generated = forward.reference_logps(rows)
    given = [
        _own_token_logps(forward, p, g)
        for p, g in zip(rows.column("prompt_ids").to_pylist(), rows.column("generated_ids").to_pylist(), strict=True)
    ]
    given[2] = None  # no sample log-probs (a replay): the forward pass scores it
    with_samples = rows.append_column("generated_token_logps", pa.array(given, pa.list_(pa.float64())))
    real_s, generated_s = _scorer(tiny_model_dir, sample_logps=True, **settings).reference_logps(with_samples)
    assert real_s == pytest.approx(real, abs=1e-5)
    assert generated_s == pytest.approx(generated, abs=1e-4)
    if mask_after_divergence:  # only the scored prefix was summed: the whole answer's sum differs
        assert sum(given[0]) != pytest.approx(generated_s[0], abs=1e-3)


def test_records_written_before_sample_log_probs_existed_are_still_scored(tiny_model_dir):
    """A resumed run's generations (or carried pairs) from before the generated_token_logps column."""
    from jobs.records import GENERATION_SCHEMA, PAIR_SCHEMA

    pairs = _rows(tiny_model_dir).to_pylist()
    defaults = {"split": "train", "iteration": 0, "model_version": 0, "finish_reason": "stop", "kept": True}
    old = [f for f in GENERATION_SCHEMA if f.name != "generated_token_logps"]
    rows = pa.table({f.name: [p.get(f.name, defaults.get(f.name)) for p in pairs] for f in old}, pa.schema(old))
    for sample_logps in (False, True):
        scored = _scorer(tiny_model_dir, sample_logps=sample_logps, logprob_chunk_tokens=512)(rows)
        assert scored.schema == PAIR_SCHEMA and scored.column("generated_token_logps").null_count == len(pairs)
        assert all(v < 0 for v in scored.column("ref_logp_generated").to_pylist())
