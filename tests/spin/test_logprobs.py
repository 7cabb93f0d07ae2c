import torch

from jobs.spin.collate import pad_sequences
from jobs.spin.logprobs import sequence_logps


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
