"""A scripted OpenAI-compatible server on loopback, for the failure paths a real model will not produce on demand.

Standard library only (``http.server`` in a thread). Each ``POST /v1/chat/completions`` takes the next step of the
script (or the default reply when the script is empty): a normal reply, an HTTP error, a 200 with a garbage body,
a slow answer, or a dropped connection. Every request body is recorded. ``GET /v1/models`` lists the models with
the configured ``owned_by`` (``"vllm"`` makes the client treat it as vLLM).

    with ScriptedOpenAI() as server:
        server.push(Status(500), Reply('{"ok": true}'))
        config = LLMConfig(base_url=server.base_url)
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """A chat completion with this content (and optional tool calls)."""

    content: str | None = "ok"
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str = "stop"
    prompt_tokens: int = 11
    completion_tokens: int = 7


@dataclass
class Status:
    """An HTTP error with an OpenAI-style error body."""

    code: int
    message: str = "scripted failure"


@dataclass
class Garbage:
    """HTTP 200 with a body that is not a chat completion."""

    body: str = "<html>definitely not json</html>"
    content_type: str = "application/json"


@dataclass
class Slow:
    """Wait ``seconds`` before answering with ``then`` (a client with a shorter timeout gives up first)."""

    seconds: float
    then: Reply = field(default_factory=Reply)


@dataclass
class Drop:
    """Close the connection without answering."""


Step = Reply | Status | Garbage | Slow | Drop


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog (5) resets connections when many clients connect at once


class ScriptedOpenAI:
    def __init__(
        self,
        *,
        models: tuple[str, ...] = ("scripted-model",),
        owned_by: str = "scripted",
        reject_json_schema: bool = False,
        default: Step | None = None,
    ):
        self.models = models
        self.owned_by = owned_by
        self.reject_json_schema = reject_json_schema
        self.default = default or Reply()
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._script: deque[Step] = deque()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------------- control

    def push(self, *steps: Step) -> ScriptedOpenAI:
        with self._lock:
            self._script.extend(steps)
        return self

    def _next(self) -> Step:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ScriptedOpenAI:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, code: int, body: str, content_type: str = "application/json") -> None:
                data = body.encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    self.close_connection = True

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(
                        200,
                        json.dumps(
                            {
                                "object": "list",
                                "data": [
                                    {"id": m, "object": "model", "created": 0, "owned_by": owner.owned_by}
                                    for m in owner.models
                                ],
                            }
                        ),
                    )
                else:
                    self._send(404, json.dumps({"error": {"message": "not found"}}))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with owner._lock:
                    owner.requests.append(body)
                    owner.in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
                try:
                    self._answer(body)
                finally:
                    with owner._lock:
                        owner.in_flight -= 1

            def _answer(self, body: dict[str, Any]) -> None:
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, json.dumps({"error": {"message": "not found"}}))
                fmt = (body.get("response_format") or {}).get("type")
                if owner.reject_json_schema and fmt == "json_schema":  # as llama.cpp's server does
                    return self._send(
                        400,
                        json.dumps(
                            {
                                "error": {
                                    "message": "response_format type 'json_schema' is not supported; use json_object",
                                    "type": "invalid_request_error",
                                    "code": 400,
                                }
                            }
                        ),
                    )
                step = owner._next()
                if isinstance(step, Slow):
                    time.sleep(step.seconds)
                    step = step.then
                if isinstance(step, Drop):
                    self.close_connection = True
                    self.connection.close()
                    return None
                if isinstance(step, Status):
                    return self._send(
                        step.code,
                        json.dumps({"error": {"message": step.message, "type": "scripted", "code": step.code}}),
                    )
                if isinstance(step, Garbage):
                    return self._send(200, step.body, step.content_type)
                assert isinstance(step, Reply)
                message: dict[str, Any] = {"role": "assistant", "content": step.content}
                if step.tool_calls:
                    message["tool_calls"] = step.tool_calls
                return self._send(
                    200,
                    json.dumps(
                        {
                            "id": "chatcmpl-scripted",
                            "object": "chat.completion",
                            "created": int(time.time()),
                            "model": body.get("model") or owner.models[0],
                            "choices": [{"index": 0, "message": message, "finish_reason": step.finish_reason}],
                            "usage": {
                                "prompt_tokens": step.prompt_tokens,
                                "completion_tokens": step.completion_tokens,
                                "total_tokens": step.prompt_tokens + step.completion_tokens,
                            },
                        }
                    ),
                )

        httpd = _Server(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ScriptedOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
