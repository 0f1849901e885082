"""A dataset folder's ``dialogues`` rows as :func:`cm2data.sources.load` reads them, without building records.

:func:`read_parts` walks the parquet shards record batch by record batch and yields, in row order, the rows that
``load`` would return as records — as Arrow rows where it can, as records where it must — while collecting exactly
the read rejects ``load`` reports (damaged files, rows :func:`cm2data.store.from_row` refuses, later copies of an id),
in the same order, with the same messages, locations and raw rows.

Which rows read is decided by the columnar gate's screen (``columnar_screens.screen_batch``: its ``unreadable`` mask
is conservative); only rows it cannot clear, and later copies of an id (their reject carries the record), are built
with ``from_row``. A batch not in the store's layout is read row by row. Memory: one batch, plus the set of ids seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from cm2data import store
from cm2data.rejects import Reject, unreadable
from cm2data.schema import Dialogue
from cm2data.sources import dataset_row, duplicate_reject, first_copies


@dataclass
class Part:
    """Consecutive readable rows of one batch: ``rows`` (store layout) or, for a batch in another layout or rows
    the screen could not clear, ``records``. Exactly one of the two is non-empty."""

    rows: pa.Table | None = None
    records: list[Dialogue] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return self.rows.num_rows if self.rows is not None else len(self.records)


def read_parts(
    folder: Path,
    rejects: list[Reject],
    *,
    split: str | None = None,
    batch_size: int = store.BATCH_ROWS,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[Part]:
    """Yield the readable, first-copy rows of ``folder`` in :func:`cm2data.sources.load`'s order, appending its
    read rejects to ``rejects`` as they are met. ``on_progress(n)`` gets the rows of each batch read."""
    seen: set[str] = set()
    for s, paths in store.split_files(folder, store.DIALOGUES).items():
        if split is not None and s != split:
            continue
        for path in paths:
            yield from read_shard(path, seen, rejects, batch_size, on_progress)


def read_shard(
    path: Path,
    seen: set[str],
    rejects: list[Reject],
    batch_size: int,
    on_progress: Callable[[int], None] | None,
) -> Iterator[Part]:
    """One shard; a damaged file or batch is a read reject (:func:`cm2data.store.shard_batches`)."""
    location = f"{path.name}#"
    for item in store.shard_batches(path, batch_size, read=_rows_unless_in_layout):
        if isinstance(item, store.ShardUnreadable):
            rejects.append(unreadable(*item))
            return
        offset, batch, rows = item
        if rows is not None:
            yield from _by_row(rows, seen, rejects, location, offset)
        else:
            yield from _screened(batch, seen, rejects, location, offset)
        if on_progress is not None:
            on_progress(batch.num_rows)


def _rows_unless_in_layout(batch: pa.RecordBatch) -> list[dict] | None:
    """``None`` for a batch in the store's layout (kept as Arrow), else its rows."""
    from cm2data.validate.columnar_screens import schema_ok

    if not schema_ok(batch.schema):
        return batch.to_pylist()
    store.check_batch(batch)  # parquet does not check strings to be UTF-8, and an Arrow row is never decoded
    return None


def _by_row(rows: list[dict], seen: set[str], rejects: list[Reject], location: str, offset: int) -> Iterator[Part]:
    items = (dataset_row(row, f"{location}{offset + i}") for i, row in enumerate(rows))
    records = list(first_copies(items, seen, rejects))
    if records:
        yield Part(records=records)


def _screened(
    batch: pa.RecordBatch, seen: set[str], rejects: list[Reject], location: str, offset: int
) -> Iterator[Part]:
    """A batch in the store's layout: the rows that read and are first copies, as Arrow rows."""
    from cm2data.validate import RuleConfig
    from cm2data.validate.columnar_screens import screen_batch

    n = batch.num_rows
    maybe_bad = screen_batch(batch, RuleConfig(), rules=False).unreadable
    ids: list[str | None] = batch.column("id").to_pylist()
    build = maybe_bad.copy()
    here: set[str | None] = set()
    for i, did in enumerate(ids):  # a later copy's reject carries its record: build it
        if did in seen or did in here:
            build[i] = True
        here.add(did)
    need = np.flatnonzero(build)
    built: dict[int, Dialogue | Reject] = {}
    if len(need):
        for i, row in zip(need.tolist(), batch.take(pa.array(need)).to_pylist(), strict=True):
            built[i] = dataset_row(row, f"{location}{offset + i}")
    keep = np.zeros(n, dtype=np.bool_)
    for i in range(n):  # in row order, as sources.load reads
        item = built.get(i)
        if isinstance(item, Reject):
            rejects.append(item)
            continue
        did = ids[i]
        if did in seen:
            assert item is not None
            rejects.append(duplicate_reject(item))
            continue
        seen.add(did)  # type: ignore[arg-type]
        keep[i] = True
    if keep.all():
        yield Part(rows=pa.Table.from_batches([batch]))
    elif keep.any():
        yield Part(rows=pa.Table.from_batches([batch.filter(pa.array(keep))]))
