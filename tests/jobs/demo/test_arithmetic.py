import json

from jobs.config import EvalConfig
from jobs.demo.arithmetic import make_problems, write_jsonl
from jobs.sft_rows import normalize_row
from jobs.spin.metrics import answer_match


def test_problems_are_seeded_distinct_and_correct():
    a, b = make_problems(300, seed=1), make_problems(300, seed=1)
    assert a == b and len({p.question for p in a}) == 300
    for p in a:
        lhs = p.solution.split(" = ")[0]
        assert eval(lhs.replace("/", "//")) == p.answer  # noqa: S307 - our own arithmetic


def test_held_out_problems_exclude_training_questions():
    train = make_problems(500, seed=1)
    test = make_problems(200, seed=2, exclude=train)
    assert not {p.question for p in train} & {p.question for p in test}


def test_the_default_answer_pattern_reads_the_tasks_answers():
    """The evaluation's default pattern finds each problem's answer in both solution styles."""
    pattern = EvalConfig().answer_pattern
    for style in ("equation", "answer"):
        probs = make_problems(4, seed=0, style=style)
        answers = [p.solution for p in probs[:3]] + ["I do not know."]
        assert answer_match(answers, [p.solution for p in probs], pattern) == (0.75, 4)


def test_rows_are_ultrachat_shaped(tmp_path):
    path = write_jsonl(make_problems(3, seed=0), tmp_path / "d" / "train.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 3 and all(normalize_row(r).prompt_id.startswith("arith-") for r in rows)
