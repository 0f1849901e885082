"""The validation benchmark's generator and checks (``benchmarks/validate.py``), small: no timing assertions.

The generator must make records that the gate accepts, and each injected breakage must be rejected by the rule it
targets, with nothing else rejected — both on the generated records and after a round trip through a dataset folder.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest

from cm2data import store
from cm2data.schema import Dialogue, segment
from cm2data.validate import run_gate
from cm2data.validate.checklist import steps_per_turn

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "validate.py"


@pytest.fixture(scope="module")
def bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("cm2data_benchmark_validate", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_generated_records_are_valid_and_pass_the_gate(bench) -> None:  # type: ignore[no-untyped-def]
    records, broken = bench.generate(50, seed=3, broken=0.0)
    assert not broken
    for d in records:  # what model_validate built is what full validation of its dump builds
        assert Dialogue.model_validate(d.model_dump(by_alias=True)) == d
    result = run_gate(records)
    assert result.passed, result.rejects[:3]
    assert len(result.accepted) == 50


def test_exactly_the_broken_records_are_rejected(bench, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    n = 300
    records, broken = bench.generate(n, seed=11, broken=0.1)
    assert len(broken) == 30
    assert set(broken.values()) == set(bench.BREAKAGES)  # every kind of breakage is injected at least once
    result = run_gate(records)
    assert bench.check_rejections(result, broken) == []
    assert result.rejected_ids == set(broken)
    assert len(result.accepted) == n - len(broken)

    store.write_dataset(tmp_path, records)  # and the same after a round trip through a dataset folder
    loaded = store.read_dataset(tmp_path)
    assert loaded == records
    again = run_gate(loaded)
    assert bench.check_rejections(again, broken) == []
    assert [(r.record_id, r.rule, r.message) for r in again.rejects] == [
        (r.record_id, r.rule, r.message) for r in result.rejects
    ]


def test_tool_variants_give_each_dialogue_its_own_tools_and_change_nothing_else(bench) -> None:  # type: ignore[no-untyped-def]
    """``--tool-variants``: the same dialogues and breakages as the default, but tool descriptions drawn from many
    variants, so that nearly every dialogue has its own tool set (as in real corpora); the gate still rejects
    exactly the broken records, and the columnar gate agrees."""
    from cm2data.validate.columnar import gate_records

    plain, broken = bench.generate(200, seed=11, broken=0.1)
    varied, broken_varied = bench.generate(200, seed=11, broken=0.1, tool_variants=1000)
    assert broken_varied == broken
    for a, b in zip(plain, varied, strict=True):
        assert [t.name for t in a.tools] == [t.name for t in b.tools]
        assert a.model_copy(update={"tools": []}) == b.model_copy(update={"tools": []})

    def tool_objects(records: list[Dialogue]) -> set[str]:
        return {json.dumps(t.model_dump()) for d in records for t in d.tools}

    assert len(tool_objects(plain)) == len(bench._TOOL_NAMES) and len(tool_objects(varied)) >= 500
    assert len({json.dumps([t.model_dump() for t in d.tools]) for d in varied}) == len(varied)
    result = run_gate(varied)
    assert bench.check_rejections(result, broken) == [] and result.rejected_ids == set(broken)
    columnar = gate_records(varied)
    assert [(r.record_id, r.rule, r.message) for r in columnar.rejects] == [
        (r.record_id, r.rule, r.message) for r in result.rejects
    ]


def test_steps_per_turn_matches_segment(bench) -> None:  # type: ignore[no-untyped-def]
    """The gate counts steps without ``segment``; the counts must be the same on any role sequence."""
    records, _ = bench.generate(20, seed=5, broken=0.5)
    rng = random.Random(0)
    for d in records:
        for _ in range(5):
            messages = list(d.messages)
            rng.shuffle(messages)
            messages = messages[: rng.randint(0, len(messages))]
            assert steps_per_turn(messages) == [len(t.steps) for t in segment(messages)]


def test_the_benchmark_runs_and_says_what_the_gate_covers(bench, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "bench.json"
    assert bench.main(["--n", "200", "--broken", "0.1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "9 rule filters + 5 checklist rules + 12 pandera table checks = 26 rules" in printed
    assert "the stream the same: OK" in printed
    figures = json.loads(out.read_text())
    assert figures["rejections_exact"] and figures["rejected"] == figures["injected"] == 20
    assert set(figures["gate_covers"]) == {"rules", "checklist", "tables"}
    assert {"load_raw", "load_records", "gate", "stream"} <= set(figures["phases"])
    assert figures["phases"]["stream"]["checked"] == 200
    assert "peak_over_records_mib" in figures["phases"]["gate"]
