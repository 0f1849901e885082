"""Fake OpenAI-compatible servers on loopback for tau2 (inspect-evals): a user simulator and an agent. Standard
library only; the tasks are read from the tau2 environment's ``inspect_evals/tau2/data`` files, never imported.

* ``Tau2Fake("user", tasks)``: a user simulator that opens with ``[task <id>]`` and the task's reason for calling,
  and ends the conversation (``###STOP###``) as soon as the agent has answered once;
* ``Tau2Fake("agent", tasks, mode="replay")``: an agent that makes the task's expected actions (one tool call per
  step, recognising the task from the user's opening) and then answers with every piece of information the task
  requires to be communicated; ``mode="silent"``: an agent that only ever answers with text.

Every request is recorded (``requests``: the task id, the body).
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_OPENING = re.compile(r"\[task ([^\]]+)\]")


def load_tasks(data_dir: Path, domain: str) -> dict[str, dict[str, Any]]:
    tasks = json.loads((data_dir / "domains" / domain / "tasks.json").read_text(encoding="utf-8"))
    return {str(t["id"]): t for t in tasks}


class _Server(ThreadingHTTPServer):
    request_queue_size = 256
    daemon_threads = True


def _text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
    return str(content or "")


class Tau2Fake:
    def __init__(self, role: str, tasks: dict[str, dict[str, Any]], *, mode: str = "replay", model: str | None = None):
        if role not in ("user", "agent") or mode not in ("replay", "silent"):
            raise ValueError("role user|agent, mode replay|silent")
        self.role, self.mode, self.tasks = role, mode, tasks
        self.model = model or f"fake-{role}"
        self.requests: list[tuple[str | None, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    @staticmethod
    def key(task: dict[str, Any]) -> tuple[str, str]:
        """What identifies a task in the user simulator's prompt (which indents the scenario): the first lines of
        its reason for calling and of what the user knows."""
        instructions = task["user_scenario"]["instructions"]
        first = [
            next((ln.strip() for ln in str(instructions.get(k) or "").splitlines() if ln.strip()), "")
            for k in ("reason_for_call", "known_info")
        ]
        return first[0], first[1]

    def _task_of_user_prompt(self, system: str) -> str | None:
        found = [tid for tid, t in self.tasks.items() if all(part in system for part in self.key(t))]
        return found[0] if len(found) == 1 else None

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages") or []
        if self.role == "user":
            system = " ".join(_text(m.get("content")) for m in messages if m.get("role") == "system")
            task = self._task_of_user_prompt(system)
            with self._lock:
                self.requests.append((task, body))
            if not any(m.get("role") == "assistant" for m in messages):
                reason = self.tasks[task]["user_scenario"]["instructions"]["reason_for_call"] if task else "help"
                return {"role": "assistant", "content": f"[task {task}] Hello. {reason}"}
            return {"role": "assistant", "content": "Thank you. ###STOP###"}
        opening = next((_text(m.get("content")) for m in messages if m.get("role") == "user"), "")
        match = _OPENING.search(opening)
        task = match.group(1) if match else None
        with self._lock:
            self.requests.append((task, body))
        if self.mode == "silent" or task not in self.tasks:
            return {"role": "assistant", "content": "I am sorry, I cannot help with that."}
        criteria = self.tasks[task]["evaluation_criteria"] or {}
        actions = [a for a in criteria.get("actions") or [] if a.get("requestor", "assistant") == "assistant"]
        made = sum(len(m.get("tool_calls") or []) for m in messages if m.get("role") == "assistant")
        offered = {t["function"]["name"] for t in body.get("tools") or []}
        if made < len(actions):
            action = actions[made]
            name = action["name"]
            if name not in offered:  # inspect may prefix tool names
                name = next((o for o in offered if o.endswith("_" + name)), name)
            return {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{made}",
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps(action.get("arguments") or {})},
                    }
                ],
            }
        info = criteria.get("communicate_info") or []
        return {"role": "assistant", "content": "Done. " + " ".join(str(i) for i in info)}

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> Tau2Fake:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(
                        200,
                        {
                            "object": "list",
                            "data": [{"id": owner.model, "object": "model", "created": 0, "owned_by": "fake-tau2"}],
                        },
                    )
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                message = owner.reply(body)
                self._send(
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
                        "usage": {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55},
                    },
                )

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> Tau2Fake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
