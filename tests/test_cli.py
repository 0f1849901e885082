"""The CLI's happy paths on shipped data: demo, ingest, validate, filter, stats, show, formats."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
from typer.testing import CliRunner

from cm2data import store
from cm2data.cli import app

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_sample_ingests_and_validates(tmp_path: Path, sample_path: Path) -> None:
    out = tmp_path / "ds"
    r = invoke("ingest", sample_path, "--format", "cm2", "--out", out, "--strict")
    assert r.exit_code == 0, r.output
    records = store.read_dataset(out)
    assert len(records) >= 30
    assert len({d.metadata["domain"] for d in records}) >= 10
    assert all(len([m for m in d.messages if m.role == "user"]) >= 2 for d in records)
    assert all(d.checklists for d in records)
    r = invoke("validate", out, "--thinking", "required")
    assert r.exit_code == 0, r.output
    assert "PASSED" in r.output


def test_reference_fixture_validates(tmp_path: Path, reference_dir: Path) -> None:
    out = tmp_path / "ref"
    assert invoke("ingest", reference_dir / "checklist_annotated.json", "-o", out).exit_code == 0
    r = invoke("validate", out, "--json")
    assert r.exit_code == 0, r.output
    payload = json.loads(r.stdout)
    assert payload["checked"] == 1 and payload["accepted"] == 1
    assert set(payload["counts"]) >= {"tool_schema", "weights_sum_to_one", "checklist_dependencies"}


def test_ingest_is_idempotent(tmp_path: Path, sample_path: Path) -> None:
    out = tmp_path / "ds"
    invoke("ingest", sample_path, "-o", out)
    first = [d.id for d in store.read_dataset(out)]
    invoke("ingest", sample_path, "-o", out)
    assert [d.id for d in store.read_dataset(out)] == first  # replaced, not appended


def test_filter_stats_show(tmp_path: Path, sample_path: Path) -> None:
    ds, clean = tmp_path / "ds", tmp_path / "clean"
    invoke("ingest", sample_path, "-o", ds)
    r = invoke("filter", ds, "--out", clean)
    assert r.exit_code == 0, r.output
    kept = store.read_dataset(clean)
    assert len(kept) == len(store.read_dataset(ds))
    assert all(h["stage"] == "filter" for d in kept for h in d.provenance.history[-1:])
    r = invoke("stats", clean, "--json", tmp_path / "stats.json")
    assert r.exit_code == 0, r.output
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["dialogues"] == len(kept)
    assert stats["statistics"]["num_turns"]["min"] >= 2
    assert stats["checklists"]["items_total"] > 0
    target = kept[3]
    r = invoke("show", clean, "--id", target.id)
    assert r.exit_code == 0, r.output
    assert "turn 0" in r.output and "checklist, turn 0" in r.output
    assert target.checklists[0][0].items[0].id in r.output


def test_formats_lists_every_registered_format() -> None:
    r = invoke("formats")
    for name in ("cm2", "nemotron", "openai", "sharegpt", "verl"):
        assert name in r.output


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    r = invoke("demo", "--out", tmp_path, "--no-pipeline")  # part 2 (the LLM pipelines): test_pipelines.py
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["stages"]["validate"]["rejected"] == 0
    assert report["stages"]["filter"]["kept"] == report["stages"]["validate"]["checked"] >= 31
    ds = datasets.load_dataset(str(tmp_path / "filtered"), split="train")
    assert ds.num_rows == report["stages"]["filter"]["kept"]
