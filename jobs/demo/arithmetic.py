"""A miniature GSM8k: seeded one-step arithmetic word problems with exact answers.

    "Mia has 47 pens. Mia buys 38 more. How many pens does Mia have now?"
    -> "47 + 38 = 85. The answer is 85."

It gives the demo a task metric (exact match of the final number, `eval.answer_pattern`'s default) that moves
within minutes on a CPU.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

NAMES = (
    "Mia",
    "Leo",
    "Ava",
    "Sam",
    "Zoe",
    "Max",
    "Ivy",
    "Ben",
    "Ada",
    "Tom",
    "Eva",
    "Jon",
    "Amy",
    "Kai",
    "Lia",
    "Noah",
)
ITEMS = ("pens", "apples", "books", "coins", "cards", "shells", "stamps", "marbles", "stickers", "cookies")
Style = Literal["equation", "answer"]


@dataclass(frozen=True)
class Problem:
    question: str
    solution: str
    answer: int

    @property
    def prompt_id(self) -> str:
        return "arith-" + hashlib.sha1(self.question.encode()).hexdigest()[:16]

    def as_row(self, system: str | None = None) -> dict[str, object]:
        """The UltraChat-200k row shape, opened by a system message when given."""
        messages = [{"role": "user", "content": self.question}, {"role": "assistant", "content": self.solution}]
        return {
            "prompt_id": self.prompt_id,
            "messages": ([{"role": "system", "content": system}] if system else []) + messages,
        }


def _problem(rng: random.Random, style: Style) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.choice(("add", "subtract", "multiply", "divide"))
    if kind == "add":
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        c, op = a + b, "+"
        q = f"{name} has {a} {item}. {name} buys {b} more. How many {item} does {name} have now?"
    elif kind == "subtract":
        a = rng.randint(10, 99)
        b = rng.randint(1, a - 1)
        c, op = a - b, "-"
        q = f"{name} has {a} {item}. {name} gives away {b}. How many {item} does {name} have left?"
    elif kind == "multiply":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        c, op = a * b, "*"
        q = f"{name} has {a} boxes with {b} {item} in each box. How many {item} does {name} have?"
    else:
        b, c = rng.randint(2, 12), rng.randint(2, 12)
        a, op = b * c, "/"
        q = f"{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get?"
    solution = f"{a} {op} {b} = {c}. The answer is {c}." if style == "equation" else f"The answer is {c}."
    return Problem(q, solution, c)


QUESTIONS = {"add": "buys", "subtract": "gives away", "multiply": "boxes with", "divide": "shares"}


def operation(question: str) -> str:
    """Which of the four operations a problem's question asks for (read back from its wording)."""
    return next((op for op, words in QUESTIONS.items() if words in question), "other")


def make_problems(n: int, seed: int, exclude: Iterable[Problem] = (), style: Style = "equation") -> list[Problem]:
    """`n` distinct problems from `seed`, none of whose questions appear in `exclude`.

    style "equation" answers "47 + 38 = 85. The answer is 85."; "answer" answers "The answer is 85."
    """
    rng = random.Random(seed)
    seen = {p.question for p in exclude}
    out: list[Problem] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"could not draw {n} distinct problems; the template space is too small")
        p = _problem(rng, style)
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out


def write_jsonl(problems: Iterable[Problem], path: str | Path, system: str | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        for p in problems:
            f.write(json.dumps(p.as_row(system)) + "\n")
    tmp.replace(path)
    return path
