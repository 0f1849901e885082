"""Dataset folders laid out like a Hugging Face Hub dataset repo.

::

    DIR/README.md                                  YAML header with ``configs:`` and ``dataset_info:``
    DIR/data/<config>/<split>-00000-of-0000N.parquet
    DIR/rejects.jsonl                              rejected rows with their reasons (see ``cm2data.rejects``)

``datasets.load_dataset(DIR)`` reads such a folder exactly as it would read the same repo from the Hub. Free-form
dicts (tool schemas, tool-call arguments, metadata, extra info) are stored as JSON strings, because Arrow unifies
nested dict types across rows and would add ``null`` keys (platform notes).
"""

from __future__ import annotations

import gc
import json
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from cm2data.schema import Dialogue

DIALOGUES = "dialogues"
DEFAULT_SPLIT = "train"
REJECTS_FILE = "rejects.jsonl"

_EVIDENCE = pa.struct([("turn", pa.int64()), ("step", pa.int64()), ("from", pa.string()), ("snippet", pa.string())])
_ITEM = pa.struct(
    [
        ("id", pa.string()),
        ("evidence", pa.list_(_EVIDENCE)),
        ("focus_on", pa.string()),
        ("question", pa.string()),
        ("pass_condition", pa.string()),
        ("failure_examples", pa.list_(pa.string())),
        ("required_for_next_turn", pa.bool_()),
        ("depends_on", pa.list_(pa.string())),
        ("weight", pa.float64()),
        ("extra_info", pa.string()),
    ]
)
_TOOL_CALL = pa.struct([("id", pa.string()), ("name", pa.string()), ("arguments", pa.string())])
_MESSAGE = pa.struct(
    [
        ("role", pa.string()),
        ("content", pa.string()),
        ("thinking", pa.string()),
        ("tool_calls", pa.list_(_TOOL_CALL)),
        ("tool_call_id", pa.string()),
        ("name", pa.string()),
    ]
)
DIALOGUE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("tools", pa.string()),
        ("messages", pa.list_(_MESSAGE)),
        ("checklists", pa.list_(pa.list_(pa.struct([("turn", pa.int64()), ("items", pa.list_(_ITEM))])))),
        ("metadata", pa.string()),
        (
            "provenance",
            pa.struct(
                [
                    ("source", pa.string()),
                    ("source_id", pa.string()),
                    ("generator_model", pa.string()),
                    ("labeller_model", pa.string()),
                    ("prompt_version", pa.string()),
                    ("created_at", pa.string()),
                    ("history", pa.string()),
                ]
            ),
        ),
        (
            "review",
            pa.struct(
                [
                    ("status", pa.string()),
                    ("reviewers", pa.list_(pa.string())),
                    ("decisions", pa.string()),
                    ("agreement", pa.string()),
                ]
            ),
        ),
    ]
)


#: Batch size of the record ↔ Arrow conversions (bounds the memory of the intermediate Python rows).
BATCH_ROWS = 4096

_PROVENANCE_FIELDS = tuple(f.name for f in DIALOGUE_SCHEMA.field("provenance").type if f.name != "history")


# Records hold no reference cycles, yet each is about 300 objects that the cyclic GC tracks. Left alone, the GC
# walks every loaded record again at each full collection, and loading or writing 100k records spent most of its
# time there. Two remedies, each restoring the previous setting on exit:


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic GC while building many short-lived objects (the Python rows of a batch on their way to
    Arrow): freed before the pause ends, they are never walked at all."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def young_gc_only() -> Iterator[None]:
    """Hold off full collections (generation 2) while building many long-lived objects (a batch of records).

    The young generations are still collected, each shortly after its objects were made, while they are in the CPU
    cache; only the walks over the whole heap wait. (Pausing the GC entirely leaves a whole batch of cold objects
    for the next young collection, which measured slower.)
    """
    threshold = gc.get_threshold()
    gc.set_threshold(threshold[0], threshold[1], 2**30)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def to_row(d: Dialogue) -> dict[str, Any]:
    """A record as one Arrow row of :data:`DIALOGUE_SCHEMA`."""
    prov = d.provenance
    return {
        "id": d.id,
        "source": d.source,
        "tools": _dumps([t.to_openai() for t in d.tools]),
        "messages": [
            {
                "role": m.role,
                "content": m.content,
                "thinking": m.thinking,
                "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in m.tool_calls],
                "tool_call_id": m.tool_call_id,
                "name": m.name,
            }
            for m in d.messages
        ],
        "checklists": [
            [
                {
                    "turn": block.turn,
                    "items": [
                        {
                            "id": it.id,
                            "evidence": [e.to_dict() for e in it.evidence],
                            "focus_on": it.focus_on,
                            "question": it.question,
                            "pass_condition": it.pass_condition,
                            "failure_examples": it.failure_examples,
                            "required_for_next_turn": it.required_for_next_turn,
                            "depends_on": it.depends_on,
                            "weight": it.weight,
                            "extra_info": _dumps(it.extra_info) if it.extra_info else None,
                        }
                        for it in block.items
                    ],
                }
                for block in variant
            ]
            for variant in d.checklists
        ],
        "metadata": _dumps(d.metadata),
        "provenance": {**{k: getattr(prov, k) for k in _PROVENANCE_FIELDS}, "history": _dumps(prov.history)},
        "review": {
            "status": d.review.status,
            "reviewers": d.review.reviewers,
            "decisions": _dumps(d.review.decisions),
            "agreement": _dumps(d.review.agreement),
        },
    }


def _loads(value: str | None, default: Any) -> Any:
    return json.loads(value) if value else default


def check_batch(batch: pa.RecordBatch) -> None:
    """Raise what reading ``batch``'s rows as Python values raises (``UnicodeDecodeError`` for string bytes that are
    not UTF-8, …), having checked the whole batch at once: parquet does not check strings when it reads them, so a
    reader that keeps rows as Arrow (and never decodes them) must ask, or it would pass bytes :func:`from_row`'s
    readers refuse."""
    try:
        batch.validate(full=True)
    except pa.ArrowInvalid:
        batch.to_pylist()  # the error the row-by-row readers meet, with their message
        raise


class ShardUnreadable(NamedTuple):
    """Where a parquet shard stopped reading (its file name when it did not open, else ``name#offset`` of the
    first row not read) and what was raised."""

    location: str
    error: Exception


def shard_batches(
    path: Path, batch_size: int = BATCH_ROWS, read: Callable[[pa.RecordBatch], Any] = check_batch
) -> Iterator[tuple[int, pa.RecordBatch, Any] | ShardUnreadable]:
    """One parquet shard batch by batch: ``(offset of the batch's first row, batch, read(batch))``, and, when the
    file does not open, a page does not decode or ``read`` raises (``check_batch``: bytes that are not UTF-8;
    ``to_pylist``: the same, as the row readers meet it), a last :class:`ShardUnreadable` — the rows before it stay
    read. Every reader of dataset folders walks shards with this, so a damaged file is the same reject everywhere."""
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=batch_size)
    except Exception as exc:  # pyarrow raises several types for damaged files
        yield ShardUnreadable(path.name, exc)
        return
    offset = 0
    while True:
        try:
            batch = next(batches, None)
            value = read(batch) if batch is not None else None
        except Exception as exc:  # damaged pages surface only while reading
            yield ShardUnreadable(f"{path.name}#{offset}", exc)
            return
        if batch is None:
            return
        yield offset, batch, value
        offset += batch.num_rows


def from_row(row: dict[str, Any]) -> Dialogue:
    """Inverse of :func:`to_row` (raises ``pydantic.ValidationError`` or ``ValueError`` on bad rows)."""
    tools = [
        {
            "name": t["function"]["name"],
            "description": t["function"].get("description", ""),
            "parameters": t["function"].get("parameters") or {},
        }
        for t in _loads(row.get("tools"), [])
    ]
    # checklist blocks go to pydantic as they are: ChecklistItem parses its ``extra_info`` JSON string itself
    checklists = row.get("checklists") or []
    prov = dict(row.get("provenance") or {})
    prov["history"] = _loads(prov.get("history"), [])
    review = dict(row.get("review") or {})
    review["decisions"] = _loads(review.get("decisions"), [])
    review["agreement"] = _loads(review.get("agreement"), {})
    if review.get("status") is None:
        review.pop("status", None)
    review["reviewers"] = review.get("reviewers") or []
    return Dialogue.model_validate(
        {
            "id": row["id"],
            "source": row.get("source") or "",
            "tools": tools,
            "messages": row["messages"],
            "checklists": checklists,
            "metadata": _loads(row.get("metadata"), {}),
            "provenance": {k: v for k, v in prov.items() if v is not None},
            "review": review,
        }
    )


def records_table(records: Iterable[Dialogue]) -> pa.Table:
    it = iter(records)
    batches = []
    while True:
        with paused_gc():
            rows = [to_row(r) for r in islice(it, BATCH_ROWS)]
            if not rows:
                break
            batches.append(pa.RecordBatch.from_pylist(rows, schema=DIALOGUE_SCHEMA))
    return pa.Table.from_batches(batches, schema=DIALOGUE_SCHEMA)


# ---------------------------------------------------------------------------------------------------- the folder


def data_dir(folder: Path, config: str = DIALOGUES) -> Path:
    return folder / "data" / config


def is_store_parquet(path: Path) -> bool:
    """A parquet file in the store's row layout (:data:`DIALOGUE_SCHEMA`), inside a dataset folder or not (a damaged
    one is left to the format readers, which reject it)."""
    if path.suffix.lower() != ".parquet":
        return False
    try:
        schema = pq.read_schema(path)
    except Exception:  # pyarrow raises several types for damaged files
        return False
    return schema.equals(DIALOGUE_SCHEMA, check_metadata=False)


def is_dataset_folder(folder: Path) -> bool:
    return folder.is_dir() and data_dir(folder).is_dir()


def split_files(folder: Path, config: str = DIALOGUES) -> dict[str, list[Path]]:
    """``{split: [parquet files]}`` of one config, in file order."""
    out: dict[str, list[Path]] = {}
    for path in sorted(data_dir(folder, config).glob("*.parquet")):
        split = path.name.split("-", 1)[0]
        out.setdefault(split, []).append(path)
    return out


def write_table(
    folder: Path, table: pa.Table, *, config: str = DIALOGUES, split: str = DEFAULT_SPLIT, rows_per_file: int = 50_000
) -> list[Path]:
    """Write ``table`` as the parquet shards of one config/split, replacing earlier shards of that split.

    Shards are written under temporary names and renamed at the end, so a crash leaves the old split intact.
    """
    target = data_dir(folder, config)
    target.mkdir(parents=True, exist_ok=True)
    n_files = max(1, -(-table.num_rows // rows_per_file))
    written: list[Path] = []
    for i in range(n_files):
        part = table.slice(i * rows_per_file, rows_per_file)
        tmp = target / f".{split}-{i:05d}-of-{n_files:05d}.parquet.partial"
        if part.num_rows:
            pq.write_table(part, tmp, compression="zstd")
        else:  # no row group at all: `datasets` reads an empty row group with a batch size of 0 and fails
            pq.ParquetWriter(tmp, part.schema, compression="zstd").close()
        written.append(tmp)
    for old in target.glob(f"{split}-*.parquet"):
        old.unlink()
    final = []
    for tmp in written:
        dest = target / tmp.name[1:].removesuffix(".partial")
        tmp.replace(dest)
        final.append(dest)
    write_card(folder)
    return final


def write_dataset(
    folder: Path, records: Iterable[Dialogue], *, split: str = DEFAULT_SPLIT, rows_per_file: int = 50_000
) -> list[Path]:
    """Write canonical records as the ``dialogues`` config of a dataset folder."""
    return write_table(folder, records_table(records), config=DIALOGUES, split=split, rows_per_file=rows_per_file)


def read_table(folder: Path, config: str = DIALOGUES, split: str | None = None) -> pa.Table:
    files = split_files(folder, config)
    if not files:
        raise FileNotFoundError(f"{folder} has no parquet files under data/{config}/")
    chosen = [p for s, paths in files.items() if split is None or s == split for p in paths]
    if not chosen:
        raise FileNotFoundError(f"{folder}: no split {split!r} in data/{config}/ (have {', '.join(files)})")
    return pa.concat_tables([pq.read_table(p) for p in chosen], promote_options="default")


def iter_dataset(folder: Path, split: str | None = None, batch_size: int = BATCH_ROWS) -> Iterator[Dialogue]:
    """Yield the canonical records of a dataset folder's ``dialogues`` config.

    Each batch of ``batch_size`` rows is converted as a whole (with full GC collections held off) before its records
    are yielded, so a bad row raises before the good rows of its batch are seen.
    """
    files = split_files(folder, DIALOGUES)
    if not files:
        raise FileNotFoundError(f"{folder} has no parquet files under data/{DIALOGUES}/")
    for s, paths in files.items():
        if split is not None and s != split:
            continue
        for path in paths:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
                with young_gc_only():
                    records = [from_row(row) for row in batch.to_pylist()]
                yield from records


def read_dataset(folder: Path, split: str | None = None) -> list[Dialogue]:
    return list(iter_dataset(folder, split))


# ------------------------------------------------------------------------------------------------------- the card


def _features_yaml(schema: pa.Schema) -> list[dict[str, Any]]:
    import datasets

    return datasets.DatasetInfo(features=datasets.Features.from_arrow_schema(schema))._to_yaml_dict()["features"]


def read_card_header(folder: Path) -> dict[str, Any]:
    readme = folder / "README.md"
    if not readme.exists():
        return {}
    text = readme.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    return yaml.safe_load(text[3:end]) or {} if end > 0 else {}


def card_body(folder: Path) -> str:
    readme = folder / "README.md"
    if not readme.exists():
        return ""
    text = readme.read_text(encoding="utf-8")
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end > 0:
            return text[end + 4 :].lstrip("\n")
    return text


def write_card(
    folder: Path,
    body: str | None = None,
    extra_header: dict[str, Any] | None = None,
    *,
    default_config: str | None = None,
) -> Path:
    """(Re)write ``README.md``: ``configs:`` and ``dataset_info:`` from the parquet files on disk, keeping any other
    header keys and the body unless new ones are given.

    The config ``datasets.load_dataset(folder)`` loads without a name is ``default_config`` if given, else the one
    the card already marks as default (while it still exists), else ``dialogues``."""
    header = read_card_header(folder)
    marked = [c.get("config_name") for c in header.get("configs") or [] if isinstance(c, dict) and c.get("default")]
    header.update(extra_header or {})
    configs = []
    infos = []
    root = folder / "data"
    present = [p for p in sorted(root.iterdir()) if p.is_dir() and split_files(folder, p.name)] if root.is_dir() else []
    names = {p.name for p in present}
    default = default_config or next((m for m in marked if m in names), DIALOGUES)
    for cdir in present:
        files = split_files(folder, cdir.name)
        configs.append(
            {
                "config_name": cdir.name,
                "data_files": [{"split": s, "path": f"data/{cdir.name}/{s}-*.parquet"} for s in files],
                **({"default": True} if cdir.name == default else {}),
            }
        )
        schema = pq.read_schema(next(iter(files.values()))[0])
        splits = []
        for s, paths in files.items():
            meta = [pq.read_metadata(p) for p in paths]
            splits.append(
                {
                    "name": s,
                    "num_examples": sum(m.num_rows for m in meta),
                    "num_bytes": sum(p.stat().st_size for p in paths),
                }
            )
        infos.append({"config_name": cdir.name, "features": _features_yaml(schema.remove_metadata()), "splits": splits})
    header["configs"] = configs
    header["dataset_info"] = infos
    if body is None:
        body = card_body(folder) or _default_body(folder, infos)
    text = "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n\n" + body
    readme = folder / "README.md"
    tmp = readme.with_suffix(".md.partial")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(readme)
    return readme


def _default_body(folder: Path, infos: list[dict[str, Any]]) -> str:
    lines = [
        f"# {folder.name}",
        "",
        "A checklist-reward dataset for multi-turn tool-using agents, written by cm2data.",
        "",
        "| config | split | rows |",
        "| --- | --- | --- |",
    ]
    for info in infos:
        for s in info["splits"]:
            lines.append(f"| {info['config_name']} | {s['name']} | {s['num_examples']} |")
    lines += ["", 'Load it with `datasets.load_dataset("<this folder or repo>", "dialogues")`.', ""]
    return "\n".join(lines)


def reset_folder(folder: Path) -> None:
    """Remove the data files, card and rejects that cm2data writes (for ``--overwrite``)."""
    for name in ("data",):
        if (folder / name).exists():
            shutil.rmtree(folder / name)
    for name in ("README.md", REJECTS_FILE):
        if (folder / name).exists():
            (folder / name).unlink()
