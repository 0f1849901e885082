"""Property-based tests: the readers never raise, segmentation is total, formats and the store round-trip.

* ``convert_row`` on arbitrary JSON-like dicts and on mutated valid rows of every format returns a record or a
  reject, and a record it returns can be stored;
* ``iter_rows`` / ``read_records`` on arbitrary bytes never raise, and what they hand on can be written (records to
  parquet, rejects to the rejects table); a JSON array or JSON-lines file cut anywhere yields exactly the rows before
  the cut and then one ``truncated_file`` reject;
* ``segment`` covers every message from the first user message on exactly once, in turns that start at user
  messages and steps that group runs of tool messages;
* valid dialogues written in each writable format read back with the same messages, tools and checklists (except
  what the format declares lossy), and ``store.to_row``/``from_row`` round-trip exactly, also through Arrow.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cm2data import store
from cm2data.formats import FORMATS, convert_row, read_records, write_records
from cm2data.formats.openai import checklists_to_stored, message_to_openai
from cm2data.formats.rows import iter_rows
from cm2data.rejects import RecordError, Reject, read_rejects, write_rejects
from cm2data.schema import (
    Dialogue,
    Message,
    Provenance,
    Review,
    Tool,
    ToolCall,
    TurnChecklist,
    dialogue_stats,
    segment,
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOME = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

READ_FORMATS = ["auto", *FORMATS]
WRITE_FORMATS = [name for name, f in FORMATS.items() if f.write is not None]

#: keys the readers look at, so that arbitrary dicts reach past the first check now and then
KEYS = [
    "messages",
    "conversations",
    "tools",
    "metadata",
    "uuid",
    "id",
    "checklists",
    "extra_info",
    "prompt",
    "reward_model",
    "ground_truth",
    "interaction_kwargs",
    "checklist_list",
    "data_source",
    "role",
    "content",
    "tool_calls",
    "function",
    "name",
    "arguments",
    "from",
    "value",
    "system",
    "type",
    "parameters",
    "turn",
    "checklist",
    "items",
    "evidence",
    "focus_on",
    "question",
    "pass_condition",
    "weight",
    "dependence",
    "thinking",
    "reasoning_content",
    "tool_call_id",
    "provenance",
    "review",
    "source",
    "description",
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "user",
            "assistant",
            "tool",
            "system",
            "human",
            "gpt",
            "function_call",
            "observation",
            "{}",
            "[]",
            '{"a": 1}',
            "<think>x</think>y",
            "C0",
        ]
    )
)
json_keys = st.sampled_from(KEYS) | st.text(max_size=6)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(json_keys, children, max_size=5),
    max_leaves=25,
)
json_rows = st.dictionaries(json_keys, json_values, max_size=6)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def assert_outcome(result: Dialogue | Reject, location: str = "here") -> None:
    """What a reader hands on must be a record the store can hold, or a reject the rejects table can hold."""
    if isinstance(result, Reject):
        assert isinstance(result.rule, str) and result.rule and result.stage == "read"
        assert isinstance(result.message, str) and result.message
        assert result.location == location
        json.dumps(result.as_row(), ensure_ascii=False).encode("utf-8")
    else:
        assert isinstance(result, Dialogue)
        store.records_table([result])  # the Arrow schema accepts it (64-bit ints, valid UTF-8)


# ------------------------------------------------------------------------------------------------ the readers


@FUZZ
@given(row=json_rows, fmt=st.sampled_from(READ_FORMATS))
def test_convert_row_on_arbitrary_dicts(row: dict[str, Any], fmt: str) -> None:
    assert_outcome(convert_row(row, fmt, "here"))


# ---- strategies for valid records

text = st.text(max_size=30).filter(lambda s: "<think>" not in s and "</think>" not in s)
short = st.text(min_size=1, max_size=10)
finite = st.floats(allow_nan=False, allow_infinity=False)
plain_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | finite | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=10,
)
arguments = st.dictionaries(st.text(max_size=8), plain_json, max_size=3).map(json.dumps)
tools = st.lists(
    st.builds(
        Tool,
        name=short,
        description=text,
        parameters=st.fixed_dictionaries(
            {"type": st.just("object"), "properties": st.dictionaries(short, st.just({"type": "string"}), max_size=3)}
        ),
    ),
    max_size=3,
)
#: metadata keys that no format's reader takes for one of its own fields
RESERVED = {
    "uuid",
    "id",
    "messages",
    "tools",
    "checklists",
    "provenance",
    "review",
    "source",
    "metadata",
    "conversations",
    "system",
    "data_source",
    "extra_info",
    "prompt",
    "reward_model",
}
metadata = st.dictionaries(short.filter(lambda k: k not in RESERVED), plain_json, max_size=3)


@st.composite
def tool_call(draw: st.DrawFn) -> ToolCall:
    return ToolCall(id=draw(st.none() | short), name=draw(short), arguments=draw(arguments))


@st.composite
def assistant(draw: st.DrawFn, n_calls: int) -> Message:
    thinking = draw(st.none() | text.map(lambda s: s.strip("\n")))  # Qwen3 drops the newlines around thinking
    content = draw(text)
    if thinking is not None:
        content = content.lstrip("\n")  # … and the newlines before the visible reply
    calls = [draw(tool_call()) for _ in range(n_calls)]
    return Message(role="assistant", content=content, thinking=thinking, tool_calls=calls, name=draw(st.none() | short))


@st.composite
def valid_messages(draw: st.DrawFn) -> list[Message]:
    """A well-formed dialogue: optional system prompt, then turns of user → (calls → responses)* → reply."""
    msgs: list[Message] = []
    if draw(st.booleans()):
        msgs.append(Message(role="system", content=draw(text)))
    for _ in range(draw(st.integers(1, 3))):
        msgs.append(Message(role="user", content=draw(text), name=draw(st.none() | short)))
        for _ in range(draw(st.integers(0, 2))):
            action = draw(assistant(draw(st.integers(1, 3))))
            msgs.append(action)
            for call in action.tool_calls:
                msgs.append(
                    Message(
                        role="tool",
                        content=draw(text),
                        tool_call_id=draw(st.none() | short),
                        name=draw(st.none() | st.just(call.name)),
                    )
                )
        msgs.append(draw(assistant(0)))
    return msgs


@st.composite
def checklist_variant(draw: st.DrawFn, n_turns: int) -> list[TurnChecklist]:
    blocks = []
    for t in range(n_turns):
        items = []
        for k in range(draw(st.integers(0, 3))):
            items.append(
                {
                    "id": f"C{k}",
                    "evidence": draw(
                        st.lists(
                            st.fixed_dictionaries(
                                {
                                    "turn": st.integers(0, 2**63 - 1),
                                    "step": st.integers(0, 2**63 - 1),
                                    "from": short,
                                    "snippet": text,
                                }
                            ),
                            max_size=2,
                        )
                    ),
                    "focus_on": draw(short),
                    "question": draw(text),
                    "pass_condition": draw(text),
                    "failure_examples": draw(st.lists(text, max_size=2)),
                    "required_for_next_turn": draw(st.booleans()),
                    "depends_on": draw(st.lists(short, max_size=2)),
                    "weight": draw(st.floats(allow_nan=False)),
                    "extra_info": draw(st.dictionaries(short, plain_json, max_size=2)),
                }
            )
        blocks.append(TurnChecklist.model_validate({"turn": t, "items": items}))
    return blocks


@st.composite
def valid_dialogues(draw: st.DrawFn) -> Dialogue:
    messages = draw(valid_messages())
    n_turns = sum(m.role == "user" for m in messages)
    return Dialogue(
        id=draw(short),
        source=draw(st.sampled_from(["", "cm2", "fuzz"])),
        tools=draw(tools),
        messages=messages,
        checklists=[draw(checklist_variant(n_turns)) for _ in range(draw(st.integers(0, 2)))],
        metadata=draw(metadata),
    )


def verl_row(d: Dialogue) -> dict[str, Any]:
    """The reference's VeRL layout (there is no VeRL writer among the formats: the adapter writes it)."""
    msgs = [message_to_openai(m) for m in d.messages]
    return {
        "data_source": "fuzz",
        "prompt": msgs[:2],
        "extra_info": {
            "messages": msgs,
            "tools": json.dumps([t.to_openai() for t in d.tools]),
            "interaction_kwargs": {"checklist_list": checklists_to_stored(d)},
        },
        "reward_model": {"ground_truth": json.dumps({"checklists": checklists_to_stored(d)})},
    }


def written_row(d: Dialogue, fmt: str) -> dict[str, Any]:
    return verl_row(d) if fmt == "verl" else FORMATS[fmt].write(d)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(row: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """Apply 1-3 random edits: replace a value, delete it, wrap it in a list, turn it into a JSON string, add a key."""
    row = copy.deepcopy(row)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        paths = [p for p in _paths(row) if p]
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="path")
        parent = row
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        op = data.draw(st.sampled_from(["replace", "delete", "wrap", "stringify", "add"]), label="op")
        if op == "replace":
            parent[key] = data.draw(json_values, label="value")
        elif op == "delete":
            del parent[key]
        elif op == "wrap":
            parent[key] = [parent[key]]
        elif op == "stringify":
            parent[key] = json.dumps(parent[key])
        elif isinstance(parent[key], dict):
            parent[key][data.draw(json_keys, label="key")] = data.draw(json_values, label="value")
    return row


@FUZZ
@given(d=valid_dialogues(), fmt=st.sampled_from([*WRITE_FORMATS, "verl"]), data=st.data())
def test_convert_row_on_mutated_valid_rows(d: Dialogue, fmt: str, data: st.DataObject) -> None:
    row = _mutate(written_row(d, fmt), data)
    assert_outcome(convert_row(row, fmt, "here"))
    assert_outcome(convert_row(row, "auto", "here"))


# ------------------------------------------------------------------------------------------------- the files


@FUZZ
@given(payload=st.binary(max_size=300), suffix=st.sampled_from([".json", ".jsonl"]))
def test_iter_rows_on_arbitrary_bytes(payload: bytes, suffix: str, scratch: Path) -> None:
    path = scratch / f"bytes{suffix}"
    path.write_bytes(payload)
    for location, row in iter_rows(path):
        assert isinstance(location, str) and location.startswith(path.name)
        assert isinstance(row, dict | RecordError)
    _read_and_store(path, scratch)


def _read_and_store(path: Path, scratch: Path) -> list[Dialogue | Reject]:
    items = list(read_records(path))
    assert all(isinstance(x, Dialogue | Reject) for x in items)
    store.records_table([x for x in items if isinstance(x, Dialogue)])
    write_rejects([x for x in items if isinstance(x, Reject)], scratch / "rejects.jsonl")
    return items


def _noise(data: st.DataObject, text: str) -> bytes:
    """The text as UTF-8 with a few bytes overwritten: stray bytes, invalid UTF-8, escapes of lone surrogates."""
    raw = bytearray(text.encode("utf-8"))
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        if not raw:
            break
        at = data.draw(st.integers(0, len(raw) - 1), label="at")
        junk = data.draw(
            st.sampled_from(
                [
                    b"\xff",
                    b"\xc3",
                    b"\\ud800",
                    b"\\udfff\\ud800",
                    b"\x00",
                    b"{",
                    b"]",
                    b'"',
                    b",",
                    b"\n",
                    b"\xef\xbb\xbf",
                ]
            )
            | st.binary(max_size=3),
            label="junk",
        )
        raw[at : at + data.draw(st.integers(0, 3), label="width")] = junk
    return bytes(raw)


@FUZZ
@given(
    d=st.lists(valid_dialogues(), min_size=1, max_size=3),
    fmt=st.sampled_from(WRITE_FORMATS),
    suffix=st.sampled_from([".json", ".jsonl"]),
    data=st.data(),
)
def test_read_records_on_damaged_files(
    d: list[Dialogue], fmt: str, suffix: str, data: st.DataObject, scratch: Path
) -> None:
    rows = [FORMATS[fmt].write(x) for x in d]
    text = json.dumps(rows, indent=1) if suffix == ".json" else "".join(json.dumps(r) + "\n" for r in rows)
    path = scratch / f"damaged{suffix}"
    path.write_bytes(_noise(data, text))
    items = _read_and_store(path, scratch)
    # damage never passes silently and never loses the file: something comes back, and every reject says why
    assert items
    assert all(r.rule and r.message for r in items if isinstance(r, Reject))
    assert len(read_rejects(scratch / "rejects.jsonl")) == sum(isinstance(x, Reject) for x in items)


@FUZZ
@given(
    rows=st.lists(st.dictionaries(st.sampled_from(KEYS), plain_json, min_size=1, max_size=4), min_size=1, max_size=4),
    indent=st.sampled_from([None, 1, 2]),
    suffix=st.sampled_from([".json", ".jsonl"]),
    data=st.data(),
)
def test_a_cut_file_yields_the_rows_before_the_cut(
    rows: list[dict], indent: int | None, suffix: str, data: st.DataObject, scratch: Path
) -> None:
    if suffix == ".json":
        text = json.dumps(rows, indent=indent, ensure_ascii=False)
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    cut = data.draw(st.integers(1, len(text) - 1), label="cut")
    path = scratch / f"cut{suffix}"
    path.write_text(text[:cut], encoding="utf-8")
    items = [row for _, row in iter_rows(path)]
    good = [x for x in items if isinstance(x, dict)]
    errors = [x for x in items if isinstance(x, RecordError)]
    assert good == rows[: len(good)]
    assert all(isinstance(x, dict) for x in items[: len(good)])  # the damage comes last
    if suffix == ".json":
        assert [e.rule for e in errors] == ["truncated_file"]  # an array cut anywhere lacks its ']'
    else:
        head = text[:cut]
        complete, partial = head.count("\n"), head.rsplit("\n", 1)[-1]
        if partial == "" or partial == json.dumps(rows[complete], ensure_ascii=False):
            # cut at a line end, or right before the newline of a complete row: nothing is damaged
            assert good == rows[: complete + (partial != "")] and errors == []
        else:
            assert good == rows[:complete]
            assert [e.rule for e in errors] == ["truncated_file"]


def test_lone_surrogates_and_bad_bytes_are_rejects_not_crashes(tmp_path: Path) -> None:
    row = '{"id": "x", "messages": [{"role": "user", "content": "%s"}, {"role": "assistant", "content": "ok"}]}'
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        b"\n".join(
            [
                (row % "fine").encode(),
                (row % "\\ud800").encode(),
                (row % "caf\xe9").encode("latin-1"),
                (row % "\\ud83d\\ude00").encode(),
            ]
        )
        + b"\n"
    )
    items = [(loc, x) for loc, x in iter_rows(path)]
    assert [loc for loc, _ in items] == ["bad.jsonl:1", "bad.jsonl:2", "bad.jsonl:3", "bad.jsonl:4"]
    kinds = [x.rule if isinstance(x, RecordError) else "row" for _, x in items]
    assert kinds == ["row", "invalid_unicode", "invalid_utf8", "row"]  # an escaped surrogate *pair* is fine
    assert items[3][1]["messages"][0]["content"] == "\U0001f600"


def test_deep_nesting_and_huge_numbers_are_rejects(tmp_path: Path) -> None:
    path = tmp_path / "odd.jsonl"
    deep = "[" * 100_000
    big = json.dumps(
        {
            "id": "big",
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "checklists": [
                [
                    [
                        {
                            "id": "C0",
                            "focus_on": "tool.content",
                            "question": "q",
                            "pass_condition": "p",
                            "weight": 1.0,
                            "evidence": [{"turn": 2**64, "step": 0, "from": "user.content"}],
                        }
                    ]
                ]
            ],
        }
    )
    path.write_text(deep + "\n" + big + "\n", encoding="utf-8")
    rules = [x.rule for x in read_records(path) if isinstance(x, Reject)]
    assert rules == ["json_syntax", "value_range"]


def test_byte_order_mark_is_skipped(tmp_path: Path) -> None:
    row = {"id": "bom", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    for suffix, text in ((".json", json.dumps([row])), (".jsonl", json.dumps(row) + "\n")):
        path = tmp_path / f"bom{suffix}"
        path.write_bytes(b"\xef\xbb\xbf" + text.encode())
        (d,) = list(read_records(path))
        assert isinstance(d, Dialogue) and d.id == "bom"


# ----------------------------------------------------------------------------------------------- segmentation


@st.composite
def role_sequences(draw: st.DrawFn) -> list[Message]:
    msgs = []
    for role in draw(st.lists(st.sampled_from(["system", "user", "assistant", "tool"]), max_size=25)):
        calls = [ToolCall(name="f")] * draw(st.integers(0, 2)) if role == "assistant" else []
        msgs.append(Message(role=role, content="x", tool_calls=calls))
    return msgs


@settings(max_examples=200, deadline=None)
@given(messages=role_sequences())
def test_segmentation_is_total_and_grouped(messages: list[Message]) -> None:
    turns = segment(messages)
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    assert len(turns) == len(users)
    covered = [i for t in turns for s in t.steps for i in s.message_indices]
    first = users[0] if users else len(messages)
    assert covered == list(range(first, len(messages)))  # every message from the first user on, once, in order
    for t, turn in enumerate(turns):
        assert turn.index == t and turn.start == users[t]
        assert turn.end == (users[t + 1] if t + 1 < len(users) else len(messages))
        assert turn.steps[0].kind == "user" and turn.steps[0].message_indices == (turn.start,)
        assert [s.index for s in turn.steps] == list(range(len(turn.steps)))
        for k, step in enumerate(turn.steps):
            kinds = {messages[i].role for i in step.message_indices}
            assert kinds == {step.kind}
            if step.kind == "tool":  # a maximal run of tool messages
                before, after = step.message_indices[0] - 1, step.message_indices[-1] + 1
                assert messages[before].role != "tool"
                assert after == turn.end or messages[after].role != "tool"
                assert k == 0 or turn.steps[k - 1].kind != "tool"
            else:
                assert len(step.message_indices) == 1
        last = messages[turn.end - 1]
        assert turn.complete == (last.role == "assistant" and not last.tool_calls)
        assert turn.assistant_steps == tuple(s for s in turn.steps if s.kind == "assistant")
    if messages:
        stats = dialogue_stats(Dialogue(id="x", messages=messages))
        assert stats.num_turns == len(users)
        assert stats.num_assistant_messages == sum(m.role == "assistant" for m in messages)


# ------------------------------------------------------------------------------------------------ round trips


def _sharegpt_view(messages: list[Message]) -> list[Message]:
    """What ShareGPT can carry: no text or thinking on a call step, no ids, tool responses named after their call."""
    out = []
    pending: list[ToolCall] = []
    k = 0
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            pending, k = m.tool_calls, 0
            calls = [ToolCall(name=c.name, arguments=json.dumps(json.loads(c.arguments))) for c in m.tool_calls]
            out.append(Message(role="assistant", tool_calls=calls))
        elif m.role == "tool":
            out.append(Message(role="tool", content=m.content, name=pending[k].name if k < len(pending) else None))
            k += 1
        else:
            out.append(Message(role=m.role, content=m.content, thinking=m.thinking))
    return out


def _canonical_calls(messages: list[Message]) -> list[Message]:
    return [
        m.model_copy(
            update={"tool_calls": [c.model_copy(update={"arguments": c.canonical_arguments()}) for c in m.tool_calls]}
        )
        for m in messages
    ]


@FUZZ
@given(d=valid_dialogues(), fmt=st.sampled_from(WRITE_FORMATS))
def test_each_writable_format_round_trips(d: Dialogue, fmt: str) -> None:
    spec = FORMATS[fmt]
    row = json.loads(json.dumps(spec.write(d)))  # through JSON text, as in a file
    back = convert_row(row, fmt, "here")
    assert isinstance(back, Dialogue), back
    assert convert_row(row, "auto", "here") == back  # --format auto recognises what we write
    assert back.id == d.id
    assert back.tools == d.tools
    if fmt == "sharegpt":
        assert _canonical_calls(back.messages) == _canonical_calls(_sharegpt_view(d.messages))
    else:
        assert back.messages == d.messages
    if "checklists" not in spec.lossy:
        assert back.checklists == d.checklists
    assert back.metadata == d.metadata
    for field in ("source", "provenance", "review"):
        assert field in spec.lossy  # nothing else may be lost without being declared


@SOME
@given(
    d=st.lists(valid_dialogues(), min_size=1, max_size=3, unique_by=lambda x: x.id),
    fmt=st.sampled_from(WRITE_FORMATS),
    suffix=st.sampled_from([".json", ".jsonl"]),
)
def test_files_round_trip(d: list[Dialogue], fmt: str, suffix: str, scratch: Path) -> None:
    path = scratch / f"round{suffix}"
    assert write_records(d, path, fmt) == len(d)
    back = list(read_records(path, fmt))
    assert [x.id for x in back] == [x.id for x in d]
    assert all(isinstance(x, Dialogue) for x in back)
    if fmt != "sharegpt":
        assert [x.messages for x in back] == [x.messages for x in d]  # type: ignore[union-attr]


def _no_nan(value: Any) -> bool:
    return not (isinstance(value, float) and math.isnan(value))


@st.composite
def any_records(draw: st.DrawFn) -> Dialogue:
    """Records as the store may see them: any role order, thinking anywhere, provenance and review filled in."""
    roles = draw(st.lists(st.sampled_from(["system", "user", "assistant", "tool"]), min_size=1, max_size=8))
    messages = [
        Message(
            role=r,
            content=draw(st.text(max_size=20)),
            thinking=draw(st.none() | st.text(max_size=10)),
            tool_calls=draw(
                st.lists(
                    st.builds(ToolCall, id=st.none() | short, name=short, arguments=st.text(max_size=15)), max_size=2
                )
            ),
            tool_call_id=draw(st.none() | short),
            name=draw(st.none() | short),
        )
        for r in roles
    ]
    n_turns = draw(st.integers(0, 3))
    checklists = [draw(checklist_variant(n_turns)) for _ in range(draw(st.integers(0, 2)))]
    provenance = Provenance(
        source=draw(st.text(max_size=8)),
        source_id=draw(st.none() | short),
        generator_model=draw(st.none() | short),
        labeller_model=draw(st.none() | short),
        prompt_version=draw(st.none() | short),
        created_at=draw(st.none() | short),
        history=draw(st.lists(st.dictionaries(short, plain_json, max_size=2), max_size=2)),
    )
    review = Review(
        status=draw(st.sampled_from(["unreviewed", "in_review", "reviewed", "rejected"])),
        reviewers=draw(st.lists(short, max_size=2)),
        decisions=draw(st.lists(st.dictionaries(short, plain_json, max_size=2), max_size=2)),
        agreement=draw(st.dictionaries(short, finite, max_size=2)),
    )
    return Dialogue(
        id=draw(short),
        source=draw(st.text(max_size=8)),
        tools=draw(tools),
        messages=messages,
        checklists=checklists,
        metadata=draw(metadata),
        provenance=provenance,
        review=review,
    )


@FUZZ
@given(d=any_records())
def test_store_rows_round_trip_exactly(d: Dialogue) -> None:
    assert store.from_row(store.to_row(d)) == d
    (row,) = store.records_table([d]).to_pylist()  # and through the Arrow schema the files use
    assert store.from_row(row) == d
