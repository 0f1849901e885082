"""ShareGPT / APIGen-MT style rows: ``conversations`` of ``{from, value}``, ``tools`` JSON string, ``system``.

``from`` is one of ``human``, ``gpt``, ``function_call``, ``observation`` (``system``/``user``/``assistant``/
``tool`` are accepted as synonyms). A ``function_call`` value is a JSON string ``{"name", "arguments"}``, or a list
of them for parallel calls. An ``observation`` answers the preceding calls: with N > 1 calls its value is a JSON
list of N results. Other top-level keys are kept as ``metadata`` and written back at the top level.
Lossy on output: a tool-calling step's text and thinking, call ids and message names are not representable (a tool
response is named after its call when read back).
"""

from __future__ import annotations

import json
from typing import Any

from cm2data.formats.openai import checklists_from_stored, checklists_to_stored, tools_from_any
from cm2data.rejects import RecordError
from cm2data.schema import Dialogue, Message, ToolCall, split_thinking, stable_id

NAME = "sharegpt"
LOSSY = (
    "content and thinking of tool-calling steps",
    "tool call ids",
    "message names",
    "source",
    "provenance",
    "review",
)

#: top-level keys the reader interprets; any other key is metadata
_KNOWN = ("id", "uuid", "conversations", "system", "tools", "checklists")

_ROLE = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "function_call": "function_call",
    "observation": "tool",
    "tool": "tool",
    "system": "system",
}


def _parse_calls(value: Any, index: int) -> list[ToolCall]:
    try:
        data = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as exc:
        raise RecordError(
            "tool_call_json", f"conversation entry {index}: function_call is not JSON ({exc.msg})"
        ) from exc
    items = data if isinstance(data, list) else [data]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise RecordError("tool_call_shape", f"conversation entry {index}: a call needs a string 'name'")
        calls.append(ToolCall(name=item["name"], arguments=item.get("arguments", {})))
    return calls


def read(row: dict[str, Any]) -> Dialogue:
    conv = row.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise RecordError("missing_messages", "'conversations' must be a non-empty list")
    messages: list[Message] = []
    if isinstance(row.get("system"), str) and row["system"]:
        messages.append(Message(role="system", content=row["system"]))
    pending: list[ToolCall] = []
    for i, entry in enumerate(conv):
        if not isinstance(entry, dict):
            raise RecordError("message_shape", f"conversation entry {i} must be an object")
        role = _ROLE.get(str(entry.get("from")))
        if role is None:
            raise RecordError("unknown_role", f"conversation entry {i} has unknown 'from' {entry.get('from')!r}")
        value = entry.get("value")
        if role == "function_call":
            pending = _parse_calls(value, i)
            messages.append(Message(role="assistant", content="", tool_calls=pending))
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if role == "tool":
            results = [text]
            if len(pending) > 1:
                try:
                    decoded = json.loads(text)
                except json.JSONDecodeError:
                    decoded = None
                if isinstance(decoded, list) and len(decoded) == len(pending):
                    results = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in decoded]
            for k, result in enumerate(results):
                name = pending[k].name if k < len(pending) else None
                messages.append(Message(role="tool", content=result, name=name))
            pending = []
        elif role == "assistant":
            thinking, visible = split_thinking(text)
            messages.append(Message(role="assistant", content=visible, thinking=thinking))
        else:
            messages.append(Message(role=role, content=text))
    raw_ids = [m.model_dump(mode="json") for m in messages]
    return Dialogue(
        id=str(row.get("id") or row.get("uuid") or stable_id(raw_ids)),
        source=NAME,
        tools=tools_from_any(row.get("tools")),
        messages=messages,
        checklists=checklists_from_stored(row.get("checklists")),
        metadata={k: v for k, v in row.items() if k not in _KNOWN},
    )


def write(dialogue: Dialogue) -> dict[str, Any]:
    conv: list[dict[str, str]] = []
    system = ""
    i = 0
    msgs = dialogue.messages
    while i < len(msgs):
        m = msgs[i]
        if m.role == "system" and not conv and not system and m.content:
            system = m.content  # (an empty one stays in the conversation: the reader ignores an empty "system")
        elif m.role == "user":
            conv.append({"from": "human", "value": m.content})
        elif m.role == "assistant" and m.tool_calls:
            calls = [{"name": c.name, "arguments": _args(c)} for c in m.tool_calls]
            conv.append(
                {
                    "from": "function_call",
                    "value": json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False),
                }
            )
        elif m.role == "assistant":
            conv.append({"from": "gpt", "value": m.content_with_thinking()})
        elif m.role == "tool":
            j = i
            while j < len(msgs) and msgs[j].role == "tool":
                j += 1
            group = [t.content for t in msgs[i:j]]
            conv.append({"from": "observation", "value": group[0] if len(group) == 1 else json.dumps(group)})
            i = j
            continue
        else:
            conv.append({"from": "system", "value": m.content})
        i += 1
    out: dict[str, Any] = {
        "id": dialogue.id,
        "conversations": conv,
        "tools": json.dumps([t.to_openai()["function"] for t in dialogue.tools], ensure_ascii=False),
    }
    if system:
        out["system"] = system
    if dialogue.checklists:
        out["checklists"] = checklists_to_stored(dialogue)
    for key, value in dialogue.metadata.items():  # the reader keeps unknown top-level keys as metadata
        if key not in _KNOWN:
            out.setdefault(key, value)
    return out


def _args(call: ToolCall) -> Any:
    try:
        return call.args
    except ValueError:
        return call.arguments
