"""Records, thinking split, segmentation (method §1) and the seven statistics (method §2.6)."""

from __future__ import annotations

from cm2data.schema import Dialogue, Message, ToolCall, dialogue_stats, join_thinking, segment, split_thinking


def _dialogue() -> Dialogue:
    call = lambda n, i: ToolCall(id=i, name=n, arguments="{}")  # noqa: E731
    return Dialogue(
        id="d",
        tools=[{"name": "a"}, {"name": "b"}, {"name": "c"}],
        messages=[
            Message(role="system", content="sys"),
            Message(role="user", content="u0"),
            Message(role="assistant", tool_calls=[call("a", "1"), call("b", "2")]),
            Message(role="tool", content="{}", tool_call_id="1"),
            Message(role="tool", content="{}", tool_call_id="2"),
            Message(role="assistant", tool_calls=[call("a", "3")]),
            Message(role="tool", content="{}", tool_call_id="3"),
            Message(role="assistant", content="r0"),
            Message(role="user", content="u1"),
            Message(role="assistant", content="r1"),
        ],
    )


def test_segmentation_steps() -> None:
    turns = segment(_dialogue().messages)
    assert len(turns) == 2
    t0 = turns[0]
    assert [s.kind for s in t0.steps] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert t0.steps[2].message_indices == (3, 4)  # parallel responses form one step
    assert t0.complete and turns[1].complete
    assert [s.index for s in turns[1].steps] == [0, 1]


def test_incomplete_turn_is_flagged() -> None:
    msgs = _dialogue().messages[:7]
    (turn,) = segment(msgs)
    assert not turn.complete


def test_statistics() -> None:
    s = dialogue_stats(_dialogue())
    assert s.as_dict() == {
        "num_turns": 2,
        "tool_calls_total": 3,
        "max_parallel_tool_calls": 2,
        "num_candidate_tools": 3,
        "num_selected_tools": 2,
        "max_assistant_steps": 3,
        "num_assistant_messages": 4,
    }


def test_thinking_split_and_join() -> None:
    assert split_thinking("<think>\nplan\n</think>\n\nanswer") == ("plan", "answer")
    assert split_thinking("no think here") == (None, "no think here")
    # two blocks, or a block that is not leading: left alone for the think_tags rule to see
    assert split_thinking("<think>a</think><think>b</think>x")[0] is None
    assert split_thinking("x <think>a</think>")[0] is None
    assert join_thinking("plan", "answer") == "<think>\nplan\n</think>\n\nanswer"
    assert join_thinking("plan", "") == "<think>\nplan\n</think>"
    assert join_thinking(None, "answer") == "answer"


def test_tool_call_arguments_stay_strings() -> None:
    call = ToolCall(name="f", arguments={"b": 1, "a": [1, 2]})
    assert isinstance(call.arguments, str)
    assert call.args == {"b": 1, "a": [1, 2]}
    assert call.canonical_arguments() == '{"a":[1,2],"b":1}'


def test_schema_imports_without_heavy_dependencies() -> None:
    """Adapters load the schema inside trainer processes: only stdlib and pydantic may be imported."""
    import subprocess
    import sys

    code = (
        "import sys; import cm2data.schema; heavy = {'pandas', 'polars', 'pyarrow', 'datasets', 'pandera', "
        "'distilabel', 'numpy', 'typer', 'rich'} & set(sys.modules); print(sorted(heavy)); "
        "sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
