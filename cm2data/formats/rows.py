"""Raw row sources: JSON arrays, JSON lines and parquet files, read tolerantly.

Each yielded item is ``(location, row)`` where ``row`` is a dict, or ``(location, RecordError)`` for input that
could not be parsed. A truncated JSON array still yields every complete element before the damage.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cm2data.rejects import RecordError

RowItem = tuple[str, "dict[str, Any] | RecordError"]

JSON_SUFFIXES = (".json",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)


def iter_rows(path: Path) -> Iterator[RowItem]:
    """Yield raw rows of one file, choosing the parser by suffix (``.json``, ``.jsonl``, ``.parquet``)."""
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        yield from _iter_jsonl(path)
    elif suffix in JSON_SUFFIXES:
        yield from _iter_json(path)
    elif suffix in PARQUET_SUFFIXES:
        yield from _iter_parquet(path)
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r} (expected .json, .jsonl or .parquet)")


def _iter_jsonl(path: Path) -> Iterator[RowItem]:
    with path.open(encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            where = f"{path.name}:{lineno}"
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, RecordError("json_syntax", f"invalid JSON at column {exc.colno}: {exc.msg}")
                continue
            if not isinstance(row, dict):
                yield where, RecordError("row_type", f"expected a JSON object, got {type(row).__name__}")
                continue
            yield where, row


def _iter_json(path: Path) -> Iterator[RowItem]:
    text = path.read_text(encoding="utf-8", errors="replace")
    stripped = text.lstrip()
    if stripped.startswith("{"):
        # a single object, or JSON lines saved with a .json suffix
        try:
            row = json.loads(text)
        except json.JSONDecodeError:
            yield from _iter_jsonl(path)
            return
        yield f"{path.name}:1", row if isinstance(row, dict) else RecordError("row_type", "expected an object")
        return
    if not stripped.startswith("["):
        yield f"{path.name}:1", RecordError("json_syntax", "expected a JSON array or object at the start of the file")
        return
    yield from _iter_json_array(path, text)


def _iter_json_array(path: Path, text: str) -> Iterator[RowItem]:
    """Decode array elements one at a time so that damage late in the file loses nothing before it."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    index = 0
    length = len(text)
    while True:
        while pos < length and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= length:
            line = text.count("\n", 0, pos) + 1
            yield f"{path.name}:{line}", RecordError("truncated_file", f"file ends after {index} elements with no ']'")
            return
        if text[pos] == "]":
            return
        line = text.count("\n", 0, pos) + 1
        where = f"{path.name}[{index}] (line {line})"
        try:
            row, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            rule = "truncated_file" if exc.pos >= length - 1 else "json_syntax"
            yield where, RecordError(rule, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")
            return
        if isinstance(row, dict):
            yield where, row
        else:
            yield where, RecordError("row_type", f"expected a JSON object, got {type(row).__name__}")
        index += 1


def _iter_parquet(path: Path) -> Iterator[RowItem]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        yield path.name, RecordError("parquet_unreadable", f"{type(exc).__name__}: {exc}")
        return
    offset = 0
    for batch in pf.iter_batches(batch_size=2048):
        for i, row in enumerate(batch.to_pylist()):
            yield f"{path.name}#{offset + i}", row
        offset += batch.num_rows
