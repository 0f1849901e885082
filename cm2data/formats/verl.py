"""Reader for VeRL-layout parquet rows, including the CM2 reference's ``*_forverl.parquet``.

The full conversation lives in ``extra_info.messages`` (``prompt``/``messages`` hold only the first user turn),
``extra_info.tools`` is a JSON string, and checklists sit in ``extra_info.interaction_kwargs.checklist_list``
(reference) or ``reward_model.ground_truth`` (cm2data's own export, a JSON string). Writing this layout is the
VeRL adapter's job (``cm2data export verl``).
"""

from __future__ import annotations

import json
from typing import Any

from cm2data.formats.openai import checklists_from_stored, messages_from_openai, tools_from_any
from cm2data.rejects import RecordError
from cm2data.schema import Dialogue, stable_id

NAME = "verl"


def _decode(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def read(row: dict[str, Any]) -> Dialogue:
    extra = _decode(row.get("extra_info")) or {}
    if not isinstance(extra, dict):
        raise RecordError("extra_info_shape", "'extra_info' must be an object")
    raw_messages = _decode(extra.get("messages")) or row.get("messages") or row.get("prompt")
    messages = messages_from_openai(raw_messages)
    tools = tools_from_any(extra.get("tools") or row.get("tools"))
    checklists = None
    kwargs = _decode(extra.get("interaction_kwargs")) or {}
    if isinstance(kwargs, dict) and kwargs.get("checklist_list") is not None:
        checklists = kwargs["checklist_list"]
    if checklists is None:
        gt = _decode((row.get("reward_model") or {}).get("ground_truth"))
        if isinstance(gt, dict):
            checklists = gt.get("checklists")
        elif isinstance(gt, list):
            checklists = gt
    if checklists is None:
        checklists = row.get("checklists")
    rid = row.get("uuid") or extra.get("uuid") or extra.get("original_index") or stable_id(raw_messages or [])
    return Dialogue.model_validate(
        {
            "id": str(rid),
            "source": row.get("data_source") or NAME,
            "tools": tools,
            "messages": messages,
            "checklists": checklists_from_stored(checklists),
            "metadata": {"data_source": row.get("data_source")} if row.get("data_source") else {},
        }
    )
