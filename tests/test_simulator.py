"""The simulated tool environment (method §6): schema-check codes, replay, the cached mock and its consistency
across processes."""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import sys
from pathlib import Path

import pytest
from scripted_openai import Reply, ScriptedOpenAI

from cm2data.llm import LLMClient, LLMConfig
from cm2data.schema import Dialogue, Message, Tool, ToolCall
from cm2data.simulator import (
    BOUNDED_MOCK_SCHEMA,
    MOCK_SCHEMA,
    MockCache,
    RecordedCall,
    ToolSimulator,
    check_call,
    recorded_calls,
)
from cm2data.validate.rules import RuleConfig, tool_schema

TOOL = Tool(
    name="book",
    description="Book a room",
    parameters={
        "type": "object",
        "properties": {
            "hotel_id": {"type": "string"},
            "nights": {"type": "integer"},
            "price": {"type": "number"},
            "breakfast": {"type": "boolean"},
            "room": {"type": "string", "enum": ["single", "double"]},
            "guests": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["hotel_id", "nights"],
    },
)


@pytest.mark.parametrize(
    ("name", "args", "code"),
    [
        ("book", {"hotel_id": "H1", "nights": 2}, None),
        ("book", {"hotel_id": "H1", "nights": 2.0}, None),  # 2.0 is an integer
        ("book", {"hotel_id": "H1", "nights": 2, "price": 3}, None),  # an int is a number
        ("book", {"hotel_id": "H1", "nights": True}, "SCHEMA_VALIDATION_FAILED"),  # a bool is not an integer
        ("book", {"hotel_id": "H1", "nights": 2, "price": False}, "SCHEMA_VALIDATION_FAILED"),
        ("book", {"hotel_id": "H1", "nights": "2"}, "SCHEMA_VALIDATION_FAILED"),
        ("book", {"hotel_id": "H1"}, "SCHEMA_VALIDATION_FAILED"),  # missing required
        ("book", {"hotel_id": "H1", "nights": 1, "room": "suite"}, "SCHEMA_VALIDATION_FAILED"),  # enum
        ("book", {"hotel_id": "H1", "nights": 1, "pets": 1}, "SCHEMA_VALIDATION_FAILED"),  # unexpected
        ("book", {"hotel_id": "H1", "nights": 1, "guests": ["a", 2]}, "SCHEMA_VALIDATION_FAILED"),
        ("book", "[1, 2]", "INVALID_PARAMETERS"),
        ("book", "{not json", "INVALID_PARAMETERS"),
        ("cancel", {"id": 1}, "TOOL_NOT_AVAILABLE"),
    ],
)
def test_check_call_codes_agree_with_the_gate(name, args, code):
    error = check_call([TOOL], name, args if isinstance(args, str) else json.dumps(args))
    assert (error or {}).get("code") == code
    if error is not None:
        assert set(error) == {"code", "message", "details"}
    # the gate's tool_schema rule says the same thing about the same call
    d = Dialogue(
        id="x",
        tools=[TOOL],
        messages=[
            Message(role="user", content="hi"),
            Message(
                role="assistant",
                tool_calls=[ToolCall(id="c", name=name, arguments=args if isinstance(args, str) else json.dumps(args))],
            ),
            Message(role="tool", content="{}", tool_call_id="c"),
            Message(role="assistant", content="done"),
        ],
    )
    assert bool(tool_schema(d, RuleConfig())) == (code is not None)


def _config(server) -> LLMConfig:  # type: ignore[no-untyped-def]
    return LLMConfig(base_url=server.base_url, max_retries=0, backoff_initial=0.01)


def _mock(result: dict) -> Reply:
    return Reply(json.dumps({"analysis": "a", "execution_result": result}))


def test_replay_schema_error_mock_and_cache(tmp_path: Path):
    async def go(server: ScriptedOpenAI):
        async with LLMClient(_config(server)) as llm:
            sim = ToolSimulator(llm, tmp_path / "cache.sqlite")
            recorded = [RecordedCall("book", '{"hotel_id":"H1","nights":2}', '{"booking":"B-1"}')]
            # 1. replay: same name and canonical arguments (key order and spacing do not matter)
            r = await sim.call("d1", [TOOL], "book", '{"nights": 2, "hotel_id": "H1"}', recorded)
            assert (r.source, r.content) == ("replay", '{"booking":"B-1"}')
            # 2. schema check, before any LLM call
            r = await sim.call("d1", [TOOL], "book", '{"nights": 2}', recorded)
            assert r.source == "error" and r.error["code"] == "SCHEMA_VALIDATION_FAILED" and not r.ok
            assert json.loads(r.content)["code"] == "SCHEMA_VALIDATION_FAILED"
            # 3. mock, then the same call (any key order) comes from the cache
            r1 = await sim.call("d1", [TOOL], "book", {"hotel_id": "H2", "nights": 1})
            r2 = await sim.call("d1", [TOOL], "book", '{"nights":1,"hotel_id":"H2"}')
            assert (r1.source, r2.source) == ("mock", "cache") and r1.content == r2.content == '{"booking": "B-7"}'
            # another dialogue is another key
            r3 = await sim.call("d2", [TOOL], "book", {"hotel_id": "H2", "nights": 1})
            assert r3.source == "mock" and r3.content == '{"booking": "B-8"}'
            # a fresh simulator (a new rollout, another process) reads the persisted cache
            again = ToolSimulator(None, tmp_path / "cache.sqlite")
            r4 = await again.call("d1", [TOOL], "book", {"hotel_id": "H2", "nights": 1})
            assert (r4.source, r4.content) == ("cache", r1.content)
            # no LLM and no cache entry: SIMULATION_FAILED
            r5 = await again.call("d9", [TOOL], "book", {"hotel_id": "H2", "nights": 1})
            assert r5.error["code"] == "SIMULATION_FAILED"
            return sim

    with ScriptedOpenAI(owned_by="vllm") as server:
        server.push(_mock({"booking": "B-7"}), _mock({"booking": "B-8"}))
        sim = asyncio.run(go(server))
        assert len(server.requests) == 2
        # the mock's prompt carries the schema, the recorded calls as examples and the call last
        prompt = server.requests[0]["messages"][-1]["content"]
        assert prompt.rstrip().endswith('book({"hotel_id":"H2","nights":1})')
        assert server.requests[0]["structured_outputs"]["json"]["required"] == ["analysis", "execution_result"]
    assert sim.stats.replay == 1 and sim.stats.mock == 2 and sim.stats.codes == {"SCHEMA_VALIDATION_FAILED": 1}


def test_concurrent_identical_calls_share_one_mock(tmp_path: Path):
    async def go(server: ScriptedOpenAI):
        async with LLMClient(_config(server)) as llm:
            sim = ToolSimulator(llm, tmp_path / "c.sqlite")
            results = await asyncio.gather(
                *(sim.call("d", [TOOL], "book", {"hotel_id": "H", "nights": 3}) for _ in range(5))
            )
            return [r.content for r in results]

    with ScriptedOpenAI(owned_by="vllm", default=_mock({"n": 1})) as server:
        contents = asyncio.run(go(server))
        assert len(set(contents)) == 1
        assert len(server.requests) == 1


def test_invalid_mock_answers_become_simulation_failed(tmp_path: Path):
    async def go(server: ScriptedOpenAI):
        async with LLMClient(_config(server).with_(max_invalid_retries=1)) as llm:
            return await ToolSimulator(llm, tmp_path / "c.sqlite").call(
                "d", [TOOL], "book", {"hotel_id": "H", "nights": 3}
            )

    with ScriptedOpenAI(owned_by="vllm") as server:
        server.push(Reply("not json at all"), Reply(json.dumps({"analysis": "x", "execution_result": 5})))
        r = asyncio.run(go(server))
    assert r.error["code"] == "SIMULATION_FAILED" and "execution_result must be" in json.dumps(r.error)
    assert MockCache(tmp_path / "c.sqlite").get("d", "book", '{"hotel_id":"H","nights":3}') is None


@pytest.mark.parametrize("schema", [None, BOUNDED_MOCK_SCHEMA])
def test_mock_schema_is_the_one_sent(tmp_path: Path, schema):
    async def go(server: ScriptedOpenAI):
        async with LLMClient(_config(server)) as llm:
            return await ToolSimulator(llm, tmp_path / "c.sqlite", schema=schema).call(
                "d", [TOOL], "book", {"hotel_id": "H", "nights": 3}
            )

    with ScriptedOpenAI(owned_by="vllm") as server:
        server.push(Reply(json.dumps({"analysis": "x", "execution_result": {"booking_id": "B1"}})))
        r = asyncio.run(go(server))
        sent = server.requests[-1]["structured_outputs"]["json"]
    assert r.error is None and json.loads(r.content) == {"booking_id": "B1"}
    assert sent == (schema or MOCK_SCHEMA)
    if schema is not None:  # the bound: two levels, at most 8 keys/items per level
        result = sent["properties"]["execution_result"]["anyOf"]
        assert {b["type"] for b in result} == {"object", "array"}
        assert all(b.get("maxProperties", b.get("maxItems")) == 8 for b in result)


def test_recorded_calls_pair_calls_with_responses(reference_record):
    calls = recorded_calls(reference_record)
    assert calls and all(
        c.arguments == json.dumps(json.loads(c.arguments), sort_keys=True, separators=(",", ":")) for c in calls
    )


# ------------------------------------------------------------------------------------------ across processes


def _worker(base_url: str, cache: str, start, out) -> None:  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(Path(__file__).parent))

    async def go():
        async with LLMClient(LLMConfig(base_url=base_url, max_retries=0)) as llm:
            sim = ToolSimulator(llm, cache)
            start.wait()
            results = []
            for hotel in ("H1", "H2", "H3"):
                r = await sim.call("dlg", [TOOL], "book", {"hotel_id": hotel, "nights": 1})
                results.append((hotel, r.source, r.content))
            return results

    out.put(asyncio.run(go()))


def test_cache_is_consistent_across_processes(tmp_path: Path):
    """Processes mocking the same calls at the same moment, each given a *different* answer by the server, all end
    up returning the first stored answer for each call; later processes read it without calling the LLM."""

    with ScriptedOpenAI(owned_by="vllm") as server:
        for i in range(40):
            server.push(_mock({"answer": i}))
        ctx = mp.get_context("fork")
        start, out = ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(target=_worker, args=(server.base_url, str(tmp_path / "m.sqlite"), start, out))
            for _ in range(4)
        ]
        for p in procs:
            p.start()
        start.set()
        results = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        answered = len(server.requests)
        for hotel_index in range(3):
            contents = {r[hotel_index][2] for r in results}
            assert len(contents) == 1, contents
        # a process started afterwards gets every answer from the cache: no LLM request
        later = ctx.Queue()
        p = ctx.Process(target=_worker, args=(server.base_url, str(tmp_path / "m.sqlite"), start, later))
        p.start()
        final = later.get(timeout=60)
        p.join(timeout=30)
        assert len(server.requests) == answered
    assert [r[1] for r in final] == ["cache"] * 3
    assert [r[2] for r in final] == [results[0][i][2] for i in range(3)]
    assert len(MockCache(tmp_path / "m.sqlite")) == 3
