"""The rule filters (method §2.2) and checklist rules (method §3), one at a time, each able to fail."""

from __future__ import annotations

import json

import pytest

from cm2data.schema import ChecklistItem, Dialogue, Message, Tool, ToolCall, TurnChecklist
from cm2data.validate import RULE_FILTERS, RuleConfig, run_gate

WEATHER = Tool(
    name="weather",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "metric": {"type": "boolean"},
            "unit": {"type": "string", "enum": ["C", "F"]},
            "lat": {"type": "number"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["city"],
    },
)


def dialogue(
    args: dict | str | None = None, *, messages: list[Message] | None = None, tools=None, checklists=None
) -> Dialogue:
    arguments = args if isinstance(args, str) else json.dumps(args if args is not None else {"city": "Oslo"})
    msgs = messages or [
        Message(role="user", content="Weather in Oslo?"),
        Message(
            role="assistant", thinking="call it", tool_calls=[ToolCall(id="c1", name="weather", arguments=arguments)]
        ),
        Message(role="tool", content='{"temp": 3}', tool_call_id="c1", name="weather"),
        Message(role="assistant", thinking="answer", content="3 °C in Oslo."),
    ]
    return Dialogue(
        id="d1", tools=tools if tools is not None else [WEATHER], messages=msgs, checklists=checklists or []
    )


def run(rule: str, d: Dialogue, **cfg) -> list[str]:
    return RULE_FILTERS[rule](d, RuleConfig(**cfg))


def test_clean_dialogue_passes_every_rule() -> None:
    d = dialogue({"city": "Oslo", "days": 3, "metric": True, "unit": "C", "lat": 59.9, "tags": ["a"]})
    assert {name: run(name, d) for name in RULE_FILTERS} == {name: [] for name in RULE_FILTERS}


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ({"city": "Oslo", "days": True}, "expected integer, got boolean"),
        ({"city": "Oslo", "lat": False}, "expected number, got boolean"),
        ({"city": "Oslo", "days": "3"}, "expected integer, got string"),
        ({"city": "Oslo", "days": 2.5}, "expected integer, got number"),
        ({"city": "Oslo", "metric": 1}, "expected boolean, got integer"),
        ({"city": "Oslo", "unit": "K"}, "is not one of"),
        ({"city": "Oslo", "tags": ["a", 2]}, "tags[1]: expected string"),
        ({"days": 3}, "missing required parameter 'city'"),
        ({"city": "Oslo", "country": "NO"}, "unknown parameter 'country'"),
        ("{not json", "arguments are not JSON"),
        ("[1, 2]", "must be a JSON object"),
    ],
)
def test_tool_schema_checks_types_for_real(args, fragment: str) -> None:
    problems = run("tool_schema", dialogue(args))
    assert problems and fragment in problems[0], problems


def test_tool_schema_unknown_tool() -> None:
    d = dialogue(tools=[Tool(name="other")])
    assert "not a candidate tool" in run("tool_schema", d)[0]


def test_integral_float_counts_as_integer() -> None:
    assert run("tool_schema", dialogue({"city": "Oslo", "days": 3.0})) == []


def _msgs(*roles: str) -> list[Message]:
    out = []
    for r in roles:
        if r == "call":
            out.append(Message(role="assistant", tool_calls=[ToolCall(name="weather", arguments='{"city": "x"}')]))
        elif r == "tool":
            out.append(Message(role="tool", content="{}"))
        else:
            out.append(Message(role=r, content="text"))
    return out


@pytest.mark.parametrize(
    ("roles", "ok"),
    [
        (("system", "user", "assistant"), True),
        (("user", "call", "tool", "assistant", "user", "assistant"), True),
        (("user", "assistant", "system", "user", "assistant"), False),  # system not first
        (("assistant", "user", "assistant"), False),  # does not start with user
        (("user", "assistant", "assistant"), False),  # assistant → assistant
        (("user", "call", "user", "assistant"), False),  # call not answered
        (("user", "assistant", "tool", "assistant"), False),  # tool after a plain reply
        (("user", "call", "tool"), False),  # ends on a tool message
        (("user",), False),
    ],
)
def test_role_order(roles, ok: bool) -> None:
    assert (run("role_order", dialogue(messages=_msgs(*roles))) == []) is ok


def test_call_response_counts_and_ids() -> None:
    msgs = _msgs("user", "call", "tool", "tool", "assistant")
    assert "1 tool calls answered by 2" in run("tool_call_response_match", dialogue(messages=msgs))[0]
    d = dialogue()
    d.messages[2].tool_call_id = "zzz"
    assert "do not answer calls" in run("tool_call_response_match", d)[0]


def test_tool_response_inside_assistant_message() -> None:
    d = dialogue()
    d.messages[3].content = '<tool_response>{"temp": 3}</tool_response> so 3 °C'
    assert run("no_tool_response_in_assistant_message", d)


def test_non_empty_content() -> None:
    d = dialogue()
    d.messages[3].content = "   "
    assert "empty assistant reply" in run("non_empty_content", d)[0]
    d = dialogue()
    d.messages[1].content = ""  # a call step may be empty
    assert run("non_empty_content", d) == []


def test_think_tags_policies() -> None:
    d = dialogue()
    assert run("think_tags", d) == [] and run("think_tags", d, thinking="required") == []
    assert run("think_tags", d, thinking="forbidden")
    d.messages[3].thinking = None  # auto: one message thinks, so all must
    assert "without a <think> block" in run("think_tags", d)[0]
    d = dialogue()
    d.messages[0].content = "hi <think>x</think>"
    assert "in a user message" in run("think_tags", d)[0]


def test_tool_response_json() -> None:
    d = dialogue()
    d.messages[2].content = "temp: 3"
    assert run("tool_response_json_valid", d)


def test_duplicate_tools() -> None:
    assert run("duplicate_tools_by_name", dialogue(tools=[WEATHER, WEATHER])) == [
        "tool 'weather' is listed more than once"
    ]


def item(i: str, weight: float, focus: str = "assistant.tool_calls", deps=(), **kw) -> ChecklistItem:
    return ChecklistItem(
        id=i,
        focus_on=focus,
        question=kw.get("question", "q?"),
        pass_condition=kw.get("pass_condition", "p"),
        weight=weight,
        depends_on=list(deps),
        evidence=kw.get("evidence", [{"turn": 0, "step": 1, "from": "assistant.tool_calls", "snippet": "Oslo"}]),
    )


def checked(items: list[ChecklistItem], blocks: int = 1) -> set[str]:
    d = dialogue(checklists=[[TurnChecklist(turn=t, items=items) for t in range(blocks)]])
    result = run_gate([d])
    return {r.rule for r in result.rejects}


def test_checklist_rules() -> None:
    good = [item("C0", 0.5, "tool.content"), item("C1", 0.5, deps=["C0"])]
    assert checked(good) == set()
    assert checked([item("C0", 0.5), item("C1", 0.4)]) == {"weights_sum_to_one"}
    assert checked([item("C0", 0.5), item("C0", 0.5)]) == {"unique_item_ids"}
    assert checked([item("C0", 0.5), item("C1", 0.5, deps=["C0"])]) == {"checklist_dependencies"}
    assert checked([item("C0", 0.5), item("C1", 0.5, deps=["C9"])]) == {"checklist_dependencies"}
    assert checked([item("C0", 1.0, "assistant.mood")]) == {"focus_on_enum"}
    assert checked([item("C0", 1.0, question=" ")]) == {"non_empty_question"}
    assert checked([item("C0", 1.0, pass_condition="")]) == {"non_empty_pass_condition"}
    assert checked([item("C0", 1.5), item("C1", -0.5)]) == {"weight_range"}
    assert checked(good, blocks=2) == {"checklist_block_count"}
    far = [{"turn": 0, "step": 9, "from": "tool.content", "snippet": ""}]
    assert checked([item("C0", 1.0, evidence=far)]) == {"checklist_evidence_pointers"}
    bad_from = [{"turn": 0, "step": 1, "from": "assistant.mind", "snippet": ""}]
    assert checked([item("C0", 1.0, evidence=bad_from)]) == {"evidence_from_enum"}


def test_gate_counts_and_keeps_good_records() -> None:
    good = dialogue()
    bad = dialogue({"city": 5})
    bad.id = "d2"
    dup = dialogue()
    result = run_gate([good, bad, dup])
    assert result.counts["tool_schema"] == 1
    assert result.counts["unique_dialogue_ids"] == 1  # both copies of d1 share the id
    assert {d.id for d in result.rejected} == {"d1", "d2"}
    assert result.checked == 3 and not result.passed


def test_unknown_rule_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown rules"):
        run_gate([dialogue()], rules=["no_such_rule"])
