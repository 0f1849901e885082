"""A fake OpenAI-compatible model server on loopback that plays BFCL v4 multi-turn entries, for the eval tests and
``benchmarks/eval_overhead.py``. Standard library only; it reads BFCL's data files (plain JSON lines inside the
bfcl-eval environment's ``bfcl_eval/data``), never imports ``bfcl_eval``.

Modes:

* ``silent``: never calls a tool, answers every request with text;
* ``replay``: the ground truth of the entry being asked, turn by turn: the entry is recognised by the first user
  message of the conversation (unique within the subset the server is given; the constructor checks), the turn by the
  number of user messages, and the calls already made in this turn by the assistant tool calls since the last user
  message; it answers with the next ground-truth call of the turn (one call per step, positional arguments named
  after the tool's parameters in the request), then with text once the turn's calls are all made;
* ``garbage``: every turn starts with a malformed tool call (arguments that are not JSON, a list instead of an object,
  a name that is Python code creating the folder ``marker`` when evaluated, a name that is not an identifier; one kind
  per entry and turn), then text.

Every request is recorded (``requests``: entry id, turn, arrival time and the body); ``delay`` seconds are waited
before each answer (a model's latency, for the benchmark and for killing a run half-way); requests of the entries in
``fail_ids`` get HTTP 500 (a server failing half-way through a run). ``GET /health`` answers 200, as vLLM's does.

    python tests/bfcl_fake.py DATA_DIR MODE PORT MODEL ID…    # serve until killed (a stand-in for `vllm serve`)
"""

from __future__ import annotations

import ast
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CATEGORIES = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")
MODES = ("silent", "replay", "garbage")
GARBAGE_KINDS = ("not_json", "not_object", "code_name", "bad_name")


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_entries(data_dir: Path, ids: list[str]) -> dict[str, dict[str, Any]]:
    """``{id: {"question": …, "ground_truth": …}}`` for ``ids``, from BFCL's data folder."""
    wanted = set(ids)
    out: dict[str, dict[str, Any]] = {}
    for cat in CATEGORIES:
        if not any(i.rsplit("_", 1)[0] == cat for i in wanted):
            continue
        questions = _jsonl(data_dir / f"BFCL_v4_{cat}.json")
        truths = _jsonl(data_dir / "possible_answer" / f"BFCL_v4_{cat}.json")
        for q, t in zip(questions, truths, strict=True):
            if q["id"] in wanted:
                out[q["id"]] = {"question": q["question"], "ground_truth": t["ground_truth"]}
    missing = wanted - set(out)
    if missing:
        raise ValueError(f"not in BFCL's data: {sorted(missing)}")
    return out


def first_user_message(question: list[list[dict[str, Any]]]) -> str:
    for turn in question:
        for m in turn:
            if m.get("role") == "user":
                return str(m["content"])
    raise ValueError("no user message")


def parse_call(call: str, tools: dict[str, list[str]]) -> tuple[str, dict[str, Any]]:
    """``"mv(source='a', destination='b')"`` → ``("mv", {"source": "a", "destination": "b"})``; positional arguments
    take the names of the tool's parameters in the order the request lists them."""
    node = ast.parse(call.strip(), mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"not a plain call: {call}")
    name = node.func.id
    args: dict[str, Any] = {}
    if node.args:
        if name not in tools:
            raise ValueError(f"positional arguments of {name}, which the request does not offer")
        for pname, value in zip(tools[name], node.args, strict=False):
            args[pname] = ast.literal_eval(value)
    for kw in node.keywords:
        args[kw.arg] = ast.literal_eval(kw.value)
    return name, args


@dataclass
class Recorded:
    entry: str | None
    turn: int
    at: float
    body: dict[str, Any] = field(repr=False)


class _Server(ThreadingHTTPServer):
    request_queue_size = 256
    daemon_threads = True


class BfclFake:
    def __init__(
        self,
        data_dir: Path,
        ids: list[str],
        mode: str = "replay",
        *,
        model: str = "fake-bfcl",
        delay: float = 0.0,
        marker: Path | None = None,
        port: int = 0,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode, self.model, self.delay, self.port = mode, model, delay, port
        self.marker = marker or Path("cm2data-injected")  # what a "code_name" tool call tries to create
        self.entries = load_entries(Path(data_dir), ids)
        self.by_first: dict[str, str] = {}
        for entry_id, e in self.entries.items():
            key = first_user_message(e["question"])
            if key in self.by_first and mode == "replay":
                raise ValueError(
                    f"{entry_id} and {self.by_first[key]} start with the same user message: the fake "
                    "server cannot tell them apart; choose another subset"
                )
            self.by_first.setdefault(key, entry_id)
        self.fail_ids: set[str] = set()  # entries whose requests get HTTP 500 (a server failing half-way)
        self.requests: list[Recorded] = []
        self.failures: list[str] = []  # requests it could not answer from the ground truth
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------------------------------------ answers

    def entry_of(self, body: dict[str, Any]) -> str | None:
        for m in body.get("messages") or []:
            if m.get("role") == "user":
                return self.by_first.get(str(m.get("content")))
        return None

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        """The assistant message for a chat request (what the HTTP handler sends back)."""
        messages = body.get("messages") or []
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        entry_id = self.entry_of(body)
        turn = len(users) - 1
        with self._lock:
            self.requests.append(Recorded(entry_id, turn, time.monotonic(), body))
        since_user = messages[users[-1] + 1 :] if users else []
        made = sum(len(m.get("tool_calls") or []) for m in since_user if m.get("role") == "assistant")
        text = {"role": "assistant", "content": "I have nothing more to do for this request."}
        if self.mode == "silent":
            return {"role": "assistant", "content": "I cannot help with that, sorry."}
        if self.mode == "garbage":
            if made or since_user:
                return text
            index = int(entry_id.rsplit("_", 1)[1]) if entry_id else 0
            kind = GARBAGE_KINDS[(index + turn) % len(GARBAGE_KINDS)]
            name, arguments = {
                "not_json": ("cd", '{"folder": "doc'),
                "not_object": ("cd", "[1, 2, 3]"),
                # what BFCL's eval() would run as written (no API has a method named makedirs, so BFCL's rewriting
                # of method names leaves it alone): it creates the marker folder unless refused
                "code_name": (f"__import__('os').makedirs({str(self.marker)!r}) or cd", '{"folder": "x"}'),
                "bad_name": ("cd; ls", '{"folder": "x"}'),
            }[kind]
            return {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": f"call_{turn}_0", "type": "function", "function": {"name": name, "arguments": arguments}}
                ],
            }
        # replay
        if entry_id is None:
            with self._lock:
                self.failures.append("unknown conversation: " + str(messages[:1])[:200])
            return text
        truth = self.entries[entry_id]["ground_truth"]
        if turn >= len(truth):
            with self._lock:
                self.failures.append(f"{entry_id}: turn {turn} beyond the ground truth ({len(truth)} turns)")
            return text
        calls = truth[turn]
        if made >= len(calls):
            return text
        tools = {
            t["function"]["name"]: list((t["function"].get("parameters") or {}).get("properties") or {})
            for t in body.get("tools") or []
        }
        # one call per step; a turn of more than 10 calls in steps of several (BFCL stops a turn after 20 steps)
        per_step = -(-len(calls) // 10)
        tool_calls = []
        for k, call in enumerate(calls[made : made + per_step]):
            try:
                name, args = parse_call(call, tools)
            except (ValueError, SyntaxError) as exc:
                with self._lock:
                    self.failures.append(f"{entry_id} turn {turn}: {exc}")
                return text
            tool_calls.append(
                {
                    "id": f"call_{turn}_{made + k}",
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(args)},
                }
            )
        return {"role": "assistant", "content": None, "tool_calls": tool_calls}

    # ----------------------------------------------------------------------------------------------- server

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> BfclFake:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(
                        200,
                        {
                            "object": "list",
                            "data": [{"id": owner.model, "object": "model", "created": 0, "owned_by": "fake-bfcl"}],
                        },
                    )
                elif self.path == "/health":
                    self._send(200, {})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": "not found"}})
                if body.get("model") != owner.model:
                    return self._send(404, {"error": {"message": f"model {body.get('model')!r} not served"}})
                if owner.entry_of(body) in owner.fail_ids:
                    return self._send(500, {"error": {"message": "scripted failure", "type": "server_error"}})
                message = owner.reply(body)
                if owner.delay:
                    time.sleep(owner.delay)
                return self._send(
                    200,
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": owner.model,
                        "choices": [
                            {
                                "index": 0,
                                "message": message,
                                "finish_reason": "tool_calls" if message.get("tool_calls") else "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
                    },
                )

        self._httpd = _Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> BfclFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    import sys

    data_dir, mode, port, model, *wanted = sys.argv[1:]
    with BfclFake(Path(data_dir), wanted, mode, model=model, port=int(port)):
        threading.Event().wait()
