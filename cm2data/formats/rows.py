"""Raw row sources: JSON arrays, JSON lines and parquet files, read tolerantly.

Each yielded item is ``(location, row)`` where ``row`` is a dict, or ``(location, RecordError)`` for input that
could not be parsed. A truncated JSON array still yields every complete element before the damage.

Text is decoded as UTF-8 (a leading byte-order mark is skipped). Bytes that are not UTF-8, and ``\\udXXX`` escapes
that leave a lone surrogate, cannot be stored (Arrow and the rejects table need valid UTF-8), so the row holding
them becomes a reject (rules ``invalid_utf8`` / ``invalid_unicode``) instead of being altered silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cm2data.rejects import RecordError

RowItem = tuple[str, "dict[str, Any] | RecordError"]

JSON_SUFFIXES = (".json",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)

#: the start of a JSON escape of a surrogate (a pair is fine, a lone one is not)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LITERALS = ("true", "false", "null")
#: what a decode error can leave at the very end of cut text: a number's "-", "." or exponent, half a \u escape
_PARTIAL_TOKEN = re.compile(r"-|\.|[eE][+-]?|\\?u[0-9a-fA-F]{0,4}")


def _read_text(path: Path) -> str:
    """The file as text; undecodable bytes survive as lone surrogates (U+DC80..U+DCFF) so that the rows holding them
    can be told."""
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    return text[1:] if text.startswith("\ufeff") else text


def _unicode_problem(raw: str, row: object) -> RecordError | None:
    """A reject when ``raw`` (the text ``row`` was decoded from) held bytes that are not UTF-8 or a lone surrogate."""
    try:
        raw.encode("utf-8")  # (faster than a regex: this runs on every row)
    except UnicodeEncodeError:
        return RecordError("invalid_utf8", "the row holds bytes that are not valid UTF-8")
    if _SURROGATE_ESCAPE.search(raw):  # (rare, except for emoji in ASCII-only JSON: then look exactly)
        try:
            json.dumps(row, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return RecordError("invalid_unicode", "the row holds a \\u escape of a lone surrogate (not valid Unicode)")
    return None


def _is_truncation(text: str, exc: json.JSONDecodeError) -> bool:
    """Whether a decode error is explained by the text simply stopping (a half-written file)."""
    end = len(text.rstrip())
    if exc.pos >= end - 1 or exc.msg.startswith("Unterminated string"):
        return True
    tail = text[exc.pos :].strip()
    if not tail or len(tail) > 6:
        return False
    return any(lit.startswith(tail) for lit in _LITERALS) or _PARTIAL_TOKEN.fullmatch(tail) is not None


def _decode_error(exc: json.JSONDecodeError | RecursionError, truncated: bool, where: str = "") -> RecordError:
    if isinstance(exc, RecursionError):
        return RecordError("json_syntax", "JSON nested too deeply to decode")
    rule = "truncated_file" if truncated else "json_syntax"
    return RecordError(rule, f"invalid JSON at {where}column {exc.colno}: {exc.msg}")


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
    with path.open("rb") as fh:  # binary: lines end at b"\n" only, and the file is streamed, not loaded
        lines = (raw.decode("utf-8", errors="surrogateescape") for raw in fh)
        yield from _jsonl_rows(path.name, lines)


def _split_lines(text: str) -> Iterator[str]:
    """``text`` cut after each ``\n`` (JSON lines end there; ``str.splitlines`` would also cut at U+2028 etc.)."""
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def _jsonl_rows(name: str, lines: Iterator[str]) -> Iterator[RowItem]:
    for lineno, line in enumerate(lines, start=1):
        if lineno == 1:
            line = line.removeprefix("\ufeff")
        where = f"{name}:{lineno}"
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            # only the last line can lack its newline: a half-written file when the damage is at the line's end
            truncated = not line.endswith("\n") and isinstance(exc, json.JSONDecodeError) and _is_truncation(line, exc)
            yield where, _decode_error(exc, truncated)
            continue
        if not isinstance(row, dict):
            yield where, RecordError("row_type", f"expected a JSON object, got {type(row).__name__}")
            continue
        yield where, _unicode_problem(line, row) or row


def _iter_json(path: Path) -> Iterator[RowItem]:
    text = _read_text(path)
    stripped = text.lstrip()
    if stripped.startswith("{"):
        # a single object, or JSON lines saved with a .json suffix
        try:
            row = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            yield from _jsonl_rows(path.name, _split_lines(text))
            return
        yield f"{path.name}:1", _unicode_problem(text, row) or row
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
    line, counted = 1, 0  # line numbers are counted as we go (counting from the start each time is quadratic)
    while True:
        while pos < length and text[pos] in " \t\r\n,":
            pos += 1
        line += text.count("\n", counted, pos)
        counted = pos
        if pos >= length:
            yield f"{path.name}:{line}", RecordError("truncated_file", f"file ends after {index} elements with no ']'")
            return
        if text[pos] == "]":
            return
        where = f"{path.name}[{index}] (line {line})"
        start = pos
        try:
            row, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            # a file that stops early (no closing ']', or the error sits at its very end) was cut while being written
            truncated = not text.rstrip().endswith("]") or _is_truncation(text, exc)
            yield where, _decode_error(exc, truncated, f"line {exc.lineno} ")
            return
        except RecursionError as exc:
            yield where, _decode_error(exc, False)
            return
        if isinstance(row, dict):
            yield where, _unicode_problem(text[start:pos], row) or row
        else:
            yield where, RecordError("row_type", f"expected a JSON object, got {type(row).__name__}")
        index += 1


def _iter_parquet(path: Path) -> Iterator[RowItem]:
    from cm2data.store import ShardUnreadable, shard_batches

    for item in shard_batches(path, 2048, read=lambda batch: batch.to_pylist()):
        if isinstance(item, ShardUnreadable):
            yield item.location, RecordError("parquet_unreadable", f"{type(item.error).__name__}: {item.error}")
            return
        offset, _, rows = item
        for i, row in enumerate(rows):
            yield f"{path.name}#{offset + i}", row
