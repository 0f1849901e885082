"""A stage's outcome: the rows a pipeline returned turned into accepted records and rejects (:func:`collect`), the
:class:`StageResult` the runner reports, and the provenance stamp of the accepted records (:func:`stamp`).
"""

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cm2data.llm import Usage
from cm2data.pipelines.rows import decode_record
from cm2data.rejects import Reject
from cm2data.schema import Dialogue


@dataclass
class StageResult:
    """A stage's outcome: accepted records, rejects, LLM usage, timings and notes for the report."""

    stage: str
    input: int
    accepted: list[Dialogue]
    rejects: list[Reject]
    usage: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    resumed: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        from collections import Counter

        return dict(Counter(r.rule for r in self.rejects).most_common())


def collect(
    stage: str, rows: Iterable[dict[str, Any]], inputs: dict[str, Dialogue] | None = None
) -> tuple[list[Dialogue], list[Reject], dict[str, Any], int]:
    """Rows → accepted records, rejects (with the record as raw), summed usage, and how many rows any step took
    from its journal."""
    from cm2data import store

    accepted: list[Dialogue] = []
    rejects: list[Reject] = []
    usage = Usage()
    resumed = 0
    for row in rows:
        usage.merge(json.loads(row.get("usage") or "{}"))
        meta = json.loads(row.get("meta") or "{}")
        if meta.get("resumed"):
            resumed += 1
        record = None
        if row.get("record"):
            try:
                record = decode_record(row["record"])
            except ValueError as exc:
                rejects.append(Reject(row["id"], stage, "record_schema", f"step output is not a record: {exc}"[:500]))
                continue
        if row.get("reject"):
            info = json.loads(row["reject"])
            raw_record = record or (inputs or {}).get(row["id"])
            raw = store.to_row(raw_record) if raw_record is not None else json.loads(row.get("spec") or "null")
            rejects.append(
                Reject(row["id"], info.get("stage") or stage, info["rule"], info["message"], info.get("location"), raw)
            )
        elif record is None:
            rejects.append(Reject(row["id"], stage, "no_output", "the stage produced no record for this row"))
        else:
            accepted.append(record)
    out = usage.as_dict()
    out.pop("total", None)
    return accepted, rejects, out, resumed


def stamp(records: Iterable[Dialogue], stage: str, prompts: Sequence[str] = (), **details: Any) -> None:
    """Add a stage's history entry and its prompt versions to each record's provenance."""
    from cm2data.prompts import merge_prompt_versions

    for d in records:
        if prompts:
            d.provenance.prompt_version = merge_prompt_versions(d.provenance.prompt_version, *prompts)
        d.provenance.stamp(stage, **({"prompts": list(prompts)} if prompts else {}), **details)
