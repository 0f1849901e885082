"""``folder_stats`` (statistics from a dataset folder's Arrow batches) equals ``dataset_stats`` over the records
``sources.load`` reads from the same folder — the whole dict, key order included — and reports the same read
rejects: on the shipped sample, on the broken-input corpus written as folders, on synthetic dialogues from the
validation benchmark (several shards, small batches, later copies of an id), on rows damaged at the Arrow level, on
shards in another layout and on a damaged shard. A screen that cleared an unreadable row would count it, so the
comparison fails then (``test_a_lax_screen_is_caught``).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import break_utf8, load_module
from typer.testing import CliRunner

from cm2data import store
from cm2data.cli import app
from cm2data.describe import dataset_stats, folder_stats
from cm2data.sources import load
from cm2data.validate import columnar_screens as screens

ROOT = Path(__file__).resolve().parents[1]
BROKEN = ROOT / "tests" / "data" / "broken"


@pytest.fixture(scope="module")
def arrow_damage() -> Any:
    return load_module(ROOT / "tests" / "test_columnar_gate.py", "cm2data_test_columnar_gate_stats")._damage_row


def _reject_keys(rejects: list[Any]) -> list[tuple[Any, ...]]:
    return [(r.record_id, r.stage, r.rule, r.message, r.location, r.raw) for r in rejects]


def assert_same(folder: Path, **kw: Any) -> dict[str, Any]:
    records, read = load(folder)
    expected = dataset_stats(records)
    got, got_read = folder_stats(folder, **kw)
    assert got == expected
    assert json.dumps(got) == json.dumps(expected)  # key order too: it is the JSON output
    assert _reject_keys(got_read) == _reject_keys(read)
    return got


def test_same_on_the_shipped_sample(sample_path: Path, tmp_path: Path) -> None:
    records, _ = load(sample_path)
    store.write_dataset(tmp_path / "ds", records, rows_per_file=7)
    got = assert_same(tmp_path / "ds")
    assert got["dialogues"] == len(records) and got["checklists"]["items_total"] > 0


CORPUS = sorted(p for p in BROKEN.iterdir() if p.suffix in (".json", ".jsonl"))


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_same_on_the_broken_corpus_as_folders(path: Path, tmp_path: Path) -> None:
    records, _ = load(path)
    store.write_dataset(tmp_path / "ds", records)
    got = assert_same(tmp_path / "ds", batch_size=3)
    assert got["dialogues"] == len(records)
    assert bool(records) == (path.name != "not_json.json")  # the one file without a readable record


def test_same_on_synthetic_dialogues_with_later_copies(bench: Any, tmp_path: Path) -> None:
    records, _ = bench.generate(2000, seed=5, broken=0.05)
    records += [records[3].model_copy(deep=True), records[1500].model_copy(deep=True)]
    store.write_dataset(tmp_path / "ds", records, rows_per_file=700)
    got = assert_same(tmp_path / "ds", batch_size=256)
    assert got["dialogues"] == 2000
    _, read = folder_stats(tmp_path / "ds")
    assert [r.rule for r in read] == ["duplicate_id", "duplicate_id"]


def test_same_on_rows_damaged_at_the_arrow_level(bench: Any, arrow_damage: Any, tmp_path: Path) -> None:
    rng = random.Random(11)
    records, _ = bench.generate(300, seed=9, broken=0.1)
    rows = [store.to_row(d) for d in records]
    for row in rows:
        if rng.random() < 0.5:
            for _ in range(rng.randint(1, 2)):
                arrow_damage(rng, row)
    store.write_table(tmp_path / "ds", pa.Table.from_pylist(rows, schema=store.DIALOGUE_SCHEMA), rows_per_file=120)
    loaded, read = load(tmp_path / "ds")
    assert len(read) > 20 and loaded  # the damage reaches the reader, and records remain
    assert assert_same(tmp_path / "ds", batch_size=50)["dialogues"] == len(loaded)


def test_another_layout_and_a_damaged_shard(bench: Any, tmp_path: Path) -> None:
    records, _ = bench.generate(60, seed=3, broken=0.2)
    folder = tmp_path / "ds"
    store.write_dataset(folder, records[:30])
    other = store.records_table(records[30:]).drop_columns(["metadata"])  # read row by row, no screen
    pq.write_table(other, store.data_dir(folder) / "train-00001-of-00003.parquet")
    shutil.copy(BROKEN / "truncated.parquet", store.data_dir(folder) / "train-00002-of-00003.parquet")
    got = assert_same(folder, batch_size=8)
    _, read = folder_stats(folder)
    assert got["dialogues"] == 60 and [r.rule for r in read] == ["parquet_unreadable"]


def test_a_shard_with_bytes_that_are_not_utf8(bench: Any, tmp_path: Path) -> None:
    """Parquet does not check strings when it reads them: the batch holding bytes that are not UTF-8 is the
    ``parquet_unreadable`` reject ``load`` makes of it (the rest of that shard unread), not counted rows."""
    records, _ = bench.generate(300, seed=9, broken=0.05)
    records[150].messages[0].content += " MARKER-QZX"
    store.write_dataset(tmp_path / "ds", records, rows_per_file=120)
    break_utf8(sorted(store.data_dir(tmp_path / "ds").glob("*.parquet"))[1], "MARKER-QZX")
    got = assert_same(tmp_path / "ds", batch_size=50)
    _, read = folder_stats(tmp_path / "ds", batch_size=50)
    assert [r.rule for r in read] == ["parquet_unreadable"] and got["dialogues"] == 120 + 60  # row 150 in batch 0


def test_a_lax_screen_is_caught(bench: Any, arrow_damage: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A screen that clears every row lets unreadable rows into the figures: the comparison must notice."""
    rng = random.Random(2)
    records, _ = bench.generate(100, seed=2, broken=0.1)
    rows = [store.to_row(d) for d in records]
    for row in rows[::3]:
        arrow_damage(rng, row)
    store.write_table(tmp_path / "ds", pa.Table.from_pylist(rows, schema=store.DIALOGUE_SCHEMA))
    assert assert_same(tmp_path / "ds")["dialogues"] > 0  # unbroken, the comparison holds on real figures
    real = screens.screen_batch

    def lax(batch: pa.RecordBatch, cfg: Any, **kw: Any) -> screens.BatchScreen:
        s = real(batch, cfg, **kw)
        s.unreadable = np.zeros(s.n, dtype=np.bool_)
        return s

    monkeypatch.setattr(screens, "screen_batch", lax)
    with pytest.raises(AssertionError):
        assert_same(tmp_path / "ds")


def test_cli_stats_of_a_folder_prints_what_the_records_give(bench: Any, tmp_path: Path) -> None:
    records, _ = bench.generate(200, seed=6, broken=0.1)
    rows = [store.to_row(d) for d in records]
    rows[5]["messages"][0]["role"] = "bot"  # one row the reader refuses
    store.write_table(tmp_path / "ds", pa.Table.from_pylist(rows, schema=store.DIALOGUE_SCHEMA))
    loaded, read = load(tmp_path / "ds")
    assert len(read) == 1
    run = CliRunner().invoke(app, ["stats", str(tmp_path / "ds"), "--json", str(tmp_path / "stats.json")])
    assert run.exit_code == 0, run.output
    assert (tmp_path / "stats.json").read_text() == json.dumps(dataset_stats(loaded), indent=2)
    assert "1 rows could not be read" in run.output
    assert f": {len(loaded)}" in run.output  # the table's title (wrapped in a narrow terminal)
