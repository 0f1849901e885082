"""The streamed local ingest (``cm2data.ingest_local``) writes what the record path writes — ``sources.load`` then
``ingest.write_ingested``, kept here as the reference: every shard's rows (file by file), ``rejects.jsonl`` byte for
byte and the card (less ``num_bytes``: a streamed shard has one row group per batch, so its size differs). Clocks are
pinned, so the provenance stamps (``created_at``, the history's ``at``) are compared too, not excluded.

Inputs: the shipped sample (as a file and as a dataset folder), every file of the broken-input corpus, and synthetic
dialogues from the validation benchmark as a dataset folder in several shards — with later copies of ids and rows
damaged or in non-canonical form at the Arrow level, a shard in another layout and a damaged shard. Rows cleared by
the screens go through as Arrow (``arrow_rows`` > 0 is checked), the others through their record. A broken
pass-through (a lax canonical screen, a lost reject) makes the comparison fail (the ``*_is_caught`` tests).
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import cm2data.ingest
import cm2data.ingest_local
import cm2data.schema.records
from cm2data import ingest_arrow, store
from cm2data.cli import app
from cm2data.ingest import write_ingested
from cm2data.ingest_local import LocalIngest, ingest_local
from cm2data.sources import load

ROOT = Path(__file__).resolve().parents[1]
BROKEN = ROOT / "tests" / "data" / "broken"
BROKEN_FILES = sorted(p.name for p in BROKEN.iterdir() if p.suffix in (".json", ".jsonl", ".parquet"))


class _Clock(datetime):
    """``datetime`` whose ``now`` is fixed: both paths stamp the same times."""

    @classmethod
    def now(cls, tz: Any = None) -> _Clock:
        return cls(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(autouse=True)
def pinned_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (cm2data.schema.records, cm2data.ingest, cm2data.ingest_local):
        monkeypatch.setattr(module, "datetime", _Clock)


def old_ingest(src: Path, out: Path) -> None:
    """The record path ``cm2data ingest`` took before: every record in memory, then written."""
    records, rejects = load(src)
    write_ingested(out, records, rejects, source=str(src))


def written(out: Path) -> dict[str, Any]:
    """Everything an ingest leaves in ``out``, comparable: rows per shard file, the rejects file, the card."""
    shards = {p.name: pq.read_table(p).to_pylist() for p in sorted(store.data_dir(out).glob("*.parquet"))}
    header = store.read_card_header(out)
    for info in header.get("dataset_info", []):
        for split in info["splits"]:
            split.pop("num_bytes")
    return {
        "shards": shards,
        "rejects": (out / store.REJECTS_FILE).read_text(encoding="utf-8"),
        "card": header,
        "body": store.card_body(out),
        "files": sorted(p.relative_to(out).as_posix() for p in out.rglob("*")),
    }


def assert_same(src: Path, tmp_path: Path) -> LocalIngest:
    old, new = tmp_path / "old" / "out", tmp_path / "new" / "out"  # the card names the folder
    old_ingest(src, old)
    result = ingest_local(src, new)
    expected, got = written(old), written(new)
    assert list(got["shards"]) == list(expected["shards"])
    for name, rows in expected["shards"].items():
        assert len(got["shards"][name]) == len(rows), name
        for i, (a, b) in enumerate(zip(got["shards"][name], rows, strict=True)):
            assert a == b, f"{name} row {i} ({b['id']})"
    assert got == expected
    return result


def test_sample_file(sample_path: Path, tmp_path: Path) -> None:
    result = assert_same(sample_path, tmp_path)
    assert result.records == 33 and result.arrow_rows == 0


def test_sample_as_a_dataset_folder_goes_through_as_arrow(sample_path: Path, tmp_path: Path) -> None:
    folder = tmp_path / "src"
    store.write_dataset(folder, load(sample_path)[0])
    result = assert_same(folder, tmp_path)
    assert result.records == result.arrow_rows == 33


def test_an_ingested_folder_ingested_again(sample_path: Path, tmp_path: Path) -> None:
    """Rows that carry ingest's stamps already (history entry, created_at, provenance source) keep them."""
    first = tmp_path / "first"
    old_ingest(sample_path, first)
    result = assert_same(first, tmp_path)
    assert result.arrow_rows == 33


@pytest.mark.parametrize("name", BROKEN_FILES)
def test_broken_file(name: str, tmp_path: Path) -> None:
    result = assert_same(BROKEN / name, tmp_path)
    records, rejects = load(BROKEN / name)
    assert (result.records, result.rejected) == (len(records), len(rejects))
    assert result.records + result.rejected > 0  # every file gives records or rejects, never nothing


def test_broken_corpus_as_a_folder(tmp_path: Path) -> None:
    result = assert_same(BROKEN, tmp_path)
    assert result.rejected > 0 and "duplicate_id" in result.rules


def _damaged_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``rows`` changed at the Arrow level: rows the reader refuses, rows the record path would rewrite
    (nulls it fills, JSON it re-encodes, blocks it sorts), stamps already present, and later copies of ids."""
    out = [json.loads(json.dumps(r)) for r in rows]
    edits = [
        lambda r: r.update(source=None),
        lambda r: r.update(metadata='{"z": 1, "a": [1, 2]}'),
        lambda r: r.update(metadata='{"a":1}'),
        lambda r: r.update(metadata=None),
        lambda r: r.update(tools=json.dumps([{"type": "function", "function": {"name": "f", "x": 1}}])),
        lambda r: r["review"].update(agreement='{"verdict_percent": 80}'),
        lambda r: r["review"].update(agreement='{"verdict_percent": 80.0}'),
        lambda r: r["review"].update(status=None),
        lambda r: r["review"].update(reviewers=None),
        lambda r: r.update(review=None),
        lambda r: r.update(provenance=None),
        lambda r: r["provenance"].update(history=None, created_at="2020-01-01T00:00:00+00:00", source="elsewhere"),
        lambda r: r["provenance"].update(history='[{"stage": "ingest", "at": "then", "input": "x"}]', source=""),
        lambda r: r["messages"][0].update(content=None),
        lambda r: r["messages"][0].update(role="robot"),  # unreadable: record_schema reject
        lambda r: r.update(messages=None),  # unreadable
        lambda r: r.update(metadata="[1, 2]"),  # unreadable: metadata must be an object
        lambda r: r.update(checklists=None),
        lambda r: r.update(checklists=[list(reversed(v)) for v in r["checklists"]]),
        lambda r: [it.update(extra_info="{}") for v in r["checklists"] for b in v for it in b["items"]],
        lambda r: [it.update(extra_info='{"k": 1}') for v in r["checklists"] for b in v for it in b["items"]],
        lambda r: [it.update(failure_examples=None) for v in r["checklists"] for b in v for it in b["items"]],
        lambda r: [c.update(arguments=None) for m in r["messages"] for c in m["tool_calls"]],
        lambda r: r.update(source=""),
    ]
    for k, edit in enumerate(edits):
        edit(out[(k * 37) % len(out)])
    out += [json.loads(json.dumps(rows[i])) for i in (3, 50, 51)]  # later copies of readable rows
    dup = json.loads(json.dumps(rows[7]))
    dup["source"] = None  # a later copy that is also not canonical
    out.append(dup)
    return out


def _synthetic_folder(bench: Any, folder: Path, n: int = 1500, damaged: bool = True) -> None:
    records, _ = bench.generate(n, seed=11, broken=0.05)
    rows = [store.to_row(r) for r in records]
    if damaged:
        rows = _damaged_rows(rows)
    table = pa.Table.from_pylist(rows, schema=store.DIALOGUE_SCHEMA)
    store.write_table(folder, table, rows_per_file=600)  # three shards
    if damaged:
        target = store.data_dir(folder)
        other = table.slice(0, 20).drop_columns(["review"])  # another layout: read row by row
        pq.write_table(other, target / "train-00003-of-00005.parquet")
        (target / "train-00004-of-00005.parquet").write_bytes(b"PAR1 not a parquet file")


def test_synthetic_dataset_folder(bench: Any, tmp_path: Path) -> None:
    folder = tmp_path / "src"
    _synthetic_folder(bench, folder, damaged=False)
    result = assert_same(folder, tmp_path)
    assert result.records == result.arrow_rows == 1500


def test_synthetic_folder_damaged_at_the_arrow_level(bench: Any, tmp_path: Path) -> None:
    folder = tmp_path / "src"
    _synthetic_folder(bench, folder)
    result = assert_same(folder, tmp_path)
    assert 0 < result.arrow_rows < result.records
    assert {"record_schema", "duplicate_id", "parquet_unreadable"} <= set(result.rules)


def test_store_layout_parquet_file_reads_as_its_folder(bench: Any, tmp_path: Path) -> None:
    """A bare parquet file in the store's layout is read as the rows of a dataset folder (the record path read it
    as OpenAI rows and refused each one)."""
    folder = tmp_path / "src"
    _synthetic_folder(bench, folder, n=500, damaged=False)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(next(store.data_dir(folder).glob("*.parquet")), bare / "rows.parquet")
    from_folder = ingest_local(folder, tmp_path / "a")
    from_file = ingest_local(bare, tmp_path / "b")
    assert from_file.arrow_rows == from_folder.arrow_rows == 500
    assert _rows_less_input(tmp_path / "a", folder) == _rows_less_input(tmp_path / "b", bare)


def _rows_less_input(out: Path, src: Path) -> list[dict[str, Any]]:
    """The rows of ``out`` with the stamps' mention of the source path taken out (it differs by design)."""
    rows = store.read_table(out).to_pylist()
    for row in rows:
        history = json.loads(row["provenance"]["history"])
        assert [h["input"] for h in history if h["stage"] == "ingest"] == [str(src)]
        row["provenance"]["history"] = [{k: v for k, v in h.items() if k != "input"} for h in history]
        assert row["provenance"]["source"] != str(src)
    return rows


def test_shards_roll_over_at_rows_per_file(bench: Any, tmp_path: Path) -> None:
    folder = tmp_path / "src"
    _synthetic_folder(bench, folder, n=1000, damaged=False)
    result = ingest_local(folder, tmp_path / "out", rows_per_file=300)
    files = [p.name for p in result.files]
    assert files == [f"train-{i:05d}-of-00004.parquet" for i in range(4)]
    assert [pq.read_metadata(p).num_rows for p in result.files] == [300, 300, 300, 100]
    one = ingest_local(folder, tmp_path / "one")
    assert store.read_table(tmp_path / "out").equals(store.read_table(tmp_path / "one"))
    assert len(one.files) == 1


def test_rerun_replaces_the_split(sample_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ingest_local(BROKEN, out, rows_per_file=10)
    before = written(out)
    ingest_local(BROKEN, out, rows_per_file=10)
    assert written(out) == before
    ingest_local(sample_path, out)
    assert [p.name for p in store.data_dir(out).iterdir()] == ["train-00000-of-00001.parquet"]
    assert (out / store.REJECTS_FILE).read_text() == ""


def test_empty_source_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "empty.jsonl"
    src.write_text("\n")
    with pytest.raises(cm2data.ingest_local.EmptySourceError):
        ingest_local(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_ingest_summary(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["ingest", str(BROKEN), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    n = len((tmp_path / "out" / store.REJECTS_FILE).read_text().splitlines())
    assert f"{n} rows rejected" in r.output and "duplicate_id: 1" in r.output


def test_canonical_rows_read_and_write_back_unchanged(bench: Any) -> None:
    """What ``canonical_mask`` clears (among rows the screen says read) is exactly what ``to_row(from_row(row))``
    gives back, history aside (ingest rewrites it); and every edit the record path would undo is not cleared."""
    from cm2data.validate import RuleConfig
    from cm2data.validate.columnar_screens import screen_batch

    records, _ = bench.generate(300, seed=2, broken=0.1)
    rows = _damaged_rows([store.to_row(r) for r in records])
    batch = pa.RecordBatch.from_pylist(rows, schema=store.DIALOGUE_SCHEMA)
    readable = ~screen_batch(batch, RuleConfig()).unreadable
    canonical = ingest_arrow.canonical_mask(batch)
    stored = batch.to_pylist()
    changed = 0
    for i, row in enumerate(stored):
        if not readable[i]:
            continue
        again = store.to_row(store.from_row(row))
        for r in (row, again):
            if r["provenance"] is not None:
                r["provenance"] = {**r["provenance"], "history": None}
        same = again == row
        assert not canonical[i] or same, f"row {i} cleared but rewritten by the record path"
        changed += not same
    assert changed >= 15  # the edits that the record path undoes are there, and were all held back


# ------------------------------------------------------------------------------- the comparison catches breakage


def test_a_lax_canonical_screen_is_caught(bench: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Passing every readable row through as Arrow writes non-canonical rows the record path would have rewritten."""
    folder = tmp_path / "src"
    _synthetic_folder(bench, folder)
    monkeypatch.setattr(cm2data.ingest_local, "canonical_mask", lambda batch: np.ones(batch.num_rows, dtype=np.bool_))
    with pytest.raises(AssertionError):
        assert_same(folder, tmp_path)


def test_a_lost_reject_is_caught(bench: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "src"
    _synthetic_folder(bench, folder)
    add = cm2data.ingest_local._RejectSink.add

    def drop_duplicates(self: Any, reject: Any) -> None:
        if reject.rule != "duplicate_id":
            add(self, reject)

    monkeypatch.setattr(cm2data.ingest_local._RejectSink, "add", drop_duplicates)
    with pytest.raises(AssertionError):
        assert_same(folder, tmp_path)


def test_an_arrow_stamp_left_out_is_caught(sample_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "src"
    store.write_dataset(folder, load(sample_path)[0])
    monkeypatch.setattr(ingest_arrow, "stamped_history", lambda history, source, at: history or "[]")
    with pytest.raises(AssertionError):
        assert_same(folder, tmp_path)


def test_a_shard_with_bytes_that_are_not_utf8(sample_path: Path, tmp_path: Path) -> None:
    """Parquet does not check strings when read: such a shard is cut where the record path's decoding fails, with
    the same reject, instead of its bytes being copied into the output."""
    folder = tmp_path / "src"
    store.write_dataset(folder, load(sample_path)[0])
    shard = next(store.data_dir(folder).glob("*.parquet"))
    table = pq.read_table(shard)
    ids = table.column("id").combine_chunks()
    data = bytearray(ids.buffers()[2].to_pybytes())
    data[0] = 0xFF
    bad_ids = pa.Array.from_buffers(
        pa.string(), len(ids), [ids.buffers()[0], ids.buffers()[1], pa.py_buffer(bytes(data))]
    )
    pq.write_table(table.set_column(0, "id", bad_ids), shard)
    result = assert_same(folder, tmp_path)
    assert result.rules == {"parquet_unreadable": 1} and result.records == 0
