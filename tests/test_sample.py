"""The shipped sample and catalog pass their own strict checker and the project's validation gate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cm2data.formats import read_records
from cm2data.schema import Dialogue
from cm2data.validate import RuleConfig, run_gate

ROOT = Path(__file__).resolve().parents[1]


def test_sample_checker_passes() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_sample.py")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("OK")


def test_sample_passes_the_gate_with_thinking_required(sample_path: Path) -> None:
    items = list(read_records(sample_path, "cm2"))
    records = [r for r in items if isinstance(r, Dialogue)]
    assert len(records) == len(items) >= 30
    result = run_gate(records, config=RuleConfig(thinking="required"))
    assert result.passed, [(r.record_id, r.rule, r.message) for r in result.rejects[:5]]
    tools_used = {c.name for d in records for m in d.messages for c in m.tool_calls}
    assert len(tools_used) >= 40
