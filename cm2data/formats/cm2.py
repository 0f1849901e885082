"""The CM2 reference JSON: ``[{uuid, messages, tools, checklists}]``.

``messages`` are OpenAI messages with thinking inline and ``tool_calls: []`` on every message; ``tools`` a list of
OpenAI function schemas; ``checklists`` variants → turns → items with ``dependence`` and ``weight`` merged into each
item. Keys other than these (for example ``domain``) are kept as ``metadata`` and written back at the top level.
"""

from __future__ import annotations

from typing import Any

from cm2data.formats.openai import (
    checklists_from_stored,
    checklists_to_stored,
    message_to_openai,
    messages_from_openai,
    tools_from_any,
)
from cm2data.rejects import RecordError
from cm2data.schema import Dialogue, stable_id

NAME = "cm2"
#: not written: the record's source (reads back as "cm2" unless the row names one), provenance and review
LOSSY = ("source", "provenance", "review")
_KNOWN = {"uuid", "id", "messages", "tools", "checklists", "provenance", "review", "source"}


def read(row: dict[str, Any]) -> Dialogue:
    if "messages" not in row:
        raise RecordError("missing_messages", "row has no 'messages'")
    messages = messages_from_openai(row["messages"])
    rid = row.get("uuid") or row.get("id") or stable_id(row["messages"])
    data: dict[str, Any] = {
        "id": str(rid),
        "source": row.get("source") or NAME,
        "tools": tools_from_any(row.get("tools")),
        "messages": messages,
        "checklists": checklists_from_stored(row.get("checklists")),
        "metadata": {k: v for k, v in row.items() if k not in _KNOWN},
    }
    for key in ("provenance", "review"):
        if isinstance(row.get(key), dict):
            data[key] = row[key]
    return Dialogue.model_validate(data)


def write(dialogue: Dialogue) -> dict[str, Any]:
    out: dict[str, Any] = {
        "uuid": dialogue.id,
        "messages": [message_to_openai(m, always_tool_calls=True) for m in dialogue.messages],
        "tools": [t.to_openai() for t in dialogue.tools],
        "checklists": checklists_to_stored(dialogue),
    }
    for key, value in dialogue.metadata.items():
        out.setdefault(key, value)
    return out
