"""Nemotron-style tool-calling rows: ``uuid``, OpenAI ``messages`` (``<think>`` inline), ``metadata`` JSON string.

The ``metadata`` string holds ``tools`` (OpenAI function schemas) and anything else the source recorded; other
top-level columns (``license``, ``used_in``, ``reasoning``, …) are kept in the record's ``metadata``.
Lossy on output: checklists are not part of this format.
"""

from __future__ import annotations

import json
from typing import Any

from cm2data.formats.openai import message_to_openai, messages_from_openai, tools_from_any
from cm2data.rejects import RecordError
from cm2data.schema import Dialogue, stable_id

NAME = "nemotron"
LOSSY = ("checklists", "source", "provenance", "review")


def read(row: dict[str, Any]) -> Dialogue:
    meta_raw = row.get("metadata")
    if isinstance(meta_raw, str):
        try:
            meta = json.loads(meta_raw) if meta_raw.strip() else {}
        except json.JSONDecodeError as exc:
            raise RecordError("metadata_json", f"'metadata' is not valid JSON: {exc.msg}") from exc
    elif isinstance(meta_raw, dict) or meta_raw is None:
        meta = dict(meta_raw or {})
    else:
        raise RecordError("metadata_json", f"'metadata' must be a JSON string, got {type(meta_raw).__name__}")
    if not isinstance(meta, dict):
        raise RecordError("metadata_json", "'metadata' must decode to an object")
    tools = tools_from_any(meta.pop("tools", row.get("tools")))
    messages = messages_from_openai(row.get("messages"))
    extra = {k: v for k, v in row.items() if k not in ("uuid", "messages", "metadata", "tools")}
    return Dialogue(
        id=str(row.get("uuid") or stable_id(row["messages"])),
        source=NAME,
        tools=tools,
        messages=messages,
        metadata={**meta, **extra},
    )


def write(dialogue: Dialogue) -> dict[str, Any]:
    # the record's tools win over a "tools" key that a source left in its metadata
    meta = {**dialogue.metadata, "tools": [t.to_openai() for t in dialogue.tools]}
    return {
        "uuid": dialogue.id,
        "messages": [message_to_openai(m) for m in dialogue.messages],
        "metadata": json.dumps(meta, ensure_ascii=False),
    }
