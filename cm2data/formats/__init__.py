"""The one place that converts records to and from external formats.

Each format module offers ``read(row: dict) -> Dialogue`` and, where writing makes sense,
``write(dialogue) -> dict``. :data:`FORMATS` registers them under the names that ``--format`` accepts.
:func:`read_records` turns files or folders into records plus rejects; nothing raises for bad rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from cm2data.formats import cm2, nemotron, openai, sharegpt, verl
from cm2data.formats.rows import iter_rows
from cm2data.rejects import RecordError, Reject
from cm2data.schema import Dialogue


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    read: Callable[[dict[str, Any]], Dialogue]
    write: Callable[[Dialogue], dict[str, Any]] | None
    lossy: tuple[str, ...] = ()


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("cm2", "CM2 reference JSON [{uuid, messages, tools, checklists}]", cm2.read, cm2.write, cm2.LOSSY),
        Format(
            "nemotron",
            "uuid, OpenAI messages, metadata JSON string with tools",
            nemotron.read,
            nemotron.write,
            nemotron.LOSSY,
        ),
        Format("openai", "OpenAI-messages JSONL {messages, tools}", openai.read, openai.write, openai.LOSSY),
        Format(
            "sharegpt",
            "ShareGPT/APIGen-MT {conversations, tools, system}",
            sharegpt.read,
            sharegpt.write,
            sharegpt.LOSSY,
        ),
        Format("verl", "VeRL parquet rows (reads the CM2 reference's *_forverl.parquet)", verl.read, None),
    )
}


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r}; choose one of: {', '.join(FORMATS)}") from None


def guess_format(row: dict[str, Any]) -> str:
    """Pick a format from a row's keys (used when ``--format auto``)."""
    if "conversations" in row:
        return "sharegpt"
    if "data_source" in row or ("extra_info" in row and "prompt" in row):
        return "verl"
    if isinstance(row.get("metadata"), str) and "uuid" in row:
        return "nemotron"
    if "uuid" in row:
        return "cm2"
    return "openai"


def _error_summary(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - 3
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


#: the stored integer columns (checklist turns, evidence turn and step) are 64-bit
_INT64_MAX = 2**63 - 1


def _check_storable(d: Dialogue) -> None:
    """Raise :class:`RecordError` for what the dataset store cannot hold: strings that are not valid Unicode (a lone
    surrogate decoded from a ``\\udXXX`` escape, for example inside nested JSON such as ``metadata``), free-form
    fields (metadata, tool parameters, extra info) that are not JSON, and integers beyond 64 bits."""
    free = [
        d.metadata,
        [t.parameters for t in d.tools],
        [it.extra_info for variant in d.checklists for block in variant for it in block.items],
        d.provenance.history,
        d.review.decisions,
        d.review.agreement,
    ]
    try:
        json.dumps(free, ensure_ascii=False, sort_keys=True).encode("utf-8")  # as the store writes them
        d.model_dump_json()  # the typed string fields
    except (PydanticSerializationError, UnicodeEncodeError):
        raise RecordError(
            "invalid_unicode",
            "a string holds a lone surrogate (a \\udXXX escape in nested JSON?), which is not valid Unicode",
        ) from None
    except (TypeError, ValueError) as exc:
        raise RecordError(
            "not_json_value", f"metadata, tool parameters or extra info hold a value that is not JSON: {exc}"
        ) from None
    for v, variant in enumerate(d.checklists):
        for block in variant:
            if block.turn > _INT64_MAX:
                raise RecordError("value_range", f"checklist variant {v}: block turn {block.turn} is out of range")
            for it in block.items:
                for ev in it.evidence:
                    if max(ev.turn, ev.step) > _INT64_MAX:
                        raise RecordError(
                            "value_range",
                            f"checklist variant {v} turn {block.turn} {it.id}: evidence turn/step is out of range",
                        )


def convert_row(row: dict[str, Any], fmt: str, location: str) -> Dialogue | Reject:
    """Convert one raw row; every failure becomes a :class:`Reject` naming the location and rule."""
    rid = row.get("uuid") or row.get("id")
    try:
        name = guess_format(row) if fmt == "auto" else fmt
        record = get_format(name).read(row)
        _check_storable(record)
        return record
    except RecordError as exc:
        return Reject(str(rid) if rid else None, "read", exc.rule, exc.message, location, row)
    except ValidationError as exc:
        return Reject(str(rid) if rid else None, "read", "record_schema", _error_summary(exc), location, row)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return Reject(str(rid) if rid else None, "read", "record_shape", f"{type(exc).__name__}: {exc}", location, row)


def input_files(src: Path) -> list[Path]:
    """The data files of ``src``: the file itself, or every json/jsonl/parquet file below a folder."""
    if src.is_file():
        return [src]
    if not src.exists():
        raise FileNotFoundError(f"{src} does not exist")
    files = sorted(
        p
        for p in src.rglob("*")
        if p.suffix.lower() in (".json", ".jsonl", ".ndjson", ".parquet")
        and p.is_file()
        and p.name not in ("rejects.jsonl", "dataset_info.json")
    )
    if not files:
        raise FileNotFoundError(f"{src} holds no .json, .jsonl or .parquet files")
    return files


def read_records(src: Path, fmt: str = "auto") -> Iterator[Dialogue | Reject]:
    """Yield a record or a reject for every row of every file under ``src``."""
    for path in input_files(src):
        try:
            rows = iter_rows(path)
            for location, row in rows:
                if isinstance(row, RecordError):
                    yield Reject(None, "read", row.rule, row.message, location)
                else:
                    yield convert_row(row, fmt, location)
        except (OSError, ValueError) as exc:
            yield Reject(None, "read", "unreadable_file", str(exc), str(path))


def write_records(records: Iterable[Dialogue], path: Path, fmt: str) -> int:
    """Write records in ``fmt`` to ``path`` (``.json`` array or ``.jsonl`` lines). Returns the count."""
    spec = get_format(fmt)
    if spec.write is None:
        raise ValueError(f"format {fmt!r} is read-only here")
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = (spec.write(r) for r in records)
    n = 0
    tmp = path.with_suffix(path.suffix + ".partial")
    with tmp.open("w", encoding="utf-8") as fh:
        if path.suffix.lower() == ".json":
            fh.write("[\n")
            for row in rows:
                fh.write((",\n" if n else "") + json.dumps(row, ensure_ascii=False, indent=2))
                n += 1
            fh.write("\n]\n")
        else:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
    tmp.replace(path)  # never leave a half-written file under the final name
    return n


__all__ = [
    "FORMATS",
    "Format",
    "convert_row",
    "get_format",
    "guess_format",
    "input_files",
    "read_records",
    "write_records",
]
