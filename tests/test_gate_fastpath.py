"""The gate's quick paths change nothing: screens only clear what the exact rules pass, chunked tables and the
streaming gate find what one whole-table validation finds, and ``run_gate`` equals the plain algorithm (every rule on
every record, one table) reject for reject, on records damaged at random in many small ways.
"""

from __future__ import annotations

import copy
import importlib.util
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

from cm2data.rejects import Reject
from cm2data.schema import Dialogue, ToolCall
from cm2data.validate import RULE_FILTERS, RuleConfig, rule_names, run_gate, run_gate_stream
from cm2data.validate import tables as T
from cm2data.validate.checklist import CHECKLIST_RULES, SCREENED_CHECKLIST_RULES, steps_per_turn, variant_clear
from cm2data.validate.gate import table_rule_names
from cm2data.validate.screen import screen

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "validate.py"

TEXTS = [
    "",
    " ",
    "\t\n",
    "\x1c",
    "\u00a0",
    "ok",
    "<think>x</think>",
    "a <think>",
    "</think>",
    "<tool_response>{}</tool_response>",
    "<|im_start|>",
    "<|im_end|>",
    "<",
    '{"a": 1}',
    "[1,2]",
    "1e400",
    "NaN",
    '{"a": 1',
    "123456789012345678901234567890",
    '"\\ud800"',
    "null",
    " {} ",
    "{}x",
    '{"a":1,"a":2}',
]
ARGS = [
    "{}",
    "",
    "  ",
    "[]",
    "null",
    '{"city": "Oslo"}',
    '{"city": 5}',
    '{"city": "x", "days": 3.0}',
    '{"city": "x", "days": 3.5}',
    '{"city": "x", "days": true}',
    '{"city": "x", "days": 123456789012345678901234567890}',
    '{"city": "x", "limit": 1e400}',
    '{"location": {"lat": 1, "lon": 2}, "city": "a"}',
    '{"location": {"lat": 1}, "city": "a"}',
    '{"city": "a", "tags": ["x", 1]}',
    '{"city": "a", "sort": "price"}',
    '{"city": "a", "sort": "nope"}',
    '{"city": "a", "max_price": 12345678901234567890123}',
    '{"city": "a", "max_price": true}',
    "{bad",
    '{"city": "a", "extra": 1}',
    '{"city": null}',
    '{"city": "\\ud800"}',
]
SCHEMAS = [
    {"type": "object", "properties": {"city": {"type": ["string", "null"]}}, "required": ["city"]},
    {"type": "object", "properties": {"city": {"type": "string", "nullable": True}}},
    {"type": "object", "properties": {"city": {"enum": ["Oslo", 5, 1.0, None]}}, "additionalProperties": True},
    {"type": "object", "properties": {}, "additionalProperties": {"type": "integer"}},
    {"type": "object"},
    {"type": "object", "properties": {"city": {"type": "str"}}, "additionalProperties": False},
    {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "number", "enum": [3, 3.0]}}},
    {"type": "object", "properties": {"city": {"type": ["integer", "number"]}, "days": {"type": "integer"}}},
    {"type": "object", "properties": {"city": "not a schema", "days": {}}},
    {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string", "enum": ["x"]}},
            "city": {"type": "string"},
        },
    },
]


@pytest.fixture(scope="module")
def bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("cm2data_benchmark_validate_fastpath", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _mutate(rng: random.Random, d: Dialogue) -> None:
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(20)
        msgs = d.messages
        calls = [c for m in msgs for c in m.tool_calls]
        items = [it for v in d.checklists for b in v for it in b.items]
        if op == 0 and msgs:
            rng.choice(msgs).content = rng.choice(TEXTS)
        elif op == 1 and msgs:
            rng.choice(msgs).thinking = rng.choice([None, *TEXTS])
        elif op == 2 and calls:
            rng.choice(calls).arguments = rng.choice(ARGS)
        elif op == 3 and calls:
            rng.choice(calls).id = rng.choice([None, "", "call_0_0", "call_0_1", "x"])
        elif op == 4 and msgs:
            rng.choice(msgs).tool_call_id = rng.choice([None, "", "call_0_0", "call_0_1", "call_1_1"])
        elif op == 5 and msgs:
            i, j = rng.randrange(len(msgs)), rng.randrange(len(msgs))
            msgs[i], msgs[j] = msgs[j], msgs[i]
        elif op == 6 and msgs:
            del msgs[rng.randrange(len(msgs))]
        elif op == 7 and msgs:
            msgs.insert(rng.randrange(len(msgs) + 1), copy.deepcopy(rng.choice(msgs)))
        elif op == 8 and msgs:
            rng.choice(msgs).role = rng.choice(["system", "user", "assistant", "tool"])
        elif op == 9 and d.tools:
            rng.choice(d.tools).parameters = copy.deepcopy(rng.choice(SCHEMAS))
        elif op == 10 and d.tools:
            d.tools = [*d.tools, copy.deepcopy(rng.choice(d.tools))]
        elif op == 11 and msgs:
            m = rng.choice(msgs)
            m.tool_calls = [
                *m.tool_calls,
                ToolCall(
                    id=rng.choice([None, "z"]),
                    name=rng.choice(["search_restaurants", "nope", "book_table"]),
                    arguments=rng.choice(ARGS),
                ),
            ]
        elif op == 12 and items:
            it = rng.choice(items)
            it.depends_on = rng.choice([[], ["C1"], ["C0"], [it.id], ["C9"], ["C1", "C3"]])
        elif op == 13 and items and rng.choice(items).evidence:
            ev = rng.choice(rng.choice([it for it in items if it.evidence]).evidence)
            ev.turn, ev.step = rng.choice([0, 1, 2, 3, 7]), rng.choice([0, 1, 3, 5, 6, 9])
            ev.from_ = rng.choice(["tool.content", "user.content", "bad.from"])
        elif op == 14 and d.checklists and d.checklists[0]:
            rng.choice(d.checklists[0]).turn = rng.choice([0, 1, 2, 3])
        elif op == 15 and items:
            it = rng.choice(items)
            field, values = rng.choice(
                [
                    ("weight", [0.0, 1.0, 1.5, -0.1, 0.2]),
                    ("id", ["", " ", "C0", "C1", "C7"]),
                    ("question", TEXTS),
                    ("pass_condition", TEXTS),
                    ("focus_on", ["tool.content", "assistant.mood", "user.content"]),
                ]
            )
            setattr(it, field, rng.choice(values))
        elif op == 16 and d.checklists and d.checklists[0]:
            del d.checklists[0][rng.randrange(len(d.checklists[0]))]
        elif op == 17 and d.checklists:
            d.checklists = [*d.checklists, copy.deepcopy(d.checklists[0])]
        elif op == 18:
            d.review.status = rng.choice(["unreviewed", "approved", ""])
        elif op == 19:
            d.id = rng.choice(["dup-a", "dup-b", "", d.id])


def _damaged(bench, seed: int, n: int = 14) -> list[Dialogue]:  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    records, _ = bench.generate(n, seed=seed, broken=0.3)
    for d in records:
        if rng.random() < 0.7:
            _mutate(rng, d)
    return records


def _plain_gate(records: list[Dialogue], cfg: RuleConfig) -> tuple[list[tuple], Counter[str]]:
    """The gate's algorithm without its quick paths: every rule on every record, the tables validated whole."""
    failed: dict[str, list[Reject]] = {}
    for d in records:
        found = [Reject(d.id, "validate", name, "") for name, fn in RULE_FILTERS.items() if fn(d, cfg)]
        if d.checklists:
            steps = steps_per_turn(d.messages)
            found += [Reject(d.id, "validate", name, "") for name, fn in CHECKLIST_RULES.items() if fn(d, steps)]
        if found:
            failed.setdefault(d.id, []).extend(found)
    rows = T.TableRows(chunk_records=None)
    for d in records:
        rows.add(d)
    for f in rows.failures():
        failed.setdefault(f.dialogue_id, []).append(Reject(f.dialogue_id, "validate", f.rule, f.message))
    counts: Counter[str] = Counter({name: 0 for name in rule_names()})
    for rs in failed.values():
        counts.update({r.rule for r in rs})
    return [(r.record_id, r.rule) for rs in failed.values() for r in rs], counts


@pytest.mark.parametrize("seed", range(40))
def test_screens_clear_only_what_the_rules_pass(bench, seed: int) -> None:  # type: ignore[no-untyped-def]
    for d in _damaged(bench, seed):
        for thinking in ("auto", "required", "forbidden"):
            cfg = RuleConfig(thinking=thinking)  # type: ignore[arg-type]
            steps = screen(d, cfg)
            if steps is not None:
                assert {n: f(d, cfg) for n, f in RULE_FILTERS.items()} == {n: [] for n in RULE_FILTERS}
                assert steps == steps_per_turn(d.messages)
        steps = steps_per_turn(d.messages)
        for cleared in (
            T.TableRows(chunk_records=None).add(d, steps),
            all(variant_clear(v, steps) for v in d.checklists),
        ):
            if cleared:  # the screens vouch for the screened rules only; the text rules always run
                assert all(not CHECKLIST_RULES[n](d, steps) for n in SCREENED_CHECKLIST_RULES)


def test_screens_clear_valid_records(bench) -> None:  # type: ignore[no-untyped-def]
    records, _ = bench.generate(30, seed=2, broken=0.0)
    for d in records:
        steps = screen(d, RuleConfig())
        assert steps is not None
        assert T.TableRows(chunk_records=None).add(d, steps)


@pytest.mark.parametrize("seed", range(25))
def test_run_gate_is_the_plain_algorithm(bench, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(T, "CHUNK_RECORDS", [1, 2, 3, 5, 4096][seed % 5])  # chunks, and ids shared across them
    records = _damaged(bench, 1000 + seed)
    for d in records[::3]:
        d.id = "dup-a"
    cfg = RuleConfig(thinking=["auto", "required", "forbidden"][seed % 3])
    result = run_gate(copy.deepcopy(records), config=cfg)
    expected, counts = _plain_gate(records, cfg)
    assert [(r.record_id, r.rule) for r in result.rejects] == expected
    assert result.counts == counts
    stream = run_gate_stream(iter(copy.deepcopy(records)), config=cfg)
    assert [(r.record_id, r.rule, r.message) for r in stream.rejects] == [
        (r.record_id, r.rule, r.message) for r in result.rejects
    ]
    assert stream.counts == result.counts and stream.checked == result.checked


@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_chunked_tables_equal_one_table(bench, chunk: int) -> None:  # type: ignore[no-untyped-def]
    records = _damaged(bench, 77, n=30)
    for d in records[1::4]:
        d.id = "dup-b"
    shared = {did for did, n in Counter(d.id for d in records).items() if n > 1}
    assert "dup-b" in shared
    whole, chunked = T.TableRows(chunk_records=None), T.TableRows(chunk_records=chunk)
    known = T.TableRows(chunk_records=chunk, duplicated=shared)  # as run_gate does
    for d in records:
        whole.add(d)
        chunked.add(d)
        known.add(d)
    assert chunked.failures() == whole.failures() == known.failures()


def test_gate_covers_every_rule(bench) -> None:  # type: ignore[no-untyped-def]
    covers = bench.gate_coverage()
    assert covers["tables"] == table_rule_names()
    assert [*covers["rules"], *covers["checklist"], *covers["tables"]] == rule_names()
    assert len(rule_names()) == 26
