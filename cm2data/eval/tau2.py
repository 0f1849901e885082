"""``cm2data eval tau2``: tau2 (inspect-evals 0.26.0) against an OpenAI-compatible endpoint, with a user simulator
on an endpoint of its own, always beside a do-nothing baseline (docs/eval.md).

The driver, on the toolkit's side: it checks both endpoints, builds (or reuses) the tau2 environment and runs
``runner_tau2.py`` there as one subprocess, which evaluates the tasks twice with the same user simulator: with the
model under test, and with inspect's ``mockllm/model`` as a do-nothing agent (a fixed text, never a tool call). The
run folder ``OUT``:

* ``outcomes.jsonl`` — the model's outcome per task (pass, fail, error; ``error_message`` is the scorer's
  explanation); ``baseline/outcomes.jsonl`` — the do-nothing agent's;
* ``summary.json`` (both scores and their difference), ``report.html``, ``logs/{agent,baseline}/*.eval`` (inspect's
  logs: ``inspect view --log-dir OUT/logs`` from the tau2 environment), ``runner.log``.

A tau2 run is not resumed: running it again runs every task again (inspect's logs of earlier runs are kept).
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cm2data.eval.bfcl import check_endpoint
from cm2data.eval.env import EvalError, clean_env, ensure_env, run_runner, tail

BENCHMARK = "tau2"
DOMAINS = ("airline", "retail", "telecom", "banking")
RUNNER = Path(__file__).with_name("runner_tau2.py")


@dataclass
class Endpoint:
    base_url: str
    model: str | None
    api_key: str = field(default="EMPTY", repr=False)


@dataclass
class Tau2Settings:
    domain: str
    agent: Endpoint
    user: Endpoint
    limit: int | None = None
    tasks: list[str] | None = None
    message_limit: int | None = None  # inspect-evals' default: 100 exchanges
    concurrency: int = 4
    max_tokens: int | None = None
    timeout: float = 600.0

    def config(self, out: Path) -> dict[str, Any]:
        def spec(e: Endpoint) -> dict[str, Any]:
            return {
                "base_url": e.base_url,
                "model": e.model,
                "max_tokens": self.max_tokens,
                "timeout": self.timeout,
                "concurrency": self.concurrency,
            }

        d = {k: v for k, v in asdict(self).items() if k not in ("agent", "user")}
        return {**d, "agent": spec(self.agent), "user": spec(self.user), "out": str(out), "baseline": True}


def _score(rows: list[dict[str, Any]]) -> dict[str, Any]:
    passed = sum(r["outcome"] == "pass" for r in rows)
    return {
        "tasks": len(rows),
        "passed": passed,
        "errors": sum(r["outcome"] == "error" for r in rows),
        "accuracy": round(passed / len(rows), 4) if rows else 0.0,
    }


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_tau2(
    settings: Tau2Settings,
    out: Path,
    *,
    python: Path | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Evaluate the model and the do-nothing baseline on the domain's tasks; return the summary (also written to
    ``summary.json``, with ``report.html``)."""
    if settings.domain not in DOMAINS:
        raise EvalError(f"unknown tau2 domain {settings.domain!r}: choose from {', '.join(DOMAINS)}")
    out = out.resolve()
    settings.agent.model = check_endpoint(settings.agent.base_url, settings.agent.model, settings.agent.api_key)
    settings.user.model = check_endpoint(settings.user.base_url, settings.user.model, settings.user.api_key)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("outcomes.jsonl", "baseline/outcomes.jsonl", "agent/outcomes.jsonl", "summary.json", "report.html"):
        (out / name).unlink(missing_ok=True)
    python = python or ensure_env("tau2")
    (out / "config.json").write_text(json.dumps(settings.config(out), indent=2), encoding="utf-8")
    env = clean_env(
        {
            "CM2AGENT_API_KEY": settings.agent.api_key or "EMPTY",
            "CM2USER_API_KEY": settings.user.api_key or "EMPTY",
            "INSPECT_LOG_DIR": str(out / "logs"),
            "INSPECT_DISPLAY": "none",
        }
    )
    started = datetime.now(UTC).isoformat()
    t0 = time.monotonic()
    rc, events, stderr = run_runner(
        [str(python), str(RUNNER), "--config", str(out / "config.json")], env=env, cwd=out, on_event=on_event
    )
    if rc != 0:
        said = next((e["message"] for e in reversed(events) if e.get("event") == "error"), None)
        if rc < 0:
            said = f"the tau2 runner was killed (signal {-rc})"
        raise EvalError(
            f"the tau2 run failed (exit {rc}): {said or stderr.strip()[-500:]}\n"
            f"{out / 'runner.log'} ends:\n{tail(out / 'runner.log')}"
        )
    agent_rows = _rows(out / "agent" / "outcomes.jsonl")
    base_rows = _rows(out / "baseline" / "outcomes.jsonl")
    (out / "agent" / "outcomes.jsonl").replace(out / "outcomes.jsonl")
    start = next((e for e in events if e.get("event") == "start"), {})
    agent, baseline = _score(agent_rows), _score(base_rows)
    summary = {
        "benchmark": BENCHMARK,
        "domain": settings.domain,
        "model": settings.agent.model,
        "base_url": settings.agent.base_url,
        "user_model": settings.user.model,
        "user_base_url": settings.user.base_url,
        "inspect_evals": start.get("inspect_evals"),
        "inspect_ai": start.get("inspect_ai"),
        "score": agent,
        "baseline": baseline,
        "above_baseline": round(agent["accuracy"] - baseline["accuracy"], 4),
        "categories": {
            settings.domain: {
                "entries": agent["tasks"],
                "passed": agent["passed"],
                "accuracy": agent["accuracy"],
                "baseline_accuracy": baseline["accuracy"],
            }
        },
        "error_rows": [r["id"] for r in agent_rows if r["outcome"] == "error"],
        "started_at": started,
        "finished_at": datetime.now(UTC).isoformat(),
        "seconds": round(time.monotonic() - t0, 2),
        "settings": settings.config(out),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (out / "report.html").write_text(render(summary, agent_rows, base_rows), encoding="utf-8")
    return summary


def render(summary: dict[str, Any], agent_rows: list[dict[str, Any]], base_rows: list[dict[str, Any]]) -> str:
    from cm2data.eval.report import _CSS, _table

    base = {r["id"]: r for r in base_rows}
    title = f"tau2 {summary['domain']}: {summary['model']}"
    s, b = summary["score"], summary["baseline"]
    return "\n".join(
        [
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style>"
            f"</head><body><h1>{html.escape(title)}</h1>",
            f"<p class='note'>agent <code>{html.escape(str(summary['base_url']))}</code> · user simulator "
            f"<code>{html.escape(str(summary['user_model']))}</code> at "
            f"<code>{html.escape(str(summary['user_base_url']))}"
            f"</code> · inspect-evals {html.escape(str(summary['inspect_evals']))}</p>",
            _table(
                ["", "tasks", "passed", "errors", "pass^1"],
                [
                    ["model", s["tasks"], s["passed"], s["errors"], f"{100 * s['accuracy']:.2f} %"],
                    ["do-nothing baseline", b["tasks"], b["passed"], b["errors"], f"{100 * b['accuracy']:.2f} %"],
                ],
            ),
            f"<p>Above the do-nothing baseline: <b>{100 * summary['above_baseline']:+.2f}</b> points. The baseline "
            "never calls a tool and answers with a fixed text; it passes the tasks whose right outcome leaves the "
            "database unchanged and requires nothing to be said.</p>",
            _table(
                ["task", "model", "baseline", "why the model failed"],
                [
                    [r["task"], r["outcome"], base.get(r["id"], {}).get("outcome"), r.get("error_message") or ""]
                    for r in agent_rows
                ],
                classes=[None, "outcome", "outcome", None],
            ),
            "</body></html>",
        ]
    )
