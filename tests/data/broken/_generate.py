"""Regenerate the broken input files of this folder: ``python tests/data/broken/_generate.py``.

Every file starts from one good dialogue (two user turns, a tool call in each, thinking everywhere, a valid
checklist) and adds rows that break one thing each; README.md lists the rules each file must trigger. The files are
committed, so tests never run this script; it exists so that the files can be read, reviewed and rebuilt.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Daily weather forecast for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name."},
                    "days": {"type": "integer", "description": "Number of days (1-7)."},
                    "units": {"type": "string", "enum": ["C", "F"]},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "book_table",
            "description": "Book a restaurant table.",
            "parameters": {
                "type": "object",
                "properties": {
                    "restaurant": {"type": "string"},
                    "people": {"type": "integer"},
                    "outdoor": {"type": "boolean"},
                },
                "required": ["restaurant", "people"],
            },
        },
    },
]

FORECAST = (
    '{"city": "Paris", "forecast": [{"day": 1, "sky": "sunny", "high_c": 24}, {"day": 2, "sky": "rain", "high_c": 19}]}'
)
BOOKING = '{"status": "confirmed", "booking_id": "B-1042"}'


def call(name: str, args: Any, call_id: str) -> dict[str, Any]:
    arguments = args if isinstance(args, str) else json.dumps(args)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text, "tool_calls": []}


def assistant(text: str, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"role": "assistant", "content": text, "tool_calls": calls or []}


def tool(text: str, call_id: str, name: str) -> dict[str, Any]:
    return {"role": "tool", "content": text, "tool_calls": [], "tool_call_id": call_id, "name": name}


def good_messages() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are a helpful travel assistant.", "tool_calls": []},
        user("What's the weather in Paris for the next 2 days?"),
        assistant(
            "<think>\nThe user wants a 2-day forecast for Paris: call get_weather.\n</think>",
            [call("get_weather", {"city": "Paris", "days": 2}, "call_0")],
        ),
        tool(FORECAST, "call_0", "get_weather"),
        assistant(
            "<think>\nSummarise the two days.\n</think>\n\nTomorrow is sunny with a high of 24 °C; the day "
            "after brings rain and 19 °C."
        ),
        user("Great, book a table for 2 at Chez Marie then."),
        assistant(
            "<think>\nCall book_table with the restaurant and the party size.\n</think>",
            [call("book_table", {"restaurant": "Chez Marie", "people": 2}, "call_1")],
        ),
        tool(BOOKING, "call_1", "book_table"),
        assistant(
            "<think>\nConfirm the booking.\n</think>\n\nDone: your table for 2 at Chez Marie is booked "
            "(booking B-1042)."
        ),
    ]


def item(
    cid: str,
    focus: str,
    weight: float,
    turn: int,
    step: int,
    source: str,
    snippet: str,
    deps: list[str] | None = None,
    required: bool = False,
) -> dict[str, Any]:
    return {
        "id": cid,
        "evidence": [{"turn": turn, "step": step, "from": source, "snippet": snippet}],
        "focus_on": focus,
        "question": f"Is criterion {cid} met?",
        "pass_condition": f"Criterion {cid} is observably met.",
        "failure_examples": ["It is not met."],
        "required_for_next_turn": required,
        "dependence": deps or [],
        "weight": weight,
    }


def good_checklists() -> list[list[list[dict[str, Any]]]]:
    """One variant in the stored form: turns → items (dependence and weight merged in)."""
    turn0 = [
        item("C0", "assistant.tool_calls", 0.5, 0, 1, "assistant.tool_calls", '"name": "get_weather"', required=True),
        item("C1", "tool.content", 0.2, 0, 2, "tool.content", '"sky": "sunny"'),
        item(
            "C2",
            "assistant.content.user_visible_reply",
            0.3,
            0,
            3,
            "assistant.content.user_visible_reply",
            "sunny with a high of 24",
            deps=["C1"],
        ),
    ]
    turn1 = [
        item("C0", "assistant.tool_calls", 0.6, 1, 1, "assistant.tool_calls", '"name": "book_table"', required=True),
        item(
            "C1",
            "assistant.content.user_visible_reply",
            0.4,
            1,
            3,
            "assistant.content.user_visible_reply",
            "booking B-1042",
        ),
    ]
    return [[turn0, turn1]]


def good(rid: str, *, checklists: bool = True) -> dict[str, Any]:
    """The good record in the CM2 reference form."""
    row: dict[str, Any] = {"uuid": rid, "messages": good_messages(), "tools": copy.deepcopy(TOOLS)}
    if checklists:
        row["checklists"] = good_checklists()
    return row


def openai_row(rid: str, **changes: Any) -> dict[str, Any]:
    row = {"id": rid, "messages": good_messages(), "tools": copy.deepcopy(TOOLS)}
    row.update(changes)
    return row


def plain(rid: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """A CM2-form record with its own messages and no checklist (so only the rule filters look at it)."""
    return {"uuid": rid, "messages": messages, "tools": copy.deepcopy(TOOLS)}


def with_call(rid: str, name: str, args: Any) -> dict[str, Any]:
    """The good dialogue, its first call replaced, no checklist."""
    row = plain(rid, good_messages())
    row["messages"][2]["tool_calls"] = [call(name, args, "call_0")]
    return row


def with_checklist(rid: str, edit) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    row = good(rid)
    edit(row["checklists"][0])
    return row


def write_json(name: str, rows: list[dict[str, Any]]) -> None:
    (HERE / name).write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def write_lines(name: str, lines: list[Any], *, final_newline: bool = True) -> None:
    text = "\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines)
    (HERE / name).write_text(text + ("\n" if final_newline else ""), encoding="utf-8")


# ------------------------------------------------------------------------------------------------ read level


def reader_files() -> None:
    write_lines(
        "malformed_lines.jsonl",
        [
            openai_row("ml-good-1"),
            '{"id": "ml-bad-syntax", "messages": [{"role": "user", "content": "hi"}',
            openai_row("ml-good-2"),
            "",
            "[1, 2, 3]",
            '{"id": "ml-missing-comma" "messages": []}',
            openai_row("ml-good-3"),
        ],
    )

    rows = [good("tr-good-1"), good("tr-good-2"), good("tr-cut")]
    text = json.dumps(rows, ensure_ascii=False, indent=1)
    cut = text.index('"content": "Great, book a table', text.index('"tr-cut"')) + 30
    (HERE / "truncated.json").write_text(text[:cut], encoding="utf-8")

    line = json.dumps(openai_row("hw-cut"), ensure_ascii=False)
    good_lines = json.dumps(openai_row("hw-good-1")) + "\n" + json.dumps(openai_row("hw-good-2")) + "\n"
    (HERE / "half_written.jsonl").write_text(good_lines + line[: len(line) // 2], encoding="utf-8")

    msgs_number = good_messages()
    msgs_number[1]["content"] = 42
    msgs_not_object = good_messages()
    msgs_not_object[3] = "the tool said it is sunny"
    msgs_calls_dict = good_messages()
    msgs_calls_dict[2]["tool_calls"] = {"name": "get_weather"}
    msgs_args = good_messages()
    msgs_args[2]["tool_calls"] = [call("get_weather", "{city: Paris, days: 2", "call_0")]
    bad_weight = good_checklists()
    bad_weight[0][0][0]["weight"] = "heavy"
    write_lines(
        "wrong_types.jsonl",
        [
            openai_row("wt-good"),
            openai_row("wt-content-number", messages=msgs_number),
            openai_row("wt-message-not-object", messages=msgs_not_object),
            openai_row("wt-tool-calls-not-list", messages=msgs_calls_dict),
            openai_row("wt-tools-number", tools=5),
            openai_row("wt-tools-bad-json", tools='[{"type": "function", "function": {"name": "get_weather"'),
            openai_row("wt-weight-string", checklists=bad_weight),
            openai_row("wt-arguments-not-json", messages=msgs_args),
        ],
    )

    no_messages = good("mm-no-messages")
    del no_messages["messages"]
    write_lines(
        "missing_messages.jsonl",
        [
            openai_row("mm-good"),
            no_messages,
            openai_row("mm-empty-list", messages=[]),
            openai_row("mm-string", messages="hello"),
        ],
    )

    def role(index: int, value: Any) -> list[dict[str, Any]]:
        msgs = good_messages()
        if value is None:
            del msgs[index]["role"]
        else:
            msgs[index]["role"] = value
        return msgs

    write_lines(
        "unknown_role.jsonl",
        [
            openai_row("ur-good"),
            openai_row("ur-bot", messages=role(4, "bot")),
            openai_row("ur-no-role", messages=role(1, None)),
            openai_row("ur-function", messages=role(3, "function")),
        ],
    )

    def sharegpt(rid: str, conv: list[dict[str, Any]] | Any) -> dict[str, Any]:
        return {
            "id": rid,
            "system": "You are a helpful travel assistant.",
            "conversations": conv,
            "tools": json.dumps([t["function"] for t in TOOLS]),
        }

    def conv() -> list[dict[str, Any]]:
        return [
            {"from": "human", "value": "What's the weather in Paris for the next 2 days?"},
            {
                "from": "function_call",
                "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}),
            },
            {"from": "observation", "value": FORECAST},
            {"from": "gpt", "value": "Tomorrow is sunny (24 °C), then rain (19 °C)."},
        ]

    robot, no_from, bad_call = conv(), conv(), conv()
    robot[3]["from"] = "robot"
    del no_from[0]["from"]
    bad_call[1]["value"] = "get_weather(city='Paris')"
    write_lines(
        "sharegpt_unknown_from.jsonl",
        [
            sharegpt("sg-good", conv()),
            sharegpt("sg-robot", robot),
            sharegpt("sg-no-from", no_from),
            sharegpt("sg-call-not-json", bad_call),
            sharegpt("sg-conversations-string", "human: hi"),
        ],
    )

    def nemotron(rid: str, metadata: str) -> dict[str, Any]:
        msgs = good_messages()
        for m in msgs:
            if not m["tool_calls"]:
                del m["tool_calls"]
        return {"uuid": rid, "messages": msgs, "metadata": metadata, "license": "cc-by-4.0"}

    write_lines(
        "nemotron_bad_metadata.jsonl",
        [
            nemotron("nm-good", json.dumps({"tools": TOOLS, "category": "travel"})),
            nemotron("nm-metadata-cut", json.dumps({"tools": TOOLS})[:40]),
            nemotron("nm-metadata-list", "[1, 2]"),
            nemotron("nm-tools-not-list", json.dumps({"tools": 5})),
        ],
    )

    (HERE / "not_json.json").write_text("id,messages\n1,hello\n2,bye\n", encoding="utf-8")

    write_lines("duplicate_ids.jsonl", [openai_row("dup-1"), openai_row("dup-2"), openai_row("dup-1")])

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{"id": f"pq-{i}", "payload": json.dumps(good(f"pq-{i}"))} for i in range(2)])
    path = HERE / "truncated.parquet"
    pq.write_table(table, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


# ------------------------------------------------------------------------------------------------ rule filters


def rule_files() -> None:
    write_json(
        "tool_schema.json",
        [
            good("ts-good"),
            with_call("ts-unknown-tool", "get_forecast", {"city": "Paris"}),
            with_call("ts-bool-for-integer", "get_weather", {"city": "Paris", "days": True}),
            with_call("ts-missing-required", "get_weather", {"days": 2}),
            with_call("ts-unknown-param", "get_weather", {"city": "Paris", "country": "FR"}),
            with_call("ts-arguments-not-json", "get_weather", "{city: Paris}"),
            with_call("ts-enum", "get_weather", {"city": "Paris", "units": "K"}),
        ],
    )

    reply = "<think>\nAnswer.\n</think>\n\nIt is sunny."
    write_json(
        "role_order.json",
        [
            good("ro-good"),
            plain(
                "ro-tool-after-reply",
                [
                    user("Weather in Paris?"),
                    assistant(reply),
                    tool(FORECAST, "call_0", "get_weather"),
                    assistant(reply),
                ],
            ),
            plain(
                "ro-ends-on-tool",
                [
                    user("Weather in Paris?"),
                    assistant("<think>\nCall.\n</think>", [call("get_weather", {"city": "Paris"}, "c0")]),
                    tool(FORECAST, "c0", "get_weather"),
                ],
            ),
            plain(
                "ro-system-in-middle",
                [
                    user("Hi there"),
                    assistant(reply),
                    {"role": "system", "content": "Be brief."},
                    user("Weather in Paris?"),
                    assistant(reply),
                ],
            ),
            plain("ro-user-after-user", [user("Hi there"), user("Weather in Paris?"), assistant(reply)]),
            plain("ro-starts-with-assistant", [assistant(reply), user("Weather in Paris?"), assistant(reply)]),
        ],
    )

    two_calls = [
        user("Weather in Paris and Rome?"),
        assistant(
            "<think>\nTwo calls.\n</think>",
            [call("get_weather", {"city": "Paris"}, "c0"), call("get_weather", {"city": "Rome"}, "c1")],
        ),
        tool(FORECAST, "c0", "get_weather"),
        assistant(reply),
    ]
    one_call = [
        user("Weather in Paris?"),
        assistant("<think>\nOne call.\n</think>", [call("get_weather", {"city": "Paris"}, "c0")]),
        tool(FORECAST, "c0", "get_weather"),
        tool(FORECAST, "c0", "get_weather"),
        assistant(reply),
    ]
    wrong_id = [
        user("Weather in Paris?"),
        assistant("<think>\nOne call.\n</think>", [call("get_weather", {"city": "Paris"}, "c0")]),
        tool(FORECAST, "c9", "get_weather"),
        assistant(reply),
    ]
    write_json(
        "call_response_mismatch.json",
        [
            good("cr-good"),
            plain("cr-two-calls-one-response", two_calls),
            plain("cr-one-call-two-responses", one_call),
            plain("cr-wrong-tool-call-id", wrong_id),
        ],
    )

    text_reply = good_messages()
    text_reply[3]["content"] = "Sunny, 24 degrees"
    repr_reply = good_messages()
    repr_reply[7]["content"] = "{'status': 'confirmed'}"
    write_json(
        "tool_content_not_json.json",
        [
            good("tc-good"),
            plain("tc-plain-text", text_reply),
            plain("tc-python-repr", repr_reply),
        ],
    )

    dupes = good("dt-duplicate")
    dupes["tools"].append(copy.deepcopy(TOOLS[0]))
    write_json("duplicate_tools.json", [good("dt-good"), dupes])

    double = good_messages()
    double[4]["content"] = "<think>\nFirst.\n</think><think>\nSecond.\n</think>\n\nSunny."
    stray = good_messages()
    stray[8]["content"] = "<think>\nConfirm.\n</think>\n\nDone.</think>"
    in_user = good_messages()
    in_user[5]["content"] = "<think>book it</think> Book a table for 2 at Chez Marie."
    missing = good_messages()
    missing[4]["content"] = "Tomorrow is sunny."
    write_json(
        "think_tags.json",
        [
            good("tt-good"),
            plain("tt-double-think", double),
            plain("tt-stray-close-tag", stray),
            plain("tt-think-in-user", in_user),
            plain("tt-missing-think", missing),
        ],
    )

    empty_user = good_messages()
    empty_user[5]["content"] = "   "
    empty_reply = good_messages()
    empty_reply[8]["content"] = "<think>\nConfirm.\n</think>"
    leak = good_messages()
    leak[4]["content"] = '<think>\nSummarise.\n</think>\n\n<tool_response>{"sky": "sunny"}</tool_response> Sunny.'
    write_json(
        "content_rules.json",
        [
            good("cn-good"),
            plain("cn-blank-user", empty_user),
            plain("cn-empty-reply", empty_reply),
            plain("cn-tool-response-in-reply", leak),
        ],
    )

    write_json(
        "no_user_turn.json",
        [
            good("nu-good"),
            plain(
                "nu-no-user",
                [
                    {"role": "system", "content": "You are helpful.", "tool_calls": []},
                    assistant("<think>\nGreet.\n</think>\n\nHello there!"),
                ],
            ),
        ],
    )

    def degenerate(index: int, text: str) -> list[dict[str, Any]]:
        msgs = good_messages()
        msgs[index]["content"] = text
        return msgs

    write_json(
        "degenerate_message.json",
        [
            good("dg-good"),
            plain("dg-one-word-user", degenerate(1, "n")),
            plain("dg-symbols-user", degenerate(5, "??? !!! ... ???")),
            plain(
                "dg-emoji-reply",
                degenerate(4, "<think>\nSummarise.\n</think>\n\n\U0001f44d \U0001f44d \U0001f324\ufe0f"),
            ),
            plain("dg-one-word-reply", degenerate(8, "<think>\nConfirm.\n</think>\n\nDone.")),
            plain("dg-two-words-good", degenerate(8, "<think>\nConfirm.\n</think>\n\nBooked: B-1042.")),
        ],
    )


# ------------------------------------------------------------------------------------------------ checklists


def checklist_files() -> None:
    def weights(*ws: float):  # type: ignore[no-untyped-def]
        def edit(variant):  # type: ignore[no-untyped-def]
            for it, w in zip(variant[0], ws, strict=True):
                it["weight"] = w

        return edit

    write_json(
        "checklist_weights.json",
        [
            good("cw-good"),
            with_checklist("cw-sum-0.9", weights(0.5, 0.2, 0.2)),
            with_checklist("cw-out-of-range", weights(1.5, -0.3, -0.2)),
        ],
    )

    def dup_ids(variant):  # type: ignore[no-untyped-def]
        variant[0][1]["id"] = "C0"
        variant[0][2]["dependence"] = []

    def blank_id(variant):  # type: ignore[no-untyped-def]
        variant[1][1]["id"] = ""

    write_json(
        "checklist_item_ids.json",
        [
            good("ci-good"),
            with_checklist("ci-duplicate-id", dup_ids),
            with_checklist("ci-blank-id", blank_id),
        ],
    )

    def deps(target: str, on: list[str]):  # type: ignore[no-untyped-def]
        def edit(variant):  # type: ignore[no-untyped-def]
            for it in variant[0]:
                if it["id"] == target:
                    it["dependence"] = on

        return edit

    write_json(
        "checklist_dependencies.json",
        [
            good("cd-good"),
            with_checklist("cd-on-non-tool-content", deps("C2", ["C0"])),
            with_checklist("cd-on-unknown-item", deps("C2", ["C7"])),
            with_checklist("cd-on-itself", deps("C1", ["C1"])),
        ],
    )

    def one_block(variant):  # type: ignore[no-untyped-def]
        del variant[1]

    def three_blocks(variant):  # type: ignore[no-untyped-def]
        variant.append(copy.deepcopy(variant[1]))

    labeller = good("cb-turns-0-and-2")
    stored = labeller["checklists"][0]
    labeller["checklists"] = [
        [
            {
                "turn": t,
                "checklist": [{k: v for k, v in it.items() if k not in ("dependence", "weight")} for it in items],
                "dependence": {it["id"]: it["dependence"] for it in items},
                "weight": {it["id"]: it["weight"] for it in items},
            }
            for t, items in zip((0, 2), stored, strict=True)
        ]
    ]
    write_json(
        "checklist_block_count.json",
        [
            good("cb-good"),
            with_checklist("cb-one-block-two-turns", one_block),
            with_checklist("cb-three-blocks-two-turns", three_blocks),
            labeller,
        ],
    )

    def focus(variant):  # type: ignore[no-untyped-def]
        variant[0][0]["focus_on"] = "assistant.reply"

    def source(variant):  # type: ignore[no-untyped-def]
        variant[1][0]["evidence"][0]["from"] = "assistant.content"

    write_json(
        "checklist_enums.json",
        [
            good("ce-good"),
            with_checklist("ce-bad-focus-on", focus),
            with_checklist("ce-bad-evidence-from", source),
        ],
    )

    def empty_question(variant):  # type: ignore[no-untyped-def]
        variant[0][1]["question"] = ""

    def blank_pass(variant):  # type: ignore[no-untyped-def]
        variant[1][1]["pass_condition"] = "  "

    write_json(
        "checklist_text.json",
        [
            good("cx-good"),
            with_checklist("cx-empty-question", empty_question),
            with_checklist("cx-blank-pass-condition", blank_pass),
        ],
    )

    def past_turns(variant):  # type: ignore[no-untyped-def]
        variant[0][0]["evidence"][0]["turn"] = 5

    def past_steps(variant):  # type: ignore[no-untyped-def]
        variant[1][1]["evidence"][0]["step"] = 9

    write_json(
        "checklist_evidence.json",
        [
            good("cv-good"),
            with_checklist("cv-turn-past-end", past_turns),
            with_checklist("cv-step-past-end", past_steps),
        ],
    )

    def snippet(turn: int, index: int, text: str):  # type: ignore[no-untyped-def]
        def edit(variant):  # type: ignore[no-untyped-def]
            variant[turn][index]["evidence"][0]["snippet"] = text

        return edit

    def wrong_kind(variant):  # type: ignore[no-untyped-def]
        variant[0][1]["evidence"][0]["step"] = 1  # tool.content pointing at the assistant's action

    def no_evidence(variant):  # type: ignore[no-untyped-def]
        variant[1][0]["evidence"] = []

    write_json(
        "checklist_grounding.json",
        [
            good("cg-good"),
            with_checklist("cg-snippet-not-in-dialogue", snippet(1, 1, "booking B-9999")),
            with_checklist("cg-from-wrong-kind-of-step", wrong_kind),
            with_checklist("cg-empty-snippet", snippet(0, 1, "  ")),
            with_checklist("cg-no-evidence", no_evidence),
            # JSON-quoting and whitespace differ, and one word is dropped: a quote all the same
            with_checklist("cg-near-quote-good", snippet(0, 2, "Tomorrow is sunny with high of 24")),
            with_checklist("cg-json-escaped-good", snippet(0, 1, '\\"sky\\": \\"sunny\\"')),
        ],
    )

    def question(text: str):  # type: ignore[no-untyped-def]
        def edit(variant):  # type: ignore[no-untyped-def]
            variant[0][0]["question"] = text

        return edit

    write_json(
        "checklist_copied.json",
        [
            good("cp-good"),
            with_checklist("cp-question-of-the-prompt", question("Did the assistant request the forecast for Oslo?")),
            with_checklist("cp-snippet-of-the-prompt", snippet(0, 2, "12°C and light rain")),
        ],
    )


if __name__ == "__main__":
    reader_files()
    rule_files()
    checklist_files()
