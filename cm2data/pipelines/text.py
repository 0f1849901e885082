"""How records are shown to the LLM: tools and dialogues as prompt text, turns and steps numbered as the
checklist evidence numbers them (method §1)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from cm2data.schema import Dialogue, Message, Tool, segment


def clip(text: str, limit: int) -> str:
    return text if limit <= 0 or len(text) <= limit else text[:limit] + " …[cut]"


def tools_text(tools: Sequence[Tool]) -> str:
    """One compact JSON function schema per line."""
    return "\n".join(
        json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters}, ensure_ascii=False)
        for t in tools
    )


def tools_brief(tools: Sequence[Tool]) -> str:
    """``- name(param, …): description`` per tool (for prompts that need to know what tools do, not how)."""
    lines = []
    for t in tools:
        params = ", ".join((t.parameters.get("properties") or {}).keys())
        lines.append(f"- {t.name}({params}): {t.description}")
    return "\n".join(lines)


def _calls(m: Message) -> str:
    return "; ".join(f"{c.name}({c.arguments})" for c in m.tool_calls)


def dialogue_text(d: Dialogue, *, numbered: bool = True, max_chars: int = 800, thinking: bool = True) -> str:
    """The dialogue as text. With ``numbered``, every line starts with ``[turn.step]`` and says which part of the
    step it shows (``assistant.tool_calls``, ``tool.content``, …), the names checklist evidence uses."""
    lines: list[str] = []
    msgs = d.messages
    if msgs and msgs[0].role == "system":
        lines.append(f"system: {clip(msgs[0].content, max_chars)}")
    for turn in segment(msgs):
        for step in turn.steps:
            tag = f"[{turn.index}.{step.index}] " if numbered else ""
            for idx in step.message_indices:
                m = msgs[idx]
                if m.role == "user":
                    lines.append(f"{tag}user.content: {clip(m.content, max_chars)}")
                elif m.role == "tool":
                    name = f" ({m.name})" if m.name else ""
                    lines.append(f"{tag}tool.content{name}: {clip(m.content, max_chars)}")
                elif m.role == "assistant":
                    if thinking and m.thinking:
                        lines.append(f"{tag}assistant.content.thinking: {clip(m.thinking, max_chars)}")
                    if m.tool_calls:
                        lines.append(f"{tag}assistant.tool_calls: {clip(_calls(m), max_chars)}")
                    if m.content.strip():
                        lines.append(f"{tag}assistant.content.user_visible_reply: {clip(m.content, max_chars)}")
                else:
                    lines.append(f"{tag}{m.role}: {clip(m.content, max_chars)}")
    return "\n".join(lines)


def history_text(messages: Sequence[Message], *, last: int = 8, max_chars: int = 400) -> str:
    """What a user sees of the conversation: user messages and assistant replies (no tool traffic)."""
    shown = [
        m for m in messages if m.role == "user" or (m.role == "assistant" and m.content.strip() and not m.tool_calls)
    ]
    if not shown:
        return "(the conversation has not started)"
    return "\n".join(f"{m.role}: {clip(m.content, max_chars)}" for m in shown[-last:])
