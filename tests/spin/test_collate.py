import pytest
import torch

from jobs.spin.collate import collate_pairs


def test_real_rows_come_first_and_only_responses_are_masked_in():
    batch = collate_pairs(
        [[1, 2], [3]],
        [[4, 5, 6], [7]],
        [[8], [9, 9]],
        pad_id=0,
        ref_logps_real=[-1.0, -2.0],
        ref_logps_generated=[-3.0, -4.0],
    )
    assert batch.num_pairs == 2
    assert batch.input_ids.tolist() == [
        [1, 2, 4, 5, 6],
        [3, 7, 0, 0, 0],
        [1, 2, 8, 0, 0],
        [3, 9, 9, 0, 0],
    ]
    assert batch.loss_mask.int().tolist() == [
        [0, 0, 1, 1, 1],
        [0, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 1, 1, 0, 0],
    ]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]
    assert batch.position_ids[1].tolist() == [0, 1, 1, 1, 1]
    assert batch.ref_logps_real.tolist() == [-1.0, -2.0]
    assert batch.ref_logps_generated.dtype == torch.float32


def test_left_padding_positions_count_real_tokens():
    batch = collate_pairs([[1, 2]], [[3]], [[4, 5, 6]], pad_id=0, padding_side="left")
    assert batch.input_ids.tolist() == [[0, 0, 1, 2, 3], [1, 2, 4, 5, 6]]
    assert batch.position_ids.tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert batch.loss_mask.int().tolist() == [[0, 0, 0, 0, 1], [0, 0, 1, 1, 1]]


def test_mismatched_columns_are_rejected():
    with pytest.raises(ValueError, match="prompt 2, real 1, generated 2"):
        collate_pairs([[1], [2]], [[3]], [[4], [5]], pad_id=0)
    with pytest.raises(ValueError, match="both reference log-prob columns"):
        collate_pairs([[1]], [[3]], [[4]], pad_id=0, ref_logps_real=[0.0])


def test_scored_lengths_mask_the_generated_tail_only():
    batch = collate_pairs([[1, 2]], [[3, 4, 5]], [[3, 9, 5, 6]], pad_id=0, scored_generated=[2])
    assert batch.loss_mask.tolist() == [
        [False, False, True, True, True, False],
        [False, False, True, True, False, False],
    ]
