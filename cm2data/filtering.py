"""``cm2data filter`` over a dataset folder as a stream of Arrow batches (no record per row unless a rule needs one).

Input: a dataset folder in the store's layout. Output: the same folder ``write_filtered`` writes from records —
the rows that pass every selected rule in the ``train`` split of ``out`` (shards of ``rows_per_file``), each with
the ``filter`` stamp appended to its provenance history (``{"at", "rules", "stage": "filter"}``, one timestamp
per run); ``out/rejects.jsonl`` with the input folder's earlier rejects, the rows that did not read, and one reject
per (record, failed rule), the first of each record carrying the whole rejected row.

The gate is :class:`cm2data.validate.columnar.ColumnarGate` (same rejects and counts as :func:`run_gate`). Rows a
batch rejects are never written; table rules and dataset-wide rules are known only at the end, so when they reject
rows already written the staged shards are filtered once more. Shards are staged under ``out/.cm2data-filter``
and renamed into place at the end, so an interrupted run leaves no partial split.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cm2data import store
from cm2data.rejects import Reject, read_rejects, unreadable, write_rejects
from cm2data.validate import RuleConfig
from cm2data.validate.columnar import ColumnarGate, ColumnarResult
from cm2data.validate.gate import STAGES

STAGING = ".cm2data-filter"


@dataclass
class FilterResult:
    """The gate's verdict (``result``, no records held), the rows kept, and where the rejects went."""

    result: ColumnarResult
    kept: int
    rejects_path: Path
    read_rejects: list[Reject] = field(default_factory=list)


def stamp_history(history: pa.ChunkedArray | pa.Array, entry: dict[str, Any]) -> pa.Array:
    """Each canonical history JSON list (``store._dumps``) with ``entry`` appended, as ``Provenance.stamp`` then
    ``store.to_row`` would write it."""
    element = json.dumps(entry, ensure_ascii=False, sort_keys=True)
    history = pc.fill_null(history, "[]")
    empty = pc.equal(history, "[]")
    head = pc.utf8_slice_codeunits(history, 0, -1)  # everything but the closing bracket
    appended = pc.binary_join_element_wise(head, ", " + element + "]", "")
    return pc.if_else(empty, pa.scalar("[" + element + "]"), appended)


def _stamped(table: pa.Table, entry: dict[str, Any]) -> pa.Table:
    provenance = table.column("provenance").combine_chunks()
    names = [f.name for f in provenance.type]
    fields = [stamp_history(provenance.field(n), entry) if n == "history" else provenance.field(n) for n in names]
    rebuilt = pa.StructArray.from_arrays(fields, names=names, mask=pc.invert(provenance.is_valid()))
    return table.set_column(table.schema.get_field_index("provenance"), "provenance", rebuilt)


def filter_folder(
    src: Path,
    out: Path,
    *,
    config: RuleConfig | None = None,
    stages: Sequence[str] = ("rules",),
    rules: Sequence[str] | None = None,
    rows_per_file: int = 50_000,
    batch_size: int = store.BATCH_ROWS,
    on_progress: Callable[[int], None] | None = None,
) -> FilterResult:
    """Filter the dataset folder ``src`` into ``out`` (see the module docstring). ``stages``/``rules`` select the
    rules as for :func:`cm2data.validate.run_gate`; raises ``ValueError`` for unknown ones."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    gate = ColumnarGate(config, stages=stages, rules=rules, dedupe=True)
    entry = {"stage": "filter", "at": datetime.now(UTC).isoformat(), "rules": list(gate._gate.selected)}
    earlier = read_rejects(src / store.REJECTS_FILE) if src.is_dir() else []
    staging = out / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    raw: dict[str, dict[str, Any]] = {}  # id -> the whole row, for the rejects of rows a batch rejected
    pending: list[pa.Table] = []
    pending_rows = 0
    staged: list[Path] = []

    def flush(final: bool) -> None:
        nonlocal pending, pending_rows
        while pending_rows >= rows_per_file or (final and pending_rows):
            table = pa.concat_tables(pending).combine_chunks()
            head, rest = table.slice(0, rows_per_file), table.slice(rows_per_file)
            path = staging / f"{len(staged):05d}.parquet"
            pq.write_table(head, path, compression="zstd")
            staged.append(path)
            pending, pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    for path in (p for paths in store.split_files(src).values() for p in paths):
        # bytes that are not UTF-8 (store.check_batch): unreadable from there, as for the record path
        for item in store.shard_batches(path, batch_size):
            if isinstance(item, store.ShardUnreadable):
                gate.add_read_reject(unreadable(*item))  # rows read so far stay checked
                break
            offset, batch, _ = item
            rejected = gate.add_batch(batch, location=path.name, offset=offset)
            if on_progress is not None:
                on_progress(batch.num_rows)
            if rejected.any():
                for row in batch.filter(pa.array(rejected)).to_pylist():
                    raw.setdefault(str(row.get("id")), row)
            kept = batch if not rejected.any() else batch.filter(pa.array(~rejected))
            if kept.num_rows:
                pending.append(_stamped(pa.Table.from_batches([kept]).cast(store.DIALOGUE_SCHEMA), entry))
                pending_rows += kept.num_rows
                flush(final=False)
    flush(final=True)
    result = gate.finish()
    late = result.rejected_ids - raw.keys()  # rejected only by table or dataset-wide rules: already staged
    kept_rows = 0
    for path in staged:
        table = pq.read_table(path)
        if late:
            drop = pc.is_in(table.column("id"), pa.array(sorted(late)))
            for row in table.filter(drop).to_pylist():
                raw.setdefault(str(row["id"]), row)
            table = table.filter(pc.invert(drop))
            pq.write_table(table, path, compression="zstd")
        kept_rows += table.num_rows
    _place(out, staged, kept_rows)
    new: list[Reject] = []
    for r in result.rejects:
        if r.record_id in raw:
            r.raw = _unstamped(raw.pop(r.record_id), entry)
        new.append(r)
    path = out / store.REJECTS_FILE
    write_rejects([*earlier, *result.read_rejects, *new], path)
    shutil.rmtree(staging, ignore_errors=True)
    return FilterResult(result, kept_rows, path, result.read_rejects)


def _unstamped(row: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """A rejected row as it was read (rows of ``raw`` re-read from a staged shard carry the filter stamp)."""
    prov = row.get("provenance") or {}
    history = prov.get("history")
    element = json.dumps(entry, ensure_ascii=False, sort_keys=True)
    if isinstance(history, str) and history.endswith(element + "]"):
        base = history[: -len(element) - 1].removesuffix(", ")
        prov["history"] = "[]" if base == "[" else base + "]"
    return row


def _place(out: Path, staged: list[Path], kept: int) -> None:
    """Move the staged shards to ``out``'s ``train`` split under the store's names (an empty split when none)."""
    target = store.data_dir(out)
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob(f"{store.DEFAULT_SPLIT}-*.parquet"):
        old.unlink()
    if not staged or kept == 0:
        store.write_table(out, store.DIALOGUE_SCHEMA.empty_table(), split=store.DEFAULT_SPLIT)
        return
    non_empty = [p for p in staged if pq.read_metadata(p).num_rows]
    for i, path in enumerate(non_empty):
        path.replace(target / f"{store.DEFAULT_SPLIT}-{i:05d}-of-{len(non_empty):05d}.parquet")
    store.write_card(out)
