"""One BFCL v4 multi-turn run, executed INSIDE the bfcl-eval environment (``scripts/install_eval.sh bfcl``).

This file is run as a script by that environment's interpreter (``cm2data.eval.bfcl`` builds the command); it
imports only the standard library, ``openai`` and ``bfcl_eval`` — never ``cm2data``, which is not installed there,
and the toolkit never imports this file's ``bfcl_eval`` side.

    python runner_bfcl.py --config RUN/config.json

What it does, in the run folder ``RUN`` (``config.json`` is written by the driver):

1. selects the entries (categories, ``limit`` per category, or explicit ``ids``) from the package's own data;
2. resumes: ``results.jsonl`` is read, a torn last line (a killed run) is dropped, the last row per id wins, rows of
   entries that hit an inference error are dropped so that they are run again (``retry_errors``); the file is
   rewritten compacted, so it never holds an id twice;
3. generates the missing entries with BFCL's own multi-turn loop (``BaseHandler.inference_multi_turn_FC``) through a
   handler registered at run time (``OpenAICompletionsHandler`` in function-calling mode, plus ``max_tokens``, a
   request timeout and a guard on tool-call names), ``concurrency`` entries at a time, appending one row per entry as
   soon as it is done;
4. scores every selected entry with BFCL's own multi-turn checker (``_evaluate_single_multi_turn_entry``: state and
   execution-result checks against the ground truth) — each new entry as soon as it is generated, while the others
   are in flight, the resumed ones at the end — and writes ``outcomes.jsonl`` (atomically): one row per entry with
   ``outcome`` pass/fail/error and its error type.

Progress goes to the original stdout as JSON lines (``{"event": ...}``); everything else (BFCL's own prints, tracebacks)
goes to ``RUN/runner.log``. The simulated APIs execute model-written calls with ``eval()``: that is why this runs in a
process of its own, and why tool-call names and argument keys must be plain identifiers here.
"""

from __future__ import annotations

import argparse
import builtins
import json
import keyword
import os
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from copy import deepcopy
from pathlib import Path
from typing import Any

CATEGORIES = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")
RESULTS = "results.jsonl"
OUTCOMES = "outcomes.jsonl"
REGISTRY_PREFIX = "cm2data-eval::"
_BUILTIN_NAMES = frozenset(dir(builtins))

_events: Any = None


def emit(event: str, **fields: Any) -> None:
    _events.write(json.dumps({"event": event, **fields}) + "\n")
    _events.flush()


def _redirect_output(log_path: Path) -> None:
    """Keep the original stdout for events; send fds 1 and 2 (BFCL's prints, tqdm, tracebacks) to the log."""
    global _events
    _events = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)


# ------------------------------------------------------------------------------------------------ results file


def read_rows(path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """The rows of a JSONL file, last one per id, and the number of unreadable lines (a torn write)."""
    rows: dict[str, dict[str, Any]] = {}
    bad = 0
    if not path.exists():
        return rows, 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(row, dict) and isinstance(row.get("id"), str):
                rows[row["id"]] = row
            else:
                bad += 1
    return rows, bad


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------- handler


def make_handler_class(cfg: dict[str, Any]) -> type:
    from bfcl_eval.model_handler.api_inference.openai_completion import OpenAICompletionsHandler
    from bfcl_eval.model_handler.utils import convert_to_function_call
    from openai import OpenAI

    class CM2DataHandler(OpenAICompletionsHandler):
        """BFCL's OpenAI-compatible function-calling handler, with the endpoint, key, timeout and retries of this run
        and ``max_tokens`` when set; tool calls whose name or argument keys are not plain identifiers are refused at
        decoding (BFCL would paste them into the string it ``eval()``s)."""

        def __init__(
            self, model_name: str, temperature: float, registry_name: str, is_fc_model: bool, **kwargs: Any
        ) -> None:
            super().__init__(model_name, temperature, registry_name, is_fc_model, **kwargs)
            self.client = OpenAI(
                base_url=cfg["base_url"],
                api_key=os.environ.get("OPENAI_API_KEY") or "EMPTY",
                timeout=float(cfg.get("timeout", 600)),
                max_retries=int(cfg.get("max_retries", 2)),
            )

        def _query_FC(self, inference_data: dict[str, Any]):
            # The request BFCL's handler sends (model, messages, tools, temperature), plus max_tokens when set. The
            # messages and tools go in as the JSON body itself (extra_body, which the SDK merges over its typed
            # parameters) instead of through the SDK's typed-dict transform, which walks every message and tool
            # schema on every request (a client call took 14.5 ms here against 3.7 ms for a plain POST of the same
            # 31 KB body; docs/benchmarks.md, "Eval harness overhead").
            # Assistant messages kept from earlier answers (SDK objects) are dumped as the SDK dumps them.
            message = inference_data["message"]
            tools = inference_data["tools"]
            body: dict[str, Any] = {"messages": [_plain(m) for m in message]}
            if tools:
                body["tools"] = tools
            kwargs: dict[str, Any] = {
                "messages": [],
                "model": self.model_name,
                "temperature": self.temperature,
                "extra_body": body,
            }
            if cfg.get("max_tokens"):
                kwargs["max_tokens"] = int(cfg["max_tokens"])
            return self.generate_with_backoff(**kwargs)

        def decode_execute(self, result: Any, has_tool_call_tag: bool) -> list[str]:
            check_calls(result)
            return convert_to_function_call(result)

    return CM2DataHandler


def _plain(message: Any) -> Any:
    """A chat message as JSON data: SDK objects (an earlier answer kept in the history) as the SDK's transform dumps
    them (fields the server set, JSON mode), dicts unchanged."""
    if hasattr(message, "model_dump"):
        return message.model_dump(mode="json", exclude_unset=True, exclude=getattr(message, "__api_exclude__", None))
    return message


def check_calls(result: Any) -> None:
    """Raise ValueError unless ``result`` is a list of ``{name: arguments}`` tool calls with a plain identifier as
    name (not a Python builtin or keyword, no leading underscore) and a JSON object of identifier keys as
    arguments."""
    if isinstance(result, dict):
        result = [result]
    if not isinstance(result, list):
        raise ValueError(f"not a list of tool calls: {type(result).__name__}")
    for call in result:
        if not isinstance(call, dict) or len(call) != 1:
            raise ValueError(f"not a tool call: {call!r:.200}")
        ((name, args),) = call.items()
        if not (
            isinstance(name, str)
            and name.isidentifier()
            and not keyword.iskeyword(name)
            and not name.startswith("_")
            and name not in _BUILTIN_NAMES
        ):
            raise ValueError(f"refused tool name {name!r:.200}")
        if isinstance(args, str):
            args = json.loads(args)
        if not isinstance(args, dict):
            raise ValueError(f"tool arguments are not a JSON object: {args!r:.200}")
        for key in args:
            if not (isinstance(key, str) and key.isidentifier() and not keyword.iskeyword(key)):
                raise ValueError(f"refused argument name {key!r:.200}")


def light_registry() -> None:
    """Put a light ``bfcl_eval.constants.model_config`` in place before anything imports the real one. The real
    module imports every vendor SDK of BFCL's model table (anthropic, google-genai, cohere, mistralai, qwen-agent,
    boto3, …: 6 s of CPU, 20 s wall on a busy 2-core machine) only to fill that table; a run here needs one entry,
    registered by :func:`register`. Same ``ModelConfig`` fields (bfcl-eval 2026.3.23), an empty table."""
    import dataclasses
    import types

    name = "bfcl_eval.constants.model_config"
    if name in sys.modules:
        return
    module = types.ModuleType(name)

    @dataclasses.dataclass
    class ModelConfig:
        model_name: str
        display_name: str
        url: str
        org: str
        license: str
        model_handler: Any
        input_price: float | None = None
        output_price: float | None = None
        is_fc_model: bool = True
        underscore_to_dot: bool = False

    module.ModelConfig = ModelConfig  # type: ignore[attr-defined]
    module.MODEL_CONFIG_MAPPING = {}  # type: ignore[attr-defined]
    sys.modules[name] = module


def register(cfg: dict[str, Any]) -> str:
    from bfcl_eval.constants.model_config import MODEL_CONFIG_MAPPING, ModelConfig

    registry = REGISTRY_PREFIX + cfg["model"]
    MODEL_CONFIG_MAPPING[registry] = ModelConfig(
        model_name=cfg["model"],
        display_name=f"{cfg['model']} (FC, cm2data)",
        url=cfg["base_url"],
        org="cm2data",
        license="unknown",
        model_handler=make_handler_class(cfg),
        input_price=None,
        output_price=None,
        is_fc_model=True,
        underscore_to_dot=False,
    )
    return registry


def build_handler(registry: str, temperature: float) -> Any:
    from bfcl_eval.constants.model_config import MODEL_CONFIG_MAPPING

    config = MODEL_CONFIG_MAPPING[registry]
    return config.model_handler(
        model_name=config.model_name, temperature=temperature, registry_name=registry, is_fc_model=config.is_fc_model
    )


# --------------------------------------------------------------------------------------------------- selection


def select(cfg: dict[str, Any]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The selected ids (in :func:`order`) and their entries as BFCL's generation loads them."""
    from bfcl_eval.utils import load_dataset_entry, sort_key

    ids = cfg.get("ids")
    categories = list(cfg.get("categories") or CATEGORIES)
    if ids:
        foreign = [i for i in ids if i.rsplit("_", 1)[0] not in CATEGORIES]
        if foreign:
            emit("error", message=f"{len(foreign)} ids are not BFCL v4 multi-turn entries: {', '.join(foreign[:10])}")
            raise SystemExit(2)
        categories = [c for c in CATEGORIES if any(i.rsplit("_", 1)[0] == c for i in ids)]
    entries: dict[str, dict[str, Any]] = {}
    chosen: list[str] = []
    for cat in categories:
        if cat not in CATEGORIES:
            raise SystemExit(f"unknown category {cat!r}")
        loaded = sorted(load_dataset_entry(cat), key=sort_key)
        for e in loaded:
            entries[e["id"]] = e
        if not ids:
            limit = cfg.get("limit")
            chosen.extend(e["id"] for e in (loaded[:limit] if limit else loaded))
    if ids:
        unknown = [i for i in ids if i not in entries]
        if unknown:
            emit("error", message=f"{len(unknown)} unknown entry ids: {', '.join(unknown[:10])}")
            raise SystemExit(2)
        chosen = list(dict.fromkeys(ids))
    chosen.sort(key=order)
    return chosen, {i: entries[i] for i in chosen}


def order(entry_id: str) -> tuple[int, int]:
    """Categories in BFCL's leaderboard order (base, miss_func, miss_param, long_context), then by index."""
    category, _, index = entry_id.rpartition("_")
    return CATEGORIES.index(category), int(index)


# -------------------------------------------------------------------------------------------------- generation


def infer_one(handler: Any, entry: dict[str, Any]) -> dict[str, Any]:
    started = time.time()
    t0 = time.monotonic()
    try:
        result, metadata = handler.inference(deepcopy(entry), include_input_log=False, exclude_state_log=True)
        error = None
    except Exception as exc:  # BFCL's own loop records the exception as the entry's result and goes on
        traceback.print_exc()
        result = f"Error during inference: {exc}"
        metadata = {}
        error = {"type": type(exc).__name__, "message": str(exc)[:2000]}
    from bfcl_eval.utils import make_json_serializable

    row = {
        "id": entry["id"],
        "category": entry["id"].rsplit("_", 1)[0],
        "result": result,
        "error": error,
        "seconds": round(time.monotonic() - t0, 3),
        "started_at": started,
        "finished_at": time.time(),
        **metadata,
    }
    return make_json_serializable(row)


def generate(
    cfg: dict[str, Any],
    handler: Any,
    todo: list[str],
    entries: dict[str, dict[str, Any]],
    results_path: Path,
    on_row: Any = None,
) -> int:
    """Run ``todo`` through the model, appending one row per entry to ``results.jsonl`` (and passing it to
    ``on_row`` while the other entries are in flight); the number of error rows."""
    errors = 0
    workers = max(1, int(cfg.get("concurrency", 8)))
    with open(results_path, "a", encoding="utf-8") as out, ThreadPoolExecutor(max_workers=workers) as pool:
        pending = iter(todo)
        in_flight: dict[Any, str] = {}

        def submit_next() -> bool:
            entry_id = next(pending, None)
            if entry_id is None:
                return False
            in_flight[pool.submit(infer_one, handler, entries[entry_id])] = entry_id
            return True

        while len(in_flight) < workers and submit_next():
            pass
        while in_flight:
            done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
            for fut in done:
                entry_id = in_flight.pop(fut)
                row = fut.result()
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                out.flush()
                errors += row["error"] is not None
                emit("row", id=entry_id, error=row["error"]["type"] if row["error"] else None)
                submit_next()
                if on_row is not None:
                    on_row(json.loads(json.dumps(row)))  # scored as it will be read back
    return errors


# -------------------------------------------------------------------------------------------------- evaluation


def _count_steps(handler: Any, result: Any) -> tuple[dict[str, int], str | None]:
    """Turns, steps, tool calls and undecodable steps of an entry's result, and the first decoding error."""
    turns = steps = tool_calls = undecodable = 0
    first_error = None
    if isinstance(result, list):
        for turn in result:
            turns += 1
            for step in turn if isinstance(turn, list) else []:
                steps += 1
                if isinstance(step, list | dict):
                    tool_calls += len(step) if isinstance(step, list) else 1
                    try:
                        handler.decode_execute(step, has_tool_call_tag=False)
                    except Exception as exc:
                        undecodable += 1
                        first_error = first_error or f"{type(exc).__name__}: {exc}"
    return {"turns": turns, "steps": steps, "tool_calls": tool_calls, "undecodable_steps": undecodable}, first_error


def _sum_nested(value: Any) -> float:
    if isinstance(value, list):
        return sum(_sum_nested(v) for v in value)
    return float(value) if isinstance(value, int | float) else 0.0


class Evaluator:
    """BFCL's multi-turn checker over the rows of this run, one entry at a time. The simulated API instances live in
    a module-level table keyed by model and entry id, so an entry is scored at most once per process."""

    def __init__(self, handler: Any, registry: str, chosen: list[str]):
        from bfcl_eval.utils import load_dataset_entry, load_ground_truth_entry

        self.handler = handler
        self.model_dir = registry.replace("/", "_")
        self.prompts: dict[str, dict[str, Any]] = {}
        self.truths: dict[str, list] = {}
        for cat in sorted({i.rsplit("_", 1)[0] for i in chosen}):
            prompt = load_dataset_entry(cat, include_prereq=False, include_language_specific_hint=False)
            truth = load_ground_truth_entry(cat)
            for p, t in zip(prompt, truth, strict=True):  # aligned by position, as BFCL's evaluation aligns them
                self.prompts[p["id"]] = p
                self.truths[p["id"]] = t["ground_truth"]
        self.outcomes: dict[str, dict[str, Any]] = {}

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        entry_id = row["id"]
        if entry_id not in self.outcomes:
            self.outcomes[entry_id] = self._score(entry_id, row)
        return self.outcomes[entry_id]

    def _score(self, entry_id: str, row: dict[str, Any]) -> dict[str, Any]:
        from bfcl_eval.eval_checker.eval_runner import _evaluate_single_multi_turn_entry

        category = entry_id.rsplit("_", 1)[0]
        counts, decode_error = _count_steps(self.handler, row.get("result"))
        base = {
            "id": entry_id,
            "category": category,
            **counts,
            "input_tokens": int(_sum_nested(row.get("input_token_count"))),
            "output_tokens": int(_sum_nested(row.get("output_token_count"))),
            "latency_s": round(_sum_nested(row.get("latency")), 3),
            "seconds": row.get("seconds"),
        }
        if row.get("error"):
            return {
                **base,
                "outcome": "error",
                "error_type": "inference_error",
                "checker_error_type": None,
                "error_message": f"{row['error']['type']}: {row['error']['message'][:500]}",
            }
        try:
            checked = _evaluate_single_multi_turn_entry(
                self.handler,
                entry_id,
                row["result"],
                self.truths[entry_id],
                deepcopy(self.prompts[entry_id]),
                self.model_dir,
                category,
            )
        except Exception as exc:  # the checker itself failed on this entry: a failure with its reason, not a crash
            traceback.print_exc()
            checked = {
                "valid": False,
                "error": {"error_type": "multi_turn:checker_error", "error_message": f"{type(exc).__name__}: {exc}"},
            }
        if checked.get("valid"):
            return {**base, "outcome": "pass", "error_type": None, "checker_error_type": None, "error_message": None}
        err = checked.get("error") or {}
        checker_type = err.get("error_type") or "multi_turn:unknown"
        message = err.get("error_message")
        if isinstance(message, list):
            message = " ".join(str(m) for m in message)
        if counts["undecodable_steps"]:
            error_type = "undecodable_tool_call"
            message = (
                f"{counts['undecodable_steps']} undecodable tool-call step(s), the first: {decode_error}; "
                f"then the checker: {message}"
            )
        elif counts["tool_calls"] == 0:
            error_type = "no_tool_calls"
        else:
            error_type = checker_type
        return {
            **base,
            "outcome": "fail",
            "error_type": error_type,
            "checker_error_type": checker_type,
            "error_message": str(message)[:500] if message else None,
        }


# -------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path)
    args = parser.parse_args(argv)
    cfg = json.loads(args.config.read_text(encoding="utf-8"))
    run = Path(cfg["out"])
    _redirect_output(run / "runner.log")
    os.environ.setdefault("BFCL_PROJECT_ROOT", str(run / "bfcl"))  # read by bfcl_eval at import
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"# cm2data runner_bfcl: pid {os.getpid()} config {args.config}", flush=True)
    t0 = time.monotonic()
    try:
        from importlib.metadata import version

        light_registry()
        registry = register(cfg)
        handler = build_handler(registry, float(cfg.get("temperature", 0.001)))
        chosen, entries = select(cfg)
        results_path = run / RESULTS
        rows, torn = read_rows(results_path)
        retried = [i for i, r in rows.items() if r.get("error")] if cfg.get("retry_errors", True) else []
        for i in retried:
            rows.pop(i)
        write_rows(results_path, list(rows.values()))  # compacted: one row per id, no torn line
        todo = [i for i in chosen if i not in rows]
        emit(
            "start",
            total=len(chosen),
            done_before=len(chosen) - len(todo),
            todo=len(todo),
            torn_lines=torn,
            retrying_errors=len(retried),
            bfcl_eval=version("bfcl-eval"),
            import_seconds=round(time.monotonic() - t0, 2),
        )
        evaluator = Evaluator(handler, registry, chosen)
        errors = generate(cfg, handler, todo, entries, results_path, on_row=evaluator) if todo else 0
        rows, _ = read_rows(results_path)
        emit("evaluating", entries=len(chosen), scored_already=len(evaluator.outcomes))
        outcomes = [evaluator(rows[i]) for i in chosen]
        write_rows(run / OUTCOMES, outcomes)
        emit("done", entries=len(outcomes), new_error_rows=errors, seconds=round(time.monotonic() - t0, 2))
        return 0
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2
    except BaseException as exc:
        traceback.print_exc()
        emit("error", message=f"{type(exc).__name__}: {exc}")
        return 3


if __name__ == "__main__":
    sys.exit(main())
