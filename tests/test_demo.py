"""README command 1, end to end: ``bash scripts/demo.sh`` on the embedded model, its output read back with
``datasets.load_dataset`` and checked by the gate (the truthfulness rules included).

Slow (several minutes on 2 CPU cores: the 135M model synthesizes 8 dialogues, filters and labels them); run by
``scripts/test.sh`` like every slow test. The demo reuses this test session's embedded server (``embedded_llm``
points ``CM2DATA_SERVE_DIR`` at it), so it is stopped with the session.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from cm2data import store
from cm2data.rejects import read_rejects
from cm2data.validate import run_gate

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_sh_end_to_end(embedded_llm, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = {**os.environ, "CM2DATA_DEMO_OUT": str(out), "COLUMNS": "200"}
    # 8 dialogues instead of the demo's 20, to keep the suite's time down; the job is otherwise the README's
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "demo.sh"), "--n", "8"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        stdin=subprocess.DEVNULL,
    )
    printed = proc.stdout + proc.stderr
    assert proc.returncode == 0, printed[-4000:]

    # part 1: the shipped data, every record kept
    ingested = datasets.load_dataset(str(out / "ingested"), split="train")
    assert ingested.num_rows == len(store.read_dataset(out / "ingested")) >= 33
    assert run_gate(store.read_dataset(out / "filtered")).passed

    # part 2: what the pipeline reports is what is in the folder, and all of it passes the gate
    pipeline = out / "pipeline"
    found = re.search(r"pipeline: (\d+) checklist-annotated dialogues", printed)
    assert found, printed[-4000:]
    reported = int(found.group(1))
    records = store.read_dataset(pipeline)
    assert len(records) == reported
    if reported:  # `datasets` refuses an empty split ("corresponds to no data"): read back what there is
        loaded = datasets.load_dataset(str(pipeline), split="train")
        assert loaded.num_rows == reported and sorted(loaded["id"]) == sorted(d.id for d in records)
    else:
        assert pq.read_table(next((pipeline / "data" / "dialogues").glob("train-*.parquet"))).num_rows == 0
    gate = run_gate(records)
    assert gate.passed, [(r.record_id, r.rule, r.message[:200]) for r in gate.rejects]
    for d in records:  # the demo's dialogues carry checklists, each item quoting its dialogue
        assert d.checklists and all(it.evidence for v in d.checklists for b in v for it in b.items)

    # every synthesized dialogue is accounted for: kept, or rejected once with its stage, rule and reason
    report = json.loads((pipeline / "report.json").read_text())
    n = report["stages"][0]["input"]
    rejects = read_rejects(pipeline / "rejects.jsonl")
    assert all(r.stage and r.rule and r.message for r in rejects)
    assert len({r.record_id for r in rejects}) == len(rejects) == n - reported
    assert sum(report["rejects"]["by_stage"].values()) == len(rejects)

    # an honest zero is said as such, and only then
    zero = "0 dialogues passed every rule" in printed
    assert zero == (reported == 0)
    if zero:
        assert "--base-url" in printed
