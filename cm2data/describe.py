"""Dataset statistics: the seven per-dialogue statistics of method §2.6 and checklist sizes, as plain dicts."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cm2data.schema import STAT_NAMES, Dialogue, dialogue_stats

if TYPE_CHECKING:
    from rich.console import Console

    from cm2data.rejects import Reject


def summarize(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"count": 0, "min": 0, "mean": 0, "median": 0, "max": 0}
    return {
        "count": len(values),
        "min": min(values),
        "mean": round(statistics.fmean(values), 3),
        "median": statistics.median(values),
        "max": max(values),
    }


def dataset_stats(records: Sequence[Dialogue]) -> dict[str, Any]:
    """Distributions (summary and value counts) of the seven statistics and of checklist sizes."""
    per = [dialogue_stats(d).as_dict() for d in records]
    out: dict[str, Any] = {"dialogues": len(records), "statistics": {}, "checklists": {}}
    for name in STAT_NAMES:
        values = [p[name] for p in per]
        out["statistics"][name] = {**summarize(values), "histogram": dict(sorted(Counter(values).items()))}
    items_per_turn = [len(b.items) for d in records for v in d.checklists for b in v]
    variants = [len(d.checklists) for d in records]
    focus = Counter(it.focus_on for d in records for v in d.checklists for b in v for it in b.items)
    must = [it.required_for_next_turn for d in records for v in d.checklists for b in v for it in b.items]
    with_deps = sum(1 for d in records for v in d.checklists for b in v for it in b.items if it.depends_on)
    out["checklists"] = {
        "annotated_dialogues": sum(1 for v in variants if v),
        "variants": {**summarize(variants), "histogram": dict(sorted(Counter(variants).items()))},
        "items_per_turn": {**summarize(items_per_turn), "histogram": dict(sorted(Counter(items_per_turn).items()))},
        "items_total": len(must),
        "must_pass_fraction": round(sum(must) / len(must), 3) if must else 0.0,
        "items_with_dependencies": with_deps,
        "focus_on": dict(focus.most_common()),
    }
    out["sources"] = dict(Counter(d.source for d in records).most_common())
    out["review_status"] = dict(Counter(d.review.status for d in records).most_common())
    domains = Counter(str(d.metadata["domain"]) for d in records if "domain" in d.metadata)
    if domains:
        out["domains"] = dict(domains.most_common())
    return out


def folder_stats(
    folder: Path,
    *,
    split: str | None = None,
    batch_size: int = 4096,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, Any], list[Reject]]:
    """:func:`dataset_stats` of the records :func:`cm2data.sources.load` reads from a dataset folder, and its read
    rejects — computed from the parquet shards' Arrow batches (:func:`cm2data.folder_batches.read_parts`,
    :func:`cm2data.publish.arrow_views.add_to_summary`), one batch at a time, building a record only for rows the
    screen cannot clear. Equal to ``dataset_stats(load(folder)[0])``, key order included."""
    from cm2data.card import Summary
    from cm2data.folder_batches import read_parts
    from cm2data.publish.arrow_views import add_to_summary

    summary = Summary()
    rejects: list[Reject] = []
    for part in read_parts(folder, rejects, split=split, batch_size=batch_size, on_progress=on_progress):
        if part.rows is not None:
            add_to_summary(summary, part.rows)
        else:
            summary.add(part.records)
    return summary.stats(), rejects


def print_stats(result: dict[str, Any], title: str, console: Console) -> None:
    """``cm2data stats``: the statistics of :func:`dataset_stats` as a table, then the checklist, focus and domain
    lines."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("statistic", "min", "mean", "median", "max", "distribution"):
        table.add_column(col)
    rows = {
        **result["statistics"],
        "items_per_turn": result["checklists"]["items_per_turn"],
        "checklist_variants": result["checklists"]["variants"],
    }
    for name, s in rows.items():
        hist = s["histogram"]
        shown = " ".join(f"{k}:{v}" for k, v in list(hist.items())[:8]) + (" …" if len(hist) > 8 else "")
        table.add_row(name, str(s["min"]), str(s["mean"]), str(s["median"]), str(s["max"]), shown)
    console.print(table)
    c = result["checklists"]
    console.print(
        f"checklist items: {c['items_total']} in {c['annotated_dialogues']} annotated dialogues; "
        f"must-pass {c['must_pass_fraction']:.0%}; with dependencies {c['items_with_dependencies']}"
    )
    console.print("focus_on: " + ", ".join(f"{k} {v}" for k, v in c["focus_on"].items()))
    if "domains" in result:
        console.print("domains: " + ", ".join(f"{k} {v}" for k, v in result["domains"].items()))
