"""OpenAI chat format: ``{"messages": [...], "tools": [...]}`` per line, thinking inline as ``<think>``.

Also home of the message-level conversion that the ``cm2`` and ``nemotron`` formats share.
Optional keys on input: ``id``, ``checklists`` (stored form, as in ``cm2``), ``metadata``.
"""

from __future__ import annotations

import json
from typing import Any

from cm2data.rejects import RecordError
from cm2data.schema import Dialogue, Message, Tool, ToolCall, split_thinking, stable_id

NAME = "openai"
#: not written: the record's source (reads back as "openai" unless the row names one), provenance and review
LOSSY = ("source", "provenance", "review")


def tool_call_from_openai(data: Any) -> ToolCall:
    if not isinstance(data, dict):
        raise RecordError("tool_call_shape", f"a tool call must be an object, got {type(data).__name__}")
    fn = data.get("function", data)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise RecordError("tool_call_shape", "a tool call needs function.name (a string)")
    return ToolCall(id=data.get("id"), name=fn["name"], arguments=fn.get("arguments"))


def message_from_openai(data: Any, index: int) -> Message:
    """Convert one OpenAI message dict; ``<think>`` is split out of assistant content."""
    if not isinstance(data, dict):
        raise RecordError("message_shape", f"message {index} must be an object, got {type(data).__name__}")
    role = data.get("role")
    if role not in ("system", "user", "assistant", "tool"):
        raise RecordError("unknown_role", f"message {index} has unknown role {role!r}")
    content = data.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if content is not None and not isinstance(content, str):
        raise RecordError("message_shape", f"message {index} content must be a string, got {type(content).__name__}")
    content = content or ""
    thinking = None
    if role == "assistant":
        explicit = data.get("reasoning_content") or data.get("thinking")
        if explicit:
            thinking = explicit
        else:
            thinking, content = split_thinking(content)
    raw_calls = data.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise RecordError("tool_call_shape", f"message {index} tool_calls must be a list")
    # the reference's parquet stores empty call lists as list<null>; a null entry carries no call
    calls = [tool_call_from_openai(c) for c in raw_calls if c is not None]
    return Message(
        role=role,
        content=content,
        thinking=thinking,
        tool_calls=calls,
        tool_call_id=data.get("tool_call_id"),
        name=data.get("name"),
    )


def message_to_openai(message: Message, *, always_tool_calls: bool = False) -> dict[str, Any]:
    """Convert back; thinking goes inline. ``always_tool_calls`` writes ``tool_calls: []`` like the reference."""
    out: dict[str, Any] = {"role": message.role, "content": message.content_with_thinking()}
    if message.tool_calls or always_tool_calls:
        out["tool_calls"] = [c.to_openai() for c in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def messages_from_openai(raw: Any) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise RecordError("missing_messages", "'messages' must be a non-empty list")
    return [message_from_openai(m, i) for i, m in enumerate(raw)]


def tools_from_any(raw: Any) -> list[Tool]:
    """Tools given as a list of schemas or a JSON string of one."""
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise RecordError("tools_json", f"'tools' is not valid JSON: {exc.msg}") from exc
    if isinstance(raw, dict):  # {name: schema}
        raw = list(raw.values())
    if not isinstance(raw, list):
        raise RecordError("tools_shape", f"'tools' must be a list, got {type(raw).__name__}")
    tools = []
    for i, item in enumerate(raw):
        try:
            tools.append(Tool.from_openai(item))
        except ValueError as exc:
            raise RecordError("tools_shape", f"tool {i}: {exc}") from exc
    return tools


def checklists_from_stored(raw: Any) -> list[list[dict[str, Any]]]:
    """The stored form (variants → turns → items) as ``TurnChecklist`` dicts. Accepts one un-nested variant."""
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise RecordError("checklist_json", f"'checklists' is not valid JSON: {exc.msg}") from exc
    if not isinstance(raw, list):
        raise RecordError("checklist_shape", "'checklists' must be a list of variants")
    if raw and isinstance(raw[0], dict):
        raw = [raw]  # one variant in the labeller's block form, without the outer list
    elif raw and isinstance(raw[0], list) and raw[0] and isinstance(raw[0][0], dict) and "checklist" not in raw[0][0]:
        raw = [raw]  # one variant in the stored form (turns of items), without the outer list
    variants = []
    for v, variant in enumerate(raw):
        if not isinstance(variant, list):
            raise RecordError("checklist_shape", f"checklist variant {v} must be a list of turns")
        turns = []
        for t, block in enumerate(variant):
            if isinstance(block, dict) and "checklist" in block:  # labeller output form
                turns.append(_block_from_labeller(block, t))
            elif isinstance(block, list):
                turns.append({"turn": t, "items": block})
            else:
                raise RecordError("checklist_shape", f"variant {v} turn {t} must be a list of items")
        variants.append(turns)
    return variants


def _block_from_labeller(block: dict[str, Any], position: int) -> dict[str, Any]:
    """``{turn, checklist, dependence, weight}`` → items with dependence and weight merged in."""
    deps = block.get("dependence") or {}
    weights = block.get("weight") or {}
    items = []
    for item in block.get("checklist") or []:
        merged = dict(item)
        if isinstance(item, dict):
            merged.setdefault("dependence", deps.get(item.get("id"), []))
            if item.get("id") in weights:
                merged.setdefault("weight", weights[item.get("id")])
        items.append(merged)
    return {"turn": block.get("turn", position), "items": items}


def checklists_to_stored(dialogue: Dialogue) -> list[list[list[dict[str, Any]]]]:
    """Records → the reference's stored form, ``dependence`` and ``weight`` merged into each item."""
    out = []
    for variant in dialogue.checklists:
        turns = []
        for block in variant:
            items = []
            for item in block.items:
                d = {
                    "id": item.id,
                    "evidence": [e.to_dict() for e in item.evidence],
                    "focus_on": item.focus_on,
                    "question": item.question,
                    "pass_condition": item.pass_condition,
                    "failure_examples": list(item.failure_examples),
                    "required_for_next_turn": item.required_for_next_turn,
                    "dependence": list(item.depends_on),
                    "weight": item.weight,
                }
                if item.extra_info:
                    d["extra_info"] = item.extra_info
                items.append(d)
            turns.append(items)
        out.append(turns)
    return out


def read(row: dict[str, Any]) -> Dialogue:
    messages = messages_from_openai(row.get("messages"))
    tools = tools_from_any(row.get("tools"))
    rid = row.get("id") or stable_id(row["messages"], row.get("tools") if isinstance(row.get("tools"), list) else [])
    metadata = row.get("metadata") or {}
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError as exc:
            raise RecordError("metadata_json", f"'metadata' is not valid JSON: {exc.msg}") from exc
    return Dialogue.model_validate(
        {
            "id": str(rid),
            "source": row.get("source") or NAME,
            "tools": tools,
            "messages": messages,
            "checklists": checklists_from_stored(row.get("checklists")),
            "metadata": metadata,
        }
    )


def write(dialogue: Dialogue) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": dialogue.id,
        "messages": [message_to_openai(m) for m in dialogue.messages],
        "tools": [t.to_openai() for t in dialogue.tools],
    }
    if dialogue.checklists:
        out["checklists"] = checklists_to_stored(dialogue)
    if dialogue.metadata:
        out["metadata"] = dialogue.metadata
    return out
