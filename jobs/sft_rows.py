"""SFT rows: the two accepted shapes, their validation, and the readers for files and bundled corpora.

Accepted rows (JSONL lines or Parquet rows):

    {"prompt_id": "...", "messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}, ...]}
    {"prompt_id": "...", "prompt": "...", "response": "...", "system": "..."}   # prompt_id, system optional

A row becomes one (prompt messages, real response) example. A row that cannot be used raises BadRow with
the reason; the caller adds where it is (file and line or row).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa

from cluster.files import filesystem
from jobs.records import SFT_ROW_SCHEMA
from jobs.spin.pairs import RowRef

ROLES = ("system", "user", "assistant")


class BadRow(ValueError):
    """A row that cannot be turned into a (prompt, real response) example."""


class BadRowsError(ValueError):
    """Unusable rows were found and the data config says to fail."""

    def __init__(self, count: int, examples: list[str]):
        self.count = count
        self.examples = examples
        shown = "\n  ".join(examples)
        more = f"\n  ... and {count - len(examples)} more" if count > len(examples) else ""
        super().__init__(
            f"{count} SFT row(s) cannot be used (set data.bad_rows: skip to skip and count them):\n  {shown}{more}"
        )


@dataclass(frozen=True)
class SFTExample:
    prompt_id: str
    prompt: list[dict[str, str]]
    real: str


def locate(source: str, row: int) -> str:
    """Human form of a row position: 'file.jsonl line 7' (1-based) or 'file.parquet row 6' (0-based)."""
    if source.endswith((".jsonl", ".json")):
        return f"{source} line {row + 1}"
    return f"{source} row {row}"


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadRow(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise BadRow(f"{what} is empty")
    return value


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise BadRow(f"'messages' must be a non-empty list, got {type(value).__name__}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise BadRow(f"messages[{i}] must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise BadRow(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        out.append({"role": role, "content": _text(m.get("content"), f"messages[{i}].content")})
    return out


def _prompt_id(value: Any, prompt: list[dict[str, str]]) -> str:
    if value is None:
        # Rows without an id are identified by their prompt, so identical prompts dedupe as one.
        return "sha1-" + hashlib.sha1(json.dumps(prompt, sort_keys=True).encode()).hexdigest()[:20]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRow(f"'prompt_id' must be a string or an integer, got {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        raise BadRow("'prompt_id' is empty")
    # An integer id and a string id of the same digits are two ids: only the string keeps its bare text.
    return value if isinstance(value, str) else f"int:{value}"


def normalize_row(obj: Any, turn: Literal["first", "last"] = "first") -> SFTExample:
    """Turn one raw row into an example, or raise BadRow saying what is wrong with it."""
    if not isinstance(obj, dict):
        raise BadRow(f"expected an object, got {type(obj).__name__}")
    if obj.get("messages") is not None:
        messages = _messages(obj["messages"])
        answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if not answers:
            raise BadRow("'messages' has no assistant message to use as the real response")
        end = answers[0] if turn == "first" else answers[-1]
        prompt, real = messages[:end], messages[end]["content"]
        if not any(m["role"] == "user" for m in prompt):
            raise BadRow("the assistant message is not preceded by a user message")
    elif "prompt" in obj or "response" in obj:
        if "response" not in obj or obj["response"] is None:
            raise BadRow("'response' is missing")
        if "prompt" not in obj or obj["prompt"] is None:
            raise BadRow("'prompt' is missing")
        real = _text(obj["response"], "'response'")
        prompt = [{"role": "user", "content": _text(obj["prompt"], "'prompt'")}]
        if obj.get("system") is not None:
            prompt.insert(0, {"role": "system", "content": _text(obj["system"], "'system'")})
    else:
        raise BadRow(f"needs 'messages', or 'prompt' and 'response'; found keys {sorted(obj)}")
    return SFTExample(_prompt_id(obj.get("prompt_id"), prompt), prompt, real)


def file_kind(path: str, fmt: Literal["auto", "jsonl", "parquet"] = "auto") -> Literal["jsonl", "parquet"]:
    if fmt != "auto":
        return fmt
    return "parquet" if path.endswith(".parquet") else "jsonl"


class UnreadableFile(ValueError):
    """A data file that cannot be read at all as the format it is read as."""


PARQUET_MAGIC = b"PAR1"
UTF8_BOM = b"\xef\xbb\xbf"


def iter_raw_rows(
    data: bytes, kind: Literal["jsonl", "parquet"], source: str = "the file"
) -> Iterator[tuple[int, Any]]:
    """(row number, raw object) pairs of one JSONL or Parquet file's bytes. A JSONL line that is not UTF-8 or not
    JSON yields a BadRow instead of an object, so one broken line does not hide the others; lines end at "\\n"
    only (JSON strings may hold U+2028 or U+0085), and a UTF-8 byte-order mark opening the file is read past."""
    if kind == "parquet":
        yield from _parquet_rows(data, source)
        return
    if data.startswith(PARQUET_MAGIC):
        raise UnreadableFile(f"{source} is a Parquet file (it starts with PAR1) but is read as JSONL (data.format)")
    lines = data.removeprefix(UTF8_BOM).split(b"\n")
    for i, raw in enumerate(lines):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield i, BadRow(f"not UTF-8 (byte {e.start + 1} of the line is {raw[e.start : e.start + 1]!r})")
            continue
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as e:
            yield i, BadRow(f"not valid JSON ({e.msg} at column {e.colno})")


def _parquet_rows(data: bytes, source: str) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except pa.ArrowInvalid as e:
        raise UnreadableFile(f"{source} cannot be read as Parquet (data.format): {e}") from e
    for i, row in enumerate(table.to_pylist()):
        yield i, {k: v for k, v in row.items() if v is not None}


def chatterbot_rows(language: str = "english") -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(source, row, raw row) for each conversation of the chatterbot-corpus package (BSD-3-Clause).

    Each YAML conversation alternates user and assistant turns. YAML reads answers like `1945` as numbers,
    which are turned back into the text they were written as.
    """
    from importlib import resources

    import yaml

    root = resources.files("chatterbot_corpus") / "data" / language
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".yml"):
            continue
        doc = yaml.safe_load(entry.read_text(encoding="utf-8")) or {}
        for i, conversation in enumerate(doc.get("conversations") or []):
            turns = conversation if isinstance(conversation, list) else [conversation]
            if len(turns) < 2:
                continue  # a lone line is no exchange: the corpus is used as shipped, without a bad row
            messages = [
                {"role": "user" if j % 2 == 0 else "assistant", "content": _as_text(t)} for j, t in enumerate(turns)
            ]
            yield f"chatterbot/{language}/{entry.name}", i, {"messages": messages}


def _as_text(value: Any) -> Any:
    return value if isinstance(value, str) or value is None else str(value)


def prompt_key(messages_json: str) -> str:
    """A key of a prompt's content (its messages as stored), so one prompt under two ids is recognised as one."""
    return hashlib.sha1(messages_json.encode()).hexdigest()[:20]


def rows_table(rows: Iterable[tuple[str, int, Any]], turn: Literal["first", "last"]) -> pa.Table:
    """(source, row, raw object or BadRow) → a table in SFT_ROW_SCHEMA, with `error` set on unusable rows."""
    columns: dict[str, list[Any]] = {name: [] for name in SFT_ROW_SCHEMA.names}
    for source, row, obj in rows:
        try:
            if isinstance(obj, BadRow):
                raise obj
            example = normalize_row(obj, turn)
            values = [example.prompt_id, json.dumps(example.prompt), example.real, None]
        except BadRow as e:
            values = [None, None, None, str(e)]
        for name, value in zip(("prompt_id", "messages", "real", "error"), values, strict=True):
            columns[name].append(value)
        columns["source"].append(source)
        columns["row"].append(row)
    return pa.table(columns, schema=SFT_ROW_SCHEMA)


def index_rows(table: pa.Table, bad_rows: Literal["fail", "skip"]) -> tuple[list[RowRef], list[str]]:
    """Usable rows of an SFT_ROW_SCHEMA table as RowRefs, and a description of each unusable one.

    With bad_rows="fail" any unusable row raises BadRowsError naming (up to ten of) them.
    """
    good: list[RowRef] = []
    bad: list[str] = []
    columns = (table.column(c).to_pylist() for c in ("prompt_id", "source", "row", "messages", "error"))
    for pid, source, row, messages, error in zip(*columns, strict=True):
        if error is None:
            good.append(RowRef(pid, source, row, prompt_key(messages)))
        else:
            bad.append(f"{locate(source, row)}: {error}")
    bad.sort()
    if bad and bad_rows == "fail":
        raise BadRowsError(len(bad), bad[:10])
    return good, bad


def read_rows(
    path: str | None, source: Literal["file", "chatterbot"], fmt: Literal["auto", "jsonl", "parquet"], turn: Any
) -> pa.Table:
    """The SFT rows of a file, a folder of files or the bundled corpus, in this process (no Ray): `spin sft`."""
    if source == "chatterbot":
        return rows_table(chatterbot_rows(), turn)
    assert path is not None
    import pyarrow.fs as pafs

    fs, root = filesystem(path)
    if fs.get_file_info(root).type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        files = sorted(
            i.path
            for i in infos
            if i.type == pafs.FileType.File and (fmt != "auto" or i.path.endswith((".jsonl", ".json", ".parquet")))
        )
    else:
        files = [root]
    tables = []
    for name in files:
        with fs.open_input_stream(name) as f:
            tables.append(
                rows_table(((name, i, obj) for i, obj in iter_raw_rows(f.read(), file_kind(name, fmt), name)), turn)
            )
    return pa.concat_tables(tables) if tables else SFT_ROW_SCHEMA.empty_table()
