import math

import pytest
import torch

from jobs.chat import encode_prompt, encode_response, pad_id
from jobs.config import TrainConfig
from jobs.demo.arithmetic import make_problems
from jobs.hf import load_causal_lm, load_tokenizer
from jobs.iteration.train_step import make_optimizer, policy_logps, spin_forward
from jobs.spin.collate import collate_pairs
from jobs.spin.metrics import metrics_from_sums

# The paper's loss (no NLL term), so the first step is exactly ln 2.
TRAIN = TrainConfig(beta=0.1, loss_type="sigmoid", optimizer="adamw", learning_rate=3e-3, real_nll_weight=0.0)


@pytest.fixture(scope="module")
def pairs(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    problems = make_problems(8, seed=3)
    prompts = [encode_prompt(tok, [{"role": "user", "content": p.question}]) for p in problems]
    real = [encode_response(tok, p.solution) for p in problems]
    generated = [encode_response(tok, p.solution.replace(str(p.answer), str(p.answer + 1))) for p in problems]
    return tok, prompts, real, generated


def test_left_and_right_padding_give_the_same_log_probs_through_the_model(tiny_model_dir, pairs):
    tok, prompts, real, generated = pairs
    model = load_causal_lm(tiny_model_dir).eval()
    with torch.no_grad():
        right = policy_logps(
            model, collate_pairs(prompts, real, generated, pad_id=pad_id(tok)), TRAIN.logprob_chunk_tokens
        )
        left = policy_logps(
            model,
            collate_pairs(prompts, real, generated, pad_id=pad_id(tok), padding_side="left"),
            TRAIN.logprob_chunk_tokens,
        )
        # Each pair alone, with no padding at all.
        alone = [
            policy_logps(model, collate_pairs([p], [r], [g], pad_id=pad_id(tok)), TRAIN.logprob_chunk_tokens)
            for p, r, g in zip(prompts, real, generated, strict=True)
        ]
    assert torch.allclose(right[0], left[0], atol=1e-4) and torch.allclose(right[1], left[1], atol=1e-4)
    assert torch.allclose(right[0], torch.cat([a[0] for a in alone]), atol=1e-4)


def test_first_step_is_ln2_and_training_separates_real_from_generated(tiny_model_dir, pairs):
    tok, prompts, real, generated = pairs
    torch.manual_seed(0)
    model = load_causal_lm(tiny_model_dir)
    with torch.no_grad():
        ref_real, ref_gen, _ = policy_logps(
            model.eval(), collate_pairs(prompts, real, generated, pad_id=pad_id(tok)), TRAIN.logprob_chunk_tokens
        )
    batch = collate_pairs(
        prompts, real, generated, pad_id=pad_id(tok), ref_logps_real=ref_real, ref_logps_generated=ref_gen
    )
    model.train()
    optimizer = make_optimizer(model.parameters(), TRAIN)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == 3e-3
    history = []
    for _ in range(8):
        loss, sums = spin_forward(model, batch, TRAIN, loss_scale=1 / batch.num_pairs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(metrics_from_sums(sums[0]))
        assert torch.equal(sums[0], sums[1]) and sums[2][-1] == 0  # every pair fresh, none carried
    first, last = history[0], history[-1]
    assert abs(first["margin"]) < 1e-4
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert last["loss"] < first["loss"] - 0.05
    assert last["rewards/accuracies"] == 1.0
    assert last["gain/real"] > last["gain/generated"]
    assert all(a["loss"] >= b["loss"] for a, b in zip(history, history[1:], strict=False))


def test_missing_reference_log_probs_are_refused(tiny_model_dir, pairs):
    tok, prompts, real, generated = pairs
    model = load_causal_lm(tiny_model_dir)
    with pytest.raises(ValueError, match="run the score stage first"):
        spin_forward(model, collate_pairs(prompts, real, generated, pad_id=pad_id(tok)), TRAIN, loss_scale=1.0)


def _loss_and_grads(model, batch, train):
    model.zero_grad(set_to_none=True)
    loss, _ = spin_forward(model, batch, train, loss_scale=1 / batch.num_pairs)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}


def _scored_batch(model, tok, prompts, real, generated):
    """The pairs with a reference that differs from the policy, so the loss's gradient is not symmetric."""
    with torch.no_grad():
        ref_real, ref_gen, _ = policy_logps(
            model.eval(), collate_pairs(prompts, real, generated, pad_id=pad_id(tok)), TRAIN.logprob_chunk_tokens
        )
    return collate_pairs(
        prompts, real, generated, pad_id=pad_id(tok), ref_logps_real=ref_real + 0.3, ref_logps_generated=ref_gen - 0.2
    )


def test_chunked_log_probs_and_checkpointed_layers_give_the_full_logits_gradients(tiny_model_dir, pairs):
    tok, prompts, real, generated = pairs
    model = load_causal_lm(tiny_model_dir)
    batch = _scored_batch(model, tok, prompts, real, generated)
    model.train()
    plain = _loss_and_grads(model, batch, TRAIN.model_copy(update={"logprob_chunk_tokens": None}))
    chunked = _loss_and_grads(model, batch, TRAIN.model_copy(update={"logprob_chunk_tokens": 7}))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed = _loss_and_grads(model, batch, TRAIN.model_copy(update={"logprob_chunk_tokens": 7}))
    for other in (chunked, checkpointed):
        assert other[0] == pytest.approx(plain[0], abs=1e-5)
        assert other[1].keys() == plain[1].keys()
        for name, grad in plain[1].items():
            assert torch.allclose(other[1][name], grad, atol=1e-5, rtol=1e-4), name


def test_a_head_that_is_not_a_plain_linear_map_is_refused_by_name(tiny_model_dir, pairs):
    tok, prompts, real, generated = pairs
    model = load_causal_lm(tiny_model_dir)
    batch = _scored_batch(model, tok, prompts, real, generated)
    head = model.get_output_embeddings()
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    biased.weight = head.weight
    torch.nn.init.normal_(biased.bias)
    model.set_output_embeddings(biased)
    with pytest.raises(ValueError, match="not its last hidden state times.*train.logprob_chunk_tokens: null"):
        spin_forward(model, batch, TRAIN, loss_scale=1.0)
    # The full logits still work for it.
    loss, _ = spin_forward(model, batch, TRAIN.model_copy(update={"logprob_chunk_tokens": None}), loss_scale=1.0)
    assert torch.isfinite(loss)


def _fsdp_gradients(rank, init_file, model_dir, batch, out):
    """One rank of a 2-process FSDP2 world on gloo: the full gradients of one step, plain and chunked."""
    import torch.distributed as dist

    from jobs.iteration.train_loop import _shard_model

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    model = load_causal_lm(model_dir)
    _shard_model(model, torch.device("cpu"), world_size=2, bf16=False)
    model.train()
    grads = {}
    for chunk in (None, 5):
        _, sharded = _loss_and_grads(model, batch, TRAIN.model_copy(update={"logprob_chunk_tokens": chunk}))
        grads[chunk] = {n: g.full_tensor() for n, g in sharded.items()}
    if rank == 0:
        torch.save(grads, out)
    dist.barrier()  # neither rank tears gloo down while the other still talks to it
    dist.destroy_process_group()


def test_chunked_log_probs_under_fsdp2_give_the_single_process_gradients(tiny_model_dir, pairs, tmp_path):
    import torch.multiprocessing as mp

    tok, prompts, real, generated = pairs
    model = load_causal_lm(tiny_model_dir)
    batch = _scored_batch(model, tok, prompts, real, generated)
    _, alone = _loss_and_grads(model.train(), batch, TRAIN.model_copy(update={"logprob_chunk_tokens": None}))
    out = tmp_path / "grads.pt"
    mp.spawn(_fsdp_gradients, args=(str(tmp_path / "init"), tiny_model_dir, batch, str(out)), nprocs=2)
    grads = torch.load(out)
    for chunk in (None, 5):
        assert grads[chunk].keys() == alone.keys()
        for name, grad in alone.items():
            assert torch.allclose(grads[chunk][name], grad, atol=1e-5, rtol=1e-4), (chunk, name)
