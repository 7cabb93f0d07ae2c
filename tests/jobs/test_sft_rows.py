import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.sft_rows import (
    BadRow,
    BadRowsError,
    UnreadableFile,
    chatterbot_rows,
    index_rows,
    iter_raw_rows,
    locate,
    normalize_row,
    read_rows,
    rows_table,
)


def test_ultrachat_shape_first_and_last_turn():
    row = {
        "prompt_id": "abc",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ],
    }
    first = normalize_row(row, "first")
    assert first.prompt_id == "abc" and first.real == "Hello!"
    assert [m["role"] for m in first.prompt] == ["system", "user"]
    last = normalize_row(row, "last")
    assert last.real == "4" and len(last.prompt) == 4


def test_prompt_response_shape_and_derived_ids():
    a = normalize_row({"prompt": "Q?", "response": "A.", "system": "S"})
    b = normalize_row({"prompt": "Q?", "response": "Another answer."})
    assert a.prompt == [{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"}]
    assert a.prompt_id.startswith("sha1-")
    # Same prompt without the system message is a different prompt; same prompt is the same id.
    assert a.prompt_id != b.prompt_id
    assert normalize_row({"prompt": "Q?", "response": "x"}).prompt_id == b.prompt_id
    # An integer id and a string id of the same digits stay two ids.
    assert normalize_row({"prompt_id": 7, "prompt": "Q?", "response": "x"}).prompt_id == "int:7"
    assert normalize_row({"prompt_id": "7", "prompt": "Q?", "response": "x"}).prompt_id == "7"


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"prompt": "Q?"}, "'response' is missing"),
        ({"response": "A"}, "'prompt' is missing"),
        ({"prompt": "Q?", "response": 42}, "'response' must be a string, got int"),
        ({"prompt": "Q?", "response": "   "}, "'response' is empty"),
        ({"prompt": ["Q?"], "response": "A"}, "'prompt' must be a string, got list"),
        ({"messages": "hi"}, "'messages' must be a non-empty list"),
        ({"messages": [{"role": "user", "content": "Q"}]}, "no assistant message"),
        ({"messages": [{"role": "assistant", "content": "A"}]}, "not preceded by a user message"),
        ({"messages": [{"role": "bot", "content": "A"}]}, "messages[0].role must be one of system, user, assistant"),
        (
            {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "A"}]},
            "messages[0].content is empty",
        ),
        ({"prompt_id": {"x": 1}, "prompt": "Q", "response": "A"}, "'prompt_id' must be a string or an integer"),
        ({"text": "hello"}, "needs 'messages', or 'prompt' and 'response'; found keys ['text']"),
        (["not", "an", "object"], "expected an object, got list"),
    ],
)
def test_unusable_rows_say_why(row, reason):
    with pytest.raises(BadRow) as e:
        normalize_row(row)
    assert reason in str(e.value)


def test_jsonl_rows_keep_line_numbers_and_flag_broken_json():
    data = b'{"prompt": "a", "response": "b"}\n\n{not json}\n{"prompt": "c", "response": "d"}\n'
    rows = list(iter_raw_rows(data, "jsonl"))
    assert [i for i, _ in rows] == [0, 2, 3]
    assert isinstance(rows[1][1], BadRow) and "not valid JSON" in str(rows[1][1])
    assert locate("data.jsonl", 2) == "data.jsonl line 3"


def test_parquet_rows():
    buf = io.BytesIO()
    pq.write_table(pa.table({"prompt": ["a", "c"], "response": ["b", None]}), buf)
    rows = list(iter_raw_rows(buf.getvalue(), "parquet"))
    assert rows[0] == (0, {"prompt": "a", "response": "b"})
    with pytest.raises(BadRow, match="'response' is missing"):
        normalize_row(rows[1][1])
    assert locate("data.parquet", 1) == "data.parquet row 1"


def test_bad_rows_error_lists_examples_and_count():
    err = BadRowsError(12, [f"f.jsonl line {i}: 'response' is missing" for i in range(10)])
    text = str(err)
    assert "12 SFT row(s) cannot be used" in text and "data.bad_rows: skip" in text
    assert "f.jsonl line 3: 'response' is missing" in text and "... and 2 more" in text


def test_chatterbot_corpus_is_real_chat_data():
    rows = list(chatterbot_rows("english"))
    assert len(rows) > 1500
    usable, unusable = [], []
    for source, i, raw in rows:
        try:
            usable.append(normalize_row(raw))
        except BadRow:
            unusable.append((source, i))
    assert len(usable) > 1500
    assert all(u.prompt[-1]["role"] == "user" and u.real.strip() for u in usable)
    trivia = [u for u in usable if "37th President" in u.prompt[-1]["content"]]
    assert trivia and trivia[0].real == "Richard Nixon"
    json.dumps([u.prompt for u in usable[:5]])  # JSON-serialisable as stored in records


def test_the_three_splits_are_disjoint_on_the_demo_data_and_on_a_messages_file(tmp_path):
    """The demo's arithmetic problems, and a messages-shaped file where one prompt also appears under another id:
    no prompt (by id or by content) is both trained on and validated or tested on."""
    from jobs.demo.arithmetic import make_problems, write_jsonl
    from jobs.spin.pairs import select_prompts

    write_jsonl(make_problems(3000, seed=1, style="answer"), tmp_path / "demo" / "train.jsonl")
    rows = [
        {
            "prompt_id": f"id-{i}",
            "messages": [{"role": "user", "content": f"Q{i % 150}"}, {"role": "assistant", "content": "A"}],
        }
        for i in range(300)  # prompts Q0..Q149, each under two ids
    ]
    (tmp_path / "chat.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for path, validation, test in [(tmp_path / "demo", 500, 2000), (tmp_path / "chat.jsonl", 20, 30)]:
        usable, bad = index_rows(read_rows(str(path), "file", "auto", "first"), "fail")
        sel = select_prompts(usable, count=10**6, validation=validation, test=test, seed=42, iteration=0)
        assert (len(sel.validation), len(sel.test), bad) == (validation, test, [])
        contents = [{r.prompt_key for r in part} for part in (sel.train, sel.validation, sel.test)]
        ids = [{r.prompt_id for r in part} for part in (sel.train, sel.validation, sel.test)]
        for split in (contents, ids):
            assert not (split[0] & split[1] or split[0] & split[2] or split[1] & split[2])
        assert len(sel.train) + len(sel.validation) + len(sel.test) <= len(usable)


def _jsonl(*rows):
    return b"".join((json.dumps(r, ensure_ascii=False).encode() if isinstance(r, dict) else r) + b"\n" for r in rows)


ROW = {"prompt": "Q?", "response": "A."}


@pytest.mark.parametrize("separator", ["\u2028", "\u0085", "\u2029", "\x0c"])
def test_lines_end_at_newline_only(separator):
    """A JSON string may hold U+2028, U+0085 and the like: the row stays whole and later rows keep their lines."""
    rows = list(iter_raw_rows(_jsonl({"prompt": f"a{separator}b", "response": "c"}, ROW), "jsonl"))
    assert [i for i, _ in rows] == [0, 1] and rows[0][1]["prompt"] == f"a{separator}b" and rows[1][1] == ROW


def test_a_byte_that_is_not_utf8_is_one_bad_row_named_by_line():
    data = _jsonl(ROW, b'{"prompt": "caf\xe9", "response": "x"}', ROW)
    table = rows_table((("d.jsonl", i, obj) for i, obj in iter_raw_rows(data, "jsonl")), "first")
    good, bad = index_rows(table, "skip")
    assert len(good) == 2 and bad == ["d.jsonl line 2: not UTF-8 (byte 16 of the line is b'\\xe9')"]
    with pytest.raises(BadRowsError, match="d.jsonl line 2: not UTF-8"):
        index_rows(table, "fail")


def test_a_byte_order_mark_does_not_spoil_the_first_row():
    assert list(iter_raw_rows(b"\xef\xbb\xbf" + _jsonl(ROW), "jsonl")) == [(0, ROW)]


def test_a_parquet_file_read_as_jsonl_and_the_reverse_name_the_file():
    buf = io.BytesIO()
    pq.write_table(pa.table({"prompt": ["a"], "response": ["b"]}), buf)
    with pytest.raises(UnreadableFile, match="d.parquet is a Parquet file .* read as JSONL"):
        list(iter_raw_rows(buf.getvalue(), "jsonl", "d.parquet"))
    with pytest.raises(UnreadableFile, match="d.jsonl cannot be read as Parquet"):
        list(iter_raw_rows(_jsonl(ROW), "parquet", "d.jsonl"))


def test_the_bundled_corpus_runs_as_shipped():
    """Lone lines of chatterbot-corpus are no exchanges; with the defaults (bad_rows: fail) nothing is refused."""
    good, bad = index_rows(rows_table(chatterbot_rows(), "first"), "fail")
    assert len(good) > 1500 and bad == []
