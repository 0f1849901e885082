"""The columnar gate (``cm2data.validate.columnar``) finds exactly what ``run_gate`` finds: the same rejects (record,
rule, message, in the same order), counts and accepted count — on the shipped sample, on every file of the
broken-input corpus, on synthetic dialogues from the validation benchmark, on randomly damaged records and on rows
damaged at the Arrow level (nulls, unknown roles, bad JSON columns) that only the reader can refuse. A screen that
wrongly cleared a bad row would drop a reject, so each comparison fails then (``test_a_lax_screen_is_caught``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from conftest import load_module

from cm2data import store
from cm2data.sources import load
from cm2data.validate import RuleConfig, run_gate
from cm2data.validate import columnar_screens as screens
from cm2data.validate.columnar import gate_batches, gate_dataset, gate_records
from cm2data.validate.json_shapes import JSON_DOCUMENT, args_shape, key_pattern

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "validate.py"
FASTPATH = ROOT / "tests" / "test_gate_fastpath.py"
BROKEN = ROOT / "tests" / "data" / "broken"


@pytest.fixture(scope="module")
def fastpath() -> Any:
    return load_module(FASTPATH, "cm2data_test_gate_fastpath_columnar")


def _key(result: Any) -> list[tuple[str | None, str, str]]:
    return [(r.record_id, r.rule, r.message) for r in result.rejects]


def assert_same(records: list[Any], config: RuleConfig | None = None, **kw: Any) -> Any:
    """The columnar gate over ``records`` (as Arrow rows) equals ``run_gate`` over the records those rows read
    back as (the store sorts checklist blocks by turn, as any reader of the rows sees them)."""
    records = [store.from_row(store.to_row(d)) for d in records]
    expected = run_gate(records, config=config, **kw)
    got = gate_records(records, config=config, **kw)
    assert _key(got) == _key(expected)
    assert dict(got.counts) == dict(expected.counts)
    assert got.checked == expected.checked
    assert got.accepted_count == len(expected.accepted or [])
    assert got.rules == expected.rules
    return got


@pytest.mark.parametrize("thinking", ["auto", "required"])
def test_same_as_run_gate_on_the_shipped_sample(sample_path: Path, tmp_path: Path, thinking: str) -> None:
    from cm2data.formats import read_records
    from cm2data.schema import Dialogue

    sample = [d for d in read_records(sample_path, "cm2") if isinstance(d, Dialogue)]
    assert sample
    folder = tmp_path / "sample"
    store.write_dataset(folder, sample)
    records, read = load(folder)
    config = RuleConfig(thinking=thinking)  # type: ignore[arg-type]
    expected = run_gate(records, config=config)
    got = gate_dataset(folder, config=config)
    assert [(r.record_id, r.rule, r.message, r.location) for r in got.read_rejects] == [
        (r.record_id, r.rule, r.message, r.location) for r in read
    ]
    assert _key(got) == _key(expected)
    assert dict(got.counts) == dict(expected.counts)
    assert (got.checked, got.accepted_count) == (len(records), len(expected.accepted or []))


CORPUS = sorted(p for p in BROKEN.iterdir() if p.suffix in (".json", ".jsonl", ".parquet"))
# the files of the corpus that hold no readable record at all: nothing for a gate to check
UNREADABLE = ("not_json.json", "truncated.parquet")


def test_the_corpus_files_without_records_are_the_known_ones() -> None:
    assert tuple(p.name for p in CORPUS if not load(p)[0]) == UNREADABLE


@pytest.mark.parametrize("path", [p for p in CORPUS if p.name not in UNREADABLE], ids=lambda p: p.name)
def test_same_as_run_gate_on_the_broken_corpus(path: Path) -> None:
    records, _ = load(path)
    assert records
    for thinking in ("auto", "required"):
        assert_same(records, RuleConfig(thinking=thinking))


def test_same_as_run_gate_on_synthetic_dialogues(bench: Any) -> None:
    records, broken = bench.generate(2000, seed=5, broken=0.05)
    got = assert_same(records)
    assert got.rejected_ids == set(broken)
    # the screens clear the valid records: the exact path runs on the broken ones (and a few neighbours at most)
    assert got.exact.get("tool_schema", 0) <= len(broken)


def test_same_as_run_gate_on_damaged_records(bench: Any, fastpath: Any) -> None:
    for seed in range(12):
        records = fastpath._damaged(bench, seed, 30)
        config = RuleConfig(thinking=random.Random(seed).choice(["auto", "required", "forbidden"]))
        assert_same(records, config)
    assert_same(fastpath._damaged(bench, 99, 30), rules=["tool_schema", "evidence_grounded", "weights_sum_to_one"])
    assert_same(fastpath._damaged(bench, 98, 30), stages=("rules",))


def test_a_dataset_folder_streams_like_load_then_run_gate(bench: Any, tmp_path: Path) -> None:
    records, _ = bench.generate(300, seed=8, broken=0.1)
    records += [records[3].model_copy(deep=True), records[7].model_copy(deep=True)]  # later copies of an id
    store.write_dataset(tmp_path / "ds", records, rows_per_file=120)
    loaded, read = load(tmp_path / "ds")
    expected = run_gate(loaded)
    got = gate_dataset(tmp_path / "ds", batch_size=50)
    assert [(r.record_id, r.rule, r.message, r.location, r.raw) for r in got.read_rejects] == [
        (r.record_id, r.rule, r.message, r.location, r.raw) for r in read
    ]
    assert [r.rule for r in got.read_rejects] == ["duplicate_id", "duplicate_id"]
    assert _key(got) == _key(expected)
    assert dict(got.counts) == dict(expected.counts)


def test_a_shard_with_bytes_that_are_not_utf8_is_unreadable_as_for_load(bench: Any, tmp_path: Path) -> None:
    """Parquet does not check strings when read: a shard whose message text is not UTF-8 is a ``parquet_unreadable``
    read reject from that batch on, as the record path reports it — not a crash, not an accepted row."""
    from conftest import break_utf8

    records, _ = bench.generate(300, seed=9, broken=0.05)
    records[150].messages[0].content += " MARKER-QZX"
    store.write_dataset(tmp_path / "ds", records, rows_per_file=120)
    break_utf8(sorted(store.data_dir(tmp_path / "ds").glob("*.parquet"))[1], "MARKER-QZX")
    loaded, read = load(tmp_path / "ds")
    got = gate_dataset(tmp_path / "ds")
    assert [(r.record_id, r.rule, r.message, r.location) for r in got.read_rejects] == [
        (r.record_id, r.rule, r.message, r.location) for r in read
    ]
    assert [r.rule for r in got.read_rejects] == ["parquet_unreadable"] and len(loaded) == 180
    assert _key(got) == _key(run_gate(loaded))


# ------------------------------------------------------------------------------------------ Arrow-level damage


def _damage_row(rng: random.Random, row: dict[str, Any]) -> None:
    """Damage one stored row in ways a pydantic record cannot hold: the reader must refuse (or accept) it exactly
    as ``store.from_row`` does."""
    msgs = row["messages"]
    items = [it for v in row["checklists"] for b in v for it in b["items"]]
    op = rng.randrange(16)
    if op == 0:
        rng.choice(msgs)["role"] = rng.choice(["bot", None, "developer"])
    elif op == 1:
        rng.choice(msgs)["content"] = None
    elif op == 2:
        rng.choice(msgs)["tool_calls"] = None
    elif op == 3:
        row["tools"] = rng.choice(["not json", "{}", "[1]", '[{"function": {"name": ""}}]', None, ""])
    elif op == 4:
        row["metadata"] = rng.choice(["[]", "nope", None, '{"a": NaN}', '{"a": 1}'])
    elif op == 5 and items:
        rng.choice(items)["extra_info"] = rng.choice(["[]", "{bad", "", '{"review": {"decision": "add"}}', "{}"])
    elif op == 6 and items and rng.choice(items)["evidence"]:
        ev = rng.choice(rng.choice([it for it in items if it["evidence"]])["evidence"])
        ev[rng.choice(["turn", "step"])] = rng.choice([-1, None, 0])
    elif op == 7 and items:
        rng.choice(items)[rng.choice(["weight", "id", "question", "required_for_next_turn"])] = None
    elif op == 8:
        row["provenance"] = rng.choice([None, {"history": "{}"}, {"history": '[{"stage": "x"}]'}, {"history": "[1]"}])
    elif op == 9:
        row["review"] = rng.choice(
            [None, {"status": None}, {"agreement": '{"a": "x"}'}, {"decisions": "[3]"}, {"reviewers": [None]}]
        )
    elif op == 10 and row["checklists"]:
        row["checklists"][0][0]["turn"] = rng.choice([-1, None, 5])
    elif op == 11 and items:
        rng.choice(items)["evidence"] = rng.choice([[], None])
    elif op == 12:
        msgs.append(dict(msgs[-1], content="ok then, thanks a lot"))
    elif op == 13 and items:
        rng.choice(items)["failure_examples"] = rng.choice([None, [None], ["x"]])
    elif op == 14:
        row["id"] = rng.choice([None, "", "bench-00000001"])
    elif op == 15 and items:
        rng.choice(items)["evidence"][0:0] = [{"turn": 0, "step": 0, "from": "user.content", "snippet": "Turn 0 of"}]


def test_rows_damaged_at_the_arrow_level(bench: Any, tmp_path: Path) -> None:
    rng = random.Random(4)
    records, _ = bench.generate(120, seed=4, broken=0.1)
    rows = [store.to_row(d) for d in records]
    for row in rows:
        if rng.random() < 0.6:
            for _ in range(rng.randint(1, 2)):
                _damage_row(rng, row)
    table = pa.Table.from_pylist(rows, schema=store.DIALOGUE_SCHEMA)
    store.write_table(tmp_path / "ds", table)
    loaded, read = load(tmp_path / "ds")
    assert len(read) > 10 and loaded  # the damage reaches the reader, and records remain
    expected = run_gate(loaded)
    got = gate_dataset(tmp_path / "ds", batch_size=40)
    assert [(r.record_id, r.rule, r.message, r.location) for r in got.read_rejects] == [
        (r.record_id, r.rule, r.message, r.location) for r in read
    ]
    assert _key(got) == _key(expected)
    assert dict(got.counts) == dict(expected.counts)
    assert got.accepted_count == len(expected.accepted or [])
    # the readers' screen (rules=False) finds the same unreadable rows as the whole screen, and proves no rule
    batch = table.combine_chunks().to_batches()[0]
    whole = screens.screen_batch(batch, RuleConfig())
    reading = screens.screen_batch(batch, RuleConfig(), rules=False)
    assert whole.unreadable.any() and np.array_equal(reading.unreadable, whole.unreadable)
    assert reading.not_proven(["role_order"]).all() and reading.table.all()


def test_batches_in_another_layout_are_read_row_by_row(bench: Any) -> None:
    records, _ = bench.generate(40, seed=2, broken=0.2)
    table = store.records_table(records).drop_columns(["metadata"])  # not the store's layout: no screens
    got = gate_batches(table.to_batches(max_chunksize=16))
    expected = run_gate(records)
    assert _key(got) == _key(expected)
    assert got.exact.get("layout") == len(records)


def test_a_lax_screen_is_caught(bench: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """If a screen cleared rows it cannot prove, the comparison fails: here every rule's screen clears everything."""
    real = screens.screen_batch

    def lax(batch: pa.RecordBatch, cfg: RuleConfig) -> screens.BatchScreen:
        out = real(batch, cfg)
        out.flags = {rule: np.zeros(out.n, dtype=np.bool_) for rule in out.flags}
        out.table[:] = False
        return out

    monkeypatch.setattr("cm2data.validate.columnar.screen_batch", lax)
    records, _ = bench.generate(200, seed=1, broken=0.2)  # every kind of breakage, each aimed at one rule
    with pytest.raises(AssertionError):
        assert_same(records)
    for rule in ("tool_schema", "evidence_grounded", "degenerate_message", "role_order"):

        def one_lax(batch: pa.RecordBatch, cfg: RuleConfig, rule: str = rule) -> screens.BatchScreen:
            out = real(batch, cfg)
            out.flags[rule] = np.zeros(out.n, dtype=np.bool_)
            return out

        monkeypatch.setattr("cm2data.validate.columnar.screen_batch", one_lax)
        with pytest.raises(AssertionError):
            assert_same(records)


# ------------------------------------------------------------------------------------------------ the regexes


def test_json_document_regex_accepts_only_what_json_loads_accepts() -> None:
    import pyarrow.compute as pc

    texts = [
        '{"a": 1}',
        "[1, 2.5e3, -0]",
        '"x"',
        "null",
        " {} ",
        "NaN",
        '{"a": 1',
        "{}x",
        '{"a":"x\ty"}',
        "01",
        "1.",
        "[1,]",
        '{"a":[{"b":{"c":1}}]}',
        '"\\ud800"',
        '"\\x"',
        "",
    ]
    matched = pc.match_substring_regex(pa.array(texts), JSON_DOCUMENT).to_pylist()
    for text, ok in zip(texts, matched, strict=True):
        if ok:
            json.loads(text)  # never raises for a match
    assert matched[:5] == [True] * 5


def test_args_shape_clears_only_arguments_the_rule_passes(fastpath: Any) -> None:
    import pyarrow.compute as pc

    from cm2data.schema.jsonschema import check_object

    schemas = [*fastpath.SCHEMAS, *[t["parameters"] for t in _tool_dicts()]]
    args = [*fastpath.ARGS, '{"city": "a", "city": 5}', '{ "city" : "Oslo" , "days" : 2 }', '{"location": {"lat": 1}}']
    for schema in schemas:
        shape = args_shape(schema)
        if shape is None:
            continue
        arr = pa.array(args)
        ok = np.asarray(pc.match_substring_regex(arr, shape.structure))
        ok &= ~np.asarray(pc.match_substring_regex(arr, shape.duplicate))
        for parent, key in shape.required:
            present = np.asarray(pc.match_substring_regex(arr, key_pattern(key)))
            if parent is not None:
                present |= ~np.asarray(pc.match_substring_regex(arr, key_pattern(parent)))
            ok &= present
        for text, cleared in zip(args, ok.tolist(), strict=True):
            if cleared:
                problems: list[str] = []
                parsed = json.loads(text)
                assert isinstance(parsed, dict)
                check_object(parsed, schema, "args", problems)
                assert problems == [], (schema, text)


def _tool_dicts() -> list[dict[str, Any]]:
    module = load_module(BENCH, "cm2data_benchmark_validate_columnar_tools")
    return list(module._TOOL_DICTS.values())


# ------------------------------------------------------------------------------------ the byte-level helpers

# letters, digits, the six ASCII spaces, punctuation, Unicode spaces, accented and wide characters, an emoji
_ALPHABET = "ab1 Z9\n\t\r\f\v.!-_<{…é中👍\u00a0\u3000"


def _random_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 24))) for _ in range(count)]


def test_text_stats_equal_degenerate_texts_first_test() -> None:
    """Words (ASCII runs once the other characters are dropped: ``ab…cd`` is one word), letters and digits, and
    characters less the six ASCII spaces — exactly as ``degenerate_text`` counts them, for every kind of text."""
    import re

    texts = [*_random_texts(5000, seed=3), "ab…cd", "…ab", "ab …cd", "中ab中cd", "a1", ""]
    words, alnum, visible = screens._text_stats(pa.array(texts))
    for text, w, a, v in zip(texts, words, alnum, visible, strict=True):
        runs = re.findall(r"[A-Za-z0-9]+", text.encode("ascii", "ignore").decode("ascii"))
        assert (w, a, v) == (len(runs), sum(map(len, runs)), len(text) - sum(map(text.count, " \n\t\r\f\v"))), text
    assert list(words[-6:]) == [1, 1, 2, 1, 1, 0]


def test_blank_and_visible_checks_equal_python() -> None:
    """``_non_blank`` is ``s.strip() != ""`` and ``_has_visible_ascii`` finds a character in ``!``..``~``, on texts
    that start with spaces (ASCII or not), in slices of a larger array, and for nulls (neither)."""
    texts: list[str | None] = [*_random_texts(3000, seed=4), None, "", " ", "\u3000x", "\u00a0"]
    arr = pa.array(texts)
    for view, values in ((arr, texts), (arr.slice(7, 500), texts[7:507])):
        assert list(screens._non_blank(view)) == [t is not None and t.strip() != "" for t in values]
        assert list(screens._has_visible_ascii(view)) == [
            t is not None and any("!" <= c <= "~" for c in t) for t in values
        ]


def test_small_blocks_are_checked_like_the_hash_join(bench: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Duplicate item ids and dependencies, checked position by position in small blocks, flag the same rows as
    the hash join that large blocks take — on synthetic dialogues with every kind of damage, ids doubled too."""
    records, _ = bench.generate(300, seed=5, broken=0.3)
    for d in records[::7]:
        for variant in d.checklists:
            for block in variant:
                if len(block.items) > 1:
                    block.items[-1].id = block.items[0].id
    batch = store.records_table(records).to_batches(max_chunksize=len(records))[0]
    cfg = RuleConfig()
    small = screens.screen_batch(batch, cfg)
    monkeypatch.setattr(screens, "_BLOCK_SCAN", 0)
    joined = screens.screen_batch(batch, cfg)
    assert small.flags["checklist_dependencies"].any() and small.table.any()
    assert np.array_equal(small.flags["checklist_dependencies"], joined.flags["checklist_dependencies"])
    assert np.array_equal(small.table, joined.table)


def test_tools_are_read_as_from_row_reads_them() -> None:
    """Each tool object validated once and reused across tool sets gives what ``from_row``'s reading gives, cell by
    cell: valid sets (tools repeated, reordered, duplicated), entries that are not tools, cells that are not lists,
    and cells orjson reads otherwise than ``json.loads`` (integers beyond 64 bits, ``NaN``), which take the exact
    reading."""
    tool = {"function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}
    other = {"function": {"name": "g", "description": "G.", "parameters": {"type": "object", "maximum": 1.5}}}
    big = {"function": {"name": "h", "parameters": {"type": "object", "maximum": [123456789012345678901234]}}}
    cells: list[str | None] = [
        json.dumps([tool, other]),
        json.dumps([other, tool]),
        json.dumps([tool, tool]),
        json.dumps([tool, {"function": {"description": "no name"}}]),
        json.dumps([tool, "not a tool"]),
        json.dumps([big]),
        json.dumps([{"function": {"name": "h", "parameters": {"type": "object", "maximum": [1.2345678901234568e23]}}}]),
        json.dumps([{"function": {"name": "n", "parameters": {"minimum": float("nan")}}}]),
        json.dumps({}),
        json.dumps({"function": {}}),
        json.dumps("text"),
        "[1, 2",
        json.dumps([{"function": {**tool["function"], "description": "Another description."}}]),
        json.dumps([{"function": {**tool["function"], "description": 5}}]),
        json.dumps([["f", tool["function"]["parameters"]]]),
        "[]",
        "",
        None,
    ]
    screens._tools_info.cache_clear()
    screens._TOOLS_SEEN.clear()
    read = [screens._tools_info(c) for c in cells]
    assert read == [screens._tools_info_exact(c) for c in cells]
    readable = [True, True, True, False, False, True, True, True, True, False, False, False, True, False, False]
    readable += [True, True, True]
    assert [r[0] for r in read] == readable
    assert read[0][1] == ("f", "g") and read[1][1] == ("g", "f") and read[2][3][0] == read[2][3][1]
    assert type(read[5][2][0]["maximum"][0]) is int  # json.loads' integer, not orjson's float
    assert type(read[6][2][0]["maximum"][0]) is float  # the same bytes once orjson wrote them: a float
    assert read[12][1] == ("f",) and read[12][2][0] is read[0][2][0]  # another description: f as validated before
    # f, g, the nameless entry, the string, the description that is not a string, the list: each validated once
    assert len(screens._TOOLS_SEEN) == 6
