"""Turn and step segmentation of a dialogue (method §1).

A turn starts at a user message and runs to the message before the next user message; it is *complete* when it
ends with an assistant reply without tool calls. Inside a turn, step 0 is the user message, every assistant message
is one step, and each run of consecutive tool messages (the responses to one action) is one step. Messages before
the first user message (a system prompt) belong to no turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cm2data.schema.records import Message


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a turn: the message indices (into ``Dialogue.messages``) it covers and its kind."""

    index: int
    kind: str  # "user" | "assistant" | "tool" | "system"
    message_indices: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Turn:
    """One user turn: ``messages[start:end]`` split into steps."""

    index: int
    start: int
    end: int
    steps: tuple[Step, ...]
    complete: bool

    @property
    def assistant_steps(self) -> tuple[Step, ...]:
        return tuple(step for step in self.steps if step.kind == "assistant")


def segment(messages: Sequence[Message]) -> list[Turn]:
    """Split ``messages`` into turns and steps. Total: every message from the first user message on is covered."""
    user_positions = [i for i, m in enumerate(messages) if m.role == "user"]
    turns: list[Turn] = []
    for t, start in enumerate(user_positions):
        end = user_positions[t + 1] if t + 1 < len(user_positions) else len(messages)
        steps: list[Step] = []
        i = start
        while i < end:
            role = messages[i].role
            if role == "tool":
                j = i
                while j < end and messages[j].role == "tool":
                    j += 1
                steps.append(Step(len(steps), "tool", tuple(range(i, j))))
                i = j
            else:
                steps.append(Step(len(steps), role, (i,)))
                i += 1
        last = messages[end - 1]
        turns.append(Turn(t, start, end, tuple(steps), last.role == "assistant" and not last.tool_calls))
    return turns


def step_text(messages: Sequence[Message], step: Step, source: str) -> str:
    """The text of ``step`` that an evidence ``from`` value points at (used to check evidence snippets)."""
    parts: list[str] = []
    for idx in step.message_indices:
        m = messages[idx]
        if source in ("user.content", "tool.content", "assistant.content.user_visible_reply"):
            parts.append(m.content)
        elif source == "assistant.content.thinking":
            parts.append(m.thinking or "")
        elif source == "assistant.tool_calls":
            for call in m.tool_calls:
                parts.append(f'"name": "{call.name}", "arguments": {call.arguments}')
                parts.append(call.arguments)
    return "\n".join(parts)
