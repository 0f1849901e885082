"""Judge fidelity without Argilla: ``cm2data judge run`` against a deterministic judge behind a routed
OpenAI-compatible server (every verdict known in advance) and, marked slow, against the embedded model;
``cm2data judge agree`` judge-vs-judge and judge-vs-people (a hand-built human verdict folder) with every bad input
counted; the HTML report; the dataset card's section on publish."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import datasets
import pytest
from fake_llm import RoutedOpenAI
from judge_route import hashed_rule, judge_route
from typer.testing import CliRunner

from cm2data import store
from cm2data.cli import app
from cm2data.fidelity.agree import agree
from cm2data.fidelity.run import sample_records
from cm2data.judge import PROMPT_VERSION
from cm2data.publish import build_tree
from cm2data.review.agreement import cohen_kappa
from cm2data.schema import Dialogue
from cm2data.sources import load
from cm2data.verdicts import read_dialogues, read_rows, read_run, row_key, write_human, write_verdicts

#: two dialogues of the shipped sample without tool errors (no short-circuited items): 8 + 9 items
SMALL = ("62fb9dda", "4c9e3e6b")


def _sample(sample_path: Path) -> list[Dialogue]:
    records, rejects = load(sample_path)
    assert not rejects
    return records


def _small_folder(tmp_path: Path, sample_path: Path) -> tuple[Path, list[Dialogue]]:
    chosen = [d for d in _sample(sample_path) if d.id.startswith(SMALL)]
    assert len(chosen) == 2
    folder = tmp_path / "ds"
    store.write_dataset(folder, chosen)
    return folder, chosen


def _questions(records: list[Dialogue]) -> dict[tuple[str, int, int, str], Any]:
    return {
        (d.id, v, b.turn, it.id): it
        for d in records
        for v, var in enumerate(d.checklists)
        for b in var
        for it in b.items
    }


def _cli(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result


def flipped(question: str) -> bool:
    """A cheaper judge: the hashed verdict, flipped on about one question in four."""
    import hashlib

    flip = int(hashlib.sha256(question.encode()).hexdigest()[4:8], 16) % 4 == 0
    return hashed_rule(question) != flip


def test_judge_run_writes_a_verdict_folder(tmp_path: Path, sample_path: Path) -> None:
    records = _sample(sample_path)
    with RoutedOpenAI(judge_route()) as server:
        result = _cli(
            "judge",
            "run",
            str(sample_path),
            "--out",
            str(tmp_path / "V"),
            "--mode",
            "reference",
            "--base-url",
            server.base_url,
            "--sample",
            "2",
            "--seed",
            "3",
        )
        sent = list(server.requests)
    assert result.exit_code == 0, result.output
    chosen = sample_records(records, 2, 3)
    assert {d.id for d in chosen} != {d.id for d in sample_records(records, 2, 4)}  # the seed picks
    items = _questions(chosen)
    # a Hub-layout folder: the verdicts are the default config, the judged dialogues another one
    ds = datasets.load_dataset(str(tmp_path / "V"), split="train")
    assert len(ds) == len(items)
    assert sorted(datasets.load_dataset(str(tmp_path / "V"), "dialogues", split="train")["id"]) == sorted(
        d.id for d in chosen
    )
    for row in ds:
        key = (row["dialogue_id"], row["variant"], row["turn"], row["item_id"])
        expected = hashed_rule(items[key].question)
        assert row["verdict"] is expected, key
        assert (row["judge_model"], row["mode"], row["judge_mode"], row["prompt_version"]) == (
            "fake-model",
            "reference",
            "reference",
            PROMPT_VERSION,
        )
        assert json.loads(row["raw_answer"]) == {"answer": expected}  # the deciding raw answer, as the model sent it
        steps = json.loads(row["step_verdicts"])
        assert steps and all(json.loads(s["raw"]) == {"answer": s["satisfied"]} for s in steps)
        assert row["satisfied_at_step"] == (steps[0]["step"] if expected else None)
        assert not row["failed"] and not row["short_circuit"]
    run = read_run(tmp_path / "V")
    assert run["passed"] == sum(ds["verdict"]) and run["judged"] == len(items) and run["unjudged"] == 0
    assert run["calls"] == len(sent) == run["usage"]["requests"]
    # reference order: the criterion comes before the conversation, in one user message
    assert all(len(r["messages"]) == 2 and r["messages"][1]["content"].startswith("## Criterion") for r in sent)
    # agree writes into the verdict folder by default; judging into it again removes that now stale report
    assert _cli("judge", "agree", str(tmp_path / "V")).exit_code == 0
    assert json.loads((tmp_path / "V" / "agreement.json").read_text())["judges"][0]["items"] == len(items)
    with RoutedOpenAI(judge_route()) as server:
        again = _cli(
            "judge",
            "run",
            str(sample_path),
            "--out",
            str(tmp_path / "V"),
            "--base-url",
            server.base_url,
            "--sample",
            "1",
        )
    assert again.exit_code == 0, again.output
    assert not (tmp_path / "V" / "agreement.json").exists() and not (tmp_path / "V" / "agreement.html").exists()
    assert len(read_rows(tmp_path / "V")) < len(items)


def test_grouped_mode_and_judge_vs_judge_agreement(tmp_path: Path, sample_path: Path) -> None:
    folder, chosen = _small_folder(tmp_path, sample_path)
    with RoutedOpenAI(judge_route(hashed_rule, grouped_rule=flipped)) as server:
        for mode in ("reference", "grouped"):
            r = _cli(
                "judge",
                "run",
                str(folder),
                "--out",
                str(tmp_path / mode),
                "--mode",
                mode,
                "--base-url",
                server.base_url,
            )
            assert r.exit_code == 0, r.output
        grouped_requests = [b for b in server.requests if "answer" not in json.dumps(b.get("structured_outputs"))]
    ref_run, grp_run = read_run(tmp_path / "reference"), read_run(tmp_path / "grouped")
    assert grp_run["judge_mode"] == "prefix-grouped" and grp_run["calls"] == len(grouped_requests)
    assert grp_run["per_item"]["calls"] < ref_run["per_item"]["calls"]  # one call per step, not per item and step

    result = _cli(
        "judge",
        "agree",
        str(tmp_path / "grouped"),
        "--against",
        str(tmp_path / "reference"),
        "--out",
        str(tmp_path / "agree"),
        "--resamples",
        "500",
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "agree" / "agreement.json").read_text())
    items = _questions(chosen)
    keys = sorted(items)
    careful = [hashed_rule(items[k].question) for k in keys]
    cheap = [flipped(items[k].question) for k in keys]
    assert careful != cheap  # the two judges do disagree on some items
    (comp,) = report["comparisons"]
    assert (comp["kind"], comp["mode"], comp["reference_mode"]) == ("judge", "grouped", "reference")
    f = comp["overall"]
    assert f["n"] == len(keys)
    assert f["confusion"] == {
        "tp": sum(a and b for a, b in zip(careful, cheap, strict=True)),
        "fn": sum(a and not b for a, b in zip(careful, cheap, strict=True)),
        "fp": sum(b and not a for a, b in zip(careful, cheap, strict=True)),
        "tn": sum(not a and not b for a, b in zip(careful, cheap, strict=True)),
    }
    assert f["kappa"] == pytest.approx(cohen_kappa(careful, cheap), abs=1e-4)
    assert set(comp["by_focus"]) == {it.focus_on for it in items.values()}
    assert sum(v["n"] for v in comp["by_focus"].values()) == len(keys)
    assert comp["alignment"] == {"only_in_verdicts": 0, "only_in_other": 0, "item_changed": 0, "dialogue_changed": 0}
    assert report["judges"][0]["pass_rate"] == round(sum(cheap) / len(cheap), 4)
    # the HTML report: self-contained, with its plots
    page = (tmp_path / "agree" / "agreement.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 4 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "<h3>grouped (grouped) vs reference</h3>" in page and page.count("<h3>") == 1


def test_changed_dataset_and_duplicates_are_counted(tmp_path: Path, sample_path: Path) -> None:
    folder, chosen = _small_folder(tmp_path, sample_path)
    with RoutedOpenAI(judge_route()) as server:
        assert (
            _cli("judge", "run", str(folder), "--out", str(tmp_path / "V"), "--base-url", server.base_url).exit_code
            == 0
        )
        # the dataset changes: an item reworded, an item removed, a user message of the other dialogue edited
        changed = [d.model_copy(deep=True) for d in chosen]
        a, b = changed
        a.checklists[0][0].items[0].question = "Did the assistant answer in French?"
        removed = a.checklists[0][1].items.pop()
        b.messages[[m.role for m in b.messages].index("user")].content += " Please hurry."
        store.write_dataset(tmp_path / "ds2", changed)
        assert (
            _cli(
                "judge", "run", str(tmp_path / "ds2"), "--out", str(tmp_path / "V2"), "--base-url", server.base_url
            ).exit_code
            == 0
        )
    total = len(_questions(chosen))
    n_b = len(_questions([b]))

    report = agree([tmp_path / "V"], dataset=tmp_path / "ds2")
    counts = report["bad_input"]["verdicts"]["V"]
    assert (counts["dataset_item_changed"], counts["dataset_gone"], counts["dataset_dialogue_changed"]) == (1, 1, n_b)
    assert counts["usable"] == total - 2 - n_b == report["judges"][0]["items"]

    report = agree([tmp_path / "V2"], against=tmp_path / "V")
    (comp,) = report["comparisons"]
    assert comp["alignment"] == {"only_in_verdicts": 0, "only_in_other": 1, "item_changed": 1, "dialogue_changed": n_b}
    assert comp["overall"]["n"] == total - 2 - n_b
    gone = (a.id, 0, a.checklists[0][1].turn, removed.id)  # the item only the old run has
    assert gone in {row_key(r) for r in read_rows(tmp_path / "V")} - {row_key(r) for r in read_rows(tmp_path / "V2")}

    # duplicate rows: one identical, one with another verdict; the first row of a key is kept
    rows = read_rows(tmp_path / "V")
    dup = dict(rows[0])
    conflicting = {**rows[1], "verdict": not rows[1]["verdict"]}
    write_verdicts(
        tmp_path / "Vdup", [*rows, dup, conflicting], read_dialogues(tmp_path / "V"), read_run(tmp_path / "V")
    )
    report = agree([tmp_path / "Vdup"], against=tmp_path / "V")
    bad = report["bad_input"]["verdicts"]["Vdup"]
    assert (bad["duplicate_rows"], bad["conflicting_duplicates"], bad["usable"]) == (2, 1, total)
    assert report["comparisons"][0]["overall"]["accuracy"] == 1.0  # the first of each key was kept
    # a card-ready summary says what was left out
    result = _cli(
        "judge",
        "agree",
        str(tmp_path / "Vdup"),
        "--against",
        str(tmp_path / "V"),
        "--dataset",
        str(tmp_path / "ds2"),
        "--out",
        str(tmp_path / "A"),
    )
    assert result.exit_code == 0
    assert "verdicts/dataset_gone 1" in result.output and "verdicts/duplicate_rows 2" in result.output


def _human_row(
    key: tuple[str, int, int, str],
    verdict_row: dict[str, Any],
    reviewer: str,
    verdict: bool | None,
    status: str = "submitted",
    at: str = "2026-01-01T00:00:00",
    **kw: Any,
) -> dict[str, Any]:
    return {
        "dialogue_id": key[0],
        "variant": key[1],
        "turn": key[2],
        "item_id": key[3],
        "focus_on": verdict_row["focus_on"],
        "item_fingerprint": verdict_row["item_fingerprint"],
        "context_fingerprint": verdict_row["context_fingerprint"],
        "reviewer": reviewer,
        "status": status,
        "verdict": verdict,
        "reason": None,
        "answered_at": at,
        "revised": False,
        "judge_verdict": verdict_row["verdict"],
        "dataset": "hand-made",
        **kw,
    }


def test_judge_against_people_counts_every_odd_answer(tmp_path: Path, sample_path: Path) -> None:
    folder, _ = _small_folder(tmp_path, sample_path)
    with RoutedOpenAI(judge_route()) as server:
        assert (
            _cli("judge", "run", str(folder), "--out", str(tmp_path / "V"), "--base-url", server.base_url).exit_code
            == 0
        )
    vrows = {(r["dialogue_id"], r["variant"], r["turn"], r["item_id"]): r for r in read_rows(tmp_path / "V")}
    keys = sorted(vrows)
    rows = []
    expected_human, judge = [], []
    for i, k in enumerate(keys[:10]):  # ann and bob agree with the judge except on items 0 and 1
        truth = vrows[k]["verdict"] if i > 1 else not vrows[k]["verdict"]
        rows += [_human_row(k, vrows[k], "ann", truth), _human_row(k, vrows[k], "bob", truth)]
        expected_human.append(truth)
        judge.append(vrows[k]["verdict"])
    k10, k11, k12, k13, k14 = keys[10:15]
    rows.append(_human_row(k10, vrows[k10], "ann", True))  # a tie: no majority
    rows.append(_human_row(k10, vrows[k10], "bob", False))
    rows.append(_human_row(k11, vrows[k11], "ann", None, status="discarded"))  # a skip
    rows.append(_human_row(k11, vrows[k11], "bob", None, status="draft"))  # a draft
    # ann answered k12 twice (a merged export): the later answer counts
    rows.append(_human_row(k12, vrows[k12], "ann", not vrows[k12]["verdict"], at="2026-01-01T00:00:00"))
    rows.append(_human_row(k12, vrows[k12], "ann", vrows[k12]["verdict"], at="2026-01-02T00:00:00"))
    expected_human.append(vrows[k12]["verdict"])
    judge.append(vrows[k12]["verdict"])
    rows.append(_human_row(k13, {**vrows[k13], "item_fingerprint": "0" * 32}, "ann", True))  # reviewed another text
    rows.append(_human_row(("gone", 0, 0, "C0"), vrows[k14], "ann", True))  # an item the verdicts do not have
    write_human(tmp_path / "H", rows, {"dataset": "hand-made"})

    report = agree([tmp_path / "V"], human=tmp_path / "H", resamples=200)
    (comp,) = report["comparisons"]
    assert comp["overall"]["n"] == 11
    assert comp["overall"]["accuracy"] == pytest.approx(9 / 11, abs=1e-4)
    assert comp["overall"]["kappa"] == pytest.approx(cohen_kappa(expected_human, judge), abs=1e-4)
    assert comp["alignment"]["ties"] == 1 and comp["alignment"]["item_changed"] == 1
    assert comp["alignment"]["reviewed_not_in_verdicts"] == 1
    # the keys after k14, k11 (no submitted answer) and k14 (its answer went to an unknown key)
    assert comp["alignment"]["unreviewed"] == len(keys) - 15 + 2
    h = report["bad_input"]["human"]
    assert (h["skipped"], h["drafts"], h["duplicate_rows"], h["conflicting_duplicates"], h["ties"]) == (1, 1, 1, 1, 1)
    people = report["human"]
    assert people["reviewers"] == ["ann", "bob"] and people["items_with_majority"] == 13
    assert people["inter_reviewer"]["units"] == 11  # items with two answers: the ten, and the tie
    assert people["per_reviewer"]["bob"]["V"]["n"] == 11


def test_card_gets_a_judge_agreement_section_on_publish(tmp_path: Path, sample_path: Path) -> None:
    folder, _ = _small_folder(tmp_path, sample_path)
    with RoutedOpenAI(judge_route(hashed_rule, grouped_rule=flipped)) as server:
        for mode in ("reference", "grouped"):
            assert (
                _cli(
                    "judge",
                    "run",
                    str(folder),
                    "--out",
                    str(tmp_path / mode),
                    "--mode",
                    mode,
                    "--base-url",
                    server.base_url,
                ).exit_code
                == 0
            )
    build_tree(folder, tmp_path / "plain")
    assert "## Judge agreement" not in (tmp_path / "plain" / "README.md").read_text()
    # the report written into the dataset folder goes onto its card
    assert (
        _cli(
            "judge", "agree", str(tmp_path / "grouped"), "--against", str(tmp_path / "reference"), "--out", str(folder)
        ).exit_code
        == 0
    )
    report = json.loads((folder / "agreement.json").read_text())
    tree = build_tree(folder, tmp_path / "tree")
    card = (tmp_path / "tree" / "README.md").read_text()
    section = card[card.index("## Judge agreement") : card.index("## Rejects")]
    f = report["comparisons"][0]["overall"]
    assert f"| grouped (`grouped`) | reference | {f['n']} | {f['accuracy']:.3f}" in section
    assert f"{f['kappa']:.3f} | [{f['kappa_ci'][0]:.3f}, {f['kappa_ci'][1]:.3f}]" in section
    assert "| reference | `reference` | `fake-model` |" in section
    assert "agreement.json" not in tree.files  # the card carries the figures; the file itself stays local
    # publishing the same folder again writes the same card (no dates in the section)
    build_tree(folder, tmp_path / "tree2")
    assert (tmp_path / "tree2" / "README.md").read_text() == card
    # an agreement.json of another kind is not ours: no section
    (folder / "agreement.json").write_text(json.dumps({"kind": "something-else", "kappa": 1}))
    build_tree(folder, tmp_path / "tree3")
    assert "## Judge agreement" not in (tmp_path / "tree3" / "README.md").read_text()


def test_bad_input_gives_one_clear_error(tmp_path: Path, sample_path: Path) -> None:
    missing = _cli("judge", "agree", str(tmp_path / "nowhere"))
    assert missing.exit_code == 1 and "does not exist" in missing.output and "Traceback" not in missing.output
    folder, _ = _small_folder(tmp_path, sample_path)
    wrong = _cli("judge", "agree", str(folder))  # a dataset folder, not a verdict folder
    assert wrong.exit_code == 1 and "has no 'verdicts' table" in wrong.output
    down = _cli("judge", "run", str(folder), "--out", str(tmp_path / "V"), "--base-url", "http://127.0.0.1:9/v1")
    assert down.exit_code == 1 and "cannot reach the LLM server" in down.output
    assert not (tmp_path / "V").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with RoutedOpenAI(judge_route()) as server:
        busy = _cli("judge", "run", str(folder), "--out", str(tmp_path / "busy"), "--base-url", server.base_url)
    assert busy.exit_code == 1 and "not a verdict folder" in busy.output
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_embedded_judge_run_and_agreement(embedded_llm: Any, tmp_path: Path, sample_path: Path) -> None:
    """The real embedded model judges one short dialogue in the careful and the grouped mode; the verdict folders
    are complete and the agreement between them is computed on every item."""
    records = [d for d in _sample(sample_path) if d.id.startswith("77a420b4")]  # 3 turns, 12 items, short
    store.write_dataset(tmp_path / "ds", records)
    n_items = len(_questions(records))
    for mode in ("reference", "grouped"):
        r = _cli(
            "judge",
            "run",
            str(tmp_path / "ds"),
            "--out",
            str(tmp_path / mode),
            "--mode",
            mode,
            "--base-url",
            embedded_llm.base_url,
            "--timeout",
            "600",
        )
        assert r.exit_code == 0, r.output
        rows = read_rows(tmp_path / mode)
        assert len(rows) == n_items and all(row["verdict"] is not None for row in rows)
        run = read_run(tmp_path / mode)
        assert run["judge_model"] == embedded_llm.model and run["failures"] == 0  # structured output: valid answers
        assert run["usage"]["prompt_tokens"] > 0 and run["per_item"]["seconds"] > 0
        for row in rows:  # every verdict comes from an answer of the model, kept as it was sent
            answer = json.loads(row["raw_answer"])
            assert answer == {"answer": row["verdict"]} if mode == "reference" else row["item_id"] in answer
    report = agree([tmp_path / "grouped"], against=tmp_path / "reference", resamples=200)
    (comp,) = report["comparisons"]
    assert comp["overall"]["n"] == n_items
    assert sum(comp["overall"]["confusion"].values()) == n_items
