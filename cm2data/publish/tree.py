"""The repository tree a publish uploads, built and validated on local disk (``cm2data publish --dry-run``).

:func:`build_tree` streams a dataset folder through the validation gate and writes a Hub-layout dataset: the
configs ``dialogues`` (the canonical records, written by :mod:`cm2data.store`), ``checklist_items`` (one flat row
per checklist item) and, on request, the trainer exports of the :data:`cm2data.export.registry.EXPORTERS` registry;
``README.md`` (the card, :mod:`cm2data.card`) and its plots under ``assets/``; and the publish manifest
(:mod:`cm2data.publish.manifest`), which lets a republish skip the gate for shards that already passed it.
"""

from __future__ import annotations

import shutil
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cm2data import card, store
from cm2data.export.registry import EXPORTERS, Exporter, TableBuilder
from cm2data.publish import arrow_views
from cm2data.publish import manifest as mf
from cm2data.publish.errors import GateFailed, PublishError
from cm2data.rejects import Reject, read_rejects, unreadable
from cm2data.schema import Dialogue
from cm2data.validate import RuleConfig
from cm2data.validate.columnar import ColumnarGate

if TYPE_CHECKING:
    from cm2data.validate.rules import ThinkingPolicy

CHECKLIST_ITEMS = "checklist_items"

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


def resolve_exporters(names: Sequence[str]) -> list[tuple[Exporter, TableBuilder]]:
    out = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        exporter = EXPORTERS.get(name)
        if exporter is None:
            raise PublishError(f"unknown --with {name!r}; known: {', '.join(sorted(EXPORTERS))}")
        build = exporter.builder()
        if build is None:
            where = f" ({exporter.requires or exporter.target})" if exporter.target else ""
            raise PublishError(
                f"--with {name}: the {exporter.label} is not available yet — its exporter"
                f"{' (`' + exporter.command + '`)' if exporter.command else ''} is not installed in this "
                f"cm2data{where}; publish without --with {name}, or once the exporter exists"
            )
        out.append((exporter, build))
    return out


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
    manifest: mf.Manifest | None = None
    #: source shards whose records went through the gate, and those skipped as already gated (``trusted``)
    shards_gated: int = 0
    shards_trusted: int = 0

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files.values())


class _Shard:
    """The rows of one output shard, kept as Arrow tables until the shard is complete: the ``dialogues`` rows and
    the exports' rows. ``checklist_items`` is derived from the dialogues when the shard is written."""

    def __init__(self) -> None:
        self.parts: dict[str, list[pa.Table]] = {}

    def add(self, config: str, table: pa.Table) -> None:
        self.parts.setdefault(config, []).append(table)

    def write(self, out: Path, split: str, index: int, total: int) -> dict[str, int]:
        rows = {}
        name = f"{split}-{index:05d}-of-{total:05d}.parquet"
        # one config at a time, each contiguous (as store.write_table writes it: the bytes depend on it), and the
        # parts let go before the next table is built: peak memory is about two copies of the dialogues rows
        dialogues = self._take(store.DIALOGUES)
        if dialogues is not None:
            rows[store.DIALOGUES] = self._write(out, store.DIALOGUES, name, dialogues)
            items = arrow_views.checklist_items(dialogues, CHECKLIST_ITEM_SCHEMA)
            del dialogues
            rows[CHECKLIST_ITEMS] = self._write(out, CHECKLIST_ITEMS, name, items.combine_chunks())
            del items
        for config in list(self.parts):
            table = self._take(config)
            if table is not None:
                rows[config] = self._write(out, config, name, table)
        return rows

    def _take(self, config: str) -> pa.Table | None:
        tables = [t for t in self.parts.pop(config, []) if t.num_columns]  # an exporter may return pa.table({})
        return pa.concat_tables(tables).combine_chunks() if tables else None

    @staticmethod
    def _write(out: Path, config: str, name: str, table: pa.Table) -> int:
        target = store.data_dir(out, config)
        target.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, target / name, compression="zstd")
        return table.num_rows


@dataclass
class _Chunk:
    """Up to ``chunk`` rows of one source shard: the canonical Arrow rows, the records when they were needed (the
    gate, an exporter, rows not in the store's layout), and the rows that did not read."""

    table: pa.Table
    records: list[Dialogue] | None
    rejects: list[Reject]


def _read_chunks(path: Path, size: int, *, need_records: bool) -> Iterator[_Chunk]:
    """The rows of one parquet file, ``size`` at a time. Records are built from the rows only when
    ``need_records`` or when the file is not in :data:`cm2data.store.DIALOGUE_SCHEMA`'s layout (then the table is
    rebuilt from the records, so that it is canonical). Rows and files that do not read become ``read`` rejects (as
    in :mod:`cm2data.sources`)."""
    from pydantic import ValidationError

    # bytes that are not UTF-8 (store.check_batch): unreadable from there, as for the record path
    for item in store.shard_batches(path, size):
        if isinstance(item, store.ShardUnreadable):
            yield _Chunk(pa.table({}), [], [unreadable(*item)])
            return
        offset, batch, _ = item
        table = pa.Table.from_batches([batch])
        canonical = table.schema.equals(store.DIALOGUE_SCHEMA, check_metadata=False)
        records: list[Dialogue] | None = None
        rejects: list[Reject] = []
        if need_records or not canonical:
            records = []
            for i, row in enumerate(batch.to_pylist()):
                try:
                    records.append(store.from_row(row))
                except (ValidationError, ValueError, KeyError, TypeError) as exc:
                    where = f"{path.name}#{offset + i}"
                    rejects.append(Reject(row.get("id"), "read", "record_schema", str(exc).splitlines()[0], where))
            if not canonical or rejects:  # the gate then sees only the rows that read (each reported once)
                table = store.records_table(records)
        yield _Chunk(table.cast(store.DIALOGUE_SCHEMA), records, rejects)


def publish_keys(
    src: Path,
    *,
    repo_id: str | None,
    with_: Sequence[str] = (),
    license: str | None = None,
    pretty_name: str | None = None,
    thinking: str = "auto",
    rows_per_file: int = 50_000,
) -> tuple[str, str]:
    """(gate key, build key) of a tree :func:`build_tree` would build with these arguments (see
    :mod:`cm2data.publish.manifest`)."""
    gate = mf.gate_key(_gate_rules(), thinking)
    build = mf.build_key(
        src,
        gate=gate,
        repo_id=repo_id,
        exports=list(with_),
        license=license,
        pretty_name=pretty_name,
        rows_per_file=rows_per_file,
    )
    return gate, build


def build_tree(
    src: Path,
    out: Path,
    *,
    repo_id: str | None = None,
    with_: Sequence[str] = (),
    license: str | None = None,
    pretty_name: str | None = None,
    thinking: str = "auto",
    rows_per_file: int = 50_000,
    chunk: int = 5_000,
    trusted: Collection[str] = frozenset(),
) -> Tree:
    """Validate ``src`` and write into ``out`` (absent or empty) exactly the tree that :func:`publish` uploads.

    The folder is streamed ``chunk`` records at a time: each chunk is read, gated and turned into Arrow rows of
    every config, so memory holds one chunk of records plus one shard (``rows_per_file`` dialogues, as
    :func:`cm2data.store.write_dataset` shards) of rows. Ids are checked for uniqueness across the whole dataset.
    Raises :class:`GateFailed` (after checking everything, and leaving ``out`` empty) unless every row reads and
    passes every rule.

    ``trusted``: sha256 digests of source shards known to pass this gate (a published manifest's shards under the
    same gate key): their records are not gated again (ids are still checked for uniqueness across the dataset).
    """
    exporters = resolve_exporters(with_)
    if not store.is_dataset_folder(src):
        raise PublishError(f"{src} is not a cm2data dataset folder (no data/{store.DIALOGUES}/*.parquet)")
    if out.exists() and any(out.iterdir()):
        raise PublishError(f"{out} exists and is not empty; choose a new folder")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    license_option, pretty_name_option = license, pretty_name  # as given: the build key hashes the options
    config = RuleConfig(thinking=cast("ThinkingPolicy", thinking))  # RuleConfig checks the value
    summary = card.Summary()
    # the columnar gate: a record is built only for a row its screens cannot clear (cm2data.validate.columnar);
    # ids are deduplicated here, across trusted and gated shards alike
    gate = ColumnarGate(config, dedupe=True)
    failed = False
    read_rejects_: list[Reject] = []
    seen: set[str] = set()
    configs: dict[str, dict[str, int]] = {}
    sources = mf.source_shards(src)
    gated = skipped = 0
    try:
        for split, paths in store.split_files(src).items():
            total_rows = sum(pq.read_metadata(p).num_rows for p in paths)
            n_files = max(1, -(-total_rows // rows_per_file))
            shard, index, in_shard, done = _Shard(), 0, 0, 0
            trusted_here = sum(sources[p].sha256 in trusted for p in paths)
            gated, skipped = gated + len(paths) - trusted_here, skipped + trusted_here
            for path in paths:
                trust = sources[path].sha256 in trusted
                offset = 0
                for part in _read_chunks(path, chunk, need_records=bool(exporters)):
                    read_rejects_ += part.rejects
                    ids = part.table.column("id").to_pylist() if part.table.num_columns else []
                    fresh = np.ones(len(ids), dtype=np.bool_)
                    for pos, i in enumerate(ids):
                        if i in seen:
                            msg = f"record id {i!r} appears more than once in the dataset"
                            read_rejects_.append(Reject(i, "read", "duplicate_id", msg))
                            fresh[pos] = False
                        else:
                            seen.add(i)
                    if not trust and len(ids):
                        rows = part.table if fresh.all() else part.table.filter(pa.array(fresh))
                        for batch in rows.to_batches():
                            if gate.add_batch(batch, location=path.name, offset=offset).any():
                                failed = True
                            offset += batch.num_rows
                    if failed or read_rejects_ or gate.read_rejects:
                        failed = True
                        continue  # keep checking, to report every failure; write nothing more
                    arrow_views.add_to_summary(summary, part.table)
                    pos = 0
                    while pos < part.table.num_rows:  # pieces that never straddle a shard boundary
                        piece = part.table.slice(pos, rows_per_file - in_shard)
                        shard.add(store.DIALOGUES, piece)
                        for exporter, build in exporters:
                            records = (part.records or [])[pos : pos + piece.num_rows]
                            shard.add(exporter.config, build(records, split, done))
                        pos += piece.num_rows
                        done += piece.num_rows
                        in_shard += piece.num_rows
                        if in_shard == rows_per_file:
                            _count(configs, split, shard.write(out, split, index, n_files))
                            index, in_shard = index + 1, 0
            if shard.parts and not failed:
                _count(configs, split, shard.write(out, split, index, n_files))
        result = gate.finish()
        if failed or result.rejects or result.read_rejects or read_rejects_:
            raise GateFailed(result, read_rejects_ + result.read_rejects)
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
        docs = {
            store.DIALOGUES: "the canonical records: one dialogue per row, with tools, checklists, provenance "
            "and review",
            CHECKLIST_ITEMS: "one flat row per checklist item",
        }
        for exporter, _ in exporters:
            docs[exporter.config] = exporter.description or exporter.label
        body = card.card_body(
            title=title,
            repo_id=repo_id,
            summary=summary,
            stats=stats,
            configs=configs,
            config_docs=docs,
            plots=plots,
            gate_rules=_gate_rules(),
            thinking=thinking,
            rejects=card.rejects_summary(read_rejects(src / store.REJECTS_FILE)),
            license=license,
            pipeline_config=card.read_pipeline_config(src),
            judge_agreement=card.read_judge_agreement(src),
        )
        header = card.card_header(
            n_dialogues=summary.dialogues, license=license, pretty_name=title, source_header=source_header
        )
        store.write_card(out, body=body, extra_header=header)
        gate_key, build_key = publish_keys(
            src,
            repo_id=repo_id,
            with_=with_,
            license=license_option,
            pretty_name=pretty_name_option,
            thinking=thinking,
            rows_per_file=rows_per_file,
        )
        written = {
            p.relative_to(out).as_posix(): list(mf.file_hashes(p)) for p in sorted(out.rglob("*")) if p.is_file()
        }
        n_items = sum(configs.get(CHECKLIST_ITEMS, {}).values())
        manifest = mf.Manifest(gate_key, build_key, list(sources.values()), written, summary.dialogues, n_items)
        (out / mf.MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
    except BaseException:
        _empty(out, remove=created)
        raise
    files = {p.relative_to(out).as_posix(): p for p in sorted(out.rglob("*")) if p.is_file()}
    return Tree(out, summary.dialogues, n_items, configs, files, manifest, gated, skipped)


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
