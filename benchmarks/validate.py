"""Benchmark: loading a dataset folder versus validating it with the gate (rule filters, checklist rules, tables).

Generates ``--n`` synthetic dialogues (3 user turns, 2 tool calls per turn as one parallel action or two sequential
actions, thinking in every assistant message, a final reply per turn, 3–4 typed candidate tools, 5 weighted
checklist items per turn with evidence and dependencies on ``tool.content`` items), breaks a ``--broken`` fraction of
them in known ways, writes them with :func:`cm2data.store.write_dataset` and then times

* ``load_raw``: ``pyarrow.parquet.read_table`` of the written shards;
* ``stream`` (in a child process, so that its peak memory is its own): :func:`cm2data.validate.run_gate_stream` over
  :func:`cm2data.store.iter_dataset` — load and gate together, each batch of records let go once checked;
* ``columnar`` (in a child process, for its own peak memory): :func:`cm2data.validate.columnar.gate_dataset` — load
  and gate straight from the parquet files, record batch by record batch, pydantic records built only for rows a
  vectorised screen cannot clear; its CPU time is compared with ``load_raw`` (target: ≥ 50,000 dialogues per CPU
  second) and its peak RSS with the size of the Arrow table ``load_raw`` reads (target: ≤ 2×);
* ``load_records``: :func:`cm2data.store.read_dataset` (parquet → canonical pydantic records);
* ``gate``: :func:`cm2data.validate.run_gate` over the loaded records with every stage. That is the whole gate,
  nothing skipped: all 8 rule filters (method §2.2), the 3 record-level checklist rules and the pandera validation
  of both flattened tables (4 dialogue-table and 8 item-table checks, every row) — 23 rules for every record. Most
  records are cleared by the gate's one-pass screens; the exact rules run on every record a screen does not clear
  (docs/validation.md). The records are already in memory: their loading is ``load_records``.

It checks that the gate rejects exactly the broken records (each with the rule its breakage targets), that the
stream finds the same rejects, and prints dialogues/s, peak memory and the ratio gate time / load time for both
load definitions. Run it on one core::

    taskset -c 0 $VENV/bin/python benchmarks/validate.py --n 100000 --json bench.json

``--only columnar`` runs generate, write, load_raw and columnar only (and checks the columnar rejects against the
injected breakages).

Peak memory is the process's peak resident set size (``VmHWM``), reset before each phase through
``/proc/self/clear_refs`` so that each phase gets its own peak; where that is not possible it falls back to
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the peak of the whole process so far), and says so.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

import cm2data
from cm2data import store
from cm2data.schema import ChecklistItem, Dialogue, Message, ToolCall
from cm2data.validate import rule_names, run_gate, run_gate_stream
from cm2data.validate.checklist import CHECKLIST_RULES
from cm2data.validate.gate import table_rule_names
from cm2data.validate.rules import RULE_FILTERS

# ------------------------------------------------------------------------------------------------------ the tools

#: Parameter kinds a synthetic tool can have: JSON schema and a value generator.
_PARAMS: dict[str, tuple[dict[str, Any], Callable[[random.Random], Any]]] = {
    "city": ({"type": "string", "description": "City name"}, lambda r: r.choice(["Paris", "Lima", "Oslo", "Pune"])),
    "limit": ({"type": "integer", "description": "Maximum number of results"}, lambda r: r.randint(1, 50)),
    "max_price": ({"type": "number", "description": "Upper price bound in EUR"}, lambda r: round(r.uniform(5, 500), 2)),
    "include_closed": ({"type": "boolean", "description": "Also list closed venues"}, lambda r: r.random() < 0.5),
    "sort": (
        {"type": "string", "enum": ["price", "rating", "distance"], "description": "Sort order"},
        lambda r: r.choice(["price", "rating", "distance"]),
    ),
    "tags": (
        {"type": "array", "items": {"type": "string"}, "description": "Tags to match"},
        lambda r: r.sample(["vegan", "quiet", "outdoor", "cheap", "kids"], r.randint(1, 3)),
    ),
    "date": (
        {"type": "string", "description": "ISO date"},
        lambda r: f"2025-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
    ),
    "location": (
        {
            "type": "object",
            "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
            "required": ["lat", "lon"],
            "description": "Coordinates",
        },
        lambda r: {"lat": round(r.uniform(-80, 80), 4), "lon": round(r.uniform(-170, 170), 4)},
    ),
    "ticker": ({"type": "string", "description": "Stock ticker"}, lambda r: r.choice(["ACME", "INIT", "GLOBX"])),
    "days": ({"type": "integer", "description": "Number of days"}, lambda r: r.randint(1, 30)),
}

#: Synthetic tools: name → (required parameters, optional parameters).
_TOOLS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "search_restaurants": (("city",), ("limit", "max_price", "sort", "tags")),
    "get_weather_forecast": (("city", "days"), ("date",)),
    "find_nearby_venues": (("location",), ("limit", "include_closed", "tags")),
    "get_stock_quote": (("ticker",), ("date",)),
    "book_table": (("city", "date"), ("limit",)),
    "list_events": (("city",), ("date", "tags", "sort", "max_price")),
    "get_price_history": (("ticker", "days"), ("sort",)),
    "route_between": (("location", "city"), ("include_closed",)),
}


def _tool(name: str) -> dict[str, Any]:
    required, optional = _TOOLS[name]
    props = {p: _PARAMS[p][0] for p in (*required, *optional)}
    params = {"type": "object", "properties": props, "required": list(required)}
    return {"name": name, "description": f"{name.replace('_', ' ').capitalize()}.", "parameters": params}


_TOOL_DICTS = {name: _tool(name) for name in _TOOLS}
_TOOL_NAMES = sorted(_TOOLS)


def _arguments(rng: random.Random, name: str) -> dict[str, Any]:
    required, optional = _TOOLS[name]
    chosen = [*required, *(p for p in optional if rng.random() < 0.5)]
    return {p: _PARAMS[p][1](rng) for p in chosen}


# ------------------------------------------------------------------------------------------------ the dialogues

_WEIGHTS = (
    (0.3, 0.2, 0.2, 0.15, 0.15),
    (0.25, 0.25, 0.2, 0.2, 0.1),
    (0.4, 0.15, 0.15, 0.15, 0.15),
    (0.2, 0.2, 0.2, 0.2, 0.2),
)
_LOREM = (
    "the user wants results that match every constraint they gave, so I check the candidate tools, pick the "
    "one whose parameters fit and fill in only the arguments the request supports"
)


def _msg(
    role: str,
    content: str = "",
    thinking: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    tool_call_id: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    return {
        "role": role,
        "content": content,
        "thinking": thinking,
        "tool_calls": tool_calls or [],
        "tool_call_id": tool_call_id,
        "name": name,
    }


def _item(
    iid: str,
    focus: str,
    ev: list[tuple[int, int, str, str]],
    weight: float,
    deps: list[str],
    required: bool,
    extra: dict[str, Any],
) -> dict[str, Any]:
    return {
        "id": iid,
        "evidence": [{"turn": t, "step": s, "from": f, "snippet": snip[:80]} for t, s, f, snip in ev],
        "focus_on": focus,
        "question": f"Did the assistant satisfy criterion {iid}?",
        "pass_condition": f"Criterion {iid} is observably met.",
        "failure_examples": ["not met", "partially met"],
        "required_for_next_turn": required,
        "depends_on": deps,
        "weight": weight,
        "extra_info": extra,
    }


def _tools_of(names: list[str], index: int, variants: int) -> list[dict[str, Any]]:
    """The dialogue's tool objects: the catalog's, or with ``variants`` > 1 one of that many descriptions per tool
    (picked from the dialogue's index, not the random stream): as in real corpora, where nearly every dialogue has
    its own tool set built from many distinct tool objects."""
    if variants <= 1:
        return [_TOOL_DICTS[n] for n in names]
    out = []
    for k, name in enumerate(names):
        v = (index * 7919 + k * 104_729 + _TOOL_NAMES.index(name) * 15_485_863) % variants
        tool = dict(_TOOL_DICTS[name])
        tool["description"] = f"{tool['description']} Catalog entry {v}."
        out.append(tool)
    return out


def dialogue_data(rng: random.Random, index: int, tool_variants: int = 1) -> dict[str, Any]:
    """One valid synthetic dialogue as plain data (see the module docstring for its shape; ``tool_variants``: see
    :func:`_tools_of`)."""
    did = f"bench-{index:08d}"
    names = rng.sample(_TOOL_NAMES, rng.randint(3, 4))
    messages: list[dict[str, Any]] = []
    if rng.random() < 0.5:
        messages.append(_msg("system", "You are a helpful assistant with access to tools."))
    blocks: list[dict[str, Any]] = []
    for t in range(3):
        user = f"Turn {t} of request {index}: please look this up for me ({rng.randint(0, 10**6)})."
        messages.append(_msg("user", user))
        calls = []
        for k in range(2):
            name = rng.choice(names)
            calls.append({"id": f"call_{t}_{k}", "name": name, "arguments": json.dumps(_arguments(rng, name))})
        results = [
            json.dumps({"status": "ok", "call": c["name"], "items": [rng.randint(0, 999) for _ in range(3)]})
            for c in calls
        ]
        thinking = [f"Step {s}: {_LOREM} ({rng.random():.6f})." for s in range(3)]
        if rng.random() < 0.5:  # one action with two parallel calls: steps user, action, tools, reply
            messages.append(_msg("assistant", "", thinking[0], calls))
            messages += [
                _msg("tool", res, tool_call_id=c["id"], name=c["name"]) for c, res in zip(calls, results, strict=True)
            ]
            call_steps, tool_steps = (1, 1), (2, 2)
        else:  # two sequential actions: steps user, action, tool, action, tool, reply
            for k, (c, res) in enumerate(zip(calls, results, strict=True)):
                messages.append(_msg("assistant", "", thinking[k], [c]))
                messages.append(_msg("tool", res, tool_call_id=c["id"], name=c["name"]))
            call_steps, tool_steps = (1, 3), (2, 4)
        reply = f"Here is what I found for turn {t}: {results[0][:40]}… and {results[1][:40]}…"
        messages.append(_msg("assistant", reply, thinking[2]))
        final = tool_steps[1] + 1
        w = rng.choice(_WEIGHTS)
        extra = {"price_usd": round(rng.uniform(0.05, 0.15), 5)} if rng.random() < 0.5 else {}
        args = [c["arguments"] for c in calls]
        items = [
            _item(
                "C0",
                "assistant.tool_calls",
                [(t, call_steps[0], "assistant.tool_calls", args[0]), (t, 0, "user.content", user)],
                w[0],
                [],
                True,
                extra,
            ),
            _item("C1", "tool.content", [(t, tool_steps[0], "tool.content", results[0])], w[1], [], True, {}),
            _item(
                "C2",
                "assistant.tool_calls",
                [(t, call_steps[1], "assistant.tool_calls", args[1])],
                w[2],
                ["C1"] if call_steps[1] > tool_steps[0] else [],
                False,
                {},
            ),
            _item(
                "C3",
                "assistant.content.thinking",
                [(t, call_steps[0], "assistant.content.thinking", thinking[0])],
                w[3],
                [],
                False,
                {},
            ),
            _item(
                "C4",
                "assistant.content.user_visible_reply",
                [(t, final, "assistant.content.user_visible_reply", reply)],
                w[4],
                ["C1"],
                False,
                {},
            ),
        ]
        blocks.append({"turn": t, "items": items})
    return {
        "id": did,
        "source": "benchmark",
        "tools": _tools_of(names, index, tool_variants),
        "messages": messages,
        "checklists": [blocks],
        "metadata": {"domain": rng.choice(["travel", "finance", "food"])},
        "provenance": {"source": "benchmark", "source_id": did, "labeller_model": "synthetic", "prompt_version": "v1"},
    }


def make_dialogue(rng: random.Random, index: int, tool_variants: int = 1) -> Dialogue:
    """One valid synthetic dialogue, validated by pydantic."""
    return Dialogue.model_validate(dialogue_data(rng, index, tool_variants))


# ------------------------------------------------------------------------------------------------ the breakages


def _last_reply(d: Dialogue) -> Message:
    return d.messages[-1]


def _first_call(d: Dialogue) -> ToolCall:
    return next(m for m in d.messages if m.tool_calls).tool_calls[0]


def _first_tool_message(d: Dialogue) -> int:
    return next(i for i, m in enumerate(d.messages) if m.role == "tool")


def _item_of(d: Dialogue, turn: int, iid: str) -> ChecklistItem:
    return next(it for it in d.checklists[0][turn].items if it.id == iid)


def _unknown_param(d: Dialogue) -> None:
    call = _first_call(d)
    call.arguments = json.dumps({**json.loads(call.arguments), "colour": "blue"})


def _wrong_type(d: Dialogue) -> None:
    call = _first_call(d)
    args = json.loads(call.arguments)
    key = next(iter(args))  # the first required parameter: make it a boolean, which fits none of the types used
    args[key] = True
    call.arguments = json.dumps(args)


def _set_content(i: int, text: str) -> Callable[[Dialogue], None]:
    def apply(d: Dialogue) -> None:
        d.messages[i if i >= 0 else len(d.messages) + i].content = text

    return apply


def _drop_tool_message(d: Dialogue) -> None:
    del d.messages[_first_tool_message(d)]


def _not_json_tool(d: Dialogue) -> None:
    d.messages[_first_tool_message(d)].content = "status: ok (not JSON)"


def _stray_think(d: Dialogue) -> None:
    next(m for m in d.messages if m.role == "user").content += " <think>"


def _dup_tool(d: Dialogue) -> None:
    d.tools = [*d.tools, d.tools[0]]


def _not_candidate(d: Dialogue) -> None:
    _first_call(d).name = "launch_rocket"


def _weights(d: Dialogue) -> None:
    _item_of(d, 1, "C0").weight += 0.05


def _bad_dependency(d: Dialogue) -> None:
    _item_of(d, 0, "C4").depends_on = ["C3"]


def _evidence_step(d: Dialogue) -> None:
    _item_of(d, 2, "C1").evidence[0].step = 17


def _focus_enum(d: Dialogue) -> None:
    _item_of(d, 0, "C3").focus_on = "assistant.mood"


def _empty_question(d: Dialogue) -> None:
    _item_of(d, 1, "C2").question = "   "


def _dup_item_id(d: Dialogue) -> None:
    _item_of(d, 2, "C3").id = "C2"


def _evidence_from(d: Dialogue) -> None:
    _item_of(d, 0, "C0").evidence[0].from_ = "assistant.tool_call"


def _end_with_call(d: Dialogue) -> None:
    del d.messages[-1]


def _block_count(d: Dialogue) -> None:
    del d.checklists[0][-1]


def _review_status(d: Dialogue) -> None:
    d.review.status = "approved"


def _thinking_missing(d: Dialogue) -> None:
    _last_reply(d).thinking = None


def _degenerate_user(d: Dialogue) -> None:
    next(m for m in d.messages if m.role == "user").content = "n"


def _invented_snippet(d: Dialogue) -> None:
    _item_of(d, 1, "C1").evidence[0].snippet = "a result the tool never returned"


def _copied_question(d: Dialogue) -> None:
    _item_of(d, 2, "C0").question = "Did the assistant request the forecast for Oslo?"


#: Breakage kind → (what it does to a valid record, the rule that must reject it).
BREAKAGES: dict[str, tuple[Callable[[Dialogue], None], str]] = {
    "unknown_param": (_unknown_param, "tool_schema"),
    "wrong_type": (_wrong_type, "tool_schema"),
    "not_candidate": (_not_candidate, "tool_schema"),
    "missing_tool_message": (_drop_tool_message, "tool_call_response_match"),
    "ends_with_call": (_end_with_call, "role_order"),
    "marker_in_reply": (
        _set_content(-1, "Done. <tool_response>{}</tool_response>"),
        "no_tool_response_in_assistant_message",
    ),
    "empty_reply": (_set_content(-1, "  "), "non_empty_content"),
    "stray_think": (_stray_think, "think_tags"),
    "thinking_missing": (_thinking_missing, "think_tags"),
    "tool_not_json": (_not_json_tool, "tool_response_json_valid"),
    "duplicate_tool": (_dup_tool, "duplicate_tools_by_name"),
    "block_count": (_block_count, "checklist_block_count"),
    "bad_dependency": (_bad_dependency, "checklist_dependencies"),
    "evidence_step": (_evidence_step, "checklist_evidence_pointers"),
    "weights": (_weights, "weights_sum_to_one"),
    "focus_enum": (_focus_enum, "focus_on_enum"),
    "empty_question": (_empty_question, "non_empty_question"),
    "duplicate_item_id": (_dup_item_id, "unique_item_ids"),
    "evidence_from": (_evidence_from, "evidence_from_enum"),
    "review_status": (_review_status, "review_status_enum"),
    "degenerate_user": (_degenerate_user, "degenerate_message"),
    "invented_snippet": (_invented_snippet, "evidence_grounded"),
    "copied_question": (_copied_question, "checklist_copied_from_prompt"),
}


def generate(
    n: int, seed: int = 0, broken: float = 0.01, tool_variants: int = 1
) -> tuple[list[Dialogue], dict[str, str]]:
    """``n`` dialogues, of which ``round(n * broken)`` (spread evenly) are broken; returns them and
    ``{id: breakage kind}`` for the broken ones (kinds taken in turn from :data:`BREAKAGES`). ``tool_variants`` > 1:
    distinct tool objects per tool (:func:`_tools_of`); the same dialogues otherwise."""
    rng = random.Random(seed)
    with store.young_gc_only():  # as when loading: no full collections while the records pile up
        records = [make_dialogue(rng, i, tool_variants) for i in range(n)]
    n_broken = round(n * broken)
    kinds = list(BREAKAGES)
    broken_ids: dict[str, str] = {}
    for k in range(n_broken):
        d = records[(k * n) // n_broken]
        kind = kinds[k % len(kinds)]
        BREAKAGES[kind][0](d)
        broken_ids[d.id] = kind
    return records, broken_ids


def check_rejections(result: Any, broken_ids: dict[str, str]) -> list[str]:
    """Problems with a gate result: records rejected that were not broken, broken ones accepted, or rejected
    without the rule their breakage targets. Empty when the gate did exactly what it should."""
    problems = []
    rejected = result.rejected_ids
    if extra := sorted(rejected - set(broken_ids)):
        by_id = {r.record_id: r for r in result.rejects}
        problems.append(f"{len(extra)} valid records rejected, e.g. {extra[0]}: {by_id[extra[0]]}")
    if missed := sorted(set(broken_ids) - rejected):
        problems.append(f"{len(missed)} broken records accepted, e.g. {missed[0]} ({broken_ids[missed[0]]})")
    rules: dict[str, set[str]] = {}
    for r in result.rejects:
        rules.setdefault(r.record_id, set()).add(r.rule)
    for did, kind in broken_ids.items():
        expected = BREAKAGES[kind][1]
        if did in rejected and expected not in rules[did]:
            problems.append(f"{did} ({kind}) rejected by {sorted(rules[did])}, not by {expected}")
    return problems


def gate_coverage() -> dict[str, list[str]]:
    """The rules one gate run applies to every record, by stage (what the ``gate`` phase measures)."""
    return {"rules": list(RULE_FILTERS), "checklist": list(CHECKLIST_RULES), "tables": table_rule_names()}


def rejects_digest(result: Any) -> str:
    """A digest of a gate's rejects (in order) and rule counts, to compare two runs over the same records."""
    payload = [[(r.record_id, r.stage, r.rule, r.message) for r in result.rejects], sorted(result.counts.items())]
    return hashlib.sha256(json.dumps(payload).encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------------------ measurement


class PeakMemory:
    """Peak RSS per phase: ``VmHWM`` reset through ``/proc/self/clear_refs`` (Linux), else ``ru_maxrss``."""

    def __init__(self) -> None:
        self.method = "VmHWM reset per phase via /proc/self/clear_refs"
        try:
            self._reset()
            self._hwm()
        except OSError:
            self.method = "getrusage ru_maxrss (process peak so far, not per phase)"

    @staticmethod
    def _reset() -> None:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")

    @staticmethod
    def _hwm() -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise OSError("no VmHWM")

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize()

    def start(self) -> int:
        gc.collect()
        if self.method.startswith("VmHWM"):
            self._reset()
        return self.rss()

    def peak(self) -> int:
        if self.method.startswith("VmHWM"):
            return self._hwm()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class GcTimer:
    """CPU seconds spent in the cyclic garbage collector (``gc.callbacks``), to show how much of a phase it takes."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._t0 = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.process_time()
        else:
            self.seconds += time.process_time() - self._t0
            self.collections += 1


def rate_figures(name: str, n: int, wall: float, cpu: float, peak: int, before: int, width: int = 15) -> dict[str, Any]:
    """The figures of one phase over ``n`` dialogues (seconds, CPU seconds, dialogues per wall and per CPU second,
    peak RSS and its growth over ``before``, bytes in), printed on one line. Both rates, because a shared machine
    inflates wall time; on an idle core they agree. Shared by the other data-path benchmarks (stats, export,
    ingest), which load this file by path."""
    print(
        f"{name:<{width}} {wall:7.2f} s wall {n / wall:9,.0f}/s   {cpu:7.2f} s CPU {n / max(cpu, 1e-9):9,.0f}/s   "
        f"peak RSS {peak / 2**20:7.1f} MiB (+{(peak - before) / 2**20:.1f})",
        flush=True,
    )
    return {
        "seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "dialogues_per_s": round(n / wall, 1),
        "dialogues_per_cpu_s": round(n / cpu, 1) if cpu else None,
        "rss_before_mib": round(before / 2**20, 1),
        "peak_rss_mib": round(peak / 2**20, 1),
        "peak_rss_delta_mib": round((peak - before) / 2**20, 1),
    }


def measured(mem: PeakMemory, fn: Callable[[], Any]) -> tuple[Any, float, float, int, int]:
    """Run ``fn`` once: its value, wall and CPU seconds, peak RSS and the RSS it started from (a full collection
    first, untimed, so that no earlier phase's garbage is collected inside it)."""
    before = mem.start()
    t0, c0 = time.perf_counter(), time.process_time()
    value = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return value, wall, cpu, mem.peak(), before


def timed_phase(
    name: str, n: int, mem: PeakMemory, fn: Callable[[], Any], width: int = 15
) -> tuple[Any, dict[str, Any]]:
    """:func:`measured` and :func:`rate_figures`: ``fn``'s value and its figures."""
    value, wall, cpu, peak, before = measured(mem, fn)
    return value, rate_figures(name, n, wall, cpu, peak, before, width)


def _phase(name: str, n: int, mem: PeakMemory, gct: GcTimer, fn: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """Time ``fn`` (wall and CPU), its peak RSS and its time in the GC. A full collection runs first, untimed, so
    that each phase starts without garbage left by the previous one."""
    before = mem.start()
    gc0, ngc0 = gct.seconds, gct.collections
    sys0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    t0 = time.perf_counter()
    c0 = time.process_time()
    value = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    sys_s = resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys0
    gc_s, n_gc = gct.seconds - gc0, gct.collections - ngc0
    peak = mem.peak()
    fig = {
        "seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "dialogues_per_s": round(n / wall, 1),
        "dialogues_per_cpu_s": round(n / cpu, 1) if cpu else None,
        "system_cpu_seconds": round(sys_s, 3),
        "gc_cpu_seconds": round(gc_s, 3),
        "gc_collections": n_gc,
        "rss_before_mib": round(before / 2**20, 1),
        "peak_rss_mib": round(peak / 2**20, 1),
    }
    print(
        f"{name:<13} {wall:8.2f} s {n / wall:9,.0f}/s  (CPU {cpu:7.2f} s {n / max(cpu, 1e-9):9,.0f}/s, "
        f"GC {gc_s:6.2f} s)  peak RSS {peak / 2**20:6.0f} MiB (before {before / 2**20:.0f})",
        flush=True,
    )
    return value, fig


def _stream_child(folder: Path) -> int:
    """Run in a child process: :func:`run_gate_stream` over :func:`store.iter_dataset`; print its figures as JSON."""
    before = PeakMemory.rss()
    t0 = time.perf_counter()
    c0 = time.process_time()
    report = run_gate_stream(store.iter_dataset(folder))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    try:
        peak = PeakMemory._hwm()
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "seconds": round(wall, 3),
                "cpu_seconds": round(cpu, 3),
                "checked": report.checked,
                "rejected": len(report.rejected_ids),
                "digest": rejects_digest(report),
                "rss_before_mib": round(before / 2**20, 1),
                "peak_rss_mib": round(peak / 2**20, 1),
            }
        )
    )
    return 0


def _columnar_child(folder: Path) -> int:
    """Run in a child process: :func:`gate_dataset` over the folder; print its figures as JSON."""
    from cm2data.validate.columnar import gate_dataset

    before = PeakMemory.rss()
    t0 = time.perf_counter()
    c0 = time.process_time()
    report = gate_dataset(folder)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    try:
        peak = PeakMemory._hwm()
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "seconds": round(wall, 3),
                "cpu_seconds": round(cpu, 3),
                "checked": report.checked,
                "rejected": len(report.rejected_ids),
                "read_rejects": len(report.read_rejects),
                "digest": rejects_digest(report),
                "rejects": [[r.record_id, r.rule] for r in report.rejects],
                "exact_path_rules": report.exact,
                "cpu_seconds_by_part": report.seconds,
                "rss_before_mib": round(before / 2**20, 1),
                "peak_rss_mib": round(peak / 2**20, 1),
            }
        )
    )
    return 0


def _child_phase(name: str, folder: Path, n: int) -> dict[str, Any]:
    """The ``stream`` or ``columnar`` phase, in a child process on the same CPUs (so that its peak RSS is its own)."""
    proc = subprocess.run([sys.executable, __file__, f"--{name}-child", str(folder)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"the {name} phase failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    fig = json.loads(proc.stdout.strip().splitlines()[-1])
    wall, cpu = fig["seconds"], fig["cpu_seconds"]
    fig["dialogues_per_s"] = round(n / wall, 1)
    fig["dialogues_per_cpu_s"] = round(n / cpu, 1) if cpu else None
    print(
        f"{name:<13} {wall:8.2f} s {n / wall:9,.0f}/s  (CPU {cpu:7.2f} s {n / max(cpu, 1e-9):9,.0f}/s, "
        f"child process)  peak RSS {fig['peak_rss_mib']:6.0f} MiB (before {fig['rss_before_mib']:.0f})",
        flush=True,
    )
    return fig


class _Rejected:
    """Enough of a gate result for :func:`check_rejections`, from the columnar child's output."""

    def __init__(self, pairs: list[list[str]]) -> None:
        self.rejects = [argparse.Namespace(record_id=did, rule=rule) for did, rule in pairs]
        self.rejected_ids = {did for did, _ in pairs if did}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="number of dialogues (default 100000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--broken", type=float, default=0.01, help="fraction of records to break (default 0.01)")
    parser.add_argument(
        "--tool-variants",
        type=int,
        default=1,
        metavar="K",
        help="descriptions per tool (default 1: eight tool objects in all; e.g. 1000: nearly every dialogue its own "
        "tool set, as in real corpora)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the figures here")
    parser.add_argument("--no-stream", action="store_true", help="skip the stream phase")
    parser.add_argument("--only", choices=["all", "columnar"], default="all", help="phases to run (default all)")
    parser.add_argument("--stream-child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--columnar-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stream_child is not None:
        return _stream_child(args.stream_child)
    if args.columnar_child is not None:
        return _columnar_child(args.columnar_child)
    mem = PeakMemory()
    gct = GcTimer()
    load_start = os.getloadavg()
    print(
        f"cm2data validation benchmark: n={args.n} seed={args.seed} broken={args.broken} "
        f"tool_variants={args.tool_variants}; "
        f"python {sys.version.split()[0]}; cm2data from {Path(cm2data.__file__).parent}; "
        f"peak memory: {mem.method}",
        flush=True,
    )
    covers = gate_coverage()
    print(
        f"gate = run_gate over records already in memory, every rule on every record, nothing skipped: "
        f"{len(covers['rules'])} rule filters + {len(covers['checklist'])} checklist rules + "
        f"{len(covers['tables'])} pandera table checks = {len(rule_names())} rules",
        flush=True,
    )

    with tempfile.TemporaryDirectory(prefix="cm2data-bench-") as tmp:
        folder = Path(tmp) / "dataset"
        (records, broken_ids), gen = _phase(
            "generate", args.n, mem, gct, lambda: generate(args.n, args.seed, args.broken, args.tool_variants)
        )
        box = {"records": records}  # so that the generated records can be freed before loading
        del records
        _, write = _phase("write", args.n, mem, gct, lambda: store.write_dataset(folder, box.pop("records")))
        files = sorted(store.data_dir(folder).glob("*.parquet"))
        size = sum(p.stat().st_size for p in files)

        def raw() -> tuple[int, int]:
            tables = [pq.read_table(p) for p in files]
            return sum(t.num_rows for t in tables), sum(t.nbytes for t in tables)

        (rows, arrow_bytes), load_raw = _phase("load_raw", args.n, mem, gct, raw)
        assert rows == args.n, rows
        columnar = _child_phase("columnar", folder, args.n)
        columnar["cpu_ratio_to_load_raw"] = round(columnar["cpu_seconds"] / max(load_raw["cpu_seconds"], 1e-9), 3)
        columnar["arrow_table_mib"] = round(arrow_bytes / 2**20, 1)
        columnar["peak_rss_to_arrow_table"] = round(columnar["peak_rss_mib"] / (arrow_bytes / 2**20), 3)
        col_problems = check_rejections(_Rejected(columnar.pop("rejects")), broken_ids)
        print(
            f"columnar: {columnar['dialogues_per_cpu_s']:,.0f} dialogues per CPU second (target 50,000), CPU "
            f"{columnar['cpu_ratio_to_load_raw']:.2f}× load_raw; peak RSS {columnar['peak_rss_mib']:,.0f} MiB = "
            f"{columnar['peak_rss_to_arrow_table']:.2f}× the {columnar['arrow_table_mib']:,.0f} MiB Arrow table "
            f"(target ≤ 2×); {columnar['checked']} checked, {columnar['rejected']} rejected: "
            f"{'OK' if not col_problems else 'MISMATCH'}; exact path per rule {columnar['exact_path_rules']}; CPU s "
            f"by part {columnar['cpu_seconds_by_part']}",
            flush=True,
        )
        for p in col_problems:
            print(f"  columnar: {p}")
        if args.only == "columnar":
            return _columnar_only(args, mem, files, size, gen, write, load_raw, columnar, col_problems, load_start)
        stream = None if args.no_stream else _child_phase("stream", folder, args.n)
        loaded, load_records = _phase("load_records", args.n, mem, gct, lambda: store.read_dataset(folder))
        result, gate = _phase("gate", args.n, mem, gct, lambda: run_gate(loaded))
        gate["peak_over_records_mib"] = round(gate["peak_rss_mib"] - gate["rss_before_mib"], 1)

    problems = check_rejections(result, broken_ids) + [f"columnar: {p}" for p in col_problems]
    if stream is not None and stream.pop("digest") != rejects_digest(result):
        problems.append("the stream's rejects or counts differ from the gate's")
    if columnar.pop("digest") != rejects_digest(result):
        problems.append("the columnar gate's rejects or counts differ from the gate's")
    ratio_raw = gate["seconds"] / load_raw["seconds"]
    ratio_records = gate["seconds"] / load_records["seconds"]
    cpu_ratio_raw = gate["cpu_seconds"] / max(load_raw["cpu_seconds"], 1e-9)
    cpu_ratio_records = gate["cpu_seconds"] / max(load_records["cpu_seconds"], 1e-9)
    load_avg = os.getloadavg()
    print(
        f"parquet: {len(files)} file(s), {size / 2**20:.1f} MiB; load average now {load_avg[0]:.2f} "
        f"(at start {load_start[0]:.2f}) on {os.cpu_count()} CPUs"
    )
    print(f"ratio gate / load_raw     = {ratio_raw:6.2f}  (CPU time {cpu_ratio_raw:6.2f})")
    print(f"ratio gate / load_records = {ratio_records:6.2f}  (CPU time {cpu_ratio_records:6.2f})")
    print(
        f"gate: {gate['dialogues_per_cpu_s']:,.0f} dialogues per CPU second (target 10,000); its peak RSS is "
        f"{gate['peak_over_records_mib']:,.0f} MiB over the {gate['rss_before_mib']:,.0f} MiB the loaded records "
        f"hold"
        + (f"; the stream (load + gate, batch by batch) peaks at {stream['peak_rss_mib']:,.0f} MiB" if stream else "")
    )
    print(
        f"gate: {result.checked} checked, {len(result.accepted)} accepted, {len(result.rejected_ids)} rejected "
        f"({len(broken_ids)} broken injected)"
        + (", the stream the same" if stream else "")
        + f": {'OK' if not problems else 'MISMATCH'}"
    )
    for p in problems:
        print(f"  {p}")
    if args.json is not None:
        out = {
            "n": args.n,
            "seed": args.seed,
            "broken": args.broken,
            "tool_variants": args.tool_variants,
            "python": sys.version.split()[0],
            "memory_method": mem.method,
            "parquet_files": len(files),
            "parquet_mib": round(size / 2**20, 1),
            "gate_covers": covers,
            "phases": {
                "generate": gen,
                "write": write,
                "load_raw": load_raw,
                "load_records": load_records,
                "gate": gate,
                **({"stream": stream} if stream else {}),
                "columnar": columnar,
            },
            "ratio_gate_to_load_raw": round(ratio_raw, 3),
            "ratio_gate_to_load_records": round(ratio_records, 3),
            "cpu_ratio_gate_to_load_raw": round(cpu_ratio_raw, 3),
            "cpu_ratio_gate_to_load_records": round(cpu_ratio_records, 3),
            "cpus": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0)),
            "load_average_start": load_start,
            "load_average_end": load_avg,
            "accepted": len(result.accepted),
            "rejected": len(result.rejected_ids),
            "injected": len(broken_ids),
            "rejections_exact": not problems,
            "rule_counts": {k: v for k, v in result.counts.items() if v},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 1 if problems else 0


def _columnar_only(
    args: argparse.Namespace,
    mem: PeakMemory,
    files: list[Path],
    size: int,
    gen: dict[str, Any],
    write: dict[str, Any],
    load_raw: dict[str, Any],
    columnar: dict[str, Any],
    problems: list[str],
    load_start: tuple[float, float, float],
) -> int:
    """``--only columnar``: report and write the figures of the phases that ran."""
    columnar.pop("digest", None)
    load_avg = os.getloadavg()
    print(
        f"parquet: {len(files)} file(s), {size / 2**20:.1f} MiB; load average now {load_avg[0]:.2f} "
        f"(at start {load_start[0]:.2f}) on {os.cpu_count()} CPUs"
    )
    if args.json is not None:
        out = {
            "n": args.n,
            "seed": args.seed,
            "broken": args.broken,
            "tool_variants": args.tool_variants,
            "python": sys.version.split()[0],
            "memory_method": mem.method,
            "parquet_files": len(files),
            "parquet_mib": round(size / 2**20, 1),
            "phases": {"generate": gen, "write": write, "load_raw": load_raw, "columnar": columnar},
            "cpus": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0)),
            "load_average_start": load_start,
            "load_average_end": load_avg,
            "rejections_exact": not problems,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
