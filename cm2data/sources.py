"""Load records from any source: a dataset folder written by cm2data, or files in a registered format.

Returns the records and the rejects; a row that cannot be read, or that repeats an id already seen, becomes a
reject with its location and rule, never an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cm2data import store
from cm2data.formats import input_files, read_records
from cm2data.rejects import Reject, unreadable
from cm2data.schema import Dialogue


def load(
    src: Path, fmt: str = "auto", *, on_record: Callable[[], None] | None = None, split: str | None = None
) -> tuple[list[Dialogue], list[Reject]]:
    """Read every record under ``src``. Dataset folders are recognised by their ``data/dialogues/`` files."""
    rejects: list[Reject] = []
    records = list(stream(src, fmt, rejects, on_record=on_record, split=split))
    return records, rejects


def stream(
    src: Path,
    fmt: str,
    rejects: list[Reject],
    *,
    on_record: Callable[[], None] | None = None,
    split: str | None = None,
) -> Iterator[Dialogue]:
    """:func:`load` one record at a time: yields the records :func:`load` returns, in the same order, and appends
    the rejects it returns to ``rejects`` as they are met. Holds one parquet batch and the ids seen, not the
    records, so a caller that lets each record go reads a dataset of any size in bounded memory."""
    items = _iter(src, fmt, split)
    if on_record is not None:
        items = _counted(items, on_record)
    yield from first_copies(items, set(), rejects)


def _counted(items: Iterator[Dialogue | Reject], on_record: Callable[[], None]) -> Iterator[Dialogue | Reject]:
    for item in items:
        on_record()
        yield item


def first_copies(items: Iterable[Dialogue | Reject], seen: set[str], rejects: list[Reject]) -> Iterator[Dialogue]:
    """The records of ``items`` whose id is not in ``seen`` yet (adding it); the rejects among ``items``, and a
    ``duplicate_id`` reject for every later copy, appended to ``rejects`` in order."""
    for item in items:
        if isinstance(item, Reject):
            rejects.append(item)
        elif item.id in seen:
            rejects.append(duplicate_reject(item))
        else:
            seen.add(item.id)
            yield item


def _iter(src: Path, fmt: str, split: str | None):
    if (fmt in ("auto", "dataset")) and store.is_dataset_folder(src):
        for s, paths in store.split_files(src).items():
            if split is not None and s != split:
                continue
            for path in paths:
                yield from _iter_shard(path)
        return
    if fmt == "dataset":
        raise FileNotFoundError(f"{src} is not a cm2data dataset folder (no data/dialogues/*.parquet)")
    if fmt != "auto":
        yield from read_records(src, fmt)
        return
    for path in input_files(src):  # a parquet file in the store's layout holds rows, not OpenAI messages
        yield from _iter_shard(path) if store.is_store_parquet(path) else read_records(path, fmt)


def _iter_shard(path: Path):
    """Records of one parquet shard of a dataset folder; a damaged shard or row becomes a reject."""
    for item in store.shard_batches(path, 4096, read=lambda batch: batch.to_pylist()):
        if isinstance(item, store.ShardUnreadable):
            yield unreadable(*item)
            return
        offset, _, rows = item
        for i, row in enumerate(rows):
            yield dataset_row(row, f"{path.name}#{offset + i}")


def duplicate_reject(record: Dialogue, location: str | None = None) -> Reject:
    """The reject of a record whose id was already read (the first copy is the one kept)."""
    return Reject(
        record.id,
        "read",
        "duplicate_id",
        f"record id {record.id!r} already read; the later copy is kept here",
        location,
        record.model_dump(mode="json", by_alias=True),
    )


def dataset_row(row: dict[str, Any], location: str) -> Dialogue | Reject:
    """One row of a dataset folder's parquet shard (:data:`cm2data.store.DIALOGUE_SCHEMA`) as a record, or the
    ``record_schema`` reject that says why it is not one."""
    try:
        return store.from_row(row)
    except (ValidationError, ValueError, KeyError, TypeError, AttributeError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return Reject(row.get("id"), "read", "record_schema", message, location, row)
