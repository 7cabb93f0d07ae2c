"""Ray Data for the stages: SFT rows read with every row validated and located (nothing dropped silently), and
stage records written and read back as committed Parquet folders."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data
from ray.data.block import Block
from ray.data.datasource import FileBasedDatasource

from cluster.files import MARKER
from jobs.config import DataConfig
from jobs.progress import Stage
from jobs.records import SFT_ROW_SCHEMA
from jobs.sft_rows import chatterbot_rows, file_kind, iter_raw_rows, rows_table
from jobs.sft_rows import index_rows as sft_index_rows
from jobs.spin.pairs import RowRef
from jobs.storage import RunStorage

ROWS_PER_BLOCK = 4096
# On 2 cores, a Data task asking for a whole CPU waits forever for one that the Serve replica or a Train worker holds.
READ_CPUS = 0.25


class SFTDatasource(FileBasedDatasource):
    """JSONL or Parquet SFT files, read tolerantly: a bad row becomes an error entry, not a failed read."""

    def __init__(self, paths: str | list[str], *, fmt: Literal["auto", "jsonl", "parquet"], turn: Any, **kwargs: Any):
        super().__init__(paths, **kwargs)
        self._fmt = fmt
        self._turn = turn

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[Block]:
        rows = iter_raw_rows(f.read(), file_kind(path, self._fmt), path)
        while chunk := [(path, i, obj) for i, obj in _take(rows, ROWS_PER_BLOCK)]:
            yield rows_table(chunk, self._turn)


def _take(it: Iterator[Any], n: int) -> list[Any]:
    out = []
    for item in it:
        out.append(item)
        if len(out) == n:
            break
    return out


def read_sft(data: DataConfig) -> ray.data.Dataset:
    """The SFT rows of `data` as a Ray Dataset in SFT_ROW_SCHEMA (lazy; read where it runs)."""
    if data.source == "chatterbot":
        return ray.data.from_arrow(rows_table(chatterbot_rows(), data.turn))
    assert data.path is not None  # the config validator guarantees it
    # With format "auto" a folder's other files (markers, READMEs) are skipped by extension; a forced
    # format reads every file it is given.
    file_extensions = ["jsonl", "json", "parquet"] if data.format == "auto" else None
    return ray.data.read_datasource(
        SFTDatasource(data.path, fmt=data.format, turn=data.turn, file_extensions=file_extensions),
        num_cpus=READ_CPUS,
    )


def index_rows(rows: ray.data.Dataset, bad_rows: Literal["fail", "skip"]) -> tuple[list[RowRef], list[str]]:
    """Usable rows as RowRefs, and a description of each unusable one (see jobs.sft_rows.index_rows)."""
    columns = rows.select_columns(["prompt_id", "source", "row", "messages", "error"])
    batches = list(columns.iter_batches(batch_format="pyarrow", batch_size=None))
    return sft_index_rows(pa.concat_tables(batches) if batches else SFT_ROW_SCHEMA.empty_table(), bad_rows)


def keep_rows(rows: ray.data.Dataset, splits: dict[tuple[str, int], str]) -> ray.data.Dataset:
    """The rows at exactly the (source, row) positions of `splits`, with their split name added."""

    def keep(batch: pa.Table) -> pa.Table:
        names = [
            splits.get((s, r))
            for s, r in zip(batch.column("source").to_pylist(), batch.column("row").to_pylist(), strict=True)
        ]
        kept = batch.append_column("split", pa.array(names, pa.string()))
        return kept.filter(pa.array([n is not None for n in names], type=pa.bool_()))

    return rows.map_batches(keep, batch_format="pyarrow", batch_size=None, num_cpus=READ_CPUS)


def write_records(
    ds: ray.data.Dataset,
    storage: RunStorage,
    path: str,
    schema: pa.Schema,
    *,
    meta: dict[str, Any] | None = None,
    on_batch: Callable[[int, pa.Table], None] | None = None,
    expected: int | None = None,
    stage: Stage | None = None,
) -> int:
    """Stream `ds` into Parquet parts under `path`, committed atomically; returns the row count.

    The driver writes the parts as batches arrive; `on_batch(rows so far, batch)` follows the progress. With
    `expected`, any other row count is an error and nothing is committed. `stage` records two parts of its time:
    `first_records`, from the pipeline's start to its first batch (its actors starting, loading, and the first
    batch's own work), and `commit`.
    """
    staging = storage.staging_path(path)
    rows, started = 0, time.perf_counter()
    parts = _PartWriter(storage, staging, schema)
    try:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            if batch.num_rows == 0:
                continue
            if stage is not None and rows == 0:
                stage.part("first_records", time.perf_counter() - started)
            parts.add(batch)
            rows += batch.num_rows
            if on_batch:
                on_batch(rows, batch)
        parts.flush()
    except BaseException:
        storage.fs.delete_dir(staging)  # nothing half-written stays behind
        raise
    if expected is not None and rows != expected:
        storage.fs.delete_dir(staging)
        raise RuntimeError(f"{storage.uri_of(path)}: {rows} records were produced for {expected} inputs")
    committing = time.perf_counter()
    storage.commit(staging, path, {"rows": rows, **(meta or {})})
    if stage is not None:
        stage.part("commit", time.perf_counter() - committing)
    return rows


class _PartWriter:
    """Batches gathered into Parquet parts of ROWS_PER_BLOCK rows or more (the last may be smaller): the generate
    stage's batches are one generator request each, and a folder of thousands of tiny files reads slowly."""

    def __init__(self, storage: RunStorage, folder: str, schema: pa.Schema):
        self.storage, self.folder, self.schema = storage, folder, schema
        self.pending: list[pa.Table] = []
        self.written = 0

    def add(self, batch: pa.Table) -> None:
        self.pending.append(batch.cast(self.schema))
        if sum(t.num_rows for t in self.pending) >= ROWS_PER_BLOCK:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        with self.storage.fs.open_output_stream(f"{self.folder}/part-{self.written:05d}.parquet") as f:
            pq.write_table(pa.concat_tables(self.pending), f)
        self.written += 1
        self.pending = []


def read_records(storage: RunStorage, paths: list[str]) -> ray.data.Dataset:
    """Committed record folders as one Dataset; a folder without its marker is refused."""
    for path in paths:
        if not storage.is_complete(path):
            raise FileNotFoundError(f"{storage.uri_of(path)} is missing or incomplete (no {MARKER} marker)")
    return ray.data.read_parquet(
        paths,
        filesystem=storage.fs,
        file_extensions=["parquet"],
        num_cpus=READ_CPUS,
    )


def read_pairs(storage: RunStorage, iterations: list[int], split: str, folder: str = "pairs") -> ray.data.Dataset:
    """The committed pair records of `split` ("train" or "validation") of the given iterations that training
    keeps (a prompt skipped by pairs.no_negative is not); `folder` "carried" reads the rescored carried pairs."""
    paths = [storage.pairs(k) if folder == "pairs" else storage.carried(k) for k in iterations]

    def selected(batch: pa.Table) -> pa.Table:
        return batch.filter(pc.and_(pc.equal(batch.column("split"), split), batch.column("kept")))

    return read_records(storage, paths).map_batches(
        selected, batch_format="pyarrow", batch_size=None, num_cpus=READ_CPUS
    )


def to_table(ds: ray.data.Dataset) -> pa.Table:
    """A (small) dataset gathered on the driver as one Arrow table."""
    batches = list(ds.iter_batches(batch_format="pyarrow", batch_size=None))
    return pa.concat_tables(batches) if batches else ds.schema().base_schema.empty_table()
