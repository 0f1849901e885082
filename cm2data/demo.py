"""The main job on the embedded default (``cm2data demo``): ingest → validate → filter → stats on shipped data.

Inputs are the project's own sample of checklist-annotated dialogues (``cm2data/data/sample``) and the CM2
reference record (``cm2data/data/reference``). Outputs under OUT: ``ingested/`` and ``filtered/`` dataset folders,
``stats.json`` and ``report.json``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from rich.console import Console

from cm2data import store
from cm2data.describe import dataset_stats
from cm2data.ingest import write_filtered, write_ingested
from cm2data.sources import load
from cm2data.validate import run_gate


def shipped(*parts: str) -> Path:
    """Path of a data file shipped inside the package."""
    return Path(str(resources.files("cm2data").joinpath("data", *parts)))


def run_demo(out: Path, console: Console | None = None) -> int:
    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"stages": {}}
    records, rejects = [], []
    for name, fmt in (("sample/dialogues.json", "cm2"), ("reference/checklist_annotated.json", "cm2")):
        recs, rej = load(shipped(*name.split("/")), fmt)
        records += recs
        rejects += rej
        report["stages"].setdefault("ingest", {})[name] = {"records": len(recs), "rejects": len(rej)}
    ingested = out / "ingested"
    store.reset_folder(ingested)
    write_ingested(ingested, records, rejects, source="cm2data/data")
    console.print(f"[bold]ingest[/]: {len(records)} records ({len(rejects)} rejected) → {ingested}")

    gate = run_gate(store.read_dataset(ingested))
    report["stages"]["validate"] = {"checked": gate.checked, "rejected": len(gate.rejected_ids),
                                    "counts": dict(gate.counts)}
    status = "[green]passed[/]" if gate.passed else f"[red]{len(gate.rejected_ids)} records failed[/]"
    console.print(f"[bold]validate[/]: {gate.checked} records, {len(gate.rules)} rules: {status}")

    filtered = out / "filtered"
    store.reset_folder(filtered)
    filt = run_gate(store.read_dataset(ingested), stages=("rules",))
    write_filtered(filtered, ingested, filt, [])
    report["stages"]["filter"] = {"kept": len(filt.accepted), "rejected": len(filt.rejected_ids),
                                  "counts": dict(filt.counts)}
    console.print(f"[bold]filter[/]: kept {len(filt.accepted)} of {filt.checked} → {filtered}")

    stats = dataset_stats(store.read_dataset(filtered))
    (out / "stats.json").write_text(json.dumps(stats, indent=2), encoding="utf-8")
    report["stats"] = {k: v for k, v in stats.items() if k != "statistics"}
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    c = stats["checklists"]
    console.print(f"[bold]stats[/]: {stats['dialogues']} dialogues, {c['items_total']} checklist items, "
                  f"{len(stats.get('domains', {}))} domains → {out / 'stats.json'}")
    console.print(f"report → {out / 'report.json'}")
    return 0 if gate.passed else 1
