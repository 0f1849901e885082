"""Hub sources for ``cm2data ingest``: ``hf://datasets/ORG/NAME[@REV][:CONFIG/SPLIT]``, read as a stream.

In: a URI naming a dataset repo on the Hub (``HF_ENDPOINT`` picks another endpoint, as everywhere in the Hub's
clients), an optional revision (branch, tag or commit), config and split. Out: records and rejects, one source row
at a time, each with the position just after it, for :func:`cm2data.ingest.stream_ingest` to write in shards.

How it reads, and why not ``datasets.load_dataset(..., streaming=True)`` for the rows:

* the revision is resolved to a commit once (``HfApi.dataset_info``) and everything after reads that commit, so a
  push during the ingest, or between a killed run and its resumption, changes nothing;
* which files make up a config and split is decided by ``datasets`` itself (``load_dataset_builder(...)
  .config.data_files``: the card's ``configs:``, else the Hub's file-name conventions), so the selection is exactly
  what ``load_dataset`` would read;
* the rows of each file are read through ``huggingface_hub``'s ``HfFileSystem`` (HTTP range requests: nothing is
  downloaded whole except ``.json`` arrays, which are one JSON value) by the same readers as local files
  (:mod:`cm2data.formats.rows`) and converted by the registered formats, so a Hub file gives the same records and
  rejects as the same file on disk. ``datasets``' JSON streaming stops at the first malformed line and loses the
  rows before it in that batch (tried: ``ArrowInvalid: JSON parse error``); here a bad row is a reject and reading
  goes on;
* positions are (file, row, byte offset): a resumed ingest seeks into a JSON-lines file and starts a parquet file at
  the row group holding its next row, instead of reading the source again from the start.

Rejects are located as ``hf://datasets/ORG/NAME@COMMIT/PATH:LINE`` (JSON lines), ``…/PATH#ROW`` (parquet) or
``…/PATH[INDEX] (line N)`` (JSON arrays).
"""

from __future__ import annotations

import io
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain, repeat
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import unquote

from cm2data import store
from cm2data.formats import convert_row
from cm2data.formats.rows import JSON_SUFFIXES, JSONL_SUFFIXES, PARQUET_SUFFIXES, _jsonl_rows, iter_rows
from cm2data.ingest import IngestJournal, SourceItem, StreamResult, discard_journal, stream_ingest
from cm2data.rejects import RecordError, Reject, unreadable
from cm2data.schema import Dialogue
from cm2data.sources import dataset_row

SCHEME = "hf://"
PREFIX = "hf://datasets/"
FORM = "hf://datasets/ORG/NAME[@REVISION][:CONFIG/SPLIT]"
#: Read size of the remote file objects (HTTP range requests of this size; one block is held in memory).
BLOCK_SIZE = 8 * 2**20
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SELECTOR = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


class HubSourceError(Exception):
    """A Hub source that cannot be read: a malformed URI, a missing repo, revision, config or split, a network
    failure. The message is meant for the user (it never holds the token)."""


# ----------------------------------------------------------------------------------------------------- the URI


@dataclass(frozen=True)
class HubURI:
    repo_id: str
    revision: str | None = None
    config: str | None = None
    split: str | None = None

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        sel = ":" + "/".join(p for p in (self.config, self.split) if p) if (self.config or self.split) else ""
        return f"{PREFIX}{self.repo_id}{rev}{sel}"


def is_hub_uri(text: str) -> bool:
    """Whether ``text`` names a Hub source (any ``hf://`` text: a malformed one is an error, not a local path)."""
    return text.startswith(SCHEME)


def parse_hub_uri(text: str) -> HubURI:
    """``hf://datasets/ORG/NAME[@REV][:CONFIG/SPLIT]`` (or ``:SPLIT``) → :class:`HubURI`; :class:`HubSourceError`
    naming what is wrong otherwise. A revision may be percent-encoded (``refs%2Fpr%2F1``) as in ``HfFileSystem``
    paths.

    >>> parse_hub_uri("hf://datasets/acme/chats@v1:default/train")
    HubURI(repo_id='acme/chats', revision='v1', config='default', split='train')
    >>> str(parse_hub_uri("hf://datasets/acme/chats:test"))
    'hf://datasets/acme/chats:test'
    """
    if not text.startswith(PREFIX):
        kind = text[len(SCHEME) :].split("/", 1)[0] if text.startswith(SCHEME) else ""
        hint = (
            f" (models and spaces cannot be ingested: {kind!r} is not 'datasets')"
            if kind in ("models", "spaces")
            else ""
        )
        raise HubSourceError(f"bad Hub source {text!r}: expected {FORM}{hint}")
    rest = text[len(PREFIX) :]
    rest, sep, selector = rest.partition(":")
    if sep and not selector:
        raise HubSourceError(f"bad Hub source {text!r}: nothing after ':' (expected :CONFIG/SPLIT or :SPLIT)")
    repo, at, revision = rest.partition("@")
    if at and not revision:
        raise HubSourceError(f"bad Hub source {text!r}: nothing after '@' (expected a branch, tag or commit)")
    parts = repo.split("/")
    if len(parts) != 2 or not all(_NAME.fullmatch(p) for p in parts) or ".." in repo or repo.endswith((".git", ".")):
        raise HubSourceError(f"bad Hub source {text!r}: {repo!r} is not a repo id ORG/NAME (expected {FORM})")
    revision = unquote(revision)
    if at and (any(c.isspace() for c in revision) or ".." in revision or revision.startswith("/")):
        raise HubSourceError(f"bad Hub source {text!r}: {revision!r} is not a git revision")
    config = split = None
    if selector:
        names = selector.split("/")
        if len(names) > 2 or not all(_SELECTOR.fullmatch(n) for n in names):
            raise HubSourceError(
                f"bad Hub source {text!r}: {selector!r} is not CONFIG/SPLIT or SPLIT (letters, digits, '_', '-', '.')"
            )
        config, split = (names[0], names[1]) if len(names) == 2 else (None, names[0])
    return HubURI(repo, revision or None, config, split)


# ---------------------------------------------------------------------------------------------- resolution


@dataclass
class ResolvedSource:
    """A Hub source pinned down: the commit, config and split read, and the repo files that hold the split."""

    uri: HubURI
    commit: str
    config: str
    split: str
    files: list[str]
    expected_rows: int | None = None  # from the card's dataset_info, when it has one

    @property
    def base(self) -> str:
        return f"{PREFIX}{self.uri.repo_id}@{self.commit}"

    @property
    def pinned(self) -> str:
        """The source with its commit: ``hf://datasets/ORG/NAME@COMMIT:CONFIG/SPLIT`` (the provenance source)."""
        return f"{self.base}:{self.config}/{self.split}"

    def file_uri(self, path: str) -> str:
        return f"{self.base}/{path}"

    def identity(self, fmt: str) -> dict[str, Any]:
        """What a journal records of the source (and compares on resumption)."""
        return {
            "uri": str(self.uri),
            "repo": self.uri.repo_id,
            "commit": self.commit,
            "config": self.config,
            "split": self.split,
            "format": fmt,
            "files": self.files,
            "expected_rows": self.expected_rows,
        }

    @classmethod
    def from_identity(cls, data: dict[str, Any]) -> ResolvedSource:
        return cls(
            parse_hub_uri(data["uri"]),
            data["commit"],
            data["config"],
            data["split"],
            list(data["files"]),
            data.get("expected_rows"),
        )


def resolve(uri: HubURI, *, token: str | None = None) -> ResolvedSource:
    """Resolve the revision to a commit and the config/split to the repo files ``datasets`` would read for it."""
    from cm2data.publish.hub import hub_api

    with hub_read_errors(uri, "nothing was read"):
        info = hub_api(token).dataset_info(uri.repo_id, revision=uri.revision or "main")
    commit = info.sha
    if not commit:
        raise HubSourceError(f"{uri.repo_id}: the Hub gave no commit for revision {uri.revision or 'main'!r}")
    where = f"{uri.repo_id}@{commit[:12]}" + (f" ({uri.revision})" if uri.revision else "")
    configs = _datasets_call(where, lambda ds: ds.get_dataset_config_names(uri.repo_id, revision=commit, token=token))
    config = _choose_config(uri, configs, where)
    builder = _datasets_call(
        where, lambda ds: ds.load_dataset_builder(uri.repo_id, config, revision=commit, token=token)
    )
    data_files = dict(builder.config.data_files or {})
    splits = [str(s) for s in data_files]
    split = _choose_split(uri, config, splits, where)
    prefix = f"{PREFIX}{uri.repo_id}@{commit}/"
    files = []
    for f in data_files[next(s for s in data_files if str(s) == split)]:
        name = str(f)
        if not name.startswith(prefix):  # (data files of another repo or revision: not something a card can name)
            raise HubSourceError(f"{where}: config {config!r} split {split!r} names {name}, outside this repo")
        files.append(name[len(prefix) :])
    if not files:
        raise HubSourceError(f"{where}: config {config!r} split {split!r} has no data files")
    expected = None
    splits_info = getattr(builder.info, "splits", None) or {}
    if split in splits_info and splits_info[split].num_examples:
        expected = int(splits_info[split].num_examples)
    return ResolvedSource(uri, commit, config, split, files, expected)


@contextmanager
def hub_read_errors(uri: HubURI, state: str | Callable[[], str]) -> Iterator[None]:
    """Turn the Hub client's errors into :class:`HubSourceError` messages that say what happened, what to do and
    ``state`` (what was kept; a callable is asked only when an error happens). Other errors propagate unchanged."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from cm2data.publish.hub import _network_errors, _server_message, endpoint

    try:
        yield
    except HubSourceError:
        raise
    except Exception as exc:
        chain: list[BaseException] = []
        cur: BaseException | None = exc
        while cur is not None and cur not in chain:  # the client wraps some errors: find the one that explains it
            chain.append(cur)
            cur = cur.__cause__ or cur.__context__
        known = (OfflineModeIsEnabled, HfHubHTTPError, *_network_errors())
        cause = next((e for e in chain if isinstance(e, known)), None)
        if cause is None:
            raise
        repo = uri.repo_id
        status = getattr(getattr(cause, "response", None), "status_code", None)
        http = f"HTTP {status}{_server_message(cause)}" if status else type(cause).__name__
        if isinstance(cause, OfflineModeIsEnabled):
            why = "HF_HUB_OFFLINE is set; unset it (and HF_DATASETS_OFFLINE) to read from the Hub"
        elif isinstance(cause, GatedRepoError):
            why = (
                f"{repo} is gated ({http}): accept its conditions on the Hub with your account and use a token "
                "of that account (HF_TOKEN or `hf auth login`)"
            )
        elif isinstance(cause, RevisionNotFoundError):
            why = f"revision {uri.revision!r} not found in {repo} ({http})"
        elif isinstance(cause, RepositoryNotFoundError):
            why = (
                f"dataset repository {repo} not found or not accessible ({http}); a private one needs a token "
                "that may read it (HF_TOKEN or `hf auth login`)"
            )
        elif isinstance(cause, HfHubHTTPError) and status in (401, 403):
            why = f"the Hub refused access to {repo} ({http}); check HF_TOKEN or log in again with `hf auth login`"
        elif isinstance(cause, HfHubHTTPError):
            why = f"the Hub answered {http} for {repo}"
        else:
            text = str(cause).strip().splitlines()
            why = f"network failure talking to {endpoint()} ({type(cause).__name__}: {text[0] if text else ''})"
        raise HubSourceError(f"{why}; {state() if callable(state) else state}") from None


def _datasets_call(where: str, call: Callable[[Any], Any]) -> Any:
    import datasets

    try:
        return call(datasets)
    except HubSourceError:
        raise
    except Exception as exc:  # datasets raises many types (DatasetNotFoundError, ValueError, FileNotFoundError, …)
        text = str(exc).strip().splitlines()
        raise HubSourceError(
            f"{where}: datasets could not read the repo's configs ({type(exc).__name__}: {text[0] if text else ''})"
        ) from None


def _choose_config(uri: HubURI, configs: list[str], where: str) -> str:
    if uri.config is not None:
        if uri.config not in configs:
            raise HubSourceError(f"{where} has no config {uri.config!r}; its configs: {', '.join(configs)}")
        return uri.config
    if len(configs) == 1:
        return configs[0]
    if uri.split in configs:  # ":NAME" names a config here, but the short form is for a split
        raise HubSourceError(
            f"{where}: {uri.split!r} is one of its {len(configs)} configs ({', '.join(configs)}), and ':NAME' alone "
            f"names a split: write {PREFIX}{uri.repo_id}:{uri.split}/SPLIT"
        )
    example = f"{PREFIX}{uri.repo_id}:{configs[0]}/SPLIT" if configs else FORM
    raise HubSourceError(f"{where} has {len(configs)} configs ({', '.join(configs)}): name one, as in {example}")


def _choose_split(uri: HubURI, config: str, splits: list[str], where: str) -> str:
    if uri.split is not None:
        if uri.split not in splits:
            raise HubSourceError(
                f"{where}: config {config!r} has no split {uri.split!r}; its splits: {', '.join(splits) or 'none'}"
            )
        return uri.split
    if len(splits) == 1:
        return splits[0]
    raise HubSourceError(
        f"{where}: config {config!r} has splits {', '.join(splits)}: name one, as in "
        f"{PREFIX}{uri.repo_id}:{config}/{splits[0] if splits else 'SPLIT'}"
    )


# ----------------------------------------------------------------------------------------------------- rows


def _filesystem(token: str | None = None) -> Any:
    from huggingface_hub import HfFileSystem

    from cm2data.publish.hub import endpoint

    return HfFileSystem(endpoint=endpoint(), token=token)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Errors of talking to the Hub: they stop the ingest (resumable) instead of becoming rejects of the file."""
    from huggingface_hub.errors import HfHubHTTPError

    from cm2data.publish.hub import _network_errors

    return (HfHubHTTPError, *_network_errors())


def iter_items(
    src: ResolvedSource, fmt: str, position: dict[str, int], *, token: str | None = None
) -> Iterator[SourceItem]:
    """Every row of the source's files from ``position`` on (``{"file", "row", "offset"}``), as a record or a
    reject, with the position after it. ``fmt`` is a registered format, ``auto`` (guessed per row, and parquet files
    with the dataset-folder schema read as dataset shards) or ``dataset`` (only such shards)."""
    fs = _filesystem(token)
    first = position.get("file", 0)
    for index in range(first, len(src.files)):
        row = position.get("row", 0) if index == first else 0
        offset = position.get("offset", 0) if index == first else 0
        yield from _file_items(fs, src, index, row, offset, fmt)


def _file_items(fs: Any, src: ResolvedSource, index: int, row: int, offset: int, fmt: str) -> Iterator[SourceItem]:
    path = src.files[index]
    suffix = PurePosixPath(path).suffix.lower()
    remote = f"datasets/{src.uri.repo_id}@{src.commit}/{path}"
    if fmt == "dataset" and suffix not in PARQUET_SUFFIXES:
        raise HubSourceError(f"{src.file_uri(path)} is not a parquet shard of a cm2data dataset (--format dataset)")
    if suffix in JSONL_SUFFIXES:
        yield from _jsonl_items(fs, src, index, remote, row, offset, fmt)
    elif suffix in PARQUET_SUFFIXES:
        yield from _parquet_items(fs, src, index, remote, row, fmt)
    elif suffix in JSON_SUFFIXES:
        yield from _json_items(fs, src, index, remote, row, fmt)
    elif row == 0:
        yield SourceItem(
            {"file": index, "row": 1, "offset": 0},
            Reject(
                None,
                "read",
                "unsupported_file",
                f"{path}: cm2data reads .json, .jsonl, .ndjson and .parquet files; this file was not read",
                src.file_uri(path),
            ),
            src.file_uri(path),
        )


def _convert(item: dict[str, Any] | RecordError, location: str, fmt: str, dataset: bool) -> Dialogue | Reject:
    if isinstance(item, RecordError):
        return Reject(None, "read", item.rule, item.message, location)
    return dataset_row(item, location) if dataset else convert_row(item, fmt, location)


def _jsonl_items(
    fs: Any, src: ResolvedSource, index: int, remote: str, row: int, offset: int, fmt: str
) -> Iterator[SourceItem]:
    """JSON lines, streamed; ``row`` lines (ending at byte ``offset``) were read before."""
    done = {"lines": row, "bytes": offset}

    def lines(fh: IO[bytes]) -> Iterator[str]:
        for raw in fh:
            done["lines"] += 1
            done["bytes"] += len(raw)
            yield raw.decode("utf-8", errors="surrogateescape")

    with fs.open(remote, "rb", block_size=BLOCK_SIZE) as remote_fh:
        if offset:
            remote_fh.seek(offset)
        # fsspec's own readline copies a whole block per line (10 s instead of 0.6 s for 80 MB of 8 kB lines)
        fh = io.BufferedReader(remote_fh, buffer_size=2**20)
        # the lines already read come back as blank lines, which the reader skips: its line numbers stay right
        numbered = chain(repeat("\n", row), lines(fh))
        for location, item in _jsonl_rows(src.file_uri(src.files[index]), numbered):
            yield SourceItem(
                {"file": index, "row": done["lines"], "offset": done["bytes"]},
                _convert(item, location, fmt, False),
                location,
            )


def _parquet_items(fs: Any, src: ResolvedSource, index: int, remote: str, row: int, fmt: str) -> Iterator[SourceItem]:
    """Parquet, one batch at a time from the row group holding row ``row`` on (range requests)."""
    import pyarrow.parquet as pq

    transport = _transport_errors()
    uri = src.file_uri(src.files[index])
    with fs.open(remote, "rb", block_size=BLOCK_SIZE) as fh:
        try:
            pf = pq.ParquetFile(fh)
        except transport:
            raise
        except Exception as exc:  # pyarrow raises several types for damaged files
            if row == 0:
                yield SourceItem({"file": index, "row": 1, "offset": 0}, unreadable(uri, exc), uri)
            return
        dataset = _is_dataset_shard(pf.schema_arrow.names)
        if fmt == "dataset" and not dataset:
            raise HubSourceError(f"{uri} is not a parquet shard of a cm2data dataset (--format dataset)")
        dataset = dataset and fmt in ("auto", "dataset")
        groups: list[int] = []
        at = cumulative = 0  # ``at``: the first row of the first row group read
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if cumulative + n > row:
                at = cumulative if not groups else at
                groups.append(g)
            cumulative += n
        if not groups:
            return
        batches = pf.iter_batches(batch_size=2048, row_groups=groups)
        while True:
            try:
                batch = next(batches, None)
                rows = batch.to_pylist() if batch is not None else []
            except transport:
                raise
            except Exception as exc:  # damaged pages surface only while reading
                yield SourceItem({"file": index, "row": at + 1, "offset": 0}, unreadable(f"{uri}#{at}", exc), uri)
                return
            if batch is None:
                return
            for i, item in enumerate(rows):
                if at + i < row:
                    continue
                location = f"{uri}#{at + i}"
                yield SourceItem(
                    {"file": index, "row": at + i + 1, "offset": 0}, _convert(item, location, fmt, dataset), location
                )
            at += batch.num_rows


def _is_dataset_shard(names: list[str]) -> bool:
    return names == store.DIALOGUE_SCHEMA.names


def _json_items(fs: Any, src: ResolvedSource, index: int, remote: str, row: int, fmt: str) -> Iterator[SourceItem]:
    """A JSON array (or object) is one value: the file is fetched to a temporary folder and read as a local file
    is; on resumption the ``row`` items read before are skipped."""
    path = src.files[index]
    name = PurePosixPath(path).name
    parent = src.file_uri(str(PurePosixPath(path).parent)) if "/" in path else src.base
    with tempfile.TemporaryDirectory(prefix="cm2data-hub-") as tmp:
        local = Path(tmp) / name
        fs.get_file(remote, str(local))
        n = 0
        try:
            for n, (location, item) in enumerate(iter_rows(local), start=1):
                if n > row:
                    where = f"{parent}/{location}"
                    yield SourceItem({"file": index, "row": n, "offset": 0}, _convert(item, where, fmt, False), where)
        except (OSError, ValueError) as exc:  # as for a local file (cm2data.formats.read_records)
            if n >= row:
                yield SourceItem(
                    {"file": index, "row": n + 1, "offset": 0},
                    Reject(None, "read", "unreadable_file", str(exc), src.file_uri(path)),
                    src.file_uri(path),
                )


# --------------------------------------------------------------------------------------------------- ingest


@dataclass
class HubIngest:
    """The outcome of :func:`ingest_hub`: the source read, the stream result, what happened before this run."""

    source: ResolvedSource
    result: StreamResult
    notes: list[str] = field(default_factory=list)


def find_journal(out: Path, uri: HubURI, split: str | None) -> IngestJournal | None:
    """The journal in ``out`` of the output split ``split``, or, with no split named, of a Hub ingest of ``uri``."""
    if split is not None:
        return IngestJournal.load(out, split)
    for journal in IngestJournal.all(out):
        if journal.source.get("uri") == str(uri):
            return journal
    return None


def plan(
    text: str, out: Path, *, fmt: str = "auto", split: str | None = None, fresh: bool = False, token: str | None = None
) -> tuple[ResolvedSource, IngestJournal, list[str]]:
    """Decide what an ingest of ``text`` into ``out`` does: start (resolving the source on the Hub), continue an
    interrupted run, or nothing (finished). A journal of the output split for another source, revision, config,
    split or format is an error unless ``fresh``. Returns the source, the journal to run and notes for the user."""
    from cm2data.ingest import IngestStateError

    uri = parse_hub_uri(text)
    if split is not None and not _SELECTOR.fullmatch(split):
        raise HubSourceError(f"bad --split {split!r}: use letters, digits, '_', '-' and '.'")
    notes: list[str] = []
    try:
        journal = find_journal(out, uri, split)
    except IngestStateError as exc:
        raise HubSourceError(str(exc)) from None
    if journal is not None and fresh:
        discard_journal(out, journal.split)
        notes.append(f"--fresh: the earlier ingest into split {journal.split!r} of {out} was discarded")
        journal = None
    if journal is not None and journal.source.get("uri") == str(uri) and journal.source.get("format") == fmt:
        # the same request: continue at the commit it started from (no Hub call needed)
        return ResolvedSource.from_identity(journal.source), journal, notes
    source = resolve(uri, token=token)
    out_split = split or source.split
    if journal is None and split is None:
        try:
            journal = IngestJournal.load(out, out_split)
        except IngestStateError as exc:
            raise HubSourceError(str(exc)) from None
        if journal is not None and fresh:
            discard_journal(out, out_split)
            journal = None
    if journal is not None:
        theirs = {k: journal.source.get(k) for k in ("repo", "commit", "config", "split", "format")}
        mine = {k: source.identity(fmt)[k] for k in theirs}
        if theirs != mine:
            was = f"{PREFIX}{theirs['repo']}@{theirs['commit']}:{theirs['config']}/{theirs['split']}"
            state = "finished" if journal.state == "complete" else f"{len(journal.shards)} shards written so far"
            raise HubSourceError(
                f"{out} split {journal.split!r} holds an ingest of {was} (format {theirs['format']}, {state}); "
                f"this is {source.pinned} (format {fmt}). Choose another --out or --split, or add --fresh to "
                "replace it"
            )
        return source, journal, notes
    journal = IngestJournal(source=source.identity(fmt), split=out_split, position={"file": 0, "row": 0, "offset": 0})
    return source, journal, notes


def ingest_hub(
    text: str,
    out: Path,
    *,
    fmt: str = "auto",
    split: str | None = None,
    shard_rows: int = 10_000,
    fresh: bool = False,
    token: str | None = None,
    on_start: Callable[[ResolvedSource, IngestJournal], None] | None = None,
    on_progress: Callable[[IngestJournal], None] | None = None,
    on_shard: Callable[[IngestJournal], None] | None = None,
) -> HubIngest:
    """Ingest a Hub source into the dataset folder ``out``, resumably (see :func:`plan` and
    :func:`cm2data.ingest.stream_ingest`). A network failure raises :class:`HubSourceError` saying how much is
    kept; the same call again continues from there."""
    source, journal, notes = plan(text, out, fmt=fmt, split=split, fresh=fresh, token=token)
    if on_start is not None:
        on_start(source, journal)

    def kept() -> str:
        saved = IngestJournal.load(out, journal.split)
        done = f"{len(saved.shards)} shards ({saved.accepted} records, {saved.rows} rows read)" if saved else "nothing"
        return f"reading stopped at {source.pinned}: {done} kept in {out}; run the same command again to continue"

    with hub_read_errors(source.uri, kept):
        result = stream_ingest(
            out,
            journal,
            lambda position: iter_items(source, fmt, position, token=token),
            source=source.pinned,
            shard_rows=shard_rows,
            on_progress=on_progress,
            on_shard=on_shard,
        )
    return HubIngest(source, result, notes)
