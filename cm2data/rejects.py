"""Rejections: every record that a reader, rule or stage refuses is kept here with its reason.

Nothing is dropped silently: each stage returns its accepted records plus a list of :class:`Reject`, and the
rejects table is saved next to the dataset (``rejects.jsonl``), raw input included where there was one.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table


class RecordError(ValueError):
    """A record broke a named rule. ``rule`` is the rule's name, the message says what and where."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"[{rule}] {message}")
        self.rule = rule
        self.message = message


@dataclass(slots=True)
class Reject:
    """One rejection: which record (id and/or location), which stage and rule, and why."""

    record_id: str | None
    stage: str
    rule: str
    message: str
    location: str | None = None
    raw: Any = field(default=None, repr=False)

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        if row["raw"] is not None and not isinstance(row["raw"], str):
            row["raw"] = json.dumps(row["raw"], ensure_ascii=False, default=str)
        return row

    def where(self) -> str:
        parts = [p for p in (self.location, f"record {self.record_id}" if self.record_id else None) if p]
        return ", ".join(parts) or "?"


def unreadable(location: str, error: Exception) -> Reject:
    """The ``parquet_unreadable`` reject of a file or rows that did not read (``location``: the file, or
    ``file#row``)."""
    return Reject(None, "read", "parquet_unreadable", f"{type(error).__name__}: {error}", location)


def count_by_rule(rejects: Iterable[Reject]) -> Counter[str]:
    return Counter(r.rule for r in rejects)


def write_rejects(rejects: Iterable[Reject], path: Path, *, append: bool = False) -> int:
    """Write rejects as JSON lines (one object per reject). Returns the number written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("a" if append else "w", encoding="utf-8") as fh:
        for reject in rejects:
            fh.write(json.dumps(reject.as_row(), ensure_ascii=False) + "\n")
            n += 1
    return n


def read_rejects(path: Path) -> list[Reject]:
    if not path.exists():
        return []
    out: list[Reject] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                out.append(Reject(**json.loads(line)))
    return out


def rejects_table(rejects: list[Reject], title: str) -> Table:
    """``cm2data rejects``: one row per (stage, rule), most frequent first, with its count and a first example."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title)
    for col in ("stage", "rule", "count", "example"):
        table.add_column(col)
    by = Counter((r.stage, r.rule) for r in rejects)
    for (stage, rule), n in by.most_common():
        example = next(r for r in rejects if r.stage == stage and r.rule == rule)
        table.add_row(stage, rule, str(n), escape(f"{example.where()}: {example.message[:80]}"))
    return table
