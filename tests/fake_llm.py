"""A routed OpenAI-compatible server on loopback for the pipeline tests: each request is answered by a Python
function of its body, so concurrent requests of different kinds (scenario, user, assistant, tool mock, judge,
compression, labeller) each get a fitting answer regardless of order. Standard library only.

:func:`fake_model` is a deterministic stand-in for a model that always answers well (valid JSON for every schema
the pipelines use, a valid call for ``tool_choice: required``); tests wrap it to inject faults. Steps are the
dataclasses of ``scripted_openai`` (``Reply``, ``Status``, ``Garbage``, ``Slow``, ``Drop``).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from scripted_openai import Drop, Garbage, Reply, Slow, Status

Route = Callable[[dict[str, Any]], Any]


def schema_of(body: dict[str, Any]) -> dict[str, Any] | None:
    so = body.get("structured_outputs") or (body.get("extra_body") or {}).get("structured_outputs") or {}
    if so.get("json"):
        return so["json"]
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return fmt["json_schema"]["schema"]
    if fmt.get("type") == "json_object":
        return fmt.get("schema")
    return None


def kind_of(body: dict[str, Any]) -> str:
    """Which pipeline request this is: scenario, user, assistant, mock, judge, compress, annotate, other."""
    if body.get("tools"):
        return "assistant"
    schema = schema_of(body) or {}
    props = schema.get("properties") or {}
    if schema.get("type") == "array":
        return "annotate"
    for key, kind in (
        ("persona", "scenario"),
        ("message", "user"),
        ("execution_result", "mock"),
        ("NoError", "judge"),
        ("thinking", "compress"),
    ):
        if key in props:
            return kind
    return "other"


def value_for(schema: dict[str, Any], name: str = "x") -> Any:
    if "enum" in schema:
        return schema["enum"][0]
    t = schema.get("type")
    t = t[0] if isinstance(t, list) else t
    return {"integer": 2, "number": 1.5, "boolean": True, "array": [], "object": {}}.get(t, f"{name}-value")


def valid_arguments(tool: dict[str, Any]) -> dict[str, Any]:
    params = tool["function"].get("parameters") or {}
    props = params.get("properties") or {}
    return {k: value_for(props[k], k) for k in params.get("required") or [] if k in props}


def last_user(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or []):
        if m.get("role") == "user":
            return str(m.get("content") or "")
    return ""


def user_quote(body: dict[str, Any], turn: int) -> str:
    """A quote of the user message of ``turn`` that the rule ``evidence_grounded`` finds in the dialogue: the first
    quote the request's schema offers for it (``$defs/evidence_<turn>``, with ``quote_choices``), else the first 40
    characters of the message as the labeller prompt shows it (``[t.0] user.content: …``)."""
    schema = schema_of(body) or {}
    choices = (schema.get("$defs") or {}).get(f"evidence_{turn}")
    if choices is not None:
        for alt in choices.get("anyOf", [choices]):
            p = alt["properties"]
            if (p["turn"], p["step"], p["from"]) == ({"const": turn}, {"const": 0}, {"const": "user.content"}):
                return str(p["snippet"]["enum"][0])
    found = re.search(rf"^\[{turn}\.0\] user\.content: (.*)$", last_user(body), re.MULTILINE)
    assert found, f"no user message of turn {turn} in the labeller prompt"
    return found.group(1)[:40]


def labeller_blocks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A valid checklist for any dialogue: one item per turn, quoting the user step."""
    n = (schema_of(body) or {}).get("minItems", 1)
    return [
        {
            "turn": t,
            "checklist": [
                {
                    "id": "C0",
                    "evidence": [{"turn": t, "step": 0, "from": "user.content", "snippet": user_quote(body, t)}],
                    "focus_on": "assistant.content.user_visible_reply",
                    "question": "Does the reply answer the request?",
                    "pass_condition": "The reply answers the user's request using the tool results.",
                    "failure_examples": ["Ignores the request"],
                    "required_for_next_turn": False,
                }
            ],
            "dependence": {"C0": []},
            "weight": {"C0": 1.0},
        }
        for t in range(n)
    ]


# ------------------------------------------------------------------------- JSON schema: check and sample
# The fake server, like a server without constrained decoding, answers whatever a route returns; these two helpers
# let tests check an answer against the schema a request carried (the subset of JSON schema the pipelines use:
# $ref to #/$defs, anyOf, const, enum, type, properties/required/additionalProperties, prefixItems/items,
# min/maxItems, min/maxLength, minimum/maximum) and draw random answers that a grammar-constrained server could give.


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/$defs/"), ref
        schema = root["$defs"][ref.split("/")[-1]]
    return schema


_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "null": lambda v: v is None,
}


def conforms(schema: dict[str, Any] | bool, value: Any, root: dict[str, Any] | None = None) -> bool:
    """Whether ``value`` is valid under ``schema`` (the subset above; unknown keywords are an error)."""
    if isinstance(schema, bool):
        return schema
    root = root if root is not None else schema
    schema = _resolve(schema, root)
    known = {
        "$defs",
        "anyOf",
        "const",
        "enum",
        "type",
        "properties",
        "required",
        "additionalProperties",
        "prefixItems",
        "items",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
    }
    assert set(schema) <= known, set(schema) - known
    if "anyOf" in schema and not any(conforms(s, value, root) for s in schema["anyOf"]):
        return False
    const = schema.get("const", value)
    if "const" in schema and not (value is const or (value == const and not isinstance(value, bool))):
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    types = schema.get("type")
    if types is not None and not any(_TYPES[t](value) for t in ([types] if isinstance(types, str) else types)):
        return False
    if isinstance(value, dict):
        props = schema.get("properties", {})
        if any(k not in value for k in schema.get("required", [])):
            return False
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                if not conforms(props[k], v, root):
                    return False
            elif not conforms(extra, v, root):
                return False
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            return False
        prefix = schema.get("prefixItems", [])
        rest = schema.get("items", True)
        if not all(conforms(prefix[i] if i < len(prefix) else rest, v, root) for i, v in enumerate(value)):
            return False
    if isinstance(value, str) and not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
        return False
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and not (schema.get("minimum", value) <= value <= schema.get("maximum", value))
    ):
        return False
    return True


def sample(schema: dict[str, Any] | bool, rng: Any, root: dict[str, Any] | None = None) -> Any:
    """A random value valid under ``schema`` (the subset above), as a grammar-constrained model could write it;
    ``rng`` is a ``random.Random``."""
    assert schema is not False
    if schema is True:
        return None
    root = root if root is not None else schema
    schema = _resolve(schema, root)
    if "anyOf" in schema:
        return sample(rng.choice(schema["anyOf"]), rng, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    t = schema.get("type")
    if t == "object":
        props = schema.get("properties", {})
        return {k: sample(props[k], rng, root) for k in props if k in schema.get("required", []) or rng.random() < 0.5}
    if t == "array":
        prefix = schema.get("prefixItems", [])
        lo, hi = schema.get("minItems", 0), schema.get("maxItems", len(prefix) + 2)
        if schema.get("items", True) is False:
            hi = min(hi, len(prefix))
        n = rng.randint(lo, hi)
        return [sample(prefix[i] if i < len(prefix) else schema.get("items", True), rng, root) for i in range(n)]
    if t == "string":
        n = rng.randint(max(1, schema.get("minLength", 0)), min(12, schema.get("maxLength", 12)))
        return "".join(rng.choice("abc xyz") for _ in range(n)).strip() or "a"
    if t == "integer":
        return rng.randint(schema.get("minimum", 0), schema.get("maximum", 9))
    if t == "number":
        return rng.uniform(schema.get("minimum", 0), schema.get("maximum", 1))
    if t == "boolean":
        return rng.random() < 0.5
    raise AssertionError(f"cannot sample {schema}")


def fake_model(body: dict[str, Any]) -> Any:
    """A model that always answers well."""
    kind = kind_of(body)
    schema = schema_of(body) or {}
    if kind == "assistant":
        if body.get("tool_choice") == "required":
            tool = body["tools"][0]
            return Reply(
                content="",
                tool_calls=[
                    {
                        "id": "call_" + hashlib.sha256(json.dumps(body["messages"]).encode()).hexdigest()[:8],
                        "type": "function",
                        "function": {"name": tool["function"]["name"], "arguments": json.dumps(valid_arguments(tool))},
                    }
                ],
                finish_reason="tool_calls",
            )
        return Reply(content="Here is what I found for you.")
    if kind == "scenario":
        n = schema["properties"]["turns"]["minItems"]
        return Reply(
            content=json.dumps(
                {
                    "persona": "A busy parent.",
                    "goal": "Get things done.",
                    "turns": [{"request": f"Request number {i}."} for i in range(n)],
                    "facts": ["city: Oslo"],
                }
            )
        )
    if kind == "user":
        return Reply(content=json.dumps({"message": "Please help me with my request."}))
    if kind == "mock":
        return Reply(content=json.dumps({"analysis": "ok", "execution_result": {"status": "ok", "n": 1}}))
    if kind == "judge":
        return Reply(content=json.dumps({"Reasoning": "Fine.", "NoError": True}))
    if kind == "compress":
        n = schema["properties"]["thinking"]["minItems"]
        return Reply(content=json.dumps({"thinking": [{"thinking": "short"} for _ in range(n)]}))
    if kind == "annotate":
        return Reply(content=json.dumps(labeller_blocks(body)))
    return Reply(content="ok")


class RoutedOpenAI:
    """``/v1/models`` (``owned_by`` configurable, "vllm" by default) and ``/v1/chat/completions`` answered by
    ``route(body)``. Every body is recorded in :attr:`requests` (with its :func:`kind_of` in ``_kind``)."""

    def __init__(self, route: Route = fake_model, *, model: str = "fake-model", owned_by: str = "vllm"):
        self.route = route
        self.model = model
        self.owned_by = owned_by
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def kinds(self) -> list[str]:
        with self._lock:
            return [r["_kind"] for r in self.requests]

    def start(self) -> RoutedOpenAI:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: str, content_type: str = "application/json") -> None:
                data = body.encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(
                        200,
                        json.dumps(
                            {
                                "object": "list",
                                "data": [
                                    {"id": owner.model, "object": "model", "created": 0, "owned_by": owner.owned_by}
                                ],
                            }
                        ),
                    )
                else:
                    self._send(404, json.dumps({"error": {"message": "not found"}}))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                body["_kind"] = kind_of(body)
                with owner._lock:
                    owner.requests.append(body)
                step = owner.route(body)
                if isinstance(step, Slow):
                    time.sleep(step.seconds)
                    step = step.then
                if isinstance(step, Drop):
                    self.close_connection = True
                    self.connection.close()
                    return
                if isinstance(step, Status):
                    self._send(step.code, json.dumps({"error": {"message": step.message, "code": step.code}}))
                    return
                if isinstance(step, Garbage):
                    self._send(200, step.body, step.content_type)
                    return
                message: dict[str, Any] = {"role": "assistant", "content": step.content}
                if step.tool_calls:
                    message["tool_calls"] = step.tool_calls
                self._send(
                    200,
                    json.dumps(
                        {
                            "id": "chatcmpl-fake",
                            "object": "chat.completion",
                            "created": int(time.time()),
                            "model": owner.model,
                            "choices": [{"index": 0, "message": message, "finish_reason": step.finish_reason}],
                            "usage": {
                                "prompt_tokens": step.prompt_tokens,
                                "completion_tokens": step.completion_tokens,
                                "total_tokens": step.prompt_tokens + step.completion_tokens,
                            },
                        }
                    ),
                )

        class Server(ThreadingHTTPServer):
            request_queue_size = 256
            daemon_threads = True

        self._httpd = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> RoutedOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_forever(route: Route = fake_model) -> None:  # pragma: no cover - manual use
    with RoutedOpenAI(route) as server:
        print(server.base_url, flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":  # pragma: no cover
    serve_forever()
