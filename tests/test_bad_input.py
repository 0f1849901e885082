"""Bad input through the real CLI: never a traceback; every reject names its file, line or record and its rule.

The inputs are the broken files of ``tests/data/broken`` (README.md there lists them). Two kinds:

* reader-level files hold rows that cannot become records (malformed JSON, wrong types, unknown roles, …):
  ``ingest`` keeps the good rows, writes the bad ones to ``rejects.jsonl`` and exits 1 under ``--strict``;
* gate-level files read fine but break a validation rule: ``validate`` and ``filter`` must name that rule.

Every record id in those files ends in ``-good`` when the record is meant to pass and says what is wrong otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cm2data import cli, store
from cm2data.cli import app
from cm2data.formats import read_records
from cm2data.rejects import Reject, read_rejects
from cm2data.schema import Dialogue

BROKEN = Path(__file__).parent / "data" / "broken"
FIXTURE = Path(__file__).parent / "fixtures" / "cm2-reference" / "checklist_annotated.json"
SAMPLE = Path(__file__).parent.parent / "cm2data" / "data" / "sample" / "dialogues.json"

#: reader-level files: (records that read fine, {rule: rejects}, locations that the rejects must name)
READ_LEVEL: dict[str, tuple[int, dict[str, int], list[str]]] = {
    "malformed_lines.jsonl": (
        3,
        {"json_syntax": 2, "row_type": 1},
        ["malformed_lines.jsonl:2", "malformed_lines.jsonl:5", "malformed_lines.jsonl:6"],
    ),
    "truncated.json": (2, {"truncated_file": 1}, ["truncated.json[2]"]),
    "half_written.jsonl": (2, {"truncated_file": 1}, ["half_written.jsonl:3"]),
    "wrong_types.jsonl": (
        2,
        {"message_shape": 2, "tool_call_shape": 1, "tools_shape": 1, "tools_json": 1, "record_schema": 1},
        [f"wrong_types.jsonl:{n}" for n in range(2, 8)],
    ),
    "missing_messages.jsonl": (1, {"missing_messages": 3}, [f"missing_messages.jsonl:{n}" for n in (2, 3, 4)]),
    "unknown_role.jsonl": (1, {"unknown_role": 3}, [f"unknown_role.jsonl:{n}" for n in (2, 3, 4)]),
    "sharegpt_unknown_from.jsonl": (
        1,
        {"unknown_role": 2, "tool_call_json": 1, "missing_messages": 1},
        [f"sharegpt_unknown_from.jsonl:{n}" for n in (2, 3, 4, 5)],
    ),
    "nemotron_bad_metadata.jsonl": (
        1,
        {"metadata_json": 2, "tools_shape": 1},
        [f"nemotron_bad_metadata.jsonl:{n}" for n in (2, 3, 4)],
    ),
    "duplicate_ids.jsonl": (2, {"duplicate_id": 1}, []),
    "not_json.json": (0, {"json_syntax": 1}, ["not_json.json:1"]),
    "truncated.parquet": (0, {"parquet_unreadable": 1}, ["truncated.parquet"]),
}

#: records of reader-level files that read fine but still break a rule of the gate
READ_LEVEL_GATE: dict[str, dict[str, int]] = {"wrong_types.jsonl": {"tool_schema": 1}}

#: gate-level files: (records, {rule: failing records})
GATE_LEVEL: dict[str, tuple[int, dict[str, int]]] = {
    "tool_schema.json": (7, {"tool_schema": 6}),
    "role_order.json": (6, {"role_order": 5}),
    "call_response_mismatch.json": (4, {"tool_call_response_match": 3}),
    "tool_content_not_json.json": (3, {"tool_response_json_valid": 2}),
    "duplicate_tools.json": (2, {"duplicate_tools_by_name": 1}),
    "think_tags.json": (5, {"think_tags": 4}),
    "content_rules.json": (4, {"non_empty_content": 2, "no_tool_response_in_assistant_message": 1}),
    "no_user_turn.json": (2, {"role_order": 1, "has_user_turn": 1}),
    "checklist_weights.json": (3, {"weights_sum_to_one": 1, "weight_range": 1}),
    "checklist_item_ids.json": (3, {"unique_item_ids": 1, "item_id_present": 1}),
    "checklist_dependencies.json": (4, {"checklist_dependencies": 3}),
    "checklist_block_count.json": (4, {"checklist_block_count": 3}),
    "checklist_enums.json": (3, {"focus_on_enum": 1, "evidence_from_enum": 1}),
    "checklist_text.json": (3, {"non_empty_question": 1, "non_empty_pass_condition": 1}),
    "checklist_evidence.json": (3, {"checklist_evidence_pointers": 2}),
    "degenerate_message.json": (6, {"degenerate_message": 4}),
    "checklist_grounding.json": (7, {"evidence_grounded": 4}),
    "checklist_copied.json": (3, {"checklist_copied_from_prompt": 2, "evidence_grounded": 1}),
}

#: rules that only the checklist stages (``filter --with-checklists``) apply
CHECKLIST_RULES = {
    "checklist_block_count",
    "checklist_dependencies",
    "checklist_evidence_pointers",
    "evidence_grounded",
    "checklist_copied_from_prompt",
    "weights_sum_to_one",
    "weight_range",
    "unique_item_ids",
    "item_id_present",
    "focus_on_enum",
    "evidence_from_enum",
    "non_empty_question",
    "non_empty_pass_condition",
    "has_user_turn",
}

runner = CliRunner()


@pytest.fixture(autouse=True)
def _wide_consoles():
    """Rich cuts long lines at the console width; keep the tables and messages whole for the assertions."""
    saved = cli.console._width, cli.err._width
    cli.console._width = cli.err._width = 400
    yield
    cli.console._width, cli.err._width = saved


def invoke(*args: object):
    result = runner.invoke(app, [str(a) for a in args])
    # a clean exit (0, 1 or 2 from typer.Exit) and never an exception escaping the command
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result


def records_of(path: Path) -> list[Dialogue]:
    return [r for r in read_records(path) if isinstance(r, Dialogue)]


def ids_of(path: Path) -> set[str]:
    return {d.id for d in records_of(path)}


def good_ids(path: Path) -> set[str]:
    return {i for i in ids_of(path) if i.endswith("-good") or "-good-" in i}


def test_every_broken_file_is_covered_and_described() -> None:
    on_disk = {p.name for p in BROKEN.iterdir() if p.suffix in (".json", ".jsonl", ".parquet")}
    assert on_disk == set(READ_LEVEL) | set(GATE_LEVEL)
    readme = (BROKEN / "README.md").read_text(encoding="utf-8")
    for name, (_, rules, _) in READ_LEVEL.items():
        assert f"`{name}`" in readme and all(f"`{r}`" in readme for r in rules), name
    for name, (_, rules) in GATE_LEVEL.items():
        assert f"`{name}`" in readme and all(f"`{r}`" in readme for r in rules), name


# ------------------------------------------------------------------------------------------------------- ingest


@pytest.mark.parametrize("name", sorted(READ_LEVEL))
def test_ingest_keeps_good_rows_and_names_each_reject(name: str, tmp_path: Path) -> None:
    n_records, rules, locations = READ_LEVEL[name]
    out = tmp_path / "ds"
    r = invoke("ingest", BROKEN / name, "--out", out)
    # exit 0 while something was read; nothing readable at all is a failure even without --strict
    assert r.exit_code == (0 if n_records else 1), r.output
    kept = store.read_dataset(out) if n_records else []
    assert len(kept) == n_records
    rejects = read_rejects(out / store.REJECTS_FILE)
    if name != "duplicate_ids.jsonl":
        assert good_ids(BROKEN / name) <= {d.id for d in kept}
        assert not {d.id for d in kept} & {x.record_id for x in rejects}
    assert Counter(x.rule for x in rejects) == Counter(rules)
    assert all(x.stage == "read" and x.message for x in rejects)
    named = [x.location or "" for x in rejects]
    for loc in locations:
        assert any(n.startswith(loc) for n in named), (loc, named)
    # the terminal report names the rule and the place of every reject (up to the 10 shown)
    for x in rejects:
        line = next((ln for ln in r.stderr.splitlines() if x.where() in ln), None)
        assert line is not None and x.rule in line, (x.where(), r.stderr)


@pytest.mark.parametrize("name", sorted(n for n, (k, _, _) in READ_LEVEL.items() if k))
def test_ingest_strict_exits_1_but_still_writes(name: str, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    r = invoke("ingest", BROKEN / name, "--out", out, "--strict")
    assert r.exit_code == 1
    assert len(store.read_dataset(out)) == READ_LEVEL[name][0]
    assert read_rejects(out / store.REJECTS_FILE)


@pytest.mark.parametrize("name", sorted(GATE_LEVEL))
def test_gate_level_files_read_cleanly(name: str, tmp_path: Path) -> None:
    """These rows are well-formed: ingest takes them all, even under --strict; only the gate refuses them."""
    out = tmp_path / "ds"
    r = invoke("ingest", BROKEN / name, "--out", out, "--strict")
    assert r.exit_code == 0, r.output
    assert len(store.read_dataset(out)) == GATE_LEVEL[name][0]
    assert read_rejects(out / store.REJECTS_FILE) == []


def test_rejects_keep_the_raw_row(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    invoke("ingest", BROKEN / "unknown_role.jsonl", "--out", out)
    by_id = {x.record_id: x for x in read_rejects(out / store.REJECTS_FILE)}
    assert set(by_id) == {"ur-bot", "ur-no-role", "ur-function"}
    raw = json.loads(by_id["ur-bot"].raw)
    assert raw["messages"][4]["role"] == "bot"
    assert "'bot'" in by_id["ur-bot"].message and "message 4" in by_id["ur-bot"].message


# ----------------------------------------------------------------------------------------------------- validate


def validate_json(*args: object):
    r = invoke("validate", *args, "--json")
    return r, json.loads(r.stdout)


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


@pytest.mark.parametrize("name", sorted(GATE_LEVEL))
def test_validate_names_the_broken_rules(name: str, tmp_path: Path) -> None:
    n_records, rules = GATE_LEVEL[name]
    rejects_file = tmp_path / "rejects.jsonl"
    r, payload = validate_json(BROKEN / name, "--rejects", rejects_file)
    assert r.exit_code == 1
    assert payload["checked"] == n_records
    assert payload["accepted"] == len(good_ids(BROKEN / name))  # the "-good" records, and only they, pass
    assert nonzero(payload["counts"]) == rules
    assert payload["rejected_records"] == n_records - len(good_ids(BROKEN / name))
    rejects = read_rejects(rejects_file)
    assert Counter(x.rule for x in rejects) == Counter(rules)
    bad = ids_of(BROKEN / name) - good_ids(BROKEN / name)
    assert {x.record_id for x in rejects} == bad
    assert all(x.stage == "validate" and x.message for x in rejects)
    for x in rejects:  # the FAILED report lists each reject with its rule and record
        assert any(x.rule in ln and f"record {x.record_id}" in ln for ln in r.stderr.splitlines()), x


@pytest.mark.parametrize("name", sorted(READ_LEVEL))
def test_validate_counts_read_rejects_as_rules(name: str, tmp_path: Path) -> None:
    n_records, rules, _ = READ_LEVEL[name]
    rejects_file = tmp_path / "rejects.jsonl"
    r, payload = validate_json(BROKEN / name, "--rejects", rejects_file)
    assert r.exit_code == 1
    expected = Counter(rules) + Counter(READ_LEVEL_GATE.get(name, {}))
    assert nonzero(payload["counts"]) == dict(expected)
    assert payload["checked"] == n_records
    assert Counter(x.rule for x in read_rejects(rejects_file)) == expected


def test_validate_table_output_without_json(tmp_path: Path) -> None:
    r = invoke("validate", BROKEN / "tool_schema.json")
    assert r.exit_code == 1
    rows = {
        cells[1]: cells[2:4] for ln in r.stdout.splitlines() if len(cells := [c.strip() for c in ln.split("│")]) == 5
    }
    assert rows["tool_schema"] == ["6", "7"]  # rule, failed, of
    assert rows["role_order"] == ["0", "7"]
    assert "FAILED" in r.stderr and "6 of 7 records" in r.stderr


def test_tool_schema_messages_say_what_is_wrong(tmp_path: Path) -> None:
    rejects_file = tmp_path / "rejects.jsonl"
    invoke("validate", BROKEN / "tool_schema.json", "--rejects", rejects_file)
    msg = {x.record_id: x.message for x in read_rejects(rejects_file)}
    assert "not a candidate tool" in msg["ts-unknown-tool"]
    assert "expected integer, got boolean" in msg["ts-bool-for-integer"]
    assert "missing required parameter 'city'" in msg["ts-missing-required"]
    assert "unknown parameter 'country'" in msg["ts-unknown-param"]
    assert "not JSON" in msg["ts-arguments-not-json"]
    assert "'K' is not one of" in msg["ts-enum"]


def test_labeller_form_block_turns_are_kept(tmp_path: Path) -> None:
    """The labeller's {turn, checklist, dependence, weight} blocks keep their turn numbers, so 0, 2 is caught."""
    (d,) = [x for x in records_of(BROKEN / "checklist_block_count.json") if x.id == "cb-turns-0-and-2"]
    assert [b.turn for b in d.checklists[0]] == [0, 2]
    assert d.checklists[0][0].weight == {"C0": 0.5, "C1": 0.2, "C2": 0.3}
    assert d.checklists[0][0].dependence["C2"] == ["C1"]


def test_validate_whole_folder_sums_every_file(tmp_path: Path) -> None:
    rejects_file = tmp_path / "rejects.jsonl"
    r, payload = validate_json(BROKEN, "--rejects", rejects_file)
    assert r.exit_code == 1
    expected: Counter[str] = Counter()
    for _, rules, _ in READ_LEVEL.values():
        expected.update(rules)
    for _, rules in GATE_LEVEL.values():
        expected.update(rules)
    for rules in READ_LEVEL_GATE.values():
        expected.update(rules)
    assert nonzero(payload["counts"]) == dict(expected)
    assert payload["checked"] == sum(n for n, _, _ in READ_LEVEL.values()) + sum(n for n, _ in GATE_LEVEL.values())
    assert len(read_rejects(rejects_file)) == sum(expected.values())


@pytest.mark.parametrize("path", [FIXTURE, SAMPLE], ids=["cm2-fixture", "shipped-sample"])
def test_validate_passes_on_good_data(path: Path, tmp_path: Path) -> None:
    rejects_file = tmp_path / "rejects.jsonl"
    r, payload = validate_json(path, "--rejects", rejects_file)
    assert r.exit_code == 0, r.output
    assert payload["checked"] == payload["accepted"] >= 1
    assert not nonzero(payload["counts"])
    assert rejects_file.read_text() == ""


# ------------------------------------------------------------------------------------------------------- filter


@pytest.mark.parametrize("name", sorted(GATE_LEVEL))
def test_filter_keeps_rejected_records_in_full(name: str, tmp_path: Path) -> None:
    out = tmp_path / "clean"
    r = invoke("filter", BROKEN / name, "--out", out, "--with-checklists")
    assert r.exit_code == 0, r.output
    source = {d.id: d for d in records_of(BROKEN / name)}
    kept = store.read_dataset(out)
    assert {d.id for d in kept} == good_ids(BROKEN / name)
    rejects = read_rejects(out / store.REJECTS_FILE)
    assert Counter(x.rule for x in rejects) == Counter(GATE_LEVEL[name][1])
    assert {x.record_id for x in rejects} == set(source) - good_ids(BROKEN / name)
    full = [x for x in rejects if x.raw is not None]
    assert {x.record_id for x in full} == {x.record_id for x in rejects}  # each rejected record kept once, in full
    for x in full:
        back = store.from_row(json.loads(x.raw) if isinstance(x.raw, str) else x.raw)
        original = source[x.record_id]
        assert back.messages == original.messages and back.tools == original.tools
        assert back.checklists == original.checklists


@pytest.mark.parametrize("name", sorted(n for n, (_, rules) in GATE_LEVEL.items() if set(rules) <= CHECKLIST_RULES))
def test_filter_without_checklists_ignores_checklist_rules(name: str, tmp_path: Path) -> None:
    out = tmp_path / "clean"
    r = invoke("filter", BROKEN / name, "--out", out)
    assert r.exit_code == 0, r.output
    assert len(store.read_dataset(out)) == GATE_LEVEL[name][0]
    assert read_rejects(out / store.REJECTS_FILE) == []


def test_filter_carries_read_rejects(tmp_path: Path) -> None:
    out = tmp_path / "clean"
    r = invoke("filter", BROKEN / "wrong_types.jsonl", "--out", out)
    assert r.exit_code == 0, r.output
    assert [d.id for d in store.read_dataset(out)] == ["wt-good"]
    counts = Counter(x.rule for x in read_rejects(out / store.REJECTS_FILE))
    assert counts == Counter(READ_LEVEL["wrong_types.jsonl"][1]) + Counter(READ_LEVEL_GATE["wrong_types.jsonl"])


def test_filter_of_an_ingested_folder_carries_its_rejects(tmp_path: Path) -> None:
    ds, clean = tmp_path / "ds", tmp_path / "clean"
    invoke("ingest", BROKEN / "malformed_lines.jsonl", "--out", ds)
    r = invoke("filter", ds, "--out", clean)
    assert r.exit_code == 0, r.output
    assert len(store.read_dataset(clean)) == 3
    assert Counter(x.rule for x in read_rejects(clean / store.REJECTS_FILE)) == Counter(json_syntax=2, row_type=1)


# --------------------------------------------------------------------------------------------- show and others


def test_show_missing_id_is_a_clear_error() -> None:
    r = invoke("show", FIXTURE, "--id", "missing")
    assert r.exit_code == 1
    assert "no record with id 'missing'" in r.stderr
    assert r.stdout == ""


def test_show_suggests_close_ids() -> None:
    r = invoke("show", BROKEN / "truncated.json", "--id", "tr-good")
    assert r.exit_code == 1
    assert "did you mean tr-good-1, tr-good-2" in r.stderr


def test_show_on_unreadable_input() -> None:
    r = invoke("show", BROKEN / "not_json.json")
    assert r.exit_code != 0
    assert "no readable records" in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("validate", BROKEN / "nope.json"), "does not exist"),
        (("validate", FIXTURE, "--format", "yaml"), "unknown format 'yaml'"),
        (("validate", FIXTURE, "--rule", "no_such_rule"), "unknown rules: no_such_rule"),
    ],
)
def test_usage_errors_are_one_line_not_a_traceback(args: tuple, message: str, tmp_path: Path) -> None:
    r = invoke(*args)
    assert r.exit_code != 0
    assert message in r.stderr
    assert "error:" in r.stderr


def test_ingest_into_a_file_is_an_error(tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("x")
    r = invoke("ingest", BROKEN / "tool_schema.json", "--out", target)
    assert r.exit_code == 2
    assert "cannot write" in r.stderr and str(target) in r.stderr
    assert target.read_text() == "x"


def test_rejects_command_on_a_damaged_table(tmp_path: Path) -> None:
    bad = tmp_path / "rejects.jsonl"
    bad.write_text('{"record_id": null, "stage": "read", "rule": "x", "message": "m"}\n{"half": \n')
    r = invoke("rejects", bad)
    assert r.exit_code == 2
    assert "is not a rejects table" in r.stderr


def test_rejects_command_summarises_by_rule(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    invoke("ingest", BROKEN / "wrong_types.jsonl", "--out", out)
    r = invoke("rejects", out)
    assert r.exit_code == 0
    assert "6 rejects" in r.stdout
    row = next(ln for ln in r.stdout.splitlines() if "message_shape" in ln)
    assert " 2 " in row


def test_damaged_dataset_shard_is_a_reject(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    invoke("ingest", BROKEN / "tool_schema.json", "--out", ds)
    (shard,) = store.split_files(ds)["train"]
    shard.write_bytes(shard.read_bytes()[:200])
    r = invoke("validate", ds, "--json")
    assert r.exit_code == 1
    assert nonzero(json.loads(r.stdout)["counts"]) == {"parquet_unreadable": 1}


# ------------------------------------------------------------------------------------- the real console script


def _console_script() -> list[str]:
    """The installed ``cm2data`` command beside this interpreter (the package's console script; the toolkit's
    environment and ``pip install -e .`` both put it there), not a stand-in for it."""
    script = Path(sys.executable).with_name("cm2data")
    assert script.is_file(), f"no console script at {script}: cm2data is not installed in this environment"
    return [str(script)]


def test_console_script_on_the_broken_folder(tmp_path: Path) -> None:
    """A real process over every broken file: rejects written, exit 1 under --strict, no traceback on stderr."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    out = tmp_path / "ds"
    proc = subprocess.run(
        [*_console_script(), "ingest", str(BROKEN), "--out", str(out), "--strict"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    rejects = read_rejects(out / store.REJECTS_FILE)
    expected: Counter[str] = Counter()
    for _, rules, _ in READ_LEVEL.values():
        expected.update(rules)
    assert Counter(x.rule for x in rejects) == expected
    n_good = sum(n for n, _, _ in READ_LEVEL.values()) + sum(n for n, _ in GATE_LEVEL.values())
    assert len(store.read_dataset(out)) == n_good
    assert "truncated_file" in proc.stderr and "rows rejected" in proc.stderr


def test_nothing_in_a_reject_is_lost_on_the_way_to_disk(tmp_path: Path) -> None:
    """Rejects written by the CLI read back as the same objects (the table is the only trace of a bad row)."""
    out = tmp_path / "ds"
    invoke("ingest", BROKEN / "sharegpt_unknown_from.jsonl", "--out", out)
    rejects = read_rejects(out / store.REJECTS_FILE)
    assert all(
        isinstance(x, Reject) and x.location and x.location.startswith("sharegpt_unknown_from.jsonl:") for x in rejects
    )
    assert {x.record_id for x in rejects} == {"sg-robot", "sg-no-from", "sg-call-not-json", "sg-conversations-string"}
