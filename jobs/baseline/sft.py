"""Supervised fine-tuning in one process: how the demo makes its SFT model, and the "continued SFT" baseline
SPIN is compared against.

The loss is the mean negative log-likelihood of the response tokens, through the same chat encoding and
masked log-probs as SPIN, so SFT and SPIN see identical token sequences.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from cluster.files import copy_folder, is_file, local_copy, read_text
from jobs.chat import encode_example, encode_prompt, encode_response, pad_id
from jobs.config import SpinConfig
from jobs.hf import load_causal_lm, load_tokenizer, save_hf_checkpoint
from jobs.iteration.train_eval import greedy_tokens, task_metric
from jobs.iteration.train_step import response_logps
from jobs.sft_rows import index_rows, read_rows
from jobs.spin.metrics import response_nll
from jobs.spin.pairs import select_prompts
from jobs.spin.schedule import lr_multiplier

RECIPE_FILE = "sft_recipe.json"  # beside the weights `spin sft` made: the settings that made them, and the result

Example = tuple[list[int], list[int]]  # (prompt ids, response ids ending with EOS)


def encode_examples(tokenizer: Any, examples: Sequence[tuple[list[dict[str, str]], str]]) -> list[Example]:
    """(prompt messages, response) → (prompt ids, response ids ending with EOS)."""
    return [(encode_prompt(tokenizer, m), encode_response(tokenizer, r)) for m, r in examples]


def sft_loss(model: Any, batch: Sequence[Example], pad: int) -> torch.Tensor:
    """Mean negative log-likelihood per response token over a batch."""
    return response_nll(*response_logps(model, batch, pad, next(model.parameters()).device))


def sft(
    model_dir: str,
    out_dir: str | Path,
    examples: Sequence[tuple[list[dict[str, str]], str]],
    **kwargs: Any,
) -> dict[str, Any]:
    """Fine-tune `model_dir` on (prompt messages, response) `examples`; see `sft_on_tokens`."""
    return sft_on_tokens(model_dir, out_dir, encode_examples(load_tokenizer(model_dir), examples), **kwargs)


def sft_on_tokens(
    model_dir: str,
    out_dir: str | Path,
    data: Sequence[Example],
    *,
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    warmup_steps: int = 20,
    schedule: Literal["linear", "cosine", "constant"] = "cosine",
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
    validate: Callable[[Any], float] | None = None,
    eval_every: int = 0,
    patience: int = 0,
) -> dict[str, Any]:
    """Fine-tune `model_dir` on (prompt ids, response ids) for `steps` AdamW steps and save to `out_dir`.

    The learning rate warms up over `warmup_steps`, then decays to 0 ("cosine" or "linear") or stays. With
    `validate` (a score of the model, higher is better) the model is scored every `eval_every` steps; training
    stops once `patience` scores in a row have not beaten the best, and the best scored weights are saved.
    """
    if not data:
        raise ValueError("no examples to fine-tune on")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_causal_lm(model_dir, torch.float32, device).train()
    pad = pad_id(load_tokenizer(model_dir))
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(steps, warmup_steps, schedule))
    order: list[int] = []
    start, losses = time.perf_counter(), []
    early = _EarlyStopping(validate, patience)
    for step in range(steps):
        if len(order) < batch_size:
            order += rng.sample(range(len(data)), len(data))
        batch = [data[i] for i in order[:batch_size]]
        del order[:batch_size]
        loss = sft_loss(model, batch, pad)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if on_step:
            on_step(step + 1, losses[-1])
        if validate and ((step + 1) % eval_every == 0 or step + 1 == steps) and early.stop_after(step + 1, model):
            break
    state = early.best_state if validate else model.state_dict()
    save_hf_checkpoint(state, model_dir, out_dir, torch.float32)
    return {
        "steps": len(losses),
        "seconds": time.perf_counter() - start,
        "final_loss": sum(losses[-10:]) / min(10, len(losses)),
        "best_step": early.best_step if validate else len(losses),
        "validation": early.scores,
    }


class _EarlyStopping:
    """Keeps the best-scoring weights; says when `patience` scores in a row have not improved on them."""

    def __init__(self, validate: Callable[[Any], float] | None, patience: int):
        self.validate, self.patience = validate, patience
        self.scores: list[tuple[int, float]] = []
        self.best_step, self.best_score, self.since_best = 0, float("-inf"), 0
        self.best_state: dict[str, torch.Tensor] = {}

    def stop_after(self, step: int, model: Any) -> bool:
        assert self.validate is not None
        model.eval()
        score = self.validate(model)
        model.train()
        self.scores.append((step, score))
        if score > self.best_score:
            self.best_step, self.best_score, self.since_best = step, score, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self.since_best += 1
        return self.since_best >= self.patience


def sft_examples(cfg: SpinConfig, tokenizer: Any) -> tuple[list[Example], list[Example], list[str]]:
    """The run's training split (the rows SPIN trains on) and its validation split, tokenized as every stage
    tokenizes them, with the validation split's real answers as text; its test split is left out."""
    d, t = cfg.data, cfg.train
    table = read_rows(d.path, d.source, d.format, d.turn)
    usable, _ = index_rows(table, d.bad_rows)
    selection = select_prompts(
        usable, count=len(usable), validation=d.validation_prompts, test=d.test_prompts, seed=d.seed, iteration=0
    )
    rows = {
        (src, row): (json.loads(m), real)
        for src, row, m, real in zip(
            *(table.column(c).to_pylist() for c in ("source", "row", "messages", "real")), strict=True
        )
    }

    def encode(refs: Sequence[Any]) -> list[Example]:
        out = []
        for ref in refs:
            messages, real = rows[(ref.source, ref.row)]
            prompt, real_ids, _, _, _ = encode_example(
                tokenizer, messages, real, t.max_prompt_length, t.max_length, cfg.sampling.max_new_tokens
            )
            out.append((prompt, real_ids))
        return out

    reals = [rows[(r.source, r.row)][1] for r in selection.validation]
    return encode(selection.train), encode(selection.validation), reals


def validation_score(
    cfg: SpinConfig, tokenizer: Any, validation: list[Example], reals: list[str]
) -> Callable[[Any], float]:
    """What `spin sft` stops on: the task metric of greedy answers, or the real answers' likelihood."""
    e, pad = cfg.eval, pad_id(tokenizer)

    def score(model: Any) -> float:
        with torch.no_grad():
            if e.task != "none":
                prompts = [p for p, _ in validation]
                answers = greedy_tokens(model, prompts, e.max_new_tokens, pad, tokenizer.eos_token_id)
                texts = [tokenizer.decode(a, skip_special_tokens=True) for a in answers]
                return float(task_metric(texts, reals, e.answer_pattern)["task_metric"])
            device = next(model.parameters()).device
            logps, tokens = zip(
                *(response_logps(model, validation[i : i + 32], pad, device) for i in range(0, len(validation), 32)),
                strict=True,
            )
            return -float(response_nll(torch.cat(logps), torch.cat(tokens)))

    return score


def run_sft(cfg: SpinConfig, on_step: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """`spin sft`: fine-tune the config's `sft.base_model` into its `model.path` on its training split, stopping
    when its validation split stops improving (cached: a model made by the same settings is kept)."""
    s = cfg.sft
    if s is None:
        raise ValueError("the config has no sft section: set sft.base_model, learning_rate, batch_size and max_steps")
    recipe = {
        "sft": s.model_dump(mode="json"),
        "data": cfg.data.model_dump(mode="json"),
        "lengths": [cfg.train.max_prompt_length, cfg.train.max_length, cfg.sampling.max_new_tokens],
        "eval": cfg.eval.model_dump(mode="json", include={"task", "answer_pattern", "max_new_tokens"}),
    }
    done = f"{cfg.model.path}/{RECIPE_FILE}"
    if is_file(done) and json.loads(read_text(done))["recipe"] == recipe:
        return dict(json.loads(read_text(done))["result"])
    tokenizer = load_tokenizer(local_copy(s.base_model))
    train, validation, reals = sft_examples(cfg, tokenizer)
    validate = validation_score(cfg, tokenizer, validation, reals) if validation else None
    with tempfile.TemporaryDirectory() as tmp:
        result = sft_on_tokens(
            local_copy(s.base_model),
            tmp,
            train,
            steps=s.max_steps,
            batch_size=s.batch_size,
            learning_rate=s.learning_rate,
            warmup_steps=s.warmup_steps,
            schedule=s.schedule,
            seed=s.seed,
            on_step=on_step,
            validate=validate,
            eval_every=s.eval_every_steps,
            patience=s.patience,
        )
        result |= {"train_examples": len(train), "validation_prompts": len(validation)}
        Path(tmp, RECIPE_FILE).write_text(json.dumps({"recipe": recipe, "result": result}, indent=1))
        copy_folder(tmp, cfg.model.path)
    return result
