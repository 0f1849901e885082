"""The main job on the embedded default (``cm2data demo``).

Part 1 — the shipped data: ingest → validate → filter → stats. Inputs are the project's own sample of
checklist-annotated dialogues (``cm2data/data/sample``) and the CM2 reference record (``cm2data/data/reference``).
Outputs under OUT: ``ingested/`` and ``filtered/`` dataset folders, ``stats.json`` and ``report.json``.

Part 2 — the pipelines (``cm2data/data/pipelines/demo.yaml``): start (or reuse) the embedded model server →
synthesize about 20 dialogues from the shipped tool catalog → rule filters and the LLM quality filter → checklist
labelling → validate the result. Outputs under ``OUT/pipeline/``: the dataset folder, ``rejects.jsonl``,
``report.html`` + ``report.json``, each stage's folder under ``stages/``. With ``--base-url`` (a real vLLM server)
the same job runs there; nothing else changes. Running the demo again resumes or reuses what is done.
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


def run_demo(
    out: Path,
    console: Console | None = None,
    *,
    pipeline: bool = True,
    base_url: str | None = None,
    model: str | None = None,
    n: int | None = None,
    fresh: bool = False,
) -> int:
    console = console or Console()
    code = run_shipped(out, console)
    if not pipeline:
        return code
    return max(code, run_pipelines(out / "pipeline", console, base_url=base_url, model=model, n=n, fresh=fresh))


def run_shipped(out: Path, console: Console) -> int:
    """Part 1: ingest, validate, filter and describe the shipped sample and the reference record."""
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
    report["stages"]["validate"] = {
        "checked": gate.checked,
        "rejected": len(gate.rejected_ids),
        "counts": dict(gate.counts),
    }
    status = "[green]passed[/]" if gate.passed else f"[red]{len(gate.rejected_ids)} records failed[/]"
    console.print(f"[bold]validate[/]: {gate.checked} records, {len(gate.rules)} rules: {status}")

    filtered = out / "filtered"
    store.reset_folder(filtered)
    filt = run_gate(store.read_dataset(ingested), stages=("rules",))
    write_filtered(filtered, ingested, filt, [])
    kept = filt.accepted or []
    report["stages"]["filter"] = {"kept": len(kept), "rejected": len(filt.rejected_ids), "counts": dict(filt.counts)}
    console.print(f"[bold]filter[/]: kept {len(kept)} of {filt.checked} → {filtered}")

    stats = dataset_stats(store.read_dataset(filtered))
    (out / "stats.json").write_text(json.dumps(stats, indent=2), encoding="utf-8")
    report["stats"] = {k: v for k, v in stats.items() if k != "statistics"}
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    c = stats["checklists"]
    console.print(
        f"[bold]stats[/]: {stats['dialogues']} dialogues, {c['items_total']} checklist items, "
        f"{len(stats.get('domains', {}))} domains → {out / 'stats.json'}"
    )
    console.print(f"report → {out / 'report.json'}")
    return 0 if gate.passed else 1


def run_pipelines(
    out: Path,
    console: Console,
    *,
    base_url: str | None = None,
    model: str | None = None,
    n: int | None = None,
    fresh: bool = False,
) -> int:
    """Part 2: the demo pipeline (synthesize → filter → annotate), then the gate on its output. Returns 0 when the
    pipeline ran and its output passes the gate (rejections along the way are expected and reported), 1 when the
    output fails the gate, 2 when the LLM server cannot be reached or started."""
    import time

    from cm2data.llm import LLMError
    from cm2data.pipelines import load_pipeline_config, run_pipeline
    from cm2data.pipelines.report import REPORT_HTML

    config = load_pipeline_config(shipped("pipelines", "demo.yaml"))
    if n is not None:
        config.stages[0].config.n = n  # type: ignore[attr-defined]
    started = time.monotonic()
    if base_url is None:
        console.print(
            "[bold]pipeline[/]: using the embedded model server (starting it if needed, ~30 s; the first "
            "run builds its environment, ~2 min)"
        )
    try:
        result = run_pipeline(
            config,
            out,
            base_url=base_url,
            model=model,
            fresh=fresh,
            say=lambda m: console.print(f"[bold]pipeline[/]: {m}"),
        )
    except LLMError as exc:
        console.print(f"[bold red]pipeline: {exc}[/]")
        return 2
    gate = run_gate(store.read_dataset(out))
    status = "[green]passed[/]" if gate.passed else f"[red]{len(gate.rejected_ids)} records failed[/]"
    console.print(f"[bold]validate[/]: {gate.checked} pipeline records, {len(gate.rules)} rules: {status}")
    rejects = result.report["rejects"]
    by_stage = rejects["by_stage"]
    console.print(
        f"[bold]pipeline[/]: {result.records} checklist-annotated dialogues → {out}; "
        f"{sum(by_stage.values())} rejected ("
        + ", ".join(f"{k} {v}" for k, v in by_stage.items())
        + f") → {out / 'rejects.jsonl'}; "
        f"report → {out / REPORT_HTML} ({time.monotonic() - started:.0f} s)"
    )
    top = rejects["by_stage_and_rule"][:6]
    if top:
        console.print(
            "[bold]pipeline[/]: rejected by " + ", ".join(f"{r['stage']}/{r['rule']} {r['count']}" for r in top)
        )
    if result.records == 0:
        where = "the embedded 135M model" if base_url is None else f"the model at {base_url}"
        console.print(
            f"[bold yellow]pipeline: 0 dialogues passed every rule[/]: {where} wrote no dialogue whose "
            "checklist survives the gate (see the rules above and rejects.jsonl). This is the honest "
            "result of a tiny CPU model, not a broken run: point the demo at a real server with "
            "`bash scripts/demo.sh --base-url http://HOST:PORT/v1 [--model NAME]`."
        )
    if base_url is None and result.report.get("llm"):
        console.print(
            f"the embedded server keeps running at {result.report['llm']['base_url']} for the next command; "
            "stop it with `cm2data serve --stop`"
        )
    return 0 if gate.passed else 1
