"""The generate stage's pair rules on crafted samples, with the real tokenizer and no engine: which sample becomes
the generated side, and what a prompt with no qualifying sample becomes."""

import pyarrow as pa
import pytest

from jobs.chat import encode_response
from jobs.config import PairsConfig, SamplingConfig
from jobs.hf import load_tokenizer
from jobs.iteration.generate import CallerSpec, GeneratorCaller, _pair_counts
from jobs.records import GENERATION_SCHEMA
from services.generator.schemas import Completion

REAL = "The answer is 85."


def caller(tiny_model_dir, rule, no_negative="replay"):
    spec = CallerSpec(
        tokenizer_path=tiny_model_dir,
        app_name="unused",
        iteration=0,
        model_version=0,
        sampling=SamplingConfig(),
        pairs=PairsConfig(samples_per_prompt=3, rule=rule, no_negative=no_negative),
        answer_pattern=r"The answer is (-?\d+)",
        max_prompt_length=64,
        max_length=96,
        timeout_s=1.0,
    )
    c = GeneratorCaller.__new__(GeneratorCaller)  # the handle is not needed to pick
    c.spec, c.tokenizer = spec, load_tokenizer(tiny_model_dir)
    return c


def sample(tok, text):
    return Completion(text=text, token_ids=encode_response(tok, text)[:-1], finish_reason="stop")


@pytest.mark.parametrize(
    ("rule", "texts", "picked"),
    [
        ("first", [REAL, "The answer is 84.", "The answer is 58."], 0),  # the paper: even an identical sample
        ("differs", [REAL, "The answer is 85 .", "The answer is 84."], 1),  # differs in tokens, right answer
        ("incorrect", [REAL, "The answer is 85 .", "The answer is 84."], 2),  # the first the task scores wrong
        ("differs", [REAL, REAL, REAL], -1),
        ("incorrect", [REAL, "The answer is 85 .", REAL], -1),
    ],
)
def test_each_rule_picks_the_documented_sample(tiny_model_dir, rule, texts, picked):
    c = caller(tiny_model_dir, rule)
    group = [sample(c.tokenizer, t) for t in texts]
    assert c._pick(encode_response(c.tokenizer, REAL), REAL, group) == picked


def test_counts_of_identical_pairs_and_prompts_without_a_negative():
    rows = {name: [] for name in GENERATION_SCHEMA.names}
    for split, real, generated, pick, kept, sampled in [
        ("train", [1, 2], [1, 2], 0, True, 6),  # identical (first rule)
        ("train", [1, 2], [1, 3], 1, True, 6),
        ("train", [1, 2], [1, 2], -1, False, 6),  # no negative, skipped
        ("train", [1, 2], [1, 2], -1, True, 6),  # no negative, replayed: identical; its prompt was fitted
        ("validation", [1, 2], [1, 2], 0, True, 6),  # not a training pair
    ]:
        values = {
            "split": split,
            "real_ids": real,
            "generated_ids": generated,
            "pick": pick,
            "kept": kept,
            "sampled_tokens": sampled,
            "generated_tokens": len(generated),
            "prompt_truncated": pick == -1 and kept,
        }
        for name in rows:
            rows[name].append(values.get(name))
    counts = _pair_counts(pa.table(rows, schema=GENERATION_SCHEMA))
    assert counts == {
        "sampled_tokens": 30,
        "generated_tokens": 10,
        "identical_pairs": 3,
        "without_negative": 2,
        "skipped_prompts": 1,
        "truncated_prompts": 1,
    }
