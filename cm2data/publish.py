"""Publish a validated dataset folder to the Hugging Face Hub in one commit, and pull one back.

``build_tree(src, out)`` runs the validation gate and writes into ``out`` exactly the repository tree that
``publish`` uploads: a Hub-layout dataset with the configs ``dialogues`` (the canonical records, written by
:mod:`cm2data.store`), ``checklist_items`` (one flat row per checklist item) and, on request, the trainer exports of
the :data:`EXPORTERS` registry; ``README.md`` (the card, :mod:`cm2data.card`) and its plots under ``assets/``.

``publish`` then talks to the Hub through the real ``huggingface_hub`` client (``HF_ENDPOINT`` picks another
endpoint, as everywhere in the Hub's clients; without it, the real Hub): ``whoami`` → ``create_repo`` →
one ``create_commit`` that adds changed files and deletes files the new version no longer has, with
``parent_commit`` set so that a concurrent change is refused rather than overwritten → optional ``create_tag``.
Identical content makes no commit. Nothing is sent before the gate has passed, and a failure anywhere before the
commit call returns leaves the repository as it was (uploaded LFS objects stay unreferenced).

The token comes from ``HF_TOKEN`` or the ``huggingface_hub`` login (``hf auth login``); it is passed to the client
and never printed or written.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import inspect
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cm2data import __version__, card, store
from cm2data.rejects import Reject, read_rejects
from cm2data.schema import Dialogue
from cm2data.validate import GateResult, RuleConfig, run_gate

CHECKLIST_ITEMS = "checklist_items"
REPO_TYPE = "dataset"
BRANCH = "main"
#: Remote files a publish never deletes.
ALWAYS_KEEP = (".gitattributes",)

CHECKLIST_ITEM_SCHEMA = pa.schema(
    [
        ("dialogue_id", pa.string()),
        ("variant", pa.int64()),
        ("turn", pa.int64()),
        ("item_id", pa.string()),
        ("question", pa.string()),
        ("pass_condition", pa.string()),
        ("focus_on", pa.string()),
        ("weight", pa.float64()),
        ("required_for_next_turn", pa.bool_()),
        ("depends_on", pa.list_(pa.string())),
        ("evidence", pa.string()),
        ("failure_examples", pa.list_(pa.string())),
        ("domain", pa.string()),
        ("source", pa.string()),
        ("extra_info", pa.string()),
    ]
)


class PublishError(Exception):
    """A publish or pull that stopped. The message is meant for the user; it never contains the token."""


class GateFailed(PublishError):
    """The validation gate refused the dataset: nothing was uploaded."""

    def __init__(self, result: GateResult, read_rejects_: list[Reject]) -> None:
        self.result = result
        self.read_rejects = read_rejects_
        failing = {rule: n for rule, n in result.counts.items() if n}
        for r in read_rejects_:
            failing[r.rule] = failing.get(r.rule, 0) + 1
        self.failing = failing
        n_bad = len(result.rejected_ids) + len(read_rejects_)
        rules = ", ".join(f"{rule} ({n})" for rule, n in sorted(failing.items(), key=lambda kv: -kv[1]))
        super().__init__(f"validation failed: {n_bad} of {result.checked + len(read_rejects_)} records break a rule "
                         f"— {rules}; nothing was uploaded")

    @property
    def rejects(self) -> list[Reject]:
        return [*self.read_rejects, *self.result.rejects]


# ------------------------------------------------------------------------------------------------ exporters


@dataclass
class Exporter:
    """A trainer export published as an extra config (``--with NAME``).

    ``build(records, split)`` returns the config's rows as an Arrow table. When ``build`` is not set, ``target``
    (``"module:function"``) is imported lazily, provided the exporter module ``requires`` imports: the exporter
    modules of the other issues plug in by existing, or by calling :func:`register_exporter`.
    """

    name: str
    config: str
    label: str
    command: str
    target: str | None = None
    description: str = ""
    build: Callable[[Sequence[Dialogue], str], pa.Table] | None = None
    requires: str | None = None

    def load(self) -> Callable[[Sequence[Dialogue], str], pa.Table] | None:
        if self.build is not None:
            return self.build
        if not self.target:
            return None
        module_name, _, attr = self.target.partition(":")
        for name in (self.requires, module_name):
            if name is None:
                continue
            try:
                module = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
                    return None
                raise
        fn = getattr(module, attr, None)
        return fn if callable(fn) else None


LLAMAFACTORY_SCHEMA = pa.schema([
    ("dialogue_id", pa.string()),
    ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ("tools", pa.string()),
])


def llamafactory_table(records: Sequence[Dialogue], split: str) -> pa.Table:
    """The ``sft`` config: LLaMA-Factory rows (sharegpt formatting, role/content tags, the reference's ``inline``
    style and ``qwen3`` template) from :mod:`cm2data.export.llamafactory`, one row per exported dialogue.
    Dialogues the exporter has to drop are left out; truncated ones keep their complete turns."""
    from cm2data.export.llamafactory import ExportOptions, convert

    options = ExportOptions()
    rows = []
    for d in records:
        converted, _reject = convert(d, options)
        rows += [{"dialogue_id": d.id, "messages": r["messages"], "tools": r["tools"]} for r in converted]
    return pa.Table.from_pylist(rows, schema=LLAMAFACTORY_SCHEMA)


def verl_table(records: Sequence[Dialogue], split: str, start: int = 0) -> pa.Table:
    """The ``rl`` config: VeRL RL rows (:func:`cm2data.export.verl.to_verl_row`: ``prompt``, ``reward_model`` with
    the checklists as ground truth, ``extra_info`` with the whole dialogue as JSON strings), one per dialogue that has
    a checklist; ``extra_info.index`` is the dialogue's position in its split."""
    from cm2data.export.verl import to_verl_row

    rows = []
    for i, d in enumerate(records):
        try:
            rows.append(to_verl_row(d, start + i, split))
        except ValueError:  # no checklist or no user turn: VeRL has nothing to reward
            continue
    return pa.Table.from_pylist(rows) if rows else pa.table({})


#: ``--with`` names. An exporter that is not installed (its module does not import) makes ``--with`` fail with a
#: message that names it; another one plugs in by a registry entry or :func:`register_exporter`.
EXPORTERS: dict[str, Exporter] = {
    "sft": Exporter("sft", "sft_llamafactory", "LLaMA-Factory SFT export", "cm2data export llamafactory",
                    "cm2data.publish:llamafactory_table",
                    "LLaMA-Factory rows (sharegpt formatting with role/content tags, `messages` + `tools`; "
                    "inline tool calls, qwen3 template) for the supervised cold start",
                    requires="cm2data.export.llamafactory"),
    "rl": Exporter("rl", "rl_verl", "VeRL RL export", "cm2data export verl", "cm2data.publish:verl_table",
                   "rows in VeRL 0.9.1's RL dataset schema (`prompt`, `reward_model` with the checklists as ground "
                   "truth, `extra_info` with the dialogue and tools as JSON strings) for GRPO with checklist rewards",
                   requires="cm2data.export.verl"),
}


def register_exporter(name: str, config: str, build: Callable[[Sequence[Dialogue], str], pa.Table], *,
                      label: str | None = None, command: str = "", description: str = "") -> Exporter:
    """Register (or replace) the exporter published by ``--with NAME`` as the config ``config``."""
    exporter = Exporter(name, config, label or name, command, None, description, build)
    EXPORTERS[name] = exporter
    return exporter


def resolve_exporters(names: Sequence[str]) -> list[tuple[Exporter, Callable[[Sequence[Dialogue], str], pa.Table]]]:
    out = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        exporter = EXPORTERS.get(name)
        if exporter is None:
            raise PublishError(f"unknown --with {name!r}; known: {', '.join(sorted(EXPORTERS))}")
        build = exporter.load()
        if build is None:
            where = f" ({exporter.requires or exporter.target})" if exporter.target else ""
            raise PublishError(
                f"--with {name}: the {exporter.label} is not available yet — its exporter"
                f"{' (`' + exporter.command + '`)' if exporter.command else ''} is not installed in this "
                f"cm2data{where}; publish without --with {name}, or once the exporter exists")
        out.append((exporter, build))
    return out


# ------------------------------------------------------------------------------------------- the tree


def checklist_items_table(records: Sequence[Dialogue]) -> pa.Table:
    """One flat row per checklist item (every variant, every turn), in record order."""
    cols: dict[str, list[Any]] = {f.name: [] for f in CHECKLIST_ITEM_SCHEMA}
    for d in records:
        domain = d.metadata.get("domain")
        domain = None if domain is None else str(domain)
        for v, variant in enumerate(d.checklists):
            for block in variant:
                for it in block.items:
                    cols["dialogue_id"].append(d.id)
                    cols["variant"].append(v)
                    cols["turn"].append(block.turn)
                    cols["item_id"].append(it.id)
                    cols["question"].append(it.question)
                    cols["pass_condition"].append(it.pass_condition)
                    cols["focus_on"].append(it.focus_on)
                    cols["weight"].append(it.weight)
                    cols["required_for_next_turn"].append(it.required_for_next_turn)
                    cols["depends_on"].append(list(it.depends_on))
                    cols["evidence"].append(store._dumps([e.to_dict() for e in it.evidence]))
                    cols["failure_examples"].append(list(it.failure_examples))
                    cols["domain"].append(domain)
                    cols["source"].append(d.source)
                    cols["extra_info"].append(store._dumps(it.extra_info) if it.extra_info else None)
    return pa.table(cols, schema=CHECKLIST_ITEM_SCHEMA)


@dataclass
class Tree:
    """A built repository tree: the folder, its files and what they hold."""

    root: Path
    records: int
    items: int
    configs: dict[str, dict[str, int]]
    files: dict[str, Path] = field(default_factory=dict)

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files.values())


class _Shard:
    """The rows of one output shard of every config, kept as Arrow tables until the shard is complete."""

    def __init__(self) -> None:
        self.parts: dict[str, list[pa.Table]] = {}

    def add(self, config: str, table: pa.Table) -> None:
        self.parts.setdefault(config, []).append(table)

    def write(self, out: Path, split: str, index: int, total: int) -> dict[str, int]:
        rows = {}
        for config, parts in self.parts.items():
            tables = [t for t in parts if t.num_columns]  # an exporter may return pa.table({}) for "no rows"
            if not tables:
                continue
            table = pa.concat_tables(tables).combine_chunks()  # contiguous, as store.write_table writes it
            target = store.data_dir(out, config)
            target.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, target / f"{split}-{index:05d}-of-{total:05d}.parquet", compression="zstd")
            rows[config] = table.num_rows
        self.parts.clear()
        return rows


def _read_chunks(paths: Sequence[Path], size: int) -> Iterator[tuple[list[Dialogue], list[Reject]]]:
    """The records of a split's parquet files, ``size`` rows at a time across file boundaries; rows and files
    that do not read become ``read`` rejects (as in :mod:`cm2data.sources`)."""
    from pydantic import ValidationError

    records: list[Dialogue] = []
    rejects: list[Reject] = []
    pending = 0
    for path in paths:
        offset = 0
        try:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=min(size, 4096)):
                for i, row in enumerate(batch.to_pylist()):
                    try:
                        records.append(store.from_row(row))
                    except (ValidationError, ValueError, KeyError, TypeError) as exc:
                        rejects.append(Reject(row.get("id"), "read", "record_schema", str(exc).splitlines()[0],
                                              f"{path.name}#{offset + i}"))
                    pending += 1
                    if pending == size:
                        yield records, rejects
                        records, rejects, pending = [], [], 0
                offset += batch.num_rows
        except Exception as exc:  # pyarrow raises several types for damaged files
            rejects.append(Reject(None, "read", "parquet_unreadable", f"{type(exc).__name__}: {exc}",
                                  f"{path.name}#{offset}"))
    if pending or rejects:
        yield records, rejects


def build_tree(src: Path, out: Path, *, repo_id: str | None = None, with_: Sequence[str] = (),
               license: str | None = None, pretty_name: str | None = None, thinking: str = "auto",
               rows_per_file: int = 50_000, chunk: int = 5_000) -> Tree:
    """Validate ``src`` and write into ``out`` (absent or empty) exactly the tree that :func:`publish` uploads.

    The folder is streamed ``chunk`` records at a time: each chunk is read, gated and turned into Arrow rows of
    every config, so memory holds one chunk of records plus one shard (``rows_per_file`` dialogues, as
    :func:`cm2data.store.write_dataset` shards) of rows. Ids are checked for uniqueness across the whole dataset.
    Raises :class:`GateFailed` (after checking everything, and leaving ``out`` empty) unless every row reads and
    passes every rule.
    """
    exporters = resolve_exporters(with_)
    if not store.is_dataset_folder(src):
        raise PublishError(f"{src} is not a cm2data dataset folder (no data/{store.DIALOGUES}/*.parquet)")
    if out.exists() and any(out.iterdir()):
        raise PublishError(f"{out} exists and is not empty; choose a new folder")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    config = RuleConfig(thinking=thinking)
    summary = card.Summary()
    counts: Counter[str] = Counter({name: 0 for name in _gate_rules()})
    gate_rejects: list[Reject] = []
    read_rejects_: list[Reject] = []
    checked = 0
    seen: set[str] = set()
    configs: dict[str, dict[str, int]] = {}
    try:
        for split, paths in store.split_files(src).items():
            total_rows = sum(pq.read_metadata(p).num_rows for p in paths)
            n_files = max(1, -(-total_rows // rows_per_file))
            shard, index, in_shard, done = _Shard(), 0, 0, 0
            for records, rejects in _read_chunks(paths, chunk):
                fresh = []
                for d in records:
                    if d.id in seen:
                        rejects.append(Reject(d.id, "read", "duplicate_id",
                                              f"record id {d.id!r} appears more than once in the dataset"))
                    else:
                        seen.add(d.id)
                        fresh.append(d)
                read_rejects_ += rejects
                result = run_gate(fresh, config=config)
                checked += result.checked
                counts.update(result.counts)
                gate_rejects += result.rejects
                if read_rejects_ or gate_rejects:
                    continue  # keep checking, to report every failure; write nothing more
                summary.add(fresh)
                pos = 0
                while pos < len(fresh):  # pieces that never straddle a shard boundary
                    piece = fresh[pos:pos + rows_per_file - in_shard]
                    shard.add(store.DIALOGUES, store.records_table(piece))
                    shard.add(CHECKLIST_ITEMS, checklist_items_table(piece))
                    for exporter, build in exporters:
                        shard.add(exporter.config, _run_exporter(build, piece, split, done))
                    pos += len(piece)
                    done += len(piece)
                    in_shard += len(piece)
                    if in_shard == rows_per_file:
                        _count(configs, split, shard.write(out, split, index, n_files))
                        index, in_shard = index + 1, 0
            if shard.parts and not (read_rejects_ or gate_rejects):
                _count(configs, split, shard.write(out, split, index, n_files))
        if read_rejects_ or gate_rejects:
            raise GateFailed(GateResult([], gate_rejects, counts, checked, list(counts)), read_rejects_)
        if not summary.dialogues:
            raise PublishError(f"{src} holds no records")
        # a config with no rows at all (no checklists, an export that kept nothing) is left out
        for cfg, splits in list(configs.items()):
            if not any(splits.values()):
                shutil.rmtree(store.data_dir(out, cfg))
                del configs[cfg]
            else:
                configs[cfg] = {s: n for s, n in splits.items() if n}
        order = [store.DIALOGUES, CHECKLIST_ITEMS, *(e.config for e, _ in exporters)]
        configs = {cfg: configs[cfg] for cfg in order if cfg in configs}

        source_header = store.read_card_header(src)
        license = license or source_header.get("license") or "unknown"
        title = pretty_name or source_header.get("pretty_name") or (repo_id.split("/")[-1] if repo_id else src.name)
        stats = summary.stats()
        plots = card.write_plots(out, stats, summary.agreement)
        docs = {store.DIALOGUES: "the canonical records: one dialogue per row, with tools, checklists, provenance "
                                 "and review", CHECKLIST_ITEMS: "one flat row per checklist item"}
        for exporter, _ in exporters:
            docs[exporter.config] = exporter.description or exporter.label
        body = card.card_body(
            title=title, repo_id=repo_id, summary=summary, stats=stats, configs=configs, config_docs=docs,
            plots=plots, gate_rules=_gate_rules(), thinking=thinking,
            rejects=card.rejects_summary(read_rejects(src / store.REJECTS_FILE)), license=license,
            pipeline_config=card.read_pipeline_config(src), judge_agreement=card.read_judge_agreement(src),
        )
        header = card.card_header(n_dialogues=summary.dialogues, license=license, pretty_name=title,
                                  source_header=source_header)
        store.write_card(out, body=body, extra_header=header)
    except BaseException:
        _empty(out, remove=created)
        raise
    files = {p.relative_to(out).as_posix(): p for p in sorted(out.rglob("*")) if p.is_file()}
    n_items = sum(configs.get(CHECKLIST_ITEMS, {}).values())
    return Tree(out, summary.dialogues, n_items, configs, files)


def _run_exporter(build: Callable[..., pa.Table], records: Sequence[Dialogue], split: str, start: int) -> pa.Table:
    """``build(records, split)``, with ``start=`` (the position of ``records[0]`` in the split) if it takes one."""
    try:
        takes_start = "start" in inspect.signature(build).parameters
    except (TypeError, ValueError):
        takes_start = False
    return build(records, split, start=start) if takes_start else build(records, split)


def _count(configs: dict[str, dict[str, int]], split: str, rows: dict[str, int]) -> None:
    for cfg, n in rows.items():
        configs.setdefault(cfg, {}).setdefault(split, 0)
        configs[cfg][split] += n


def _empty(folder: Path, *, remove: bool) -> None:
    if not folder.exists():
        return
    if remove:
        shutil.rmtree(folder)
        return
    for child in folder.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def _gate_rules() -> list[str]:
    from cm2data.validate import rule_names

    return rule_names()


# ----------------------------------------------------------------------------------------------- the Hub


@dataclass
class PublishResult:
    repo_id: str
    url: str
    commit: str | None  # the new commit, None when nothing changed
    head: str  # the commit main points at afterwards
    added: list[str]
    deleted: list[str]
    unchanged: list[str]
    tag: str | None
    bytes_uploaded: int
    records: int
    items: int

    @property
    def changed(self) -> bool:
        return self.commit is not None


def endpoint() -> str:
    """The Hub endpoint: ``HF_ENDPOINT`` when set (read now, not at import), else the real Hub."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants._HF_DEFAULT_ENDPOINT).rstrip("/")


def resolve_token(token: str | None = None) -> str:
    """``token``, else ``HF_TOKEN``, else the token saved by ``hf auth login``; :class:`PublishError` if none."""
    from huggingface_hub import get_token

    found = token or get_token()
    if not found:
        raise PublishError("no Hugging Face token: set HF_TOKEN or log in with `hf auth login` "
                           "(a token with write access is needed to publish)")
    return found


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PublishError(f"bad repo id {repo_id!r}: expected ORG/NAME (for example my-org/my-checklists)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise PublishError(f"bad repo id {repo_id!r}: {exc}") from None


def check_tag(tag: str) -> None:
    bad = (" ", "~", "^", ":", "?", "*", "[", "\\", "..", "@{", "//")
    if not tag or any(b in tag for b in bad) or tag.startswith(("/", ".", "-")) or tag.endswith(("/", ".lock", ".")):
        raise PublishError(f"bad tag {tag!r}: use a git ref name such as v1.0")


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"),
                         ("requests", "ConnectionError"), ("requests", "Timeout")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


@contextmanager
def hub_errors(action: str, repo_id: str, *, user: dict[str, Any] | None = None,
               committed: bool = False, state: str | None = None) -> Iterator[None]:
    """Turn the client's exceptions into :class:`PublishError` messages that say what happened and what to do.

    The client wraps some errors (an LFS upload failing inside its thread pool becomes a ``RuntimeError``): the
    cause chain is searched for the error that explains it. Anything unrecognised propagates unchanged.
    """
    state = state or ("the commit was made" if committed else "nothing was committed: the repository is as it was")
    try:
        yield
    except PublishError:
        raise
    except Exception as exc:
        translated = _translate(exc, action, repo_id, user, state)
        if translated is None:
            raise
        raise translated from None


def _translate(exc: BaseException, action: str, repo_id: str, user: dict[str, Any] | None,
               state: str) -> PublishError | None:
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalTokenNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    known = (LocalTokenNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, *_network_errors())
    cause = next((e for e in chain if isinstance(e, known)), None)
    if cause is None:
        return None
    where = "" if cause is exc else f" ({_first_line(exc)})"
    if isinstance(cause, LocalTokenNotFoundError):
        return PublishError("no Hugging Face token: set HF_TOKEN or log in with `hf auth login`")
    if isinstance(cause, OfflineModeIsEnabled):
        return PublishError(f"{action}: HF_HUB_OFFLINE is set; unset it to talk to the Hub; {state}")
    if isinstance(cause, RepositoryNotFoundError):
        status = cause.response.status_code if cause.response is not None else None
        return PublishError(f"{action}: repository {repo_id} not found or not accessible"
                            f"{f' (HTTP {status})' if status else ''}{_namespace_hint(repo_id, user)}{where}; "
                            f"{state}")
    if isinstance(cause, RevisionNotFoundError):
        return PublishError(f"{action}: revision not found in {repo_id}{where}; {state}")
    if isinstance(cause, HfHubHTTPError):
        status = cause.response.status_code if cause.response is not None else None
        server = _server_message(cause)
        if status == 401:
            return PublishError(f"{action}: the Hub rejected the token (401 Unauthorized{server}){where}; check "
                                f"HF_TOKEN or log in again with `hf auth login`; {state}")
        if status == 403:
            return PublishError(f"{action}: permission denied for {repo_id} (403 Forbidden{server})"
                                f"{_namespace_hint(repo_id, user)}{where}; the token needs write access to the "
                                f"namespace {repo_id.split('/')[0]!r}; {state}")
        if status == 412:
            return PublishError(f"{action}: {repo_id} changed on the Hub while publishing (412){where}; {state}. "
                                "Run the command again.")
        return PublishError(f"{action}: the Hub answered HTTP {status}{server}{where}; {state}")
    return PublishError(f"{action}: network failure talking to {endpoint()} ({type(cause).__name__}: "
                        f"{_first_line(cause)}){where}; {state}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _server_message(exc: Any) -> str:
    msg = getattr(exc, "server_message", None)
    if not msg and getattr(exc, "response", None) is not None:
        msg = exc.response.headers.get("X-Error-Message")
    return f": {msg.strip()}" if msg else ""


def _namespace_hint(repo_id: str, user: dict[str, Any] | None) -> str:
    if not user:
        return ""
    mine = [user.get("name", ""), *(o.get("name", "") for o in user.get("orgs", []) if isinstance(o, dict))]
    mine = [m for m in mine if m]
    ns = repo_id.split("/")[0]
    if ns in mine:
        return ""
    close = get_close_matches(ns, mine, n=1)
    hint = f" — did you mean {close[0]}/{repo_id.split('/')[1]}?" if close else ""
    return f" (the token belongs to {user.get('name')!r}, organizations: {', '.join(mine[1:]) or 'none'}){hint}"


def _hashes(path: Path) -> tuple[str, str]:
    """(sha256 of the content, git blob sha1) of a file — what the Hub reports for LFS and regular files."""
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha256.update(chunk)
            sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def _api(token: str | None):  # type: ignore[no-untyped-def]
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint(), token=token, library_name="cm2data", library_version=__version__)


def publish(
    src: Path,
    repo_id: str,
    *,
    private: bool = False,
    tag: str | None = None,
    message: str | None = None,
    with_: Sequence[str] = (),
    license: str | None = None,
    pretty_name: str | None = None,
    thinking: str = "auto",
    keep: Sequence[str] = (),
    token: str | None = None,
    on_step: Callable[[str], None] | None = None,
) -> PublishResult:
    """Validate ``src`` and publish it to ``repo_id`` (a dataset repository) in one commit. See the module doc."""
    say = on_step or (lambda _m: None)
    check_repo_id(repo_id)
    if tag is not None:
        check_tag(tag)
    resolve_exporters(with_)  # fail before anything else
    token = resolve_token(token)
    with tempfile.TemporaryDirectory(prefix="cm2data-publish-") as tmp:
        say("validating and building the repository tree")
        tree = build_tree(src, Path(tmp) / "tree", repo_id=repo_id, with_=with_, license=license,
                          pretty_name=pretty_name, thinking=thinking)
        say(f"{tree.records} dialogues, {tree.items} checklist items, {len(tree.files)} files "
            f"({tree.total_bytes() / 2**20:.1f} MiB); contacting {endpoint()}")
        return _upload(tree, repo_id, private=private, tag=tag, message=message, keep=keep, token=token, say=say)


def _upload(tree: Tree, repo_id: str, *, private: bool, tag: str | None, message: str | None,
            keep: Sequence[str], token: str, say: Callable[[str], None]) -> PublishResult:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub import constants as hub_constants

    if hub_constants.is_offline_mode():
        raise PublishError("HF_HUB_OFFLINE is set: unset it to publish (nothing was uploaded)")
    api = _api(token)
    with hub_errors("checking the token", repo_id):
        user = api.whoami(token=token)
    role = ((user.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise PublishError(f"the token of {user.get('name')!r} is read-only; publishing needs a token with write "
                           "access (nothing was uploaded)")
    with hub_errors("creating the repository", repo_id, user=user):
        repo_url = api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
    with hub_errors("reading the repository", repo_id, user=user):
        info = api.dataset_info(repo_id, revision=BRANCH, files_metadata=True)
        refs = api.list_repo_refs(repo_id, repo_type=REPO_TYPE) if tag else None
    if private and info.private is False:
        say(f"note: {repo_id} already exists and is public; --private does not change an existing repository")
    head = info.sha
    remote = {s.rfilename: s for s in info.siblings or []}

    added, unchanged = [], []
    for path, local in tree.files.items():
        sha256, sha1 = _hashes(local)
        sib = remote.get(path)
        same = sib is not None and ((sib.lfs is not None and sib.lfs.sha256 == sha256)
                                    or (sib.lfs is None and sib.blob_id == sha1))
        (unchanged if same else added).append(path)
    deleted = sorted(p for p in remote if p not in tree.files and p not in ALWAYS_KEEP
                     and not any(fnmatch.fnmatch(p, pat) for pat in keep))

    existing_tag = None
    if tag and refs is not None:
        existing_tag = next((r for r in refs.tags if r.name == tag), None)
        if existing_tag is not None and (added or deleted or existing_tag.target_commit != head):
            raise PublishError(f"tag {tag!r} already exists on {repo_id} (at {existing_tag.target_commit[:12]}); "
                               "choose a new tag (nothing was uploaded)")

    commit = None
    n_bytes = 0
    if added or deleted:
        ops: list[Any] = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(tree.files[p])) for p in added]
        ops += [CommitOperationDelete(path_in_repo=p) for p in deleted]
        n_bytes = sum(tree.files[p].stat().st_size for p in added)
        summary = message or f"Publish {tree.records} dialogues with cm2data {__version__}"
        description = (f"{tree.records} dialogues, {tree.items} checklist items; configs: "
                       + ", ".join(tree.configs) + f". {len(added)} files added or changed, {len(deleted)} deleted.")
        say(f"uploading {len(added)} files ({n_bytes / 2**20:.1f} MiB), deleting {len(deleted)}, in one commit")
        with hub_errors("committing", repo_id, user=user):
            info_commit = api.create_commit(repo_id, ops, commit_message=summary, commit_description=description,
                                            repo_type=REPO_TYPE, revision=BRANCH, parent_commit=head)
        commit = info_commit.oid
        head = commit
    else:
        say(f"{repo_id} already holds this exact content at {head[:12]}: no commit made")

    if tag and existing_tag is None:
        with hub_errors(f"tagging {tag}", repo_id, user=user, committed=commit is not None):
            api.create_tag(repo_id, tag=tag, tag_message=message, revision=head, repo_type=REPO_TYPE)
    return PublishResult(repo_id, str(repo_url), commit, head, added, deleted, unchanged, tag, n_bytes,
                         tree.records, tree.items)


# ------------------------------------------------------------------------------------------------- pull


@dataclass
class PullResult:
    repo_id: str
    revision: str  # the commit pulled
    out: Path
    records: int
    splits: dict[str, int]


def pull(repo_id: str, out: Path, *, revision: str | None = None, token: str | None = None,
         on_step: Callable[[str], None] | None = None) -> PullResult:
    """Download the ``dialogues`` config of a published dataset into a canonical dataset folder ``out``.

    Every downloaded row is parsed back into a record (an unreadable row stops the pull); the folder is written
    under a temporary name and renamed at the end, so ``out`` is complete or absent.
    """
    from huggingface_hub import get_token, snapshot_download

    from cm2data.sources import load

    say = on_step or (lambda _m: None)
    check_repo_id(repo_id)
    if out.exists() and any(out.iterdir()):
        raise PublishError(f"{out} exists and is not empty; choose a new folder")
    token = token or get_token()
    api = _api(token)
    nothing = f"nothing was written to {out}"
    with hub_errors("reading the repository", repo_id, state=nothing):
        info = api.dataset_info(repo_id, revision=revision or BRANCH)
    sha = info.sha
    say(f"pulling {repo_id} at {sha[:12]}" + (f" ({revision})" if revision else ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cm2data-pull-", dir=out.parent) as tmp:
        snap = Path(tmp) / "snapshot"
        with hub_errors("downloading", repo_id, state=nothing):
            snapshot_download(repo_id, repo_type=REPO_TYPE, revision=sha, local_dir=snap, token=token,
                              endpoint=endpoint(), allow_patterns=["README.md", f"data/{store.DIALOGUES}/*.parquet"])
        if not store.split_files(snap):
            raise PublishError(f"{repo_id}@{sha[:12]} is not a cm2data dataset: no data/{store.DIALOGUES}/*.parquet")
        staged = Path(tmp) / "dataset"
        splits: dict[str, int] = {}
        for split in store.split_files(snap):
            records, rejects = load(snap, "dataset", split=split)
            if rejects:
                r = rejects[0]
                raise PublishError(f"{repo_id}@{sha[:12]}: {len(rejects)} rows of split {split} do not read as "
                                   f"records (first: {r.rule} {r.where()}: {r.message})")
            store.write_dataset(staged, records, split=split)
            splits[split] = len(records)
        header = {k: v for k, v in store.read_card_header(snap).items() if k not in ("configs", "dataset_info")}
        body = (f"# {repo_id}\n\nA checklist-reward dataset for multi-turn tool-using agents, pulled from the Hub "
                f"dataset `{repo_id}` at commit `{sha}` by cm2data {__version__}: the `dialogues` config, "
                f"{sum(splits.values())} records ({', '.join(f'{s}: {n}' for s, n in splits.items())}).\n\n"
                "Load it with `datasets.load_dataset(\"<this folder>\", \"dialogues\")`.\n")
        store.write_card(staged, body=body, extra_header=header)
        if out.exists():
            out.rmdir()
        staged.replace(out)
    return PullResult(repo_id, sha, out, sum(splits.values()), splits)
