"""``cm2data eval bfcl``: BFCL v4 multi-turn against any OpenAI-compatible endpoint (docs/eval.md).

The driver, on the toolkit's side: it checks the endpoint, builds (or reuses) the bfcl environment, writes the run's
``config.json``, runs ``runner_bfcl.py`` in that environment as one subprocess, follows its progress events, and reads
the per-entry outcomes back into ``summary.json`` and ``report.html``. It never imports ``bfcl_eval``.

The run folder ``OUT``:

* ``config.json`` — what the runner was asked to do (no API key); ``run.json`` — the run's identity (model and
  generation settings), checked when the folder is used again;
* ``results.jsonl`` — one row per generated entry (BFCL's result: per turn, per step, the model's tool calls or text,
  token counts, latencies, the inference log), appended as entries finish; a rerun resumes from it;
* ``outcomes.jsonl`` — one row per selected entry: ``outcome`` (pass, fail, error), ``error_type``, BFCL's checker
  error type and message, turns, steps, tool calls, undecodable steps, tokens;
* ``summary.json``, ``report.html``; ``runner.log`` (BFCL's own output); ``bfcl/`` (``BFCL_PROJECT_ROOT``, fresh for
  each run).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cm2data.eval.env import EvalError, clean_env, ensure_env, run_runner, tail

BENCHMARK = "bfcl-v4-multi-turn"
CATEGORIES = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")
ALIASES = {"multi_turn": CATEGORIES, "all": CATEGORIES}
RUNNER = Path(__file__).with_name("runner_bfcl.py")
RESULTS, OUTCOMES, SUMMARY, RUN, CONFIG, LOG = (
    "results.jsonl",
    "outcomes.jsonl",
    "summary.json",
    "run.json",
    "config.json",
    "runner.log",
)
#: cm2data's own error types (the others are BFCL's checker types, e.g. ``multi_turn:instance_state_mismatch``)
OWN_ERROR_TYPES = {
    "inference_error": "a request failed (endpoint down, timeout, HTTP error): the entry did not run to the end",
    "no_tool_calls": "the model made no tool call in the whole entry",
    "undecodable_tool_call": "a tool call could not be decoded (arguments not a JSON object, a name that is not an "
    "identifier); BFCL ends the turn there",
}
#: settings that make two runs different runs: a folder holding results of other settings is not resumed
IDENTITY = ("model", "temperature", "max_tokens")


@dataclass
class BfclSettings:
    base_url: str
    model: str | None  # None: the first model the server lists (filled in by run_bfcl)
    api_key: str = field(default="EMPTY", repr=False)
    categories: tuple[str, ...] = CATEGORIES
    limit: int | None = None
    ids: list[str] | None = None
    concurrency: int = 8
    temperature: float = 0.001  # BFCL's own default
    max_tokens: int | None = None
    timeout: float = 600.0
    max_retries: int = 2
    retry_errors: bool = True

    def config(self, out: Path) -> dict[str, Any]:
        """``config.json`` for the runner: everything but the API key (passed in the environment)."""
        d = asdict(self)
        d.pop("api_key")
        d["categories"] = list(self.categories)
        d["out"] = str(out)
        return d


# ------------------------------------------------------------------------------------------------------ inputs


def parse_categories(values: Iterable[str] | None) -> tuple[str, ...]:
    """``multi_turn_base,multi_turn_miss_func`` (or repeated options; ``multi_turn``/``all`` for the four) → the
    categories in BFCL's order."""
    chosen: set[str] = set()
    for value in values or ["multi_turn"]:
        for name in (v.strip() for v in value.split(",")):
            if not name:
                continue
            if name in ALIASES:
                chosen.update(ALIASES[name])
            elif name in CATEGORIES:
                chosen.add(name)
            elif f"multi_turn_{name}" in CATEGORIES:
                chosen.add(f"multi_turn_{name}")
            else:
                raise EvalError(f"unknown category {name!r}: choose from {', '.join(CATEGORIES)} (or multi_turn)")
    return tuple(c for c in CATEGORIES if c in chosen)


def read_ids(path: Path) -> list[str]:
    """Entry ids from a file: a JSON list, JSON lines with an ``id`` (an ``outcomes.jsonl``), or one id per line
    (``#`` comments and blank lines skipped). Order kept, duplicates dropped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EvalError(f"cannot read the ids file {path}: {exc}") from None
    ids: list[str] = []
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            data = json.loads(stripped)
        except ValueError as exc:
            raise EvalError(f"{path}: not a JSON list of ids: {exc}") from None
        ids = [str(x) for x in data]
    else:
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("{"):
                try:
                    line = str(json.loads(line)["id"])
                except (ValueError, KeyError, TypeError):
                    raise EvalError(f"{path}:{n}: a JSON line without an id") from None
            ids.append(line)
    if not ids:
        raise EvalError(f"{path}: no entry ids")
    foreign = [i for i in ids if i.rsplit("_", 1)[0] not in CATEGORIES or not i.rsplit("_", 1)[-1].isdigit()]
    if foreign:
        raise EvalError(
            f"{path}: not BFCL v4 multi-turn entry ids (e.g. multi_turn_base_0): "
            + ", ".join(foreign[:5])
            + (" …" if len(foreign) > 5 else "")
        )
    return list(dict.fromkeys(ids))


def served_models(base_url: str, api_key: str = "EMPTY", timeout: float = 5.0) -> list[str]:
    """The models an OpenAI-compatible server lists at ``GET /models``; :class:`EvalError` naming the URL when
    nothing answers there, or the answer is not a model list."""
    url = base_url.rstrip("/") + "/models"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise EvalError(
            f"the model server at {base_url} answered GET /models with HTTP {exc.code}: check the URL "
            "(it should end in /v1) and the API key"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EvalError(
            f"cannot reach the model server at {base_url}: {reason}. Nothing was run. Start it (cm2data "
            "serve, or recipes/eval_bfcl.sh on a GPU machine) or fix --base-url"
        ) from None
    except ValueError:
        raise EvalError(f"{url} did not answer with JSON: is {base_url} an OpenAI-compatible server?") from None
    models = [str(m.get("id")) for m in (data.get("data") or []) if isinstance(m, dict) and m.get("id")]
    if not models:
        raise EvalError(f"{url} lists no models")
    return models


def check_endpoint(base_url: str, model: str | None, api_key: str = "EMPTY", timeout: float = 5.0) -> str:
    """The model to evaluate: ``model`` when the server lists it, the first listed model when ``model`` is None."""
    models = served_models(base_url, api_key, timeout)
    if model is None:
        return models[0]
    if model not in models:
        raise EvalError(f"model {model!r} is not served at {base_url}; it serves: {', '.join(models)}")
    return model


# --------------------------------------------------------------------------------------------------- the run


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                if isinstance(row, dict):
                    rows.append(row)
    return rows


def read_outcomes(run: Path) -> list[dict[str, Any]]:
    rows = _read_jsonl(run / OUTCOMES)
    if not rows:
        raise EvalError(f"{run} holds no outcomes ({OUTCOMES}): not a finished cm2data eval run")
    return rows


def _prepare(out: Path, settings: BfclSettings, fresh: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    identity = {k: getattr(settings, k) for k in IDENTITY}
    run_file = out / RUN
    if fresh:
        for name in (RESULTS, OUTCOMES, SUMMARY, RUN, LOG, "report.html"):
            (out / name).unlink(missing_ok=True)
    elif run_file.exists():
        try:
            before = json.loads(run_file.read_text(encoding="utf-8"))
        except ValueError:
            before = {}
        if before.get("benchmark") not in (None, BENCHMARK):
            raise EvalError(f"{out} holds a {before.get('benchmark')} run: choose another --out")
        differs = {k: (before.get(k), v) for k, v in identity.items() if before.get(k) != v}
        if differs and (out / RESULTS).exists():
            said = ", ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in differs.items())
            raise EvalError(
                f"{out} holds results of another run ({said}): choose another --out, or --fresh to discard them"
            )
    run_file.write_text(
        json.dumps({"benchmark": BENCHMARK, **identity, "base_url": settings.base_url}, indent=2), encoding="utf-8"
    )
    for name in (OUTCOMES, SUMMARY, "report.html"):  # recomputed at the end: never left over from an earlier run
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "bfcl", ignore_errors=True)  # BFCL_PROJECT_ROOT: a fresh one for every run
    (out / "bfcl").mkdir()


def runner_command(python: Path, out: Path) -> list[str]:
    return [str(python), str(RUNNER), "--config", str(out / CONFIG)]


def run_bfcl(
    settings: BfclSettings,
    out: Path,
    *,
    fresh: bool = False,
    python: Path | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) BFCL v4 multi-turn into ``out``; return the summary (also written to ``summary.json``, with
    ``report.html``). The endpoint is checked first: nothing runs when it does not answer. Error rows (requests
    that failed) are counted in the summary, and a rerun of the same command runs them again."""
    out = out.resolve()
    settings.model = check_endpoint(settings.base_url, settings.model, settings.api_key)
    _prepare(out, settings, fresh)
    python = python or ensure_env("bfcl")
    (out / CONFIG).write_text(json.dumps(settings.config(out), indent=2), encoding="utf-8")
    env = clean_env(
        {
            "BFCL_PROJECT_ROOT": str(out / "bfcl"),
            "OPENAI_BASE_URL": settings.base_url,
            "OPENAI_API_KEY": settings.api_key or "EMPTY",
        }
    )
    env.pop("OPENAI_DEFAULT_HEADERS", None)
    started = datetime.now(UTC).isoformat()
    t0 = time.monotonic()
    rc, events, stderr = run_runner(runner_command(python, out), env=env, cwd=out / "bfcl", on_event=on_event)
    if rc < 0:
        done = sum(1 for e in events if e.get("event") == "row")
        raise EvalError(
            f"the BFCL runner was killed (signal {-rc}) after {done} entries of this run; they are kept "
            f"in {out / RESULTS}: run the same command to resume"
        )
    if rc != 0:
        said = next((e["message"] for e in reversed(events) if e.get("event") == "error"), None)
        if said and rc == 2:
            raise EvalError(said)
        raise EvalError(
            f"the BFCL runner failed (exit {rc}): {said or stderr.strip()[-500:]}\n{out / LOG} ends:\n{tail(out / LOG)}"
        )
    start = next((e for e in events if e.get("event") == "start"), {})
    summary = summarize(
        read_outcomes(out),
        settings=settings,
        started_at=started,
        seconds=time.monotonic() - t0,
        start_event=start,
        out=out,
    )
    write_summary(out, summary)
    return summary


# ---------------------------------------------------------------------------------------------------- summary


def summarize(
    outcomes: Sequence[dict[str, Any]],
    *,
    settings: BfclSettings | None = None,
    started_at: str | None = None,
    seconds: float | None = None,
    start_event: dict[str, Any] | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """Per-category and overall accuracy, error types, errors, tokens. ``overall.accuracy`` is BFCL's multi-turn
    overall: the unweighted mean of the category accuracies (over the categories run); ``overall.micro_accuracy``
    counts entries. Error rows (requests that failed) count as failures, as in BFCL, and are listed."""
    by_cat: dict[str, list[dict[str, Any]]] = {}
    for o in outcomes:
        by_cat.setdefault(o["category"], []).append(o)
    categories: dict[str, dict[str, Any]] = {}
    for cat in sorted(by_cat, key=lambda c: CATEGORIES.index(c) if c in CATEGORIES else 99):
        rows = by_cat[cat]
        outcome = Counter(o["outcome"] for o in rows)
        categories[cat] = {
            "entries": len(rows),
            "passed": outcome["pass"],
            "failed": outcome["fail"],
            "errors": outcome["error"],
            "accuracy": round(outcome["pass"] / len(rows), 4),
            "error_types": dict(Counter(o["error_type"] for o in rows if o["error_type"]).most_common()),
        }
    total = len(outcomes)
    passed = sum(c["passed"] for c in categories.values())
    errors = [o["id"] for o in outcomes if o["outcome"] == "error"]
    summary: dict[str, Any] = {
        "benchmark": BENCHMARK,
        "model": settings.model if settings else None,
        "base_url": settings.base_url if settings else None,
        "bfcl_eval": (start_event or {}).get("bfcl_eval"),
        "overall": {
            "entries": total,
            "passed": passed,
            "accuracy": round(sum(c["accuracy"] for c in categories.values()) / len(categories), 4)
            if categories
            else 0.0,
            "micro_accuracy": round(passed / total, 4) if total else 0.0,
        },
        "categories": categories,
        "error_types": dict(Counter(o["error_type"] for o in outcomes if o["error_type"]).most_common()),
        "error_rows": errors,
        "complete": not errors,
        "tokens": {
            "input": sum(int(o.get("input_tokens") or 0) for o in outcomes),
            "output": sum(int(o.get("output_tokens") or 0) for o in outcomes),
        },
        "tool_calls": sum(int(o.get("tool_calls") or 0) for o in outcomes),
        "resumed_entries": (start_event or {}).get("done_before", 0),
        "retried_error_rows": (start_event or {}).get("retrying_errors", 0),
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(),
        "seconds": round(seconds, 2) if seconds is not None else None,
        "settings": settings.config(out) if settings and out else None,
    }
    return summary


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    from cm2data.eval.report import write_bfcl_report

    (out / SUMMARY).write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    write_bfcl_report(out, summary, read_outcomes(out))
