import pytest

from jobs.spin.pairs import (
    RowRef,
    completed_response,
    pick_generated,
    response_budget,
    sample_key,
    scored_generated_length,
    select_prompts,
    training_iterations,
    truncate_response,
)


def _rows(ids, source="a.jsonl"):
    return [RowRef(pid, source, i) for i, pid in enumerate(ids)]


def test_sample_key_is_stable_and_seeded():
    assert sample_key(42, "p1") == sample_key(42, "p1")
    assert sample_key(42, "p1") != sample_key(43, "p1")
    # A fixed value guards against a silent change of hash (which would change every sample).
    assert sample_key(0, "x") == 11287871529720146943


def test_duplicates_keep_their_first_row_and_are_counted():
    rows = _rows(["a", "b", "a", "c", "b", "a"])
    sel = select_prompts(rows, count=10, validation=0, test=0, seed=0, iteration=0)
    assert sel.unique_prompts == 3 and sel.duplicate_rows == 3
    assert [(r.prompt_id, r.row) for r in sel.train] == [("a", 0), ("b", 1), ("c", 3)]


def test_evaluation_splits_are_fixed_disjoint_and_never_trained_on():
    rows = _rows([f"p{i}" for i in range(200)])
    fixed = None
    for iteration in range(3):
        sel = select_prompts(rows, count=50, validation=20, test=30, seed=7, iteration=iteration)
        assert (len(sel.train), len(sel.validation), len(sel.test)) == (50, 20, 30)
        splits = [{r.prompt_id for r in part} for part in (sel.train, sel.validation, sel.test)]
        assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
        fixed = fixed or splits[1:]
        assert splits[1:] == fixed  # the same validation and test prompts in every iteration


def test_one_prompt_under_two_ids_never_straddles_the_splits():
    """Rows 0-99 and 100-199 are the same 100 prompts under other ids: each content lands in one split only."""
    rows = [RowRef(f"a{i}", "a.jsonl", i, f"content-{i}") for i in range(100)]
    rows += [RowRef(f"b{i}", "b.jsonl", i, f"content-{i}") for i in range(100)]
    sel = select_prompts(rows, count=1000, validation=10, test=10, seed=0, iteration=0)
    held = {r.content for r in sel.validation + sel.test}
    assert len(held) == 20 and not held & {r.content for r in sel.train}
    assert len(sel.train) == 2 * (100 - 20)  # both ids of every other prompt train


def test_sample_depends_on_seed_and_iteration_but_not_on_row_order():
    ids = [f"p{i}" for i in range(100)]
    a = select_prompts(_rows(ids), count=10, validation=0, test=0, seed=1, iteration=0)
    shuffled = _rows(list(reversed(ids)), source="b.jsonl")
    b = select_prompts(shuffled, count=10, validation=0, test=0, seed=1, iteration=0)
    assert {r.prompt_id for r in a.train} == {r.prompt_id for r in b.train}
    c = select_prompts(_rows(ids), count=10, validation=0, test=0, seed=1, iteration=1)
    d = select_prompts(_rows(ids), count=10, validation=0, test=0, seed=2, iteration=0)
    assert {r.prompt_id for r in a.train} != {r.prompt_id for r in c.train}
    assert {r.prompt_id for r in a.train} != {r.prompt_id for r in d.train}


def test_count_larger_than_data_takes_everything():
    sel = select_prompts(_rows(["x", "y"]), count=5, validation=1, test=0, seed=0, iteration=0)
    assert len(sel.train) == 1 and len(sel.validation) == 1


def test_responses_fit_what_the_prompt_leaves():
    assert response_budget(3, 10) == 7
    assert response_budget(3, 10, max_new_tokens=4) == 4
    assert truncate_response([1, 2, 3], 2) == ([1, 2], True)
    assert truncate_response([1, 2], 2) == ([1, 2], False)
    with pytest.raises(ValueError, match="leaves no room"):
        response_budget(10, 10)


def test_training_iterations_mix_previous():
    assert training_iterations(0, mix_previous=True) == [0]
    assert training_iterations(2, mix_previous=True) == [1, 2]
    assert training_iterations(2, mix_previous=False) == [2]


def test_completed_response_ends_with_one_eos_only_when_finished():
    assert completed_response([5, 6], finished=True, eos_id=1) == [5, 6, 1]
    assert completed_response([5, 6, 1], finished=True, eos_id=1) == [5, 6, 1]
    assert completed_response([5, 6], finished=False, eos_id=1) == [5, 6]
    assert completed_response([], finished=True, eos_id=1) == [1]


def test_pair_rules_pick_the_documented_sample():
    real = [5, 6, 7, 1]
    samples = [[5, 6, 7, 1], [5, 6, 8, 1], [5, 9, 7, 1]]
    assert pick_generated(real, samples, "first") == 0  # the paper: whatever the first sample is
    assert pick_generated(real, samples, "differs") == 1
    assert pick_generated(real, samples, "incorrect", correct=[True, True, False]) == 2
    assert pick_generated(real, [real, list(real)], "differs") is None  # every sample equals the real answer
    assert pick_generated(real, samples, "incorrect", correct=[True] * 3) is None
    assert pick_generated(real, [], "first") is None
    with pytest.raises(ValueError, match="needs the task metric's verdict on every sample"):
        pick_generated(real, samples, "incorrect")


def test_the_generated_side_stops_after_its_first_divergent_token():
    real = [10, 11, 12, 13, 2]
    assert scored_generated_length(real, [10, 11, 99, 13, 2]) == 3  # shared 10 11, then the wrong 99
    assert scored_generated_length(real, [42, 11, 12]) == 1
    assert scored_generated_length(real, real) == 5  # identical: nothing to cut
    assert scored_generated_length(real, [10, 11]) == 2  # a prefix, cut short by the length budget
