"""``cm2data ingest SRC --out DIR`` for a local SRC, streamed: memory holds one batch (and the ids read), not the
dataset.

Rows already in the store's layout (a dataset folder's shards, or parquet files of
:data:`cm2data.store.DIALOGUE_SCHEMA`) are read as Arrow record batches (:mod:`cm2data.folder_batches`) and written
as Arrow: a pydantic record is built only for a row the readability screen cannot clear, a later copy of an id, or
a row not in the form the record path would write (:func:`cm2data.ingest_arrow.canonical_mask`). Other files are
read record by record (:func:`cm2data.formats.read_records`) and converted :data:`RECORD_BATCH` at a time. The
output equals what :func:`cm2data.sources.load` followed by :func:`cm2data.ingest.write_ingested` writes:
the same rows in the same shards (``rows_per_file`` each), the same rejects in the same order, the same card.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cm2data import store
from cm2data.folder_batches import Part, read_parts, read_shard
from cm2data.formats import input_files, read_records
from cm2data.ingest import WRITE_BATCH, _Shard, discard_journal, stamp_ingested
from cm2data.ingest_arrow import canonical_mask, stamp_batch
from cm2data.rejects import Reject
from cm2data.schema import Dialogue
from cm2data.sources import duplicate_reject

#: Rejects shown on the terminal; all of them go to the rejects file.
EXAMPLES = 10
#: Records read from a file held at a time (a synthetic dialogue is about 67 KiB as pydantic objects).
RECORD_BATCH = WRITE_BATCH


class EmptySourceError(ValueError):
    """SRC holds no row at all (nothing was written)."""


@dataclass
class LocalIngest:
    """What an ingest wrote: ``records`` rows into ``files``, ``rejected`` rejects into ``rejects_path`` (``rules``:
    per rule; ``examples``: the first :data:`EXAMPLES`); ``arrow_rows``: rows written without a record."""

    records: int = 0
    rejected: int = 0
    arrow_rows: int = 0
    rules: Counter[str] = field(default_factory=Counter)
    examples: list[Reject] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    rejects_path: Path = Path()


def ingest_local(
    src: Path,
    out: Path,
    fmt: str = "auto",
    *,
    split: str = store.DEFAULT_SPLIT,
    rows_per_file: int = 50_000,
    on_rows: Callable[[int], None] | None = None,
) -> LocalIngest:
    """Read every row under ``src`` and write them as ``split`` of the dataset folder ``out`` (replacing that split),
    with the read rejects in ``out/rejects.jsonl``; ``on_rows(n)`` is told of rows as they are read.

    Raises ``FileNotFoundError``/``ValueError`` for a SRC that cannot be read at all (before writing anything) and
    :class:`EmptySourceError` when it holds no row.
    """
    parts = _parts(src, fmt, on_rows)
    now = datetime.now(UTC).isoformat()
    result = LocalIngest(rejects_path=out / store.REJECTS_FILE)
    writer = _SplitWriter(out, split, rows_per_file)
    sink = _RejectSink(out, result)
    try:
        # Each batch of records is freed (by reference counting) before the next: full collections would walk
        # every batch's hundreds of thousands of objects again while the heap stays small, so they are held off.
        with store.young_gc_only():
            for part in parts:
                if isinstance(part, Reject):
                    sink.add(part)
                elif part.rows is not None:
                    for batch in part.rows.to_batches():
                        _write_rows(batch, writer, src, now, result)
                else:
                    _write_records(part.records, writer, src, now)
        if not writer.rows and not sink.count:
            raise EmptySourceError(f"{src}: no rows found")
        result.files = writer.finish()
        sink.finish()
    except BaseException:
        writer.discard()
        sink.discard()
        raise
    discard_journal(out, split)  # the split is this ingest's now: an unfinished streamed ingest of it is void
    result.records = writer.rows
    return result


def _write_records(records: list[Dialogue], writer: _SplitWriter, src: Path, now: str) -> None:
    """Records read from a file (or a shard in another layout), stamped and written as rows."""
    for start in range(0, len(records), store.BATCH_ROWS):
        chunk = records[start : start + store.BATCH_ROWS]
        for record in chunk:
            stamp_ingested(record, str(src), now)
        with store.paused_gc():
            rows = [store.to_row(r) for r in chunk]
        writer.add(pa.RecordBatch.from_pylist(rows, schema=store.DIALOGUE_SCHEMA))


def _write_rows(batch: pa.RecordBatch, writer: _SplitWriter, src: Path, now: str, result: LocalIngest) -> None:
    """Readable first-copy rows: those in canonical form stamped in Arrow, the others through their record, in
    row order."""
    fast = canonical_mask(batch)
    if fast.all():
        writer.add(stamp_batch(batch, str(src), now, datetime.now(UTC).isoformat()))
        result.arrow_rows += batch.num_rows
        return
    fast_idx = np.flatnonzero(fast)
    slow_idx = np.flatnonzero(~fast)
    records = [store.from_row(row) for row in batch.take(pa.array(slow_idx)).to_pylist()]
    for record in records:
        stamp_ingested(record, str(src), now)
    with store.paused_gc():
        slow = pa.RecordBatch.from_pylist([store.to_row(r) for r in records], schema=store.DIALOGUE_SCHEMA)
    pieces = [slow]
    if len(fast_idx):
        pieces.insert(0, stamp_batch(batch.take(pa.array(fast_idx)), str(src), now, datetime.now(UTC).isoformat()))
    order = np.argsort(np.concatenate([fast_idx, slow_idx]), kind="stable")
    merged = pa.Table.from_batches(pieces, schema=store.DIALOGUE_SCHEMA).take(pa.array(order)).combine_chunks()
    for out_batch in merged.to_batches():
        writer.add(out_batch)
    result.arrow_rows += len(fast_idx)


# ------------------------------------------------------------------------------------------------------ reading


def check_source(src: Path, fmt: str) -> None:
    """Raise the ``FileNotFoundError``/``ValueError`` :func:`ingest_local` would raise for ``src`` before writing."""
    _parts(src, fmt, None)


def _parts(src: Path, fmt: str, on_rows: Callable[[int], None] | None) -> Iterator[Part | Reject]:
    """What ``src`` holds, in :func:`cm2data.sources.load`'s order: parts of readable first-copy rows, and rejects.

    The files are listed before the first item is asked for, so that a SRC that cannot be read fails first."""
    if fmt in ("auto", "dataset") and store.is_dataset_folder(src):
        return _folder_parts(src, on_rows)
    if fmt == "dataset":
        raise FileNotFoundError(f"{src} is not a cm2data dataset folder (no data/dialogues/*.parquet)")
    return _file_parts(input_files(src), fmt, on_rows)


def _folder_parts(src: Path, on_rows: Callable[[int], None] | None) -> Iterator[Part | Reject]:
    rejects: list[Reject] = []
    for part in read_parts(src, rejects, on_progress=on_rows):
        yield from _drain(rejects)
        yield part
    yield from _drain(rejects)


def _file_parts(files: list[Path], fmt: str, on_rows: Callable[[int], None] | None) -> Iterator[Part | Reject]:
    seen: set[str] = set()  # across files, as load dedupes across them
    rejects: list[Reject] = []
    for path in files:
        if fmt == "auto" and store.is_store_parquet(path):
            for part in read_shard(path, seen, rejects, store.BATCH_ROWS, on_rows):
                yield from _drain(rejects)
                yield part
            yield from _drain(rejects)
            continue
        records: list[Dialogue] = []
        for item in read_records(path, fmt):
            if on_rows is not None:
                on_rows(1)
            if isinstance(item, Reject):
                yield item
            elif item.id in seen:
                yield duplicate_reject(item)
            else:
                seen.add(item.id)
                records.append(item)
                if len(records) >= RECORD_BATCH:
                    yield Part(records=records)
                    records = []
        if records:
            yield Part(records=records)


def _drain(rejects: list[Reject]) -> Iterator[Reject]:
    yield from rejects
    rejects.clear()


# ------------------------------------------------------------------------------------------------------ writing


class _SplitWriter:
    """The split's shards, ``rows_per_file`` rows each, staged under hidden names beside the split's current files
    and put in their place by :meth:`finish` (the split is replaced, not appended to)."""

    def __init__(self, out: Path, split: str, rows_per_file: int) -> None:
        self.target = store.data_dir(out)
        self.out = out
        self.split = split
        self.rows_per_file = rows_per_file
        self.rows = 0
        self.staged: list[Path] = []
        self._shard: _Shard | None = None

    def add(self, batch: pa.RecordBatch) -> None:
        start = 0
        while start < batch.num_rows:
            if self._shard is None or self._shard.records >= self.rows_per_file:
                self._close()
                self._shard = _Shard(self.target, f".{self.split}-{len(self.staged):05d}.ingest")
            take = min(batch.num_rows - start, self.rows_per_file - self._shard.records)
            self._shard.add_batch(batch.slice(start, take))
            start += take
            self.rows += take

    def _close(self) -> None:
        if self._shard is not None and self._shard.close():
            self.staged.append(self._shard.final)
        self._shard = None

    def finish(self) -> list[Path]:
        """Replace the split's files by the staged shards (an empty file when no row was written), rewrite the card."""
        self._close()
        self.target.mkdir(parents=True, exist_ok=True)
        if not self.staged:  # no row group at all, as store.write_table writes an empty split
            empty = self.target / f".{self.split}-00000.ingest"
            pq.ParquetWriter(empty, store.DIALOGUE_SCHEMA, compression="zstd").close()
            self.staged.append(empty)
        n = len(self.staged)
        for old in self.target.glob(f"{self.split}-*.parquet"):
            old.unlink()
        finals = []
        for i, staged in enumerate(self.staged):
            final = self.target / f"{self.split}-{i:05d}-of-{n:05d}.parquet"
            staged.replace(final)
            finals.append(final)
        self.staged = []
        store.write_card(self.out)
        return finals

    def discard(self) -> None:
        if self._shard is not None:
            self._shard.discard()
        for path in self.staged:
            path.unlink(missing_ok=True)


class _RejectSink:
    """``rejects.jsonl`` written as rejects come (to a hidden file, put in place by :meth:`finish`); counts per rule
    and the first :data:`EXAMPLES` kept for the summary."""

    def __init__(self, out: Path, result: LocalIngest) -> None:
        self.tmp = out / f".{store.REJECTS_FILE}.partial"
        self.final = out / store.REJECTS_FILE
        self.result = result
        self.count = 0
        self._fh: TextIO | None = None

    def add(self, reject: Reject) -> None:
        if self._fh is None:
            self.tmp.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.tmp.open("w", encoding="utf-8")
        self._fh.write(_reject_line(reject))
        self.count += 1
        self.result.rejected += 1
        self.result.rules[reject.rule] += 1
        if len(self.result.examples) < EXAMPLES:
            self.result.examples.append(reject)

    def finish(self) -> None:
        if self._fh is None:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self.tmp.write_text("", encoding="utf-8")
        else:
            self._fh.close()
            self._fh = None
        self.tmp.replace(self.final)

    def discard(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.tmp.unlink(missing_ok=True)


def _reject_line(reject: Reject) -> str:
    return json.dumps(reject.as_row(), ensure_ascii=False) + "\n"
