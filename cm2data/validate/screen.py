"""The gate's fast path: one pass over a record that proves it passes every rule filter.

:func:`screen` walks the messages once and checks, together, what the nine rule filters of
:mod:`cm2data.validate.rules` check one rule at a time. It answers only "certainly passes" (the record's
:func:`~cm2data.validate.checklist.steps_per_turn`, computed on the way) or "not proven" (``None``); it never writes a
message. The gate runs the exact rules on every record the screen does not clear, so which records fail, by which
rules and with which messages, is decided by the rules alone. The screen may be conservative (clear less than the
rules pass: unusual schemas, markers in a user message, id lists in another order), never the reverse; any
exception inside it means "not proven" too, and the exact rules then behave (or raise) as they always did.

Parsing uses ``orjson`` when it is installed (it is, through distilabel), else :func:`json.loads`. Whatever
``orjson`` refuses (``NaN``, ``1e400``, lone surrogates) is "not proven", and ``json.loads`` decides in the exact
rules. Where the two parsers can disagree on a value that parses — ``orjson`` reads integers beyond 64 bits as
floats — the screen trusts no float except under ``"type": "number"`` without an ``enum``, which both results
satisfy alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from cm2data.schema import Dialogue
from cm2data.validate.rules import _MARKERS_RE, RuleConfig, degenerate_text, parse_json

_parse: Callable[[str], Any]
try:  # orjson comes with distilabel; without it the screen parses with json (slower, same answers)
    from orjson import loads as _parse
except ImportError:  # pragma: no cover - depends on the environment
    _parse = parse_json


#: Every text a rule objects to somewhere: the response markers (assistant text) and the think tags (any content).
#: A hit anywhere only means "not proven"; the exact rules decide.
_SCAN = re.compile(_MARKERS_RE.pattern + "|<think>|</think>")

_FIELDS = attrgetter("__dict__")
_NONE = type(None)
#: JSON type name → the Python types of a parsed value that certainly satisfy it. Stricter than ``type_ok``:
#: an integral float is an ``integer`` there, "not proven" here.
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (_NONE,),
}
#: The same for scalar types only (no nested check can follow), used inline for the commonest parameters.
_SCALARS: dict[str, tuple[type, ...]] = {k: v for k, v in _TYPES.items() if k not in ("array", "object")}
_ENUM_SAFE = (str, int, bool, _NONE)  # values both parsers read alike, whose enum membership can be trusted


def _value_ok(value: Any, schema: Any) -> bool:
    """True only if :func:`~cm2data.schema.jsonschema.check_value` reports nothing for ``value``."""
    if not isinstance(schema, dict):
        return True
    expected = schema.get("type")
    if expected is not None:
        if value is None and schema.get("nullable"):
            return True
        kind = type(value)
        if type(expected) is str:
            allowed = _TYPES.get(expected)
            if allowed is not None and kind not in allowed:
                return False
        elif type(expected) is list:
            for t in expected:
                if type(t) is not str:
                    return False
                allowed = _TYPES.get(t)
                if allowed is None or kind in allowed:
                    break
            else:
                return False
        else:
            return False
    enum = schema.get("enum")
    if enum is not None and (type(value) not in _ENUM_SAFE or value not in enum):
        return False
    if type(value) is dict:
        if "properties" in schema or "required" in schema:
            return _object_ok(value, schema)
    elif type(value) is list:
        items = schema.get("items")
        if isinstance(items, dict):
            for item in value:
                if not _value_ok(item, items):
                    return False
    return True


def _object_ok(args: dict[str, Any], schema: dict[str, Any]) -> bool:
    """True only if :func:`~cm2data.schema.jsonschema.check_object` reports nothing for ``args``."""
    props = schema.get("properties") or {}
    if not isinstance(props, dict):
        return False
    for name in schema.get("required") or []:
        if name not in args:
            return False
    additional = schema.get("additionalProperties", False if props else True)
    for name, value in args.items():
        sub = props.get(name)
        if sub is None:
            if additional is False or (isinstance(additional, dict) and not _value_ok(value, additional)):
                return False
            continue
        if type(sub) is dict:  # the usual parameter: a scalar of the declared type, no enum
            expected = sub.get("type")
            if type(expected) is str and type(value) in _SCALARS.get(expected, ()) and "enum" not in sub:
                continue
        if not _value_ok(value, sub):
            return False
    return True


def screen(d: Dialogue, cfg: RuleConfig) -> list[int] | None:
    """``steps_per_turn(d.messages)`` when every rule filter certainly passes ``d``; ``None`` when not proven."""
    try:
        return _screen(d, cfg)
    except Exception:  # "not proven": the exact rules run and behave as they always did
        return None


def _screen(d: Dialogue, cfg: RuleConfig) -> list[int] | None:
    # Field values are read from the models' ``__dict__``, where pydantic keeps them: quicker than attribute reads,
    # which go through the hook of ``BaseModel.__getattr__``.
    tool_list = d.tools
    tools = {f["name"]: f["parameters"] for f in map(_FIELDS, tool_list)}
    if len(tools) != len(tool_list):  # duplicate_tools_by_name
        return None
    search = _SCAN.search
    min_words = cfg.min_words
    steps: list[int] = []
    prev = None  # the previous message's role
    pending = 0  # tool messages still owed to the last action
    call_ids: list[str | None] = []
    resp_ids: list[str | None] = []
    thinks = blank_thought = False
    for m in d.messages:
        fields = m.__dict__
        role = fields["role"]
        content = fields["content"]
        # think_tags (stray tags anywhere) and no_tool_response_in_assistant_message: every text they object to
        # starts with "<"
        if "<" in content and search(content) is not None:
            return None
        if role == "assistant":
            # role_order: after a user message or a completed run of tool responses
            if pending or (prev != "user" and prev != "tool"):
                return None
            steps[-1] += 1
            thinking = fields["thinking"]
            if thinking is None:
                blank_thought = True
            else:
                thinks = True
                if "<" in thinking and search(thinking) is not None:
                    return None
            calls = fields["tool_calls"]
            if calls:
                call_ids = []
                for call in calls:  # tool_schema
                    call_fields = call.__dict__
                    params = tools.get(call_fields["name"])
                    if params is None:
                        return None
                    text = call_fields["arguments"]
                    args = _parse(text) if text and not text.isspace() else {}
                    if type(args) is not dict or not _object_ok(args, params):
                        return None
                    call_ids.append(call_fields["id"])
                pending = len(calls)
                resp_ids = []
            elif not content or content.isspace() or degenerate_text(content, min_words) is not None:
                return None  # non_empty_content, degenerate_message: an assistant reply
        elif role == "tool":
            # role_order and tool_call_response_match: exactly as many responses as calls
            if not pending or fields["tool_calls"] or not content or content.isspace():
                return None
            _parse(content)  # tool_response_json_valid: raises when it is not JSON
            pending -= 1
            resp_ids.append(fields["tool_call_id"])
            if prev != "tool":
                steps[-1] += 1
            if (
                not pending
                and call_ids != resp_ids
                and all(call_ids)
                and all(resp_ids)
                and (
                    sorted(call_ids) != sorted(resp_ids)  # type: ignore[type-var]
                )
            ):
                return None
        elif role == "user":
            if pending or not (prev is None or prev == "system" or prev == "assistant") or fields["tool_calls"]:
                return None
            if not content or content.isspace() or degenerate_text(content, min_words) is not None:
                return None  # non_empty_content, degenerate_message
            steps.append(1)
        elif role == "system":
            if prev is not None or fields["tool_calls"] or not content or content.isspace():
                return None
        else:
            return None
        prev = role
    if pending or prev != "assistant":  # role_order: ends with an assistant reply (also: no messages at all)
        return None
    policy = cfg.thinking  # think_tags
    if blank_thought and (policy == "required" or (policy == "auto" and thinks)):
        return None
    if policy == "forbidden" and thinks:
        return None
    return steps
