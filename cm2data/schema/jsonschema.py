"""The JSON-schema subset that tool parameters are checked against, in one place: the rule filter ``tool_schema``
(:mod:`cm2data.validate.rules`), the tool simulator's schema check (:func:`cm2data.simulator.check_call`, which the
VeRL adapter's tool environment goes through) and the gate's fast path (:mod:`cm2data.validate.screen`, which
mirrors :func:`check_value` and may only clear what it passes).

The subset: ``type`` (a name or a list of names; unknown names are not judged), ``nullable``, ``enum``,
``properties``/``required``/``additionalProperties`` (absent: allowed only when there are no ``properties``) and
``items``, recursively. JSON types are checked for real: a boolean is neither an ``integer`` nor a ``number``,
``"3"`` is not an integer, ``3.0`` is.

Standard library only (like the rest of :mod:`cm2data.schema`).

>>> problems: list[str] = []
>>> params = {"properties": {"n": {"type": "integer"}, "unit": {"enum": ["g", "kg"]}}, "required": ["n"]}
>>> check_object({"n": 3.0, "unit": "lb", "colour": "red"}, params, "args", problems)
>>> problems
["args.unit: 'lb' is not one of ['g', 'kg']", "args: unknown parameter 'colour'"]
"""

from __future__ import annotations

from typing import Any


def type_ok(value: Any, expected: str) -> bool:
    """Whether a parsed JSON ``value`` has the JSON-schema type ``expected`` (an unknown type name: True).

    >>> type_ok(3.0, "integer"), type_ok(True, "integer"), type_ok(True, "number"), type_ok(2, "number")
    (True, False, False, True)
    """
    if expected == "string":
        return isinstance(value, str)
    if expected == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if expected == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected == "boolean":
        return isinstance(value, bool)
    if expected == "array":
        return isinstance(value, list)
    if expected == "object":
        return isinstance(value, dict)
    if expected == "null":
        return value is None
    return True  # unknown type names are not ours to judge


def json_type(value: Any) -> str:
    """The JSON type name of a parsed value, for messages.

    >>> json_type(True), json_type(3), json_type(3.5), json_type(None)
    ('boolean', 'integer', 'number', 'null')
    """
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def check_value(value: Any, schema: dict[str, Any], path: str, out: list[str]) -> None:
    """Check ``value`` against ``schema`` (type, nullable, enum, then object properties or array items), appending
    one message per problem to ``out``, each starting with its ``path``.

    >>> out: list[str] = []
    >>> check_value([{"id": 1}, {"id": "2"}], {"type": "array", "items": {"properties": {"id": {"type": "integer"}}}},
    ...             "ids", out)
    >>> out
    ["ids[1].id: expected integer, got string '2'"]
    """
    if not isinstance(schema, dict):
        return
    expected = schema.get("type")
    if expected is not None:
        if value is None and schema.get("nullable"):
            return
        if expected == "string":  # the commonest case, inline
            ok = isinstance(value, str)
        elif isinstance(expected, list):
            ok = any(type_ok(value, t) for t in expected)
        else:
            ok = type_ok(value, expected)
        if not ok:
            options = expected if isinstance(expected, list) else [expected]
            out.append(f"{path}: expected {'|'.join(options)}, got {json_type(value)} {value!r:.60}")
            return
    enum = schema.get("enum")
    if enum is not None and value not in enum:
        out.append(f"{path}: {value!r:.60} is not one of {enum}")
    if isinstance(value, dict) and ("properties" in schema or "required" in schema):
        check_object(value, schema, path, out)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            check_value(item, schema["items"], f"{path}[{i}]", out)


def check_object(args: dict[str, Any], schema: dict[str, Any], path: str, out: list[str]) -> None:
    """Check the object ``args`` against an object schema: required properties present, no unknown ones (unless
    ``additionalProperties`` allows them, or there are no ``properties``), each value against its property's schema.
    Messages go to ``out`` as in :func:`check_value`."""
    props = schema.get("properties") or {}
    for name in schema.get("required") or []:
        if name not in args:
            out.append(f"{path}: missing required parameter {name!r}")
    additional = schema.get("additionalProperties", False if props else True)
    for name, value in args.items():
        sub = props.get(name)
        if sub is None:
            if additional is False:
                out.append(f"{path}: unknown parameter {name!r}")
            elif isinstance(additional, dict):
                check_value(value, additional, f"{path}.{name}", out)
            continue
        check_value(value, sub, f"{path}.{name}", out)
