"""One JSON-schema subset checker (cm2data.schema.jsonschema) and its three users: the rule filter ``tool_schema``,
the tool simulator's ``check_call`` and the VeRL adapter's tool environment (``adapters/verl/env.py``, imported here
without VeRL) give the same verdict, with the same messages, on every case of one table; the gate's fast path never
clears a call the checker rejects."""

from __future__ import annotations

import asyncio
import doctest
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from cm2data.schema import Dialogue, Message, Tool, ToolCall
from cm2data.schema import jsonschema as js
from cm2data.simulator import ToolSimulator, check_call
from cm2data.validate.rules import RuleConfig, tool_schema
from cm2data.validate.screen import screen

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # adapters/ is not installed: it is imported from the checkout, as VeRL does
    sys.path.insert(0, str(ROOT))

from adapters.verl.env import SimulatorEnvironment  # noqa: E402

PARAMS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "hotel_id": {"type": "string"},
        "nights": {"type": "integer"},
        "price": {"type": "number"},
        "room": {"type": "string", "enum": ["single", "double"]},
        "note": {"type": "string", "nullable": True, "enum": ["quiet"]},
        "ref": {"type": ["string", "null"]},
        "address": {
            "type": "object",
            "properties": {"zip": {"type": "integer"}, "city": {"type": "string"}},
            "required": ["zip"],
        },
        "rooms": {"type": "array", "items": {"type": "object", "properties": {"beds": {"type": "integer"}}}},
        "extras": {
            "type": "object",
            "properties": {"wifi": {"type": "boolean"}},
            "additionalProperties": {"type": "boolean"},
        },
        "anything": {"type": "object"},
    },
    "required": ["hotel_id", "nights"],
}
OK = {"hotel_id": "H1", "nights": 2}

#: (arguments, the problems after the path prefix; [] = the call fits)
CASES: list[tuple[dict[str, Any], list[str]]] = [
    (OK, []),
    ({**OK, "nights": 3.0}, []),  # 3.0 is an integer
    ({**OK, "nights": 3.5}, [".nights: expected integer, got number 3.5"]),
    ({**OK, "nights": True}, [".nights: expected integer, got boolean True"]),  # a bool is not an integer
    ({**OK, "price": False}, [".price: expected number, got boolean False"]),  # … nor a number
    ({**OK, "price": 3}, []),  # an int is a number
    ({**OK, "nights": "2"}, [".nights: expected integer, got string '2'"]),
    ({"hotel_id": "H1"}, [": missing required parameter 'nights'"]),
    ({**OK, "pets": 1}, [": unknown parameter 'pets'"]),
    ({**OK, "room": "suite"}, [".room: 'suite' is not one of ['single', 'double']"]),
    ({**OK, "room": "double"}, []),
    ({**OK, "note": None}, []),  # nullable: no enum check
    ({**OK, "ref": None}, []),  # a type list with null
    ({**OK, "ref": 7}, [".ref: expected string|null, got integer 7"]),
    ({**OK, "address": {"zip": 75001, "city": "Paris"}}, []),  # nested objects
    ({**OK, "address": {"zip": "75001"}}, [".address.zip: expected integer, got string '75001'"]),
    ({**OK, "address": {"city": "Paris"}}, [".address: missing required parameter 'zip'"]),
    ({**OK, "address": {"zip": 1, "floor": 2}}, [".address: unknown parameter 'floor'"]),
    ({**OK, "address": "Paris"}, [".address: expected object, got string 'Paris'"]),
    ({**OK, "rooms": [{"beds": 2}, {"beds": 1.0}]}, []),  # arrays of objects
    ({**OK, "rooms": [{"beds": 2}, {"beds": True}]}, [".rooms[1].beds: expected integer, got boolean True"]),
    ({**OK, "rooms": {"beds": 2}}, [".rooms: expected array, got object {'beds': 2}"]),
    ({**OK, "extras": {"wifi": True, "pool": "yes"}}, [".extras.pool: expected boolean, got string 'yes'"]),
    ({**OK, "anything": {"x": [1, {"y": None}]}}, []),  # no properties: anything goes
    (
        {"nights": True, "pets": 1},
        [
            ": missing required parameter 'hotel_id'",
            ".nights: expected integer, got boolean True",
            ": unknown parameter 'pets'",
        ],
    ),
]
IDS = [json.dumps(args)[:60] for args, _ in CASES]
TOOL = Tool(name="book", description="Book a room", parameters=PARAMS)


def _dialogue(args: dict[str, Any]) -> Dialogue:
    return Dialogue(
        id="x",
        tools=[TOOL],
        messages=[
            Message(role="user", content="book me a room please"),
            Message(role="assistant", tool_calls=[ToolCall(id="c1", name="book", arguments=json.dumps(args))]),
            Message(role="tool", content='{"ok": true}', tool_call_id="c1"),
            Message(role="assistant", content="It is booked for you."),
        ],
    )


def _rule_filter(args: dict[str, Any]) -> list[str]:
    prefix = "message 1 call 'book'"
    out = tool_schema(_dialogue(args), RuleConfig())
    assert all(m.startswith(prefix) for m in out), out
    return [m[len(prefix) :] for m in out]


def _simulator(args: dict[str, Any]) -> list[str]:
    error = check_call([TOOL], "book", json.dumps(args))
    if error is None:
        return []
    assert error["code"] == "SCHEMA_VALIDATION_FAILED"
    assert all(m.startswith("book") for m in error["details"])
    return [m[len("book") :] for m in error["details"]]


def _verl_env(args: dict[str, Any]) -> list[str]:
    env = SimulatorEnvironment(ToolSimulator(None, None))  # no LLM: a call that fits ends at SIMULATION_FAILED
    result = asyncio.run(env.call("d1", [], [TOOL.to_openai()], "book", args))
    body = json.loads(result.text)
    assert result.error
    if body["code"] == "SIMULATION_FAILED":  # past the schema check
        return []
    assert body["code"] == "SCHEMA_VALIDATION_FAILED", body
    return [m[len("book") :] for m in body["details"]]


def test_doc_examples() -> None:
    failed, tried = doctest.testmod(js, raise_on_error=False)
    assert tried >= 4 and failed == 0


@pytest.mark.parametrize(("args", "problems"), CASES, ids=IDS)
def test_three_users_agree(args: dict[str, Any], problems: list[str]) -> None:
    assert _rule_filter(args) == problems
    assert _simulator(args) == problems
    assert _verl_env(args) == problems
    direct: list[str] = []
    js.check_object(args, PARAMS, "", direct)
    assert direct == problems
    # the gate's fast path may only clear what the checker passes
    if problems:
        assert screen(_dialogue(args), RuleConfig()) is None


def test_type_ok_table() -> None:
    table = [
        ("integer", 3.0, True),
        ("integer", 3, True),
        ("integer", True, False),
        ("integer", 3.5, False),
        ("number", True, False),
        ("number", 2, True),
        ("number", 2.5, True),
        ("boolean", 0, False),
        ("string", None, False),
        ("null", None, True),
        ("array", (), False),
        ("object", {}, True),
        ("uuid", object(), True),  # unknown type names are not judged
    ]
    for expected, value, verdict in table:
        assert js.type_ok(value, expected) is verdict, (expected, value)
