"""Regular expressions that prove, for a whole Arrow string column at once, what the gate would otherwise learn by
parsing JSON one document at a time in Python.

Both are *sufficient* conditions, used by the columnar screens (:mod:`cm2data.validate.columnar_screens`): a text
that matches certainly parses with :func:`json.loads` (and, for :func:`args_shape`, certainly passes
:func:`~cm2data.schema.jsonschema.check_object`); a text that does not match proves nothing and goes to the exact
rule. They cover strict JSON (RFC 8259) only, which Python's parser accepts too: ``NaN``, ``Infinity``, documents
nested deeper than :data:`JSON_DEPTH` and schemas outside :func:`args_shape`'s subset never match.

* :data:`JSON_DOCUMENT`: one JSON value of nesting depth at most :data:`JSON_DEPTH`, surrounded by JSON whitespace.
* :func:`args_shape`: for a tool's parameter schema, an :class:`ArgsShape` — a regex for objects whose keys are
  declared properties with values of their declared types (and enums), a regex that finds a key written twice
  (Python keeps the last value, so a duplicate is "not proven"), and the keys whose presence ``required`` demands.
  ``None`` when the schema is outside the subset the regex can express.

Written for RE2 (``pyarrow.compute``): no look-arounds, no back-references.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

WS = r"[ \t\n\r]*"
STRING = r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'
INTEGER = r"-?(?:0|[1-9][0-9]*)"
NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
SCALAR = f"(?:{STRING}|{NUMBER}|true|false|null)"
#: Deepest nesting :data:`JSON_DOCUMENT` follows (the regex grows four-fold per level).
JSON_DEPTH = 3


def _value(depth: int) -> str:
    if depth == 0:
        return SCALAR
    inner = _value(depth - 1)
    member = f"{STRING}{WS}:{WS}{inner}"
    array = rf"\[{WS}(?:{inner}(?:{WS},{WS}{inner})*)?{WS}\]"
    obj = rf"\{{{WS}(?:{member}(?:{WS},{WS}{member})*)?{WS}\}}"
    return f"(?:{SCALAR}|{array}|{obj})"


JSON_DOCUMENT = rf"\A{WS}{_value(JSON_DEPTH)}{WS}\z"

#: Property names the shapes handle: written the same raw and JSON-encoded, and never part of an escape sequence.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_$@.\- ]+")
#: Deepest nested object :func:`args_shape` compiles.
_MAX_OBJECT_DEPTH = 3


@dataclass(frozen=True, slots=True)
class ArgsShape:
    """What proves that a tool call's ``arguments`` pass :func:`~cm2data.schema.jsonschema.check_object`.

    ``structure``: the whole text is one object of declared properties with values of their declared types;
    ``duplicate``: a search that finds any property name written twice (the text then proves nothing);
    ``required``: ``(parent, key)`` pairs — when the property ``parent`` is present (``None``: always), ``key`` must
    be. Every property name in the schema is distinct, so ``"key":`` in a text that matches ``structure`` can only
    be that property."""

    structure: str
    duplicate: str | None
    required: tuple[tuple[str | None, str], ...]


def key_pattern(name: str) -> str:
    """The regex for property ``name`` written as an object key, up to and including its colon."""
    return re.escape(json.dumps(name)) + WS + ":"


class _Unsupported(Exception):
    """The schema is outside what :func:`args_shape` can express."""


class _Builder:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.required: list[tuple[str | None, str]] = []

    def obj(self, schema: dict[str, Any], depth: int, parent: str | None) -> str:
        """An object that :func:`~cm2data.schema.jsonschema.check_object` passes (keys declared, values typed)."""
        if depth > _MAX_OBJECT_DEPTH:
            raise _Unsupported
        props = schema.get("properties") or {}
        if not isinstance(props, dict) or not props:
            raise _Unsupported  # no properties: anything goes, which a regex cannot bound
        if schema.get("additionalProperties", False) is not False:
            raise _Unsupported
        required = schema.get("required") or []
        if not isinstance(required, list) or any(not isinstance(r, str) or props.get(r) is None for r in required):
            raise _Unsupported
        members = []
        for name, sub in props.items():
            if sub is None:
                continue  # treated as unknown by the rule: never allowed
            if not isinstance(name, str) or not _PLAIN_KEY.fullmatch(name) or not isinstance(sub, dict):
                raise _Unsupported
            self.names.append(name)
            members.append(f"{key_pattern(name)}{WS}{self.value(sub, depth, name)}")
        if not members:
            raise _Unsupported
        self.required += [(parent, r) for r in required]
        member = f"(?:{'|'.join(members)})"
        return rf"\{{{WS}(?:{member}(?:{WS},{WS}{member})*)?{WS}\}}"

    def value(self, schema: dict[str, Any], depth: int, name: str | None, in_array: bool = False) -> str:
        """A value that :func:`~cm2data.schema.jsonschema.check_value` passes for ``schema``."""
        expected = schema.get("type")
        enum = schema.get("enum")
        if expected is None:
            raise _Unsupported  # any value (or an enum without a type): not bounded here
        types = [expected] if isinstance(expected, str) else expected
        if not isinstance(types, list) or not types or any(not isinstance(t, str) for t in types):
            raise _Unsupported
        if enum is not None and types != ["string"]:
            raise _Unsupported
        options = []
        for t in types:
            if t == "string":
                if enum is None:
                    options.append(STRING)
                else:
                    if not isinstance(enum, list):
                        raise _Unsupported
                    words = [e for e in enum if isinstance(e, str)]
                    # only the literal spellings: an escaped spelling of the same string proves nothing here
                    spelled = {json.dumps(w, ensure_ascii=False) for w in words} | {json.dumps(w) for w in words}
                    if not spelled:
                        raise _Unsupported
                    options.append("(?:" + "|".join(re.escape(s) for s in sorted(spelled)) + ")")
            elif t == "integer":
                options.append(INTEGER)
            elif t == "number":
                options.append(NUMBER)
            elif t == "boolean":
                options.append("(?:true|false)")
            elif t == "null":
                options.append("null")
            elif t == "array":
                items = schema.get("items")
                if not isinstance(items, dict):
                    raise _Unsupported
                item = self.value(items, depth + 1, None, in_array=True)
                options.append(rf"\[{WS}(?:{item}(?:{WS},{WS}{item})*)?{WS}\]")
            elif t == "object":
                if "properties" not in schema and "required" not in schema:
                    raise _Unsupported
                if in_array:
                    raise _Unsupported  # several instances: their required keys cannot be counted apart
                options.append(self.obj(schema, depth + 1, name))
            else:
                raise _Unsupported  # an unknown type name is not judged by the rule: any value
        if schema.get("nullable"):
            options.append("null")
        return "(?:" + "|".join(options) + ")"


def args_shape(schema: Any) -> ArgsShape | None:
    """The :class:`ArgsShape` of a tool's ``parameters`` schema, or ``None`` when it is outside the subset: an
    object with ``properties`` (plain names, each a dict with a ``type``: string — with or without a string enum —,
    integer, number, boolean, null, arrays with ``items``, nested objects of the same kind up to a few levels,
    ``nullable``), ``additionalProperties`` absent or false, and ``required`` naming declared properties; every
    property name distinct across the whole schema."""
    if not isinstance(schema, dict):
        return None
    builder = _Builder()
    try:
        structure = builder.obj(schema, 0, None)
    except (_Unsupported, RecursionError):
        return None
    names = builder.names
    if len(set(names)) != len(names):
        return None
    # a name written twice anywhere; names are distinct, so two hits are a duplicate key (Python keeps the last)
    duplicate = "(?s)(?:" + "|".join(f"{key_pattern(n)}.*{key_pattern(n)}" for n in names) + ")"
    return ArgsShape(rf"\A{WS}{structure}{WS}\z", duplicate, tuple(builder.required))
