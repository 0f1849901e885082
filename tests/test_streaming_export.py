"""``cm2data export llamafactory|verl`` on a dataset folder streams the records (one parquet batch at a time) and
writes byte for byte the files the list path writes — the records of ``sources.load`` passed as a list, read rejects
included — on the shipped sample and on synthetic dialogues with rows the reader refuses and later copies of an id.
The exporters hold one record at a time when given an iterator (VeRL: with the exportable count given)."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cm2data import store
from cm2data.cli import app
from cm2data.export import verl
from cm2data.export.llamafactory import ExportOptions, export_llamafactory
from cm2data.schema import Dialogue
from cm2data.sources import load

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthetic(bench: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 synthetic dialogues in 3 shards: 2 rows the reader refuses, 2 later copies of an id, 3 without a
    checklist (VeRL rejects those)."""
    records, _ = bench.generate(300, seed=7, broken=0.1)
    for d in records[10:13]:
        d.checklists = []
    records += [records[4].model_copy(deep=True), records[250].model_copy(deep=True)]
    rows = [store.to_row(d) for d in records]
    rows[20]["messages"][0]["role"] = "bot"
    rows[200]["tools"] = "not json"
    folder = tmp_path_factory.mktemp("synthetic") / "ds"
    store.write_table(folder, pa.Table.from_pylist(rows, schema=store.DIALOGUE_SCHEMA), rows_per_file=110)
    return folder


@pytest.fixture(scope="module")
def sample_folder(sample_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    records, _ = load(sample_path)
    folder = tmp_path_factory.mktemp("sample") / "ds"
    store.write_dataset(folder, records, rows_per_file=9)
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("which", ["sample", "synthetic"])
@pytest.mark.parametrize("style", ["inline", "native"])
def test_llamafactory_folder_export_equals_the_list_path(
    which: str, style: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    src = request.getfixturevalue(f"{which}_folder" if which == "sample" else which)
    args = ["export", "llamafactory", str(src), "--out", str(tmp_path / "cli"), "--style", style]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    records, read = load(src)
    export_llamafactory(records, tmp_path / "list", ExportOptions(style=style), extra_rejects=read)
    assert _files(tmp_path / "cli") == _files(tmp_path / "list")
    if which == "synthetic":
        assert b'"duplicate_id"' in _files(tmp_path / "cli")["rejects.jsonl"]
        assert b'"record_schema"' in _files(tmp_path / "cli")["rejects.jsonl"]


@pytest.mark.parametrize("which", ["sample", "synthetic"])
def test_verl_folder_export_equals_the_list_path(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    src = request.getfixturevalue(f"{which}_folder" if which == "sample" else which)
    args = ["export", "verl", str(src), "--out", str(tmp_path / "cli"), "--val-size", "5", "--seed", "3"]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    records, read = load(src)
    verl.export_verl(records, tmp_path / "list", val_size=5, seed=3, extra_rejects=read)
    got = _files(tmp_path / "cli")
    assert got == _files(tmp_path / "list")
    assert pq.read_metadata(tmp_path / "cli" / "val.parquet").num_rows == 5
    if which == "synthetic":
        rules = got["rejects.jsonl"].decode()
        assert rules.count('"no_checklist"') == 3 and rules.count('"duplicate_id"') == 2


def test_count_exportable_counts_what_export_verl_keeps(synthetic: Path, tmp_path: Path) -> None:
    records, _ = load(synthetic)
    result = verl.export_verl(records, tmp_path / "out")
    assert verl.count_exportable(synthetic) == result.train_rows + result.val_rows == len(records) - 3


def test_a_small_file_is_what_write_table_writes(sample_folder: Path, tmp_path: Path) -> None:
    """At most ROW_GROUP_ROWS rows: one row group, the bytes ``pq.write_table`` of the whole table gives (as the
    export wrote before it streamed)."""
    records, _ = load(sample_folder)
    verl.export_verl(records, tmp_path / "out", val_fraction=0.25)
    for name in ("train.parquet", "val.parquet"):
        path = tmp_path / "out" / name
        table = pa.Table.from_pylist(pq.read_table(path).to_pylist())
        assert table.schema == verl.verl_schema()
        pq.write_table(table, tmp_path / name)
        assert path.read_bytes() == (tmp_path / name).read_bytes()


def test_a_large_file_is_written_a_row_group_at_a_time(
    synthetic: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(verl, "ROW_GROUP_ROWS", 64)
    records, _ = load(synthetic)
    result = verl.export_verl(iter(records), tmp_path / "stream", exportable=verl.count_exportable(synthetic))
    verl.export_verl(records, tmp_path / "list")
    assert _files(tmp_path / "stream") == _files(tmp_path / "list")
    meta = pq.read_metadata(tmp_path / "stream" / "train.parquet")
    assert meta.num_row_groups == -(-result.train_rows // 64) and meta.num_rows == result.train_rows
    rows = [verl.to_verl_row(d, i, "train") for i, d in enumerate(d for d in records if d.checklists)]
    assert pq.read_table(tmp_path / "stream" / "train.parquet").equals(pa.Table.from_pylist(rows))


def test_a_wrong_count_is_an_error(synthetic: Path, tmp_path: Path) -> None:
    records, _ = load(synthetic)
    n = verl.count_exportable(synthetic)
    with pytest.raises(ValueError, match="counted"):
        verl.export_verl(iter(records), tmp_path / "a", exportable=n - 1)
    with pytest.raises(ValueError, match="counted"):
        verl.export_verl(iter(records), tmp_path / "b", exportable=n + 1)


class _Alive:
    """Yields fresh copies of records and notes how many it made are still alive at each step."""

    def __init__(self, records: list[Dialogue]) -> None:
        self.records = records
        self.most = 0

    def __iter__(self) -> Iterator[Dialogue]:
        refs: list[weakref.ref[Dialogue]] = []
        for d in self.records:
            self.most = max(self.most, sum(1 for r in refs if r() is not None))
            copy = d.model_copy(deep=True)
            refs.append(weakref.ref(copy))
            yield copy
            del copy


def test_the_exporters_hold_one_record_at_a_time(synthetic: Path, tmp_path: Path) -> None:
    records, _ = load(synthetic)
    alive = _Alive(records)
    export_llamafactory(iter(alive), tmp_path / "lf")
    assert alive.most <= 1  # the one being rendered
    alive = _Alive(records)
    verl.export_verl(iter(alive), tmp_path / "verl", exportable=verl.count_exportable(synthetic))
    assert alive.most <= 1
    alive = _Alive(records)
    verl.export_verl(iter(alive), tmp_path / "verl-list")  # no count: gathered into a list first
    assert alive.most == len(records) - 1
