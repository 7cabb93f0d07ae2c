import torch

from jobs.spin.collate import pad_sequences
from jobs.spin.logprobs import sequence_logps, sequence_logps_from_hidden


def _independent_sum(logits: torch.Tensor, ids: list[int], response_start: int) -> float:
    """Per-token log-softmax, one position at a time: the obvious definition."""
    total = 0.0
    for t in range(response_start, len(ids)):
        total += torch.log_softmax(logits[t - 1].double(), dim=-1)[ids[t]].item()
    return total


def test_matches_an_independent_per_token_sum():
    torch.manual_seed(0)
    prompt, response = [5, 9, 2, 7], [3, 3, 8, 1, 6]
    ids, _, _, loss_mask = pad_sequences([prompt], [response], pad_id=0)
    logits = torch.randn(1, ids.shape[1], 11)
    logps, counts = sequence_logps(logits, ids, loss_mask)
    expected = _independent_sum(logits[0], prompt + response, len(prompt))
    assert abs(logps.item() - expected) < 1e-5
    assert counts.item() == len(response)


def test_prompt_and_padding_tokens_contribute_nothing():
    torch.manual_seed(1)
    prompts, responses = [[4, 4, 4], [7]], [[1, 2], [9, 9, 9, 9, 9]]
    ids, _, _, loss_mask = pad_sequences(prompts, responses, pad_id=0)
    logits = torch.randn(2, ids.shape[1], 12)
    before, _ = sequence_logps(logits, ids, loss_mask)

    # Logits at position t predict token t+1. Scribble over every position whose *next* token is a prompt
    # or padding token, and change the ids under prompt and padding: the sums must not move.
    scribbled, other_ids = logits.clone(), ids.clone()
    predicts_masked = ~loss_mask[:, 1:]
    scribbled[:, :-1][predicts_masked] = torch.randn(int(predicts_masked.sum()), 12) * 100
    scribbled[:, -1] = 1e4  # the last position predicts nothing
    other_ids[~loss_mask] = 11
    # The token just before the first response token is the context of the first response prediction, not
    # a target: it may change only the logits, which we already scribbled.
    after, _ = sequence_logps(scribbled, other_ids, loss_mask)
    assert torch.allclose(before, after)


def test_left_and_right_padding_give_the_same_masks_and_value():
    torch.manual_seed(2)
    prompts, responses = [[3, 1], [2, 2, 2, 2]], [[5, 6, 7], [8]]
    right = pad_sequences(prompts, responses, pad_id=0, padding_side="right")
    left = pad_sequences(prompts, responses, pad_id=0, padding_side="left")
    # Same tokens at the same positions, only shifted: a position-aware model sees identical inputs.
    for r, lft, a_r, a_l in zip(right[0], left[0], right[1], left[1], strict=True):
        assert r[a_r.bool()].tolist() == lft[a_l.bool()].tolist()
    for r, lft, a_r, a_l in zip(right[2], left[2], right[1], left[1], strict=True):
        assert r[a_r.bool()].tolist() == lft[a_l.bool()].tolist()

    # A position-wise "model": logits depend on the token and its position id only.
    table = torch.randn(9, 16, 9)

    def model(ids, position_ids):
        return table[ids, position_ids]

    value_right, _ = sequence_logps(model(right[0], right[2]), right[0], right[3])
    value_left, _ = sequence_logps(model(left[0], left[2]), left[0], left[3])
    assert torch.allclose(value_right, value_left)


def _hidden_batch(seed: int, vocab: int = 37, hidden: int = 8):
    torch.manual_seed(seed)
    prompts, responses = [[4, 4, 4], [7], [1, 2, 3, 4, 5]], [[1, 2], [9, 9, 9, 9, 9], [6]]
    ids, _, _, loss_mask = pad_sequences(prompts, responses, pad_id=0)
    h = torch.randn(3, ids.shape[1], hidden, requires_grad=True)
    w = torch.randn(vocab, hidden, requires_grad=True)
    return h, w, ids, loss_mask


def _value_and_grads(fn, h, w, weights):
    h.grad = w.grad = None
    value = fn()
    (value * weights).sum().backward()  # distinct weights per sequence, as the SPIN loss gives
    return value.detach(), h.grad.clone(), w.grad.clone()


def test_chunked_logps_and_their_gradients_equal_the_plain_ones():
    h, w, ids, mask = _hidden_batch(3)
    weights = torch.tensor([0.7, -1.3, 2.1])
    plain = _value_and_grads(lambda: sequence_logps(h @ w.T, ids, mask)[0], h, w, weights)
    for chunk in (1, 2, 5, 1000):  # smaller than, not dividing, and larger than the 8 response tokens
        chunked = _value_and_grads(lambda c=chunk: sequence_logps_from_hidden(h, w, ids, mask, c)[0], h, w, weights)
        for a, b in zip(plain, chunked, strict=True):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), chunk
    assert sequence_logps_from_hidden(h, w, ids, mask, 2)[1].tolist() == sequence_logps(h @ w.T, ids, mask)[1].tolist()


def test_chunked_logps_keep_the_lm_head_frozen_when_asked():
    h, w, ids, mask = _hidden_batch(4)
    w.requires_grad_(False)
    sequence_logps_from_hidden(h, w, ids, mask, 3)[0].sum().backward()
    assert w.grad is None and h.grad is not None and torch.isfinite(h.grad).all()


def test_chunked_logps_pass_the_autograd_gradient_check():
    torch.manual_seed(5)
    h, w, ids, mask = _hidden_batch(5, vocab=11, hidden=4)
    h, w = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: sequence_logps_from_hidden(a, b, ids, mask, 3)[0], (h, w))


def test_chunked_logps_under_bf16_autocast_track_the_plain_ones():
    """On a GPU the update runs under bf16 autocast: the chunked head computes in bf16 like the plain one, and its
    backward (which autocast does not cover) recomputes in bf16 too; values and gradients agree to bf16 rounding."""
    h, w, ids, mask = _hidden_batch(6, vocab=64, hidden=16)
    weights = torch.tensor([0.7, -1.3, 2.1])
    with torch.autocast("cpu", torch.bfloat16):
        plain = _value_and_grads(lambda: sequence_logps(h @ w.T, ids, mask)[0], h, w, weights)
        chunked = _value_and_grads(lambda: sequence_logps_from_hidden(h, w, ids, mask, 3)[0], h, w, weights)
    assert chunked[1].dtype == h.dtype and chunked[2].dtype == w.dtype  # gradients in the parameters' dtype
    for a, b in zip(plain, chunked, strict=True):
        assert torch.allclose(a, b, rtol=2e-2, atol=2e-2)
    exact = _value_and_grads(lambda: sequence_logps_from_hidden(h, w, ids, mask, 3)[0], h, w, weights)
    assert not torch.allclose(exact[0], chunked[0], rtol=1e-6, atol=1e-6)  # autocast did change the compute dtype
