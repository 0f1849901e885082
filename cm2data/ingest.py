"""Writing the outputs of ``ingest`` and ``filter``: the dataset folder, provenance stamps and the rejects table.

:func:`write_ingested` writes records held in memory (local files); :func:`stream_ingest` writes a source as it is
read, in shards, with a journal that lets a killed run continue where it stopped (Hub sources, see
:mod:`cm2data.hub_source`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cm2data import store
from cm2data.rejects import Reject, read_rejects, write_rejects
from cm2data.schema import Dialogue
from cm2data.sources import duplicate_reject
from cm2data.validate import GateResult


def write_ingested(
    out: Path, records: list[Dialogue], rejects: list[Reject], *, split: str = store.DEFAULT_SPLIT, source: str = ""
) -> Path:
    """Stamp provenance, write ``records`` as ``split`` of the folder ``out`` and the read rejects next to them.

    Re-running with the same input gives the same folder (the split is replaced, not appended to).
    """
    now = datetime.now(UTC).isoformat()
    for r in records:
        stamp_ingested(r, source, now)
    store.write_dataset(out, records, split=split)
    path = out / store.REJECTS_FILE
    write_rejects(rejects, path)
    discard_journal(out, split)  # the split is this ingest's now: an unfinished streamed ingest of it is void
    return path


def stamp_ingested(record: Dialogue, source: str, now: str) -> None:
    """A local ingest's stamps: an empty provenance source becomes the record's source or else ``source``, a missing
    ``created_at`` becomes ``now``, and the history gets an ``ingest`` entry unless it has one."""
    prov = record.provenance
    if not prov.source:
        prov.source = record.source or source
    if prov.created_at is None:
        prov.created_at = now
    if not any(h.get("stage") == "ingest" for h in prov.history):
        prov.stamp("ingest", input=source)


def write_filtered(
    out: Path, src: Path, result: GateResult, read_rejects_: list[Reject], split: str = store.DEFAULT_SPLIT
) -> Path:
    """Write the accepted records to ``out``; every rejected record goes to ``out/rejects.jsonl`` in full (beside its
    first reason), with the input folder's earlier rejects carried over, so nothing is lost between stages."""
    if result.accepted is None or result.rejected is None:
        raise ValueError("write_filtered needs run_gate's result: a streamed gate result holds no records")
    earlier = read_rejects(src / store.REJECTS_FILE) if src.is_dir() else []
    for d in result.accepted:
        d.provenance.stamp("filter", rules=list(result.rules))
    rows = {d.id: store.to_row(d) for d in result.rejected}
    new: list[Reject] = []
    for r in result.rejects:
        if r.record_id in rows:
            r.raw = rows.pop(r.record_id)
        new.append(r)
    store.write_dataset(out, result.accepted, split=split)
    path = out / store.REJECTS_FILE
    write_rejects([*earlier, *read_rejects_, *new], path)
    return path


# ------------------------------------------------------------------------------------ streamed, resumable ingest
#
# A source too large to hold (a Hub dataset of a million dialogues) is written as it is read: records go into parquet
# shards of a staging folder, rejects into a staged rejects file, and after every shard a journal records how far
# the source was read. A killed ingest re-run with the same source continues from the last journal entry; what was
# written after it (a half-written shard, rejects of uncommitted rows) is discarded first, so nothing is written
# twice. At the end the shards replace the split in ``data/dialogues/`` under the store's names and the card is
# rewritten, so the folder is a normal dataset folder.

#: The staging folder of streamed ingests inside OUT, one sub-folder per output split.
STAGING = ".cm2data-ingest"
JOURNAL = "journal.json"
#: Records converted to Arrow (and written as one parquet row group) at a time: bounds the rows held in memory.
WRITE_BATCH = 1024

RUNNING, FINALIZING, COMPLETE = "running", "finalizing", "complete"


class IngestStateError(Exception):
    """The out folder holds a journal this ingest cannot continue (another source, or a damaged journal)."""


@dataclass
class IngestJournal:
    """What a streamed ingest into one split of OUT has done so far.

    ``source`` identifies what is read (for a Hub source: the URI as given, repo, commit, config, split, format and
    files); ``position`` is where reading continues (source-defined, e.g. file index, row and byte offset);
    ``shards`` the committed shards in order, each ``{"name", "records"}``; ``rejects_bytes`` the committed length
    of the staged rejects file; ``rules`` the reject count per rule.
    """

    source: dict[str, Any]
    split: str
    position: dict[str, int] = field(default_factory=dict)
    shards: list[dict[str, Any]] = field(default_factory=list)
    rows: int = 0
    accepted: int = 0
    rejected: int = 0
    rejects_bytes: int = 0
    rules: dict[str, int] = field(default_factory=dict)
    state: str = RUNNING
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    updated_at: str | None = None
    version: int = 1

    @staticmethod
    def folder(out: Path, split: str) -> Path:
        return out / STAGING / split

    @classmethod
    def load(cls, out: Path, split: str) -> IngestJournal | None:
        path = cls.folder(out, split) / JOURNAL
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise IngestStateError(
                f"{path} is damaged ({exc}); run again with --fresh to start this ingest over"
            ) from None

    @classmethod
    def all(cls, out: Path) -> list[IngestJournal]:
        """The journals of every split of OUT (for finding an ingest by its source when no split is named)."""
        root = out / STAGING
        found = []
        for sub in sorted(root.iterdir()) if root.is_dir() else []:
            journal = cls.load(out, sub.name) if (sub / JOURNAL).exists() else None
            if journal is not None:
                found.append(journal)
        return found

    def save(self, out: Path) -> None:
        """Write the journal atomically (temporary file, fsync, rename): a kill leaves the old or the new one."""
        self.updated_at = datetime.now(UTC).isoformat()
        folder = self.folder(out, self.split)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{JOURNAL}.partial"
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(asdict(self), fh, ensure_ascii=False, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(folder / JOURNAL)


def discard_journal(out: Path, split: str) -> None:
    """Forget a streamed ingest of ``split`` (``--fresh``, or the split written by another ingest)."""
    folder = IngestJournal.folder(out, split)
    if folder.exists():
        shutil.rmtree(folder)
    root = out / STAGING
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()


@dataclass
class SourceItem:
    """One row of a streamed source: the record or reject it became, where it was (for rejects), and the source
    position just after it (where a resumed ingest continues)."""

    position: dict[str, int]
    item: Dialogue | Reject
    location: str | None = None


def _id_key(record_id: str) -> int:
    # 64-bit digests instead of the ids themselves: a million ids then take about 50 MB, not 150 MB. Two distinct
    # ids collide with probability ~n²/2⁶⁵ (3e-8 for a million); such a record would be rejected as duplicate_id.
    return int.from_bytes(hashlib.blake2b(record_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


class _Shard:
    """The shard being written: records are converted and written WRITE_BATCH at a time (one parquet row group
    each), so memory holds at most one batch whatever the shard's size."""

    def __init__(self, folder: Path, name: str) -> None:
        self.final = folder / name
        self.tmp = folder / f".{name}.partial"
        self.records = 0
        self._buffer: list[Dialogue] = []
        self._writer: pq.ParquetWriter | None = None

    def add(self, record: Dialogue) -> None:
        self._buffer.append(record)
        self.records += 1
        if len(self._buffer) >= WRITE_BATCH:
            self._flush()

    def add_batch(self, batch: pa.RecordBatch) -> None:
        """Write rows already in the store's layout (after the records added before them), as one row group."""
        self._flush()
        self._write(batch)
        self.records += batch.num_rows

    def _flush(self) -> None:
        if not self._buffer:
            return
        with store.paused_gc():
            batch = pa.RecordBatch.from_pylist([store.to_row(r) for r in self._buffer], schema=store.DIALOGUE_SCHEMA)
        self._write(batch)
        self._buffer.clear()

    def _write(self, batch: pa.RecordBatch) -> None:
        if self._writer is None:
            self.tmp.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.tmp, store.DIALOGUE_SCHEMA, compression="zstd")
        self._writer.write_batch(batch)

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.tmp.unlink(missing_ok=True)

    def close(self) -> bool:
        """Finish the file under its final name (fsynced); ``False`` when the shard holds no record (no file)."""
        self._flush()
        if self._writer is None:
            return False
        self._writer.close()
        _fsync(self.tmp)
        self.tmp.replace(self.final)
        return True


def _fsync(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


@dataclass
class StreamResult:
    journal: IngestJournal
    resumed: bool  # an earlier, interrupted run had committed shards
    already_complete: bool  # nothing was read: the journal said the ingest was finished
    files: list[Path]  # the split's parquet files in OUT
    rejects_path: Path


def stream_ingest(
    out: Path,
    journal: IngestJournal,
    items: Callable[[dict[str, int]], Iterable[SourceItem]],
    *,
    source: str,
    shard_rows: int = 10_000,
    on_progress: Callable[[IngestJournal], None] | None = None,
    on_shard: Callable[[IngestJournal], None] | None = None,
) -> StreamResult:
    """Read ``items(position)`` from ``journal.position`` on and write the records as shards of ``journal.split``.

    Every ``shard_rows`` source rows (records and rejects) the current shard is closed and the journal saved, so a
    killed run loses at most one shard's work. Records are stamped with ``source`` (provenance source when empty,
    an ``ingest`` history entry); a record whose id was already read becomes a ``duplicate_id`` reject. When the
    items run out, the shards replace the split in ``out`` (see :func:`finalize`). ``journal`` is updated in place.
    """
    if shard_rows < 1:
        raise ValueError("shard_rows must be at least 1")
    if journal.state == COMPLETE:
        return StreamResult(
            journal, False, True, store.split_files(out).get(journal.split, []), out / store.REJECTS_FILE
        )
    resumed = journal.rows > 0
    if journal.state == RUNNING:
        seen = _recover(out, journal)
        journal.save(out)
        _read_into_shards(out, journal, items, seen, source, shard_rows, on_progress, on_shard)
    files = finalize(out, journal)
    return StreamResult(journal, resumed, False, files, out / store.REJECTS_FILE)


def _staged_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.parquet"


def _recover(out: Path, journal: IngestJournal) -> set[int]:
    """Undo what a killed run wrote after its last journal entry; return the ids of the committed records."""
    folder = IngestJournal.folder(out, journal.split)
    shards = folder / "shards"
    committed = {s["name"] for s in journal.shards}
    if shards.is_dir():
        for path in shards.iterdir():
            if path.name not in committed:  # a shard closed after the last journal entry, or a .partial one
                path.unlink()
    rejects = folder / store.REJECTS_FILE
    if rejects.exists():
        with rejects.open("r+b") as fh:
            fh.truncate(journal.rejects_bytes)
    elif journal.rejects_bytes:
        raise IngestStateError(f"{rejects} is missing but the journal counts {journal.rejected} rejects; use --fresh")
    seen: set[int] = set()
    for shard in journal.shards:
        path = shards / shard["name"]
        if not path.exists():
            raise IngestStateError(f"{path} is missing but the journal lists it; run again with --fresh")
        seen.update(_id_key(i) for i in pq.read_table(path, columns=["id"]).column("id").to_pylist())
    return seen


def _read_into_shards(
    out: Path,
    journal: IngestJournal,
    items: Callable[[dict[str, int]], Iterable[SourceItem]],
    seen: set[int],
    source: str,
    shard_rows: int,
    on_progress: Callable[[IngestJournal], None] | None,
    on_shard: Callable[[IngestJournal], None] | None,
) -> None:
    folder = IngestJournal.folder(out, journal.split)
    shards = folder / "shards"
    now = datetime.now(UTC).isoformat()
    shard = _Shard(shards, _staged_name(journal.split, len(journal.shards)))
    pending = 0  # source rows read since the last commit
    position = dict(journal.position)
    rules = Counter(journal.rules)

    def commit() -> None:
        nonlocal shard, pending
        if shard.close():
            journal.shards.append({"name": shard.final.name, "records": shard.records})
        rejects_fh.flush()
        os.fsync(rejects_fh.fileno())
        journal.rejects_bytes = rejects_fh.tell()
        journal.position = position
        journal.rules = dict(rules)
        journal.save(out)
        shard = _Shard(shards, _staged_name(journal.split, len(journal.shards)))
        pending = 0
        if on_shard is not None:
            on_shard(journal)

    with (folder / store.REJECTS_FILE).open("ab") as rejects_fh:
        try:
            rows = iter(items(dict(journal.position)))
            for row in rows:
                item = row.item
                if isinstance(item, Dialogue):
                    key = _id_key(item.id)
                    if key in seen:
                        item = duplicate_reject(item, row.location)
                    else:
                        seen.add(key)
                        _stamp(item, source, now)
                        shard.add(item)
                        journal.accepted += 1
                if isinstance(item, Reject):
                    rejects_fh.write((json.dumps(item.as_row(), ensure_ascii=False) + "\n").encode("utf-8"))
                    journal.rejected += 1
                    rules[item.rule] += 1
                journal.rows += 1
                pending += 1
                position = row.position
                if on_progress is not None:
                    on_progress(journal)
                if pending >= shard_rows:
                    commit()
            commit()
        except BaseException:
            shard.discard()  # the next run starts again from the last commit; the journal on disk says where
            raise


def _stamp(record: Dialogue, source: str, now: str) -> None:
    prov = record.provenance
    if not prov.source:
        prov.source = source
    if prov.created_at is None:
        prov.created_at = now
    prov.stamp("ingest", input=source)


def finalize(out: Path, journal: IngestJournal) -> list[Path]:
    """Put the committed shards in place of ``journal.split`` in ``out`` (store names, ``-of-`` counts), rewrite the
    card, move the staged rejects to ``out/rejects.jsonl`` and mark the journal complete.

    Each step can be repeated, and the journal says ``finalizing`` until all are done: a run killed in the middle
    finishes them on the next run. Until then the folder still holds the split's previous files, if any.
    """
    journal.state = FINALIZING
    journal.save(out)
    folder = IngestJournal.folder(out, journal.split)
    staged = folder / "shards"
    target = store.data_dir(out)
    target.mkdir(parents=True, exist_ok=True)
    n = max(1, len(journal.shards))
    finals = [target / f"{journal.split}-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    for old in target.glob(f"{journal.split}-*.parquet"):
        if old not in finals:
            old.unlink()
    if journal.shards:
        for shard, final in zip(journal.shards, finals, strict=True):
            src = staged / shard["name"]
            if src.exists():
                src.replace(final)
            elif not final.exists():
                raise IngestStateError(f"{src} is missing but the journal lists it; run again with --fresh")
    elif not finals[0].exists() or pq.read_metadata(finals[0]).num_rows:
        # no record at all: an empty shard without row groups, as store.write_table writes one
        pq.ParquetWriter(finals[0], store.DIALOGUE_SCHEMA, compression="zstd").close()
    store.write_card(out)
    rejects = folder / store.REJECTS_FILE
    if rejects.exists():
        rejects.replace(out / store.REJECTS_FILE)
    elif not (out / store.REJECTS_FILE).exists():
        (out / store.REJECTS_FILE).write_bytes(b"")
    if staged.exists():
        shutil.rmtree(staged)
    journal.state = COMPLETE
    journal.save(out)
    return finals
