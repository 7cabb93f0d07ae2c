import pytest
import torch

from jobs.chat import encode_prompt, encode_response, pad_id
from jobs.config import TrainConfig
from jobs.demo.arithmetic import make_problems
from jobs.hf import load_causal_lm, load_tokenizer
from jobs.iteration.train_eval import greedy_tokens, task_metric, validation_diagnostics
from jobs.iteration.train_step import policy_logps
from jobs.spin.collate import collate_pairs


def test_greedy_tokens_match_transformers_generate(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # make the random model's argmax informative rather than one repeated token
        for p in model.parameters():
            p.mul_(4.0)
    prompts = [encode_prompt(tok, [{"role": "user", "content": p.question}]) for p in make_problems(6, seed=4)]
    ours = greedy_tokens(model, prompts, max_new_tokens=12, pad_id=pad_id(tok), eos_id=tok.eos_token_id, batch_size=4)
    for p, got in zip(prompts, ours, strict=True):
        ref = model.generate(
            torch.tensor([p]),
            attention_mask=torch.ones(1, len(p), dtype=torch.long),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=pad_id(tok),
            eos_token_id=tok.eos_token_id,
        )[0, len(p) :].tolist()
        assert got == ref[: len(got)] and (len(got) == 12 or got[-1] == tok.eos_token_id)
    assert len({tuple(o) for o in ours}) > 1


def test_validation_diagnostics_at_the_reference_and_by_hand(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir).eval()
    problems = make_problems(5, seed=9)
    prompts = [encode_prompt(tok, [{"role": "user", "content": p.question}]) for p in problems]
    real = [encode_response(tok, p.solution) for p in problems]
    gen = [encode_response(tok, "I am not sure.") for _ in problems]
    with torch.no_grad():
        # As the score stage computes them: in the trainer's LM-head chunks.
        ref_real, ref_gen, _ = policy_logps(model, collate_pairs(prompts, real, gen, pad_id=pad_id(tok)), 512)
    batches = []
    for i in (0, 3):  # two batches of uneven size
        j = slice(i, i + 3 if i == 0 else 5)
        batches.append(
            collate_pairs(
                prompts[j],
                real[j],
                gen[j],
                pad_id=pad_id(tok),
                ref_logps_real=ref_real[j],
                ref_logps_generated=ref_gen[j],
            )
        )
    train = TrainConfig(beta=0.1, loss_type="sigmoid", logprob_chunk_tokens=512)
    metrics = validation_diagnostics(model, batches, train)
    assert abs(metrics["margin"]) < 1e-4  # rewards/accuracies at margin 0 would count rounding noise
    expected_nll = -float(ref_real.sum()) / sum(len(r) for r in real)
    assert abs(metrics["nll/real"] - expected_nll) < 1e-4
    assert abs(metrics["logps/real"] - float(ref_real.mean())) < 1e-4


def test_task_metric_reads_answers_from_text():
    reals = ["2 + 2 = 4. The answer is 4.", "no answer here", "10 / 2 = 5. The answer is 5."]
    answers = ["The answer is 4.", "The answer is 9.", "It is five."]
    assert task_metric(answers, reals, r"The answer is (-?\d+)") == {"task_metric": 0.5, "task_prompts": 2}


def test_a_pattern_that_finds_no_answer_is_an_error_naming_it_and_showing_an_answer():
    """A NaN score here would let step 0 win every selection silently."""
    pattern, reals = r"The answer is (-?\d+)", ["#### 42", "#### 7"]
    with pytest.raises(ValueError) as e:
        task_metric(["The answer is 42."] * 2, reals, pattern)
    assert f"eval.answer_pattern {pattern!r} finds no answer in any of the 2 real answers" in str(e.value)
    assert "'#### 42'" in str(e.value)


def _greedy_under_fsdp(rank, init_file, model_dir, out):
    """One rank of a 2-process FSDP2 world on gloo: greedy answers as training shards them, then gathered."""
    import torch.distributed as dist
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group

    from jobs.iteration.train_eval import gathered
    from jobs.iteration.train_loop import _shard_model

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    gathers = 0
    all_gather = _fsdp_param_group.foreach_all_gather

    def counted(*args, **kwargs):
        nonlocal gathers
        gathers += 1
        return all_gather(*args, **kwargs)

    _fsdp_param_group.foreach_all_gather = counted
    model = load_causal_lm(model_dir)
    _shard_model(model, torch.device("cpu"), world_size=2, bf16=False)
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    plain = greedy_tokens(model, prompts, max_new_tokens=8, pad_id=0, eos_id=-1)
    plain_gathers, gathers = gathers, 0
    with gathered(model):
        kept = greedy_tokens(model, prompts, max_new_tokens=8, pad_id=0, eos_id=-1)
    sharded_after = all(p.to_local().numel() < p.numel() for p in model.model.layers[0].parameters() if p.dim())
    if rank == 0:
        torch.save({"plain": plain, "kept": kept, "gathers": (plain_gathers, gathers), "sharded": sharded_after}, out)
    dist.barrier()  # neither rank tears gloo down while the other still talks to it
    dist.destroy_process_group()


def test_gathered_evaluation_gives_the_same_answers_with_one_all_gather_per_module(tiny_model_dir, tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "out.pt"
    mp.spawn(_greedy_under_fsdp, args=(str(tmp_path / "init"), tiny_model_dir, str(out)), nprocs=2)
    result = torch.load(out)
    layers = len(load_causal_lm(tiny_model_dir).model.layers)
    assert result["kept"] == result["plain"]
    plain, kept = result["gathers"]
    assert plain >= 8 * layers  # each of the 8 decoding steps gathered every layer again
    assert kept <= layers + 1  # once per layer (and the root, which keeps its parameters anyway)
    assert result["sharded"], "the parameters are sharded again after the block"
