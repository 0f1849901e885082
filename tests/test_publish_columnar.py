"""Publish builds its tables and the card's statistics from Arrow rows (``cm2data.publish.arrow_views``) instead of
records. These tests prove the results equal the record-based ones — ``checklist_items_table``, ``Summary.add``,
``schema.dialogue_stats`` and ``store.records_table`` — on the shipped sample, on every record of the broken-input
corpus that reads, on synthetic dialogues, and on hand-made edge cases (JSON escapes, rare control characters,
missing provenance, odd histories and agreements, system prompts, dialogues without checklists); and that a tree
built from a folder in another parquet layout goes through records and comes out canonical."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cm2data import card, store
from cm2data.publish import arrow_views
from cm2data.publish.tree import CHECKLIST_ITEM_SCHEMA, build_tree, checklist_items_table
from cm2data.schema import STAT_NAMES, Dialogue, dialogue_stats
from cm2data.sources import load

REPO = Path(__file__).resolve().parents[1]
BROKEN = REPO / "tests" / "data" / "broken"
sys.path.insert(0, str(REPO / "benchmarks"))
from validate import make_dialogue  # noqa: E402  (the benchmark's generator)


def _sample(sample_path: Path) -> list[Dialogue]:
    records, rejects = load(sample_path, "cm2")
    assert records and not rejects
    return records


def _broken_corpus() -> list[Dialogue]:
    """Every record of the broken-input files that reads (the rules reject them; the views must still agree)."""
    out: list[Dialogue] = []
    for path in sorted(BROKEN.iterdir()):
        if path.suffix in (".json", ".jsonl", ".parquet"):
            records, _ = load(path, "auto")
            out += records
    return out


def _edge_cases(sample_path: Path) -> list[Dialogue]:
    base = [d for d in _sample(sample_path) if d.checklists][:6]
    out = []
    snippets = ['say "hi" \\ there', "line\nbreak\ttab\rcr", "ctrl \x01 \x1f char", "é 漢字 \u2028 ok", "", "\b\f"]
    for i, (d, snippet) in enumerate(zip(base, snippets, strict=True)):
        e = d.model_copy(deep=True)
        e.id = f"edge-{i}"
        item = e.checklists[0][0].items[0]
        if item.evidence:
            item.evidence[0].snippet = snippet
        else:
            item.depends_on = []
        item.extra_info = {"note": snippet} if i % 2 else {}
        e.metadata = [{"domain": None}, {"domain": 3}, {}, {"domain": "travel"}, {"x": 1}, {"domain": ""}][i]
        e.provenance.source = "" if i % 2 else e.provenance.source
        e.provenance.generator_model = None if i % 3 else "m-1"
        e.provenance.history = [[{"stage": "ingest"}, "junk", {"stage": None}], [], [{"other": 1}]][i % 3]
        e.review.agreement = [{"kappa": 0.5, "flag": True, "n": 3}, {}, {"alpha": -0.25}][i % 3]
        e.source = ["", "nemotron", "sample"][i % 3]
        out.append(e)
    bare = base[0].model_copy(deep=True)
    bare.id, bare.checklists = "edge-no-checklists", []
    out.append(bare)
    return out


def _datasets(sample_path: Path) -> dict[str, list[Dialogue]]:
    rng = random.Random(7)
    return {
        "sample": _sample(sample_path),
        "broken": _broken_corpus(),
        "synthetic": [make_dialogue(rng, i) for i in range(1500)],
        "edges": _edge_cases(sample_path),
    }


@pytest.fixture(scope="module")
def datasets(request: pytest.FixtureRequest) -> dict[str, list[Dialogue]]:
    from conftest import SAMPLE

    return _datasets(SAMPLE)


NAMES = ("sample", "broken", "synthetic", "edges")


@pytest.mark.parametrize("name", NAMES)
def test_checklist_items_equal_the_record_based_table(datasets: dict[str, list[Dialogue]], name: str) -> None:
    records = datasets[name]
    table = store.records_table(records)
    from_arrow = arrow_views.checklist_items(table, CHECKLIST_ITEM_SCHEMA)
    from_records = checklist_items_table(records)
    assert from_arrow.num_rows == from_records.num_rows > 0
    for column in CHECKLIST_ITEM_SCHEMA.names:
        assert from_arrow.column(column).equals(from_records.column(column)), column
    assert from_arrow.equals(from_records)


@pytest.mark.parametrize("name", NAMES)
def test_card_summary_equals_the_record_based_summary(datasets: dict[str, list[Dialogue]], name: str) -> None:
    records = datasets[name]
    by_arrow, by_records = card.Summary(), card.Summary()
    table = store.records_table(records)
    half = len(records) // 2  # in two parts, as the build adds chunk by chunk
    arrow_views.add_to_summary(by_arrow, table.slice(0, half))
    arrow_views.add_to_summary(by_arrow, table.slice(half))
    by_records.add(records[:half])
    by_records.add(records[half:])
    assert by_arrow.stats() == by_records.stats()
    assert by_arrow.counters == by_records.counters
    assert by_arrow.agreement == by_records.agreement
    assert by_arrow.must_pass == by_records.must_pass


@pytest.mark.parametrize("name", NAMES)
def test_dialogue_stats_per_row(datasets: dict[str, list[Dialogue]], name: str) -> None:
    records = datasets[name]
    stats = arrow_views.dialogue_stats(store.records_table(records))
    for name_ in STAT_NAMES:
        assert stats[name_].tolist() == [getattr(dialogue_stats(d), name_) for d in records], name_


def test_edge_cases_reach_the_slow_json_path(datasets: dict[str, list[Dialogue]]) -> None:
    """The control-character snippet is really encoded by json.dumps (\\u0001), not passed through raw."""
    items = arrow_views.checklist_items(store.records_table(datasets["edges"]), CHECKLIST_ITEM_SCHEMA)
    evidence = "".join(items.column("evidence").to_pylist())
    assert "ctrl \\u0001 \\u001f char" in evidence and '\\"hi\\" \\\\ there' in evidence


def test_tree_from_another_layout_is_canonical(sample_path: Path, tmp_path: Path) -> None:
    """A folder whose parquet has another column order and an extra column is read through records: the published
    dialogues equal the canonical table, and the card and items equal those of the canonical folder's tree."""
    records = _sample(sample_path)
    canonical = tmp_path / "canonical"
    store.write_dataset(canonical, records)
    other = tmp_path / "other"
    table = store.records_table(records)
    shuffled = table.select(list(reversed(table.column_names))).append_column("extra", pa.array(["x"] * table.num_rows))
    (other / "data" / "dialogues").mkdir(parents=True)
    pq.write_table(shuffled, other / "data" / "dialogues" / "train-00000-of-00001.parquet")
    a = build_tree(canonical, tmp_path / "tree-a", repo_id="acme/x")
    b = build_tree(other, tmp_path / "tree-b", repo_id="acme/x")
    for path in ("data/dialogues/train-00000-of-00001.parquet", "data/checklist_items/train-00000-of-00001.parquet"):
        assert pq.read_table(a.files[path]).equals(pq.read_table(b.files[path])), path
    assert pq.read_table(a.files["data/dialogues/train-00000-of-00001.parquet"]).equals(table)
    assert a.files["README.md"].read_text() == b.files["README.md"].read_text()
