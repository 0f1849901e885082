"""The row layout shared by the steps of every stage, and the small pure helpers that build and read rows.

Between the steps of a stage, one row is one dialogue (or, in ``synthesize``, one dialogue to be), with string
columns only (Arrow would otherwise unify nested dict types across rows):

column  content
======= ==========================================================================================
id      the record id (stable across runs: the resume key)
record  the canonical :class:`~cm2data.schema.Dialogue` as JSON ("" before ``synthesize`` made it)
reject  "" while the row is alive; else JSON ``{"stage", "rule", "message", "location"}`` — later steps pass a
        rejected row through untouched, and the stage turns it into a :class:`~cm2data.rejects.Reject`
usage   JSON ``{llm stage: counters}`` of the LLM calls made for this row (``cm2data.llm.Usage.as_dict`` form)
meta    JSON dict of step notes for the report (``resumed``: steps whose result came from the journal, …)
======= ==========================================================================================

>>> from cm2data.pipelines.rows import merge_meta, rule_of
>>> rule_of("[weights_sum_to_one] weights sum to 0.9")
'weights_sum_to_one'
>>> merge_meta('{"resumed": ["a"]}', resumed=["b"], attempts=2)
'{"attempts": 2, "resumed": ["a", "b"]}'
"""

import hashlib
import json
from typing import Any

from cm2data.llm import LLMError, Usage
from cm2data.schema import Dialogue

ROW_COLUMNS = ["id", "record", "reject", "usage", "meta"]


# ------------------------------------------------------------------------------------------------------ rows


def encode_record(d: Dialogue) -> str:
    return d.model_dump_json(by_alias=True)


def decode_record(text: str) -> Dialogue:
    return Dialogue.model_validate_json(text)


def record_row(d: Dialogue) -> dict[str, str]:
    """A fresh row for a record."""
    return {"id": d.id, "record": encode_record(d), "reject": "", "usage": "{}", "meta": "{}"}


def reject_json(stage: str, rule: str, message: str, location: str | None = None) -> str:
    return json.dumps({"stage": stage, "rule": rule, "message": message, "location": location}, ensure_ascii=False)


def merge_usage(*parts: str | dict[str, Any]) -> str:
    total = Usage()
    for part in parts:
        data = json.loads(part) if isinstance(part, str) else part
        if data:
            total.merge(data)
    out = total.as_dict()
    out.pop("total", None)
    return json.dumps(out, sort_keys=True)


def merge_meta(current: str, **notes: Any) -> str:
    meta = json.loads(current or "{}")
    for key, value in notes.items():
        if isinstance(value, list):
            meta[key] = [*meta.get(key, []), *value]
        elif isinstance(value, dict):
            meta[key] = {**meta.get(key, {}), **value}
        else:
            meta[key] = value
    return json.dumps(meta, ensure_ascii=False, sort_keys=True)


def reason_of(exc: BaseException) -> str:
    """A rejected answer's reason, worded as :mod:`cm2data.llm` words them (``invalid: field: message; …`` for a
    pydantic error, ``[rule] message`` for a :class:`~cm2data.rejects.RecordError`)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        errs = exc.errors()
        shown = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in errs[:5])
        return f"invalid: {shown}" + (f" (+{len(errs) - 5} more)" if len(errs) > 5 else "")
    return str(exc) or type(exc).__name__


def rule_of(reason: str) -> str:
    """The rule name of an LLM answer's rejection reason (as :mod:`cm2data.llm` words them)."""
    if reason.startswith("[") and "]" in reason:
        return reason[1 : reason.index("]")]
    if reason.startswith("malformed JSON") or reason == "empty answer":
        return "malformed_json"
    if reason.startswith("answer cut off"):
        return "truncated_output"
    if reason.startswith("invalid:"):
        return "output_schema"
    return "invalid_output"


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def llm_error_reject(stage: str, exc: LLMError, location: str | None = None) -> dict[str, str]:
    """The update that rejects a row after an LLM failure: the rule of the last invalid answer (every reason in the
    message), or ``llm_request_failed``."""
    from cm2data.llm import LLMOutputError

    if isinstance(exc, LLMOutputError):
        last = exc.reasons[-1] if exc.reasons else str(exc)
        message = f"{len(exc.reasons)} answers rejected; " + " | ".join(exc.reasons)
        return {"reject": reject_json(stage, rule_of(last), message[:2000], location)}
    return {"reject": reject_json(stage, "llm_request_failed", str(exc)[:1000], location)}
