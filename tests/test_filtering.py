"""``cm2data filter`` on a dataset folder streams Arrow batches through the columnar gate
(``cm2data.filtering.filter_folder``). Its output must equal the record path's (``sources.load`` → ``run_gate`` →
``write_filtered``): the kept rows with their filter stamp, and every reject with its rule, message, location and
raw row, in order — on the shipped sample, on damaged synthetic dialogues spread over several shards with
duplicate ids, on the broken-input corpus, for the rule filters alone and with the checklist rules and tables (whose
rejects are known only at the end, after their rows were staged)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cm2data import store
from cm2data.cli import app
from cm2data.filtering import filter_folder, stamp_history
from cm2data.ingest import write_filtered
from cm2data.rejects import Reject, read_rejects, write_rejects
from cm2data.schema import Dialogue
from cm2data.sources import load
from cm2data.validate import RuleConfig, run_gate

REPO = Path(__file__).resolve().parents[1]
BROKEN = REPO / "tests" / "data" / "broken"
sys.path.insert(0, str(REPO / "benchmarks"))
import validate as bench  # noqa: E402  (the benchmark's generator)

ALL = ("rules", "checklist", "tables")


def _drop_filter_time(history: str) -> list[Any]:
    entries = json.loads(history)
    return [{k: v for k, v in e.items() if k != "at"} if e.get("stage") == "filter" else e for e in entries]


def _kept(folder: Path) -> list[dict[str, Any]]:
    rows = store.read_table(folder).to_pylist()
    for row in rows:
        row["provenance"]["history"] = _drop_filter_time(row["provenance"]["history"])
    return rows


def _rejects(folder: Path) -> list[tuple[Any, ...]]:
    return [
        (r.record_id, r.stage, r.rule, r.message, r.location, r.raw) for r in read_rejects(folder / "rejects.jsonl")
    ]


def _record_path(src: Path, out: Path, stages: tuple[str, ...], rules: list[str] | None) -> None:
    records, read_rejects_ = load(src, "auto")
    result = run_gate(records, config=RuleConfig(), stages=stages, rules=rules)
    write_filtered(out, src, result, read_rejects_)


def _folder(tmp_path: Path, name: str, records: list[Dialogue], rows_per_file: int) -> Path:
    folder = tmp_path / name
    store.write_dataset(folder, records, rows_per_file=rows_per_file)
    write_rejects(
        [Reject("old-1", "ingest", "json_syntax", "an earlier stage's reject", "f.jsonl:3")], folder / "rejects.jsonl"
    )
    return folder


def _damaged(seed: int, n: int) -> list[Dialogue]:
    records, _ = bench.generate(n, seed=seed, broken=0.3)
    rng = random.Random(seed)
    for d in rng.sample(records, 3):  # later copies of an id, across shards
        twin = d.model_copy(deep=True)
        records.insert(rng.randrange(len(records)), twin)
    return records


def _corpus() -> list[Dialogue]:
    out: list[Dialogue] = []
    for path in sorted(BROKEN.iterdir()):
        if path.suffix in (".json", ".jsonl", ".parquet"):
            out += load(path, "auto")[0]
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from conftest import SAMPLE

    tmp = tmp_path_factory.mktemp("filter-src")
    return {
        "sample": _folder(tmp, "sample", load(SAMPLE, "cm2")[0], 50_000),
        "damaged": _folder(tmp, "damaged", _damaged(3, 120), 25),
        "corpus": _folder(tmp, "corpus", _corpus(), 40),
        "not_utf8": _not_utf8(tmp),
    }


def _not_utf8(tmp: Path) -> Path:
    """A folder whose second shard holds bytes that are not UTF-8 (unreadable from its batch on)."""
    from conftest import break_utf8

    records, _ = bench.generate(90, seed=4, broken=0.1)
    records[40].messages[0].content += " MARKER-QZX"
    folder = _folder(tmp, "not_utf8", records, 30)
    break_utf8(sorted(store.data_dir(folder).glob("*.parquet"))[1], "MARKER-QZX")
    return folder


@pytest.mark.parametrize("stages", [("rules",), ALL], ids=["rules", "all"])
@pytest.mark.parametrize("name", ["sample", "damaged", "corpus", "not_utf8"])
def test_streamed_filter_equals_the_record_path(
    sources: dict[str, Path], tmp_path: Path, name: str, stages: tuple[str, ...]
) -> None:
    src = sources[name]
    _record_path(src, tmp_path / "records", stages, None)
    done = filter_folder(src, tmp_path / "stream", config=RuleConfig(), stages=stages, rows_per_file=30)
    expected = _kept(tmp_path / "records")
    assert _kept(tmp_path / "stream") == expected
    assert done.kept == len(expected)
    assert _rejects(tmp_path / "stream") == _rejects(tmp_path / "records")
    assert _rejects(tmp_path / "stream")[0][0] == "old-1", "the input's earlier rejects are carried over"


def test_an_error_of_the_filter_itself_is_raised_not_called_a_damaged_file(
    sources: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only reading a shard makes ``parquet_unreadable``: an exception in what the filter does with a batch it read
    stops the filter with that exception (it was once reported as a damaged file, and the batch's kept rows were
    lost), and nothing is placed in ``out``."""
    import cm2data.filtering as filtering

    def broken(table: Any, entry: Any) -> Any:
        raise RuntimeError("the filter's own bug")

    monkeypatch.setattr(filtering, "_stamped", broken)
    with pytest.raises(RuntimeError, match="the filter's own bug"):
        filter_folder(sources["damaged"], tmp_path / "out", config=RuleConfig())
    assert not (tmp_path / "out" / store.REJECTS_FILE).exists()
    assert not list(store.data_dir(tmp_path / "out").glob("*.parquet"))


def test_late_table_rejects_are_removed_from_staged_shards(sources: dict[str, Path], tmp_path: Path) -> None:
    """With the tables, some records fail only a table rule: their rows were staged before the gate knew."""
    done = filter_folder(sources["corpus"], tmp_path / "out", config=RuleConfig(), stages=ALL, rows_per_file=30)
    table_rules = {"weights_sum_to_one", "unique_item_ids", "weight_range", "item_id_present"}
    late = {r.record_id for r in done.result.rejects if r.rule in table_rules}
    assert late, "the corpus has records that only the tables reject"
    kept_ids = set(store.read_table(tmp_path / "out").column("id").to_pylist())
    assert not late & kept_ids
    raws = {r.record_id: r.raw for r in read_rejects(tmp_path / "out" / "rejects.jsonl") if r.raw}
    for rid in late:  # the raw row of a late reject is the row as read, without this run's stamp
        raw = json.loads(raws[rid]) if isinstance(raws[rid], str) else raws[rid]
        history = json.loads(raw["provenance"]["history"])
        assert all(h.get("stage") != "filter" for h in history if isinstance(h, dict))


def test_only_selected_rules(sources: dict[str, Path], tmp_path: Path) -> None:
    _record_path(sources["damaged"], tmp_path / "records", ("rules",), ["role_order"])
    filter_folder(sources["damaged"], tmp_path / "stream", stages=("rules",), rules=["role_order"])
    assert _kept(tmp_path / "stream") == _kept(tmp_path / "records")
    assert {r[2] for r in _rejects(tmp_path / "stream")} <= {"role_order", "duplicate_id", "json_syntax"}


def test_stamp_history_matches_provenance_stamp() -> None:
    import pyarrow as pa

    entry = {"stage": "filter", "at": "2026-12-05T00:00:00+00:00", "rules": ["a", "b"]}
    histories = ["[]", None, json.dumps([{"stage": "ingest", "é": 1}], ensure_ascii=False, sort_keys=True)]
    got = stamp_history(pa.array(histories, pa.string()), entry).to_pylist()
    expected = []
    for h in histories:
        base = json.loads(h) if h else []
        expected.append(store._dumps([*base, entry]))
    assert got == expected


def test_cli_filter_on_a_folder_streams(sources: dict[str, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["filter", str(sources["damaged"]), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    _record_path(sources["damaged"], tmp_path / "records", ("rules",), None)
    assert _kept(tmp_path / "cli") == _kept(tmp_path / "records")
    n = len(_kept(tmp_path / "records"))
    assert f"kept {n} of" in result.output
