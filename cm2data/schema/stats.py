"""The per-dialogue statistics used for hard-sample selection (method §2.6)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cm2data.schema.records import Dialogue
from cm2data.schema.segment import segment

STAT_NAMES: tuple[str, ...] = (
    "num_turns",
    "tool_calls_total",
    "max_parallel_tool_calls",
    "num_candidate_tools",
    "num_selected_tools",
    "max_assistant_steps",
    "num_assistant_messages",
)


@dataclass(frozen=True, slots=True)
class DialogueStats:
    num_turns: int
    tool_calls_total: int
    max_parallel_tool_calls: int
    num_candidate_tools: int
    num_selected_tools: int
    max_assistant_steps: int
    num_assistant_messages: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def dialogue_stats(dialogue: Dialogue) -> DialogueStats:
    """Compute the seven statistics of one dialogue.

    ``num_selected_tools`` counts distinct tool names the assistant called; ``max_assistant_steps`` is the largest
    number of assistant messages inside one turn.
    """
    assistant = [m for m in dialogue.messages if m.role == "assistant"]
    calls = [len(m.tool_calls) for m in assistant]
    turns = segment(dialogue.messages)
    return DialogueStats(
        num_turns=len(turns),
        tool_calls_total=sum(calls),
        max_parallel_tool_calls=max(calls, default=0),
        num_candidate_tools=len(dialogue.tools),
        num_selected_tools=len({c.name for m in assistant for c in m.tool_calls}),
        max_assistant_steps=max((len(t.assistant_steps) for t in turns), default=0),
        num_assistant_messages=len(assistant),
    )
