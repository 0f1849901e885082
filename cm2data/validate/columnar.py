"""The gate over Arrow record batches: load + validate without a pydantic object per dialogue.

Input: record batches in the store's row layout (:data:`cm2data.store.DIALOGUE_SCHEMA`, as
``pyarrow.parquet.ParquetFile.iter_batches`` reads a dataset folder's shards). Output: a :class:`ColumnarResult` —
the same rejects (record, rule, message, in the same order) and counts as :func:`~cm2data.validate.run_gate` over
the records those rows hold, plus the rows that could not be read as records (``read_rejects``, as
:func:`cm2data.sources.load` reports them).

How: :func:`~cm2data.validate.columnar_screens.screen_batch` proves, a whole batch at a time, which rows certainly
read and which rules certainly pass for which rows. Only for a row where something is not proven is the pydantic
record built (:func:`cm2data.store.from_row`), and on it run the exact rules that were not proven — the same
functions :func:`run_gate` runs; they alone decide rejects and write the messages. The pandera tables validate the
dialogue table whole (three columns for every record, at the end) and the item rows of every record whose item
screen is not clear, with the row numbers one whole-table validation would give, so that failures merge and sort
exactly as :class:`~cm2data.validate.tables.TableRows` does. Batches in any other layout are read row by row and
every rule runs on them.

Memory: one batch and its flat views, the dialogue table's three columns, and — only when ids may repeat
(``dedupe=False``) — five compact columns per item row for the window checks of shared ids.

API: :class:`ColumnarGate` (``add_batch`` per batch, ``finish`` once), :func:`gate_batches` over an iterable of
batches and :func:`gate_dataset` over a dataset folder.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import ValidationError

from cm2data import store
from cm2data.rejects import Reject, unreadable
from cm2data.schema import Dialogue
from cm2data.validate.checklist import steps_per_turn
from cm2data.validate.columnar_screens import BatchScreen, _pl, schema_ok, screen_batch
from cm2data.validate.gate import STAGES, GateResult, _Gate, _more
from cm2data.validate.rules import RuleConfig
from cm2data.validate.tables import (
    _ITEM_TYPES,
    ITEM_SCHEMA,
    TableFailure,
    TableRows,
    _failing,
    _item_place,
    _with_windows,
)

#: Unclear item rows gathered before one pandera validation.
_VALIDATE_ROWS = 50_000

#: What :func:`cm2data.sources.load` turns into a ``record_schema`` reject when a row does not read.
READ_ERRORS = (ValidationError, ValueError, KeyError, TypeError, AttributeError)


@dataclass
class ColumnarResult(GateResult):
    """A :class:`~cm2data.validate.gate.GateResult` without record objects (``accepted``/``rejected`` are ``None``),
    plus ``read_rejects`` (rows that are not records, and with ``dedupe`` later copies of an id), the number of
    checked records that passed (``accepted_count``) and ``exact``: how many records went through the exact path,
    per reason."""

    read_rejects: list[Reject] = field(default_factory=list)
    accepted_count: int = 0
    exact: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


class _ItemTable(TableRows):
    """:class:`TableRows` fed with columns: the dialogue table a batch at a time, item rows as polars frames that
    carry their row numbers in the whole item table (only the rows of records whose item screen is not clear need
    validating; the numbers keep the order of failures that of one whole-table validation)."""

    def __init__(self, keep_windows: bool) -> None:
        super().__init__(chunk_records=None)
        self._keep_windows = keep_windows
        self.n_item_rows = 0
        self._pending_frames: list[pl.DataFrame] = []
        self._pending_rows = 0

    def failures(self) -> list[TableFailure]:
        self._validate_pending()
        return super().failures()

    def add_dialogues(self, ids: list[str], num_turns: list[int], status: list[str]) -> list[int]:
        """Append records to the dialogue table; their codes (position of the first record with the same id)."""
        cols = self.dialogues
        start = len(cols["dialogue_id"])
        first = self._first
        codes = [first.setdefault(did, start + k) for k, did in enumerate(ids)]
        cols["dialogue_id"] += ids
        cols["num_turns"] += num_turns
        cols["review_status"] += status
        return codes

    def add_items(self, frame: pl.DataFrame, windows: pl.DataFrame | None) -> None:
        """Validate item rows (``frame``: the item table's columns plus ``row``); keep ``windows`` (``row``,
        ``dialogue``, ``variant``, ``turn``, ``item_id``, ``weight`` of every item row) for the window re-check of
        shared ids."""
        if windows is not None and self._keep_windows and windows.height:
            self._kept.append(windows)
            self._chunks = 2  # failures() re-checks the windows of shared ids over the kept rows
        if not frame.height:
            return
        # pandera's fixed cost per validation outweighs a batch's few unclear rows: validate them in larger chunks
        # (the rows carry their numbers, so when they are validated changes nothing)
        self._pending_frames.append(frame)
        self._pending_rows += frame.height
        if self._pending_rows >= _VALIDATE_ROWS:
            self._validate_pending()

    def _validate_pending(self) -> None:
        if not self._pending_frames:
            return
        frame = pl.concat(self._pending_frames)
        self._pending_frames, self._pending_rows = [], 0
        described = _failing(ITEM_SCHEMA, _with_windows(frame))
        if described is None:
            return
        failing, rules, orders, _, messages = described
        self._messages.update(messages)
        places = _item_place(failing)
        rows = failing["row"].to_list()
        self._merge(self._with_ids(failing)["dialogue_id"].to_list(), rules, orders, rows, places)


class ColumnarGate:
    """The gate, a batch at a time. ``config``, ``stages`` and ``rules`` as for :func:`run_gate`.

    ``dedupe=True`` reads like :func:`cm2data.sources.load`: a later row with an id already read becomes a
    ``duplicate_id`` read reject and is not checked (what ``cm2data validate`` does); ``dedupe=False`` checks every
    readable row, like :func:`run_gate` over the records.

    :meth:`add_batch` returns, per row of the batch, whether it is rejected so far (unreadable, a duplicate, or a
    failed rule filter or record-level checklist rule); table failures and dataset-wide rules are known only after
    :meth:`finish` (their records are in :attr:`ColumnarResult.rejected_ids`).
    """

    def __init__(
        self,
        config: RuleConfig | None = None,
        *,
        stages: Sequence[str] = STAGES,
        rules: Sequence[str] | None = None,
        dedupe: bool = False,
    ) -> None:
        self._gate = _Gate(config, stages, rules, None)
        self.cfg = self._gate.cfg
        self.table = _ItemTable(keep_windows=not dedupe) if "tables" in stages else None
        self._gate.rows = self.table
        self.dedupe = dedupe
        self.rule_list = [n for n, _ in self._gate.record_rules] + [n for n, _ in self._gate.checklist_rules]
        self.read_rejects: list[Reject] = []
        self.checked = 0
        self._seen: set[str] = set()
        self._ids: list[str] = []  # every checked record's id, when there is no table to hold them
        self.exact: dict[str, int] = {}
        self._unread: dict[int, Reject] = {}
        #: CPU seconds per part of the work (screens, building records, exact rules, tables)
        self.seconds: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------------ batches

    def add_batch(self, batch: pa.RecordBatch, *, location: str | None = None, offset: int = 0) -> np.ndarray:
        """Check every row of ``batch``. ``location``/``offset`` name the rows in read rejects (``file#row``)."""
        if batch.num_rows == 0:
            return np.zeros(0, dtype=np.bool_)
        if not schema_ok(batch.schema):
            return self._add_rows(batch.to_pylist(), location, offset, "layout")
        batch.validate()
        t0 = time.process_time()
        screened = screen_batch(batch, self.cfg)
        self._clock("screen", t0)
        return self._add_screened(batch, screened, location, offset)

    def _clock(self, phase: str, t0: float) -> float:
        now = time.process_time()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - t0
        return now

    def _add_screened(self, batch: pa.RecordBatch, s: BatchScreen, location: str | None, offset: int) -> np.ndarray:
        n = s.n
        ids: list[str | None] = batch.column("id").to_pylist()
        exact = s.not_proven(self.rule_list)
        flagged = [(rule, s.flags[rule]) for rule in self.rule_list if rule in s.flags]
        unscreened = [rule for rule in self.rule_list if rule not in s.flags]
        build = exact.copy()
        if self.dedupe:  # a later copy of an id is rejected with its record: build the candidates
            seen, here = self._seen, set()  # (no copy of the dataset-wide set: that would be quadratic in batches)
            for i, did in enumerate(ids):
                if did in seen or did in here:
                    build[i] = True
                here.add(did)
        built: dict[int, Dialogue | BaseException] = {}
        t0 = time.process_time()
        need = np.nonzero(build)[0]
        if len(need):
            for i, row in zip(need.tolist(), batch.take(pa.array(need)).to_pylist(), strict=True):
                try:
                    built[i] = store.from_row(row)
                except READ_ERRORS as exc:
                    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    where = f"{location}#{offset + i}" if location is not None else None
                    built[i] = exc
                    self._unread[i] = Reject(row.get("id"), "read", "record_schema", message, where, row)
        t0 = self._clock("build", t0)
        rejected = np.zeros(n, dtype=np.bool_)
        gated = np.ones(n, dtype=np.bool_)
        seen = self._seen
        for i in range(n):  # in row order, as sources.load reads
            d = built.get(i)
            if isinstance(d, BaseException):
                self.read_rejects.append(self._unread.pop(i))
                self._count("unreadable")
                gated[i] = False
                rejected[i] = True
                continue
            if self.dedupe:
                did = ids[i]
                if did in seen:
                    assert d is not None
                    self.read_rejects.append(
                        Reject(
                            did,
                            "read",
                            "duplicate_id",
                            f"record id {did!r} already read; the later copy is kept here",
                            None,
                            d.model_dump(mode="json", by_alias=True),
                        )
                    )
                    gated[i] = False
                    rejected[i] = True
                    continue
                seen.add(did)  # type: ignore[arg-type]
            if not exact[i]:
                continue
            assert d is not None
            if s.unreadable[i]:
                wanted = self.rule_list
            else:
                wanted = [rule for rule, mask in flagged if mask[i]] + unscreened
            if self._exact(d, wanted):
                rejected[i] = True
        t0 = self._clock("exact", t0)
        self._add_tables(batch, s, gated, ids)
        self._clock("tables", t0)
        return rejected

    def _exact(self, d: Dialogue, wanted: list[str]) -> bool:
        """Run the exact rules in ``wanted`` (in the gate's order) on ``d``; record their rejects."""
        cfg = self.cfg
        found: list[Reject] = []
        for name, fn in self._gate.record_rules:
            if name in wanted:
                self._count(name)
                problems = fn(d, cfg)
                if problems:
                    found.append(Reject(d.id, "validate", name, "; ".join(problems[:5]) + _more(problems)))
        if d.checklists:
            steps: list[int] | None = None
            for name, check in self._gate.checklist_rules:
                if name in wanted:
                    self._count(name)
                    if steps is None:
                        steps = steps_per_turn(d.messages)
                    problems = check(d, steps)
                    if problems:
                        found.append(Reject(d.id, "validate", name, "; ".join(problems[:5]) + _more(problems)))
        if found:
            self._gate.failed.setdefault(d.id, []).extend(found)
        return bool(found)

    def _count(self, reason: str) -> None:
        self.exact[reason] = self.exact.get(reason, 0) + 1

    def _add_tables(self, batch: pa.RecordBatch, s: BatchScreen, gated: np.ndarray, ids: list[str | None]) -> None:
        keep = np.nonzero(gated)[0]
        kept_ids: list[str] = [ids[i] for i in keep.tolist()]  # type: ignore[misc]
        self.checked += len(keep)
        table = self.table
        if table is None:
            self._ids += kept_ids
            return
        turns = s.num_turns[keep].tolist()
        status = s.review_status.take(pa.array(keep)).to_pylist()
        codes = np.full(s.n, -1, dtype=np.int64)
        codes[keep] = table.add_dialogues(kept_ids, turns, status)
        it = s.items
        in_gate = gated[it.row]
        numbers = np.full(len(it.row), -1, dtype=np.int64)
        numbers[in_gate] = table.n_item_rows + np.arange(int(in_gate.sum()), dtype=np.int64)
        table.n_item_rows += int(in_gate.sum())
        check = in_gate & s.table[it.row]
        windows = None
        if not self.dedupe:
            sel = np.nonzero(in_gate)[0]
            windows = pl.DataFrame(
                {
                    "row": numbers[sel].astype(np.uint32),
                    "dialogue": codes[it.row[sel]],
                    "variant": it.variant[sel],
                    "turn": it.turn[sel],
                    "item_id": _pl(it.item_id.take(pa.array(sel))),
                    "weight": it.weight[sel],
                }
            )
        sel = np.nonzero(check)[0]
        take = pa.array(sel)
        frame = pl.DataFrame(
            {
                "dialogue": codes[it.row[sel]],
                "variant": it.variant[sel],
                "turn": it.turn[sel],
                "item_id": _pl(it.item_id.take(take)),
                "focus_on": _pl(it.focus_on.take(take)),
                "question": _pl(it.question.take(take)),
                "pass_condition": _pl(it.pass_condition.take(take)),
                "weight": it.weight[sel],
                "bad_evidence_from": it.bad_evidence_from[sel],
                "row": numbers[sel],
            },
            schema={**_ITEM_TYPES, "row": pl.Int64},  # the same order as the columns above
        )
        table.add_items(frame, windows)

    # ------------------------------------------------------------------------------------------ other layouts

    def _add_rows(self, rows: list[dict[str, Any]], location: str | None, offset: int, reason: str) -> np.ndarray:
        """Rows of a batch in another layout: read each as :func:`cm2data.sources.load` does, every rule exact."""
        rejected = np.zeros(len(rows), dtype=np.bool_)
        records: list[tuple[int, Dialogue]] = []
        for i, row in enumerate(rows):
            self._count(reason)
            try:
                d = store.from_row(row)
            except READ_ERRORS as exc:
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                where = f"{location}#{offset + i}" if location is not None else None
                self.read_rejects.append(Reject(row.get("id"), "read", "record_schema", message, where, row))
                rejected[i] = True
                continue
            if self.dedupe:
                if d.id in self._seen:
                    self.read_rejects.append(
                        Reject(
                            d.id,
                            "read",
                            "duplicate_id",
                            f"record id {d.id!r} already read; the later copy is kept here",
                            None,
                            d.model_dump(mode="json", by_alias=True),
                        )
                    )
                    rejected[i] = True
                    continue
                self._seen.add(d.id)
            records.append((i, d))
        for i, d in records:
            if self._exact(d, self.rule_list):
                rejected[i] = True
        self.add_records([d for _, d in records])
        return rejected

    def add_records(self, records: Sequence[Dialogue]) -> None:
        """Table rows of records checked outside the screens (every item row validated)."""
        self.checked += len(records)
        table = self.table
        if table is None:
            self._ids += [d.id for d in records]
            return
        if not records:
            return
        gathered = TableRows(chunk_records=None)
        for d in records:
            gathered.add(d)
        codes = np.asarray(
            table.add_dialogues(
                gathered.dialogues["dialogue_id"], gathered.dialogues["num_turns"], gathered.dialogues["review_status"]
            ),
            dtype=np.int64,
        )
        frame = gathered._item_table().drop("turn_weight_sum", "id_count")
        local = frame["dialogue"].to_numpy()
        # gathered codes point at the first local record with the id; map through the position of that record
        frame = frame.with_columns(
            pl.Series("dialogue", codes[local] if len(local) else np.zeros(0, np.int64), dtype=pl.Int64),
            pl.Series("row", table.n_item_rows + np.arange(frame.height, dtype=np.int64), dtype=pl.Int64),
        )
        table.n_item_rows += frame.height
        windows = None
        if not self.dedupe:
            windows = frame.select(pl.col("row").cast(pl.UInt32), "dialogue", "variant", "turn", "item_id", "weight")
        table.add_items(frame, windows)

    def add_read_reject(self, reject: Reject) -> None:
        """A read failure found outside a batch (an unreadable file)."""
        self.read_rejects.append(reject)

    # ---------------------------------------------------------------------------------------------- the end

    def finish(self) -> ColumnarResult:
        """Dataset-wide rules, table failures merged; the result."""
        t0 = time.process_time()
        rejects, counts = self._gate.finish()
        self._clock("finish", t0)
        failed = self._gate.failed
        all_ids = self.table.dialogues["dialogue_id"] if self.table is not None else self._ids
        accepted = sum(1 for did in all_ids if did not in failed) if failed else len(all_ids)
        return ColumnarResult(
            rejects,
            counts,
            self.checked,
            self._gate.selected,
            read_rejects=self.read_rejects,
            accepted_count=accepted,
            exact=dict(self.exact),
            seconds={k: round(v, 3) for k, v in self.seconds.items()},
        )


def gate_batches(
    batches: Iterable[pa.RecordBatch],
    *,
    config: RuleConfig | None = None,
    stages: Sequence[str] = STAGES,
    rules: Sequence[str] | None = None,
    dedupe: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> ColumnarResult:
    """The gate over record batches of the store's row layout; see :class:`ColumnarGate` for ``dedupe``."""
    gate = ColumnarGate(config, stages=stages, rules=rules, dedupe=dedupe)
    for batch in batches:
        gate.add_batch(batch)
        if on_progress is not None:
            on_progress(batch.num_rows)
    return gate.finish()


def gate_dataset(
    folder: Path,
    *,
    split: str | None = None,
    config: RuleConfig | None = None,
    stages: Sequence[str] = STAGES,
    rules: Sequence[str] | None = None,
    batch_size: int = store.BATCH_ROWS,
    on_progress: Callable[[int], None] | None = None,
) -> ColumnarResult:
    """Load and validate a dataset folder's ``dialogues`` config shard by shard, batch by batch: the read rejects of
    :func:`cm2data.sources.load` (unreadable files and rows, later copies of an id) and the gate's rejects and counts
    over the records it reads, as :func:`run_gate` finds them."""
    gate = ColumnarGate(config, stages=stages, rules=rules, dedupe=True)
    files = store.split_files(folder, store.DIALOGUES)
    threshold = gc.get_threshold()
    gc.set_threshold(threshold[0], threshold[1], 2**30)  # few long-lived objects: spare the full collections
    try:
        for s, paths in files.items():
            if split is not None and s != split:
                continue
            for path in paths:
                _gate_shard(gate, path, batch_size, on_progress)
    finally:
        gc.set_threshold(*threshold)
    return gate.finish()


def _gate_shard(gate: ColumnarGate, path: Path, batch_size: int, on_progress: Any) -> None:
    """One shard; a damaged file or batch is a read reject (:func:`cm2data.store.shard_batches`)."""
    for item in store.shard_batches(path, batch_size):
        if isinstance(item, store.ShardUnreadable):
            gate.add_read_reject(unreadable(*item))
            return
        offset, batch, _ = item
        gate.add_batch(batch, location=path.name, offset=offset)
        if on_progress is not None:
            on_progress(batch.num_rows)


def gate_records(
    records: Iterable[Dialogue], *, config: RuleConfig | None = None, stages: Sequence[str] = STAGES, **kw: Any
) -> ColumnarResult:
    """:func:`gate_batches` over records converted to Arrow a batch at a time (for tests and callers that hold
    records)."""
    from itertools import islice

    it = iter(records)

    def batches() -> Iterable[pa.RecordBatch]:
        while True:
            rows = [store.to_row(d) for d in islice(it, store.BATCH_ROWS)]
            if not rows:
                return
            yield pa.RecordBatch.from_pylist(rows, schema=store.DIALOGUE_SCHEMA)

    return gate_batches(batches(), config=config, stages=stages, **kw)


__all__ = [
    "ColumnarGate",
    "ColumnarResult",
    "gate_batches",
    "gate_dataset",
    "gate_records",
]
