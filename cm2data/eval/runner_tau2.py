"""One tau2 run (inspect-evals 0.26.0), executed INSIDE the tau2 environment (``scripts/install_eval.sh tau2``).

Run as a script by that environment's interpreter (``cm2data.eval.tau2`` builds the command); it imports only the
standard library, ``inspect_ai`` and ``inspect_evals`` — never ``cm2data``.

    python runner_tau2.py --config RUN/config.json

Two evaluations of the same tasks with the same user simulator (``model_roles={"user": …}``):

* ``agent``: the model under test (an OpenAI-compatible endpoint, inspect's ``openai-api`` provider);
* ``baseline``: a do-nothing agent — inspect's ``mockllm/model``, which answers every turn with the same fixed text
  and never calls a tool. Tasks whose right outcome is to change nothing (a refusal) pass with it, so the score of a
  model only means something beside it.

Each writes inspect's own log (``RUN/logs/<which>/*.eval``) and ``RUN/<which>/outcomes.jsonl`` (one row per task:
``outcome`` pass/fail/error, the scorer's explanation as ``error_message``, messages, tokens). Progress goes to the
original stdout as JSON lines; everything else to ``RUN/runner.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

DOMAINS = ("airline", "retail", "telecom", "banking")
_events: Any = None


def emit(event: str, **fields: Any) -> None:
    _events.write(json.dumps({"event": event, **fields}) + "\n")
    _events.flush()


def _redirect_output(log_path: Path) -> None:
    global _events
    _events = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def offline_token_estimates() -> None:
    """inspect_ai estimates token counts (the do-nothing agent's usage, context compaction) with tiktoken's
    ``o200k_base``, which tiktoken downloads from openaipublic.blob.core.windows.net on first use: offline that fails
    inside every agent turn ("Error in user_simulator_agent loop: … o200k_base.tiktoken"), and the turn is lost. The
    estimate becomes characters / 4 (+10 %, as inspect pads its own); scores do not depend on it, and the model
    under test reports its own usage."""
    from inspect_ai.model import _model, _tokens

    def estimate(text: str) -> int:
        return max(1, int(len(text) / 4 * 1.1))

    _tokens.count_text_tokens = estimate
    _model.count_text_tokens = estimate


def lighter_transcripts() -> None:
    """tau2 keeps each task's database in inspect's store, and inspect logs every change to the store as a JSON diff
    of the whole store after each step (the airline database is ~5 MB of JSON): on 2 cores that was 38 of 100 s of a
    3-task run. Store-change events are suspended (inspect's own switch, set before the tasks start so that they
    inherit it); the scorers read the store itself, not these events, and the log keeps the messages, tool calls and
    scores."""
    from inspect_ai.util._store import _store_events_suspended

    _store_events_suspended.set(True)


def _model(spec: dict[str, Any], service: str) -> Any:
    from inspect_ai.model import GenerateConfig, get_model

    config = GenerateConfig(
        max_tokens=spec.get("max_tokens"), timeout=spec.get("timeout"), max_connections=spec.get("concurrency")
    )
    return get_model(
        f"openai-api/{service}/{spec['model']}",
        base_url=spec["base_url"],
        api_key=os.environ.get(f"{service.upper()}_API_KEY") or "EMPTY",
        config=config,
    )


def _task(cfg: dict[str, Any]) -> Any:
    from inspect_evals import tau2

    make = getattr(tau2, f"tau2_{cfg['domain']}")
    return make(shuffle=False, message_limit=cfg.get("message_limit"))


def _outcomes(log: Any, domain: str) -> list[dict[str, Any]]:
    rows = []
    for sample in log.samples or []:
        scores = sample.scores or {}
        score = next(iter(scores.values()), None)
        value = getattr(score, "value", None)
        usage = sample.model_usage or {}
        row = {
            "id": f"tau2_{domain}_{sample.id}",
            "task": str(sample.id),
            "category": domain,
            "messages": len(sample.messages or []),
            "input_tokens": sum(getattr(u, "input_tokens", 0) or 0 for u in usage.values()),
            "output_tokens": sum(getattr(u, "output_tokens", 0) or 0 for u in usage.values()),
        }
        if sample.error is not None:
            row.update(outcome="error", error_type="sample_error", error_message=str(sample.error.message)[:500])
        elif value == "C":
            row.update(outcome="pass", error_type=None, error_message=None)
        else:
            row.update(
                outcome="fail",
                error_type="task_not_solved",
                error_message=(getattr(score, "explanation", None) or "")[:500] or None,
            )
        rows.append(row)
    rows.sort(key=lambda r: (int(r["task"]) if str(r["task"]).isdigit() else 10**9, str(r["task"])))
    return rows


def run_one(cfg: dict[str, Any], which: str, run: Path) -> dict[str, Any]:
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import get_model

    agent = get_model("mockllm/model") if which == "baseline" else _model(cfg["agent"], "cm2agent")
    user = _model(cfg["user"], "cm2user")
    emit("phase", which=which)
    t0 = time.monotonic()
    logs = inspect_eval(
        _task(cfg),
        model=agent,
        model_roles={"user": user},
        limit=cfg.get("limit"),
        sample_id=cfg.get("tasks"),
        log_dir=str(run / "logs" / which),
        display="none",
        max_samples=cfg.get("concurrency"),
        fail_on_error=False,
        log_level="warning",
        score_display=False,
        log_realtime=False,
    )
    log = logs[0]
    rows = _outcomes(log, cfg["domain"])
    write_rows(run / which / "outcomes.jsonl", rows)
    status = getattr(log, "status", None)
    emit(
        "phase_done",
        which=which,
        status=status,
        tasks=len(rows),
        seconds=round(time.monotonic() - t0, 2),
        error=str(log.error.message)[:1000] if getattr(log, "error", None) else None,
    )
    return {"status": status, "tasks": len(rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path)
    args = parser.parse_args(argv)
    cfg = json.loads(args.config.read_text(encoding="utf-8"))
    run = Path(cfg["out"])
    _redirect_output(run / "runner.log")
    os.environ.setdefault("INSPECT_LOG_DIR", str(run / "logs"))
    print(f"# cm2data runner_tau2: pid {os.getpid()} config {args.config}", flush=True)
    try:
        from importlib.metadata import version

        if cfg["domain"] not in DOMAINS:
            emit("error", message=f"unknown tau2 domain {cfg['domain']!r}: choose from {', '.join(DOMAINS)}")
            return 2
        offline_token_estimates()
        lighter_transcripts()
        emit("start", inspect_evals=version("inspect-evals"), inspect_ai=version("inspect-ai"))
        for which in ("agent", "baseline") if cfg.get("baseline", True) else ("agent",):
            done = run_one(cfg, which, run)
            if done["status"] != "success":
                emit(
                    "error",
                    message=f"the {which} evaluation ended with status {done['status']}: see {run / 'runner.log'}",
                )
                return 3
        emit("done")
        return 0
    except BaseException as exc:
        traceback.print_exc()
        emit("error", message=f"{type(exc).__name__}: {exc}")
        return 3


if __name__ == "__main__":
    sys.exit(main())
