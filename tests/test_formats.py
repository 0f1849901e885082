"""Format readers and writers: the CM2 fixture round-trips field by field; every writable format round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cm2data.formats import FORMATS, read_records, write_records
from cm2data.rejects import Reject
from cm2data.schema import Dialogue


def _reference_json(reference_dir: Path) -> dict:
    return json.loads((reference_dir / "checklist_annotated.json").read_text())[0]


def test_cm2_fixture_reads_every_field(reference_record: Dialogue) -> None:
    d = reference_record
    assert d.id == "fbf37337-8d84-4c39-82b2-b8c3a16d1b83"
    assert [m.role for m in d.messages] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    first = d.messages[1]
    assert first.thinking is not None and first.thinking.startswith("Okay, the user wants")
    assert "<think>" not in first.content
    assert first.tool_calls[0].name == "get_the_last_games_of_a_football_team"
    assert first.tool_calls[0].args == {"teamid": "Washington Huskies"}
    assert first.tool_calls[0].id == "call_mkzQHvNxSraED8TVw37p-Q"
    assert [len(b.items) for b in d.checklists[0]] == [6, 4, 4]
    c2 = d.checklists[0][0].items[2]
    assert c2.depends_on == ["C1"] and c2.weight == pytest.approx(0.2)
    assert c2.extra_info == {"price_usd": 0.13348}
    assert d.checklists[0][0].items[0].evidence[0].from_ == "assistant.tool_calls"


def test_cm2_fixture_writes_back_field_by_field(reference_record: Dialogue, reference_dir: Path) -> None:
    original = _reference_json(reference_dir)
    written = FORMATS["cm2"].write(reference_record)
    assert set(written) == set(original)
    assert written["uuid"] == original["uuid"]
    assert written["tools"] == original["tools"]
    assert len(written["messages"]) == len(original["messages"])
    for got, want in zip(written["messages"], original["messages"], strict=True):
        for key in want:
            assert got[key] == want[key], key
    for v_got, v_want in zip(written["checklists"], original["checklists"], strict=True):
        for t_got, t_want in zip(v_got, v_want, strict=True):
            for i_got, i_want in zip(t_got, t_want, strict=True):
                assert i_got == i_want


def test_cm2_file_round_trip(tmp_path: Path, reference_dir: Path) -> None:
    records = list(read_records(reference_dir / "checklist_annotated.json", "cm2"))
    out = tmp_path / "again.json"
    write_records(records, out, "cm2")
    assert json.loads(out.read_text()) == json.loads((reference_dir / "checklist_annotated.json").read_text())
    again = list(read_records(out, "cm2"))
    assert again == records


def test_reference_verl_parquet_is_readable(reference_record: Dialogue, reference_dir: Path) -> None:
    (d,) = list(read_records(reference_dir / "checklist_annotated_forverl.parquet"))
    assert isinstance(d, Dialogue)
    assert d.messages == reference_record.messages
    assert d.tools == reference_record.tools
    assert d.checklists == reference_record.checklists
    assert d.source == "nvidia_nemotron_checklist"


@pytest.mark.parametrize("fmt", ["cm2", "openai", "nemotron", "sharegpt"])
def test_each_writable_format_round_trips(fmt: str, reference_record: Dialogue, tmp_path: Path) -> None:
    path = tmp_path / f"out.{'jsonl' if fmt != 'cm2' else 'json'}"
    write_records([reference_record], path, fmt)
    (back,) = list(read_records(path, fmt))
    assert isinstance(back, Dialogue), back
    assert back.id == reference_record.id
    assert back.tools == reference_record.tools
    assert [m.role for m in back.messages] == [m.role for m in reference_record.messages]
    for got, want in zip(back.messages, reference_record.messages, strict=True):
        assert got.content == want.content
        assert [(c.name, c.args) for c in got.tool_calls] == [(c.name, c.args) for c in want.tool_calls]
        if fmt != "sharegpt" or not want.tool_calls:  # sharegpt cannot carry a call step's thinking
            assert got.thinking == want.thinking
    if fmt != "nemotron":
        assert back.checklists == reference_record.checklists


def test_sharegpt_reader_apigen_style() -> None:
    row = {
        "conversations": [
            {"from": "human", "value": "Book me a table for 2 at Nopa tonight at 7."},
            {
                "from": "function_call",
                "value": json.dumps({"name": "book_table", "arguments": {"restaurant": "Nopa", "party_size": 2}}),
            },
            {"from": "observation", "value": json.dumps({"status": "confirmed", "id": "R-19"})},
            {"from": "gpt", "value": "Done: confirmation R-19."},
            {"from": "human", "value": "And a taxi there and back?"},
            {
                "from": "function_call",
                "value": json.dumps(
                    [{"name": "taxi", "arguments": {"to": "Nopa"}}, {"name": "taxi", "arguments": {"to": "home"}}]
                ),
            },
            {"from": "observation", "value": json.dumps([{"ride": 1}, {"ride": 2}])},
            {"from": "gpt", "value": "Two rides booked."},
        ],
        "tools": json.dumps(
            [
                {"name": "book_table", "parameters": {"type": "object", "properties": {}}},
                {"name": "taxi", "parameters": {"type": "object", "properties": {}}},
            ]
        ),
        "system": "You are a concierge.",
    }
    d = FORMATS["sharegpt"].read(row)
    assert [m.role for m in d.messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
    ]
    assert d.messages[2].tool_calls[0].args == {"restaurant": "Nopa", "party_size": 2}
    assert json.loads(d.messages[7].content) == {"ride": 1} and d.messages[8].name == "taxi"
    assert d.tool_names == ["book_table", "taxi"]


def test_nemotron_reader_takes_tools_from_metadata() -> None:
    row = {
        "uuid": "n-1",
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": "<think>\nneed the tool\n</think>",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}
                ],
            },
            {"role": "tool", "content": '{"temp": 3}', "tool_call_id": "c1"},
            {"role": "assistant", "content": "<think>\nanswer\n</think>\n\nIt is 3 °C."},
        ],
        "metadata": json.dumps(
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "weather",
                            "parameters": {
                                "type": "object",
                                "properties": {"city": {"type": "string"}},
                                "required": ["city"],
                            },
                        },
                    }
                ],
                "category": "tool_calling",
            }
        ),
        "license": "cc-by-4.0",
    }
    d = FORMATS["nemotron"].read(row)
    assert d.id == "n-1" and d.tool_names == ["weather"]
    assert d.messages[1].tool_calls[0].arguments == '{"city": "Oslo"}'  # dict arguments become a JSON string
    assert d.messages[3].thinking == "answer" and d.messages[3].content == "It is 3 °C."
    assert d.metadata == {"category": "tool_calling", "license": "cc-by-4.0"}


def test_auto_format_detection(reference_dir: Path, tmp_path: Path, reference_record: Dialogue) -> None:
    for fmt in ("openai", "sharegpt", "nemotron"):
        path = tmp_path / f"{fmt}.jsonl"
        write_records([reference_record], path, fmt)
        (d,) = list(read_records(path, "auto"))
        assert isinstance(d, Dialogue) and d.source == fmt


def test_labeller_block_form_is_accepted() -> None:
    """The labeller's raw output ({turn, checklist, dependence, weight}) merges into items on input."""
    row = {
        "uuid": "x",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        "checklists": [
            [
                {
                    "turn": 0,
                    "checklist": [
                        {
                            "id": "C0",
                            "evidence": [],
                            "focus_on": "assistant.content.user_visible_reply",
                            "question": "Greets?",
                            "pass_condition": "says hello",
                            "failure_examples": [],
                            "required_for_next_turn": False,
                        }
                    ],
                    "dependence": {"C0": []},
                    "weight": {"C0": 1.0},
                }
            ]
        ],
    }
    d = FORMATS["cm2"].read(row)
    assert d.checklists[0][0].items[0].weight == 1.0


def test_older_field_names_are_accepted() -> None:
    row = {
        "uuid": "y",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        "checklists": [
            [
                [
                    {
                        "id": "C0",
                        "focus_on": "tool.content",
                        "question": "q",
                        "pass_condition": "p",
                        "must_pass_to_continue": True,
                        "strictness": 0.5,
                        "dependency": [],
                    },
                    {
                        "id": "C1",
                        "focus_on": "assistant.tool_calls",
                        "question": "q",
                        "pass_condition": "p",
                        "depends_on": ["C0"],
                        "weight": 0.5,
                    },
                ]
            ]
        ],
    }
    items = FORMATS["cm2"].read(row).checklists[0][0].items
    assert items[0].required_for_next_turn is True and items[0].weight == 0.5
    assert items[1].depends_on == ["C0"]


def test_unknown_format_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    (item,) = list(read_records(path, "nope"))
    assert isinstance(item, Reject) and "unknown format" in item.message
