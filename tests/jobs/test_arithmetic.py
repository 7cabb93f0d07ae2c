import pytest

from jobs.arithmetic import exact_match, extract_answer, make_problems, write_jsonl
from jobs.sft_data import normalize_row


def test_problems_are_seeded_distinct_and_correct():
    a, b = make_problems(300, seed=1), make_problems(300, seed=1)
    assert a == b and len({p.question for p in a}) == 300
    for p in a:
        lhs = p.solution.split(" = ")[0]
        assert eval(lhs.replace("/", "//")) == p.answer  # noqa: S307 - our own arithmetic
        assert extract_answer(p.solution) == p.answer


def test_held_out_problems_exclude_training_questions():
    train = make_problems(500, seed=1)
    test = make_problems(200, seed=2, exclude=train)
    assert not {p.question for p in train} & {p.question for p in test}


def test_exact_match():
    probs = make_problems(4, seed=0)
    answers = [p.solution for p in probs[:3]] + ["I do not know."]
    assert exact_match(answers, probs) == 0.75
    assert extract_answer("The answer is -3.") == -3 and extract_answer("no") is None
    with pytest.raises(ValueError, match="3 predictions for 4 problems"):
        exact_match(answers[:3], probs)


def test_rows_are_ultrachat_shaped(tmp_path):
    path = write_jsonl(make_problems(3, seed=0), tmp_path / "d" / "train.jsonl")
    import json

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 3 and all(normalize_row(r).prompt_id.startswith("arith-") for r in rows)
