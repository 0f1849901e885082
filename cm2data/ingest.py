"""Writing the outputs of ``ingest`` and ``filter``: the dataset folder, provenance stamps and the rejects table."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cm2data import store
from cm2data.rejects import Reject, read_rejects, write_rejects
from cm2data.schema import Dialogue
from cm2data.validate import GateResult


def write_ingested(
    out: Path, records: list[Dialogue], rejects: list[Reject], *, split: str = store.DEFAULT_SPLIT, source: str = ""
) -> Path:
    """Stamp provenance, write ``records`` as ``split`` of the folder ``out`` and the read rejects next to them.

    Re-running with the same input gives the same folder (the split is replaced, not appended to).
    """
    now = datetime.now(UTC).isoformat()
    for r in records:
        if not r.provenance.source:
            r.provenance.source = r.source or source
        if r.provenance.created_at is None:
            r.provenance.created_at = now
        if not any(h.get("stage") == "ingest" for h in r.provenance.history):
            r.provenance.stamp("ingest", input=source)
    store.write_dataset(out, records, split=split)
    path = out / store.REJECTS_FILE
    write_rejects(rejects, path)
    return path


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
