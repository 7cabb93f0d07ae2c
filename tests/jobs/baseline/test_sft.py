"""`spin sft` on the tiny model: the run's own training split, early stopping on its validation split, the best
weights kept, a cached result reused."""

import json

from jobs.baseline.sft import RECIPE_FILE, run_sft, sft_examples
from jobs.config import SpinConfig
from jobs.demo.arithmetic import make_problems, write_jsonl
from jobs.hf import load_tokenizer
from tests.factories import tiny_run_config


def config(tmp_path, tiny_model_dir, **sft):
    write_jsonl(make_problems(200, seed=5, style="answer"), tmp_path / "train.jsonl")
    return SpinConfig.model_validate(
        tiny_run_config(
            "sft",
            str(tmp_path / "run"),
            str(tmp_path / "sft"),
            str(tmp_path / "train.jsonl"),
            data={"validation_prompts": 20, "test_prompts": 30},
            eval={"task": "answer_match", "max_new_tokens": 12},
            sft={
                "base_model": tiny_model_dir,
                "learning_rate": 3e-3,
                "batch_size": 16,
                "max_steps": 40,
                "eval_every_steps": 10,
                "patience": 2,
            }
            | sft,
        )
    )


def test_sft_trains_on_the_training_split_only(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir)
    train, validation, reals = sft_examples(cfg, load_tokenizer(tiny_model_dir))
    assert (len(train), len(validation), len(reals)) == (150, 20, 20)
    tok = load_tokenizer(tiny_model_dir)
    trained = {tok.decode(p) for p, _ in train}
    assert not trained & {tok.decode(p) for p, _ in validation}  # and the 30 test prompts are in neither


def test_sft_keeps_the_best_validation_checkpoint_and_reuses_it(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir)
    result = run_sft(cfg)
    steps = [step for step, _ in result["validation"]]
    assert steps == list(range(10, result["steps"] + 1, 10)) and result["steps"] <= 40
    scores = dict(result["validation"])
    assert result["best_step"] == max(scores, key=lambda s: (scores[s], -s))  # the first of the best
    saved = json.loads((tmp_path / "sft" / RECIPE_FILE).read_text())
    assert saved["result"] == json.loads(json.dumps(result))
    assert (tmp_path / "sft" / "model.safetensors").exists() and load_tokenizer(str(tmp_path / "sft")).chat_template
    assert run_sft(cfg) == saved["result"]  # cached: the same settings made it
    assert run_sft(config(tmp_path, tiny_model_dir, max_steps=20))["steps"] <= 20  # other settings: trained again
