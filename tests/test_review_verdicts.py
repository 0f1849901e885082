"""People's verdicts on judged items against the real local Argilla stack (``argilla_stack`` fixture): push a
verdict folder (judge hidden; idempotent), reviewers answer through the SDK — two who disagree on known items, one
who skips, one who answers again —, pull, then ``judge agree --human``; a re-push after the dataset changed; the
judge shown as a suggestion. Verdicts come from a deterministic judge (``judge_route``), so every figure is known."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import argilla
import pytest
from fake_llm import RoutedOpenAI
from judge_route import judge_route
from typer.testing import CliRunner

from cm2data import store
from cm2data.cli import app
from cm2data.fidelity.agree import agree
from cm2data.review.agreement import cohen_kappa
from cm2data.review.dataset import FIELD, record_id
from cm2data.review.push import connect, fetch_records, find_workspace
from cm2data.review.verdicts import find_verdict_dataset
from cm2data.schema import Dialogue
from cm2data.sources import load
from cm2data.verdicts import read_rows, row_key

pytestmark = pytest.mark.slow

SMALL = ("62fb9dda", "4c9e3e6b")  # two short sample dialogues without tool errors: 17 items


@pytest.fixture(scope="module")
def env(argilla_stack: tuple[str, str]) -> Iterator[dict[str, str]]:
    url, key = argilla_stack
    yield {"ARGILLA_API_URL": url, "ARGILLA_API_KEY": key}


@pytest.fixture(scope="module")
def client(env: dict[str, str]) -> Any:
    return connect(env["ARGILLA_API_URL"], env["ARGILLA_API_KEY"])


@pytest.fixture(scope="module")
def reviewers(client: Any) -> dict[str, Any]:
    ws = find_workspace(client, None)
    out = {}
    for name in ("vera", "walt", "xena"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            user = client.users(name)
        if user is None:
            user = argilla.User(username=name, password=f"{name}-password-1", role="annotator", client=client).create()
        user.add_to_workspace(ws)
        out[name] = user
    return out


def _cli(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def answer(client: Any, name: str, user: Any, answers: dict[str, tuple[str, str | None, str | None]]) -> None:
    """Log ``{record id: (status, passed, reason)}`` as ``user``'s responses through the SDK."""
    ds = find_verdict_dataset(client, name)
    batch = []
    for rec in ds.records(with_responses=False, with_suggestions=False):
        if rec.id not in answers:
            continue
        status, passed, reason = answers[rec.id]
        responses = [argilla.Response("passed", passed, user_id=user.id, status=status)]
        if reason:
            responses.append(argilla.Response("reason", reason, user_id=user.id, status=status))
        batch.append(
            argilla.Record(id=rec.id, fields=rec.fields.to_dict(), metadata=dict(rec.metadata), responses=responses)
        )
    assert len(batch) == len(answers)
    ds.records.log(batch)


def _dataset(tmp_path: Path, sample_path: Path) -> tuple[Path, list[Dialogue]]:
    records, _ = load(sample_path)
    chosen = [d for d in records if d.id.startswith(SMALL)]
    folder = tmp_path / "ds"
    store.write_dataset(folder, chosen)
    return folder, chosen


def _judge(folder: Path, out: Path) -> None:
    with RoutedOpenAI(judge_route()) as server:
        result = CliRunner().invoke(
            app, ["judge", "run", str(folder), "--out", str(out), "--base-url", server.base_url], catch_exceptions=False
        )
    assert result.exit_code == 0, result.output


def test_people_verdicts_round_trip(
    env: dict[str, str], client: Any, reviewers: dict[str, Any], tmp_path: Path, sample_path: Path
) -> None:
    name = "verdicts-cycle"
    folder, chosen = _dataset(tmp_path, sample_path)
    _judge(folder, tmp_path / "V")
    vrows = {row_key(r): r for r in read_rows(tmp_path / "V")}
    keys = sorted(vrows)
    n = len(keys)

    first = _cli(env, "review", "push-verdicts", str(tmp_path / "V"), "--name", name)
    assert first.exit_code == 0, first.output
    assert f"{n} new, 0 updated, 0 unchanged" in first.output and "judge verdict hidden" in first.output
    again = _cli(env, "review", "push-verdicts", str(tmp_path / "V"), "--name", name)
    assert f"0 new, 0 updated, {n} unchanged" in again.output
    ds = find_verdict_dataset(client, name)
    assert len(fetch_records(client, ds)) == n
    # what the reviewer sees: the item in its dialogue, no judge verdict anywhere
    rid = {k: record_id(*k) for k in keys}
    served = {r.id: r for r in ds.records(with_suggestions=True)}
    k0 = keys[0]
    rec = served[rid[k0]]
    item = next(
        it
        for d in chosen
        if d.id == k0[0]
        for b in d.checklists[0]
        if b.turn == k0[2]
        for it in b.items
        if it.id == k0[3]
    )
    assert rec.fields[FIELD]["item"]["question"] == item.question
    assert rec.fields[FIELD]["item"]["pass_condition"] == item.pass_condition
    assert all(len(r.suggestions) == 0 for r in served.values())
    assert all("verdict" not in json.dumps(r.metadata) for r in served.values())

    # vera and walt answer the first 12 items; they disagree with the judge on two and with each other on one
    vera: dict[str, tuple[str, str | None, str | None]] = {}
    walt: dict[str, tuple[str, str | None, str | None]] = {}
    expected_majority: dict[tuple, bool] = {}
    for i, k in enumerate(keys[:12]):
        judge = vrows[k]["verdict"]
        v = judge if i not in (0, 1) else not judge
        w = v if i != 2 else not v
        vera[rid[k]] = ("submitted", "pass" if v else "fail", "the turn shows it" if i == 0 else None)
        walt[rid[k]] = ("submitted", "pass" if w else "fail", None)
        if v == w:
            expected_majority[k] = v
    # vera skips one item; xena answers one item, then changes her mind a second later
    vera[rid[keys[12]]] = ("discarded", None, None)
    answer(client, name, reviewers["vera"], vera)
    answer(client, name, reviewers["walt"], walt)
    k13 = keys[13]
    answer(client, name, reviewers["xena"], {rid[k13]: ("submitted", "fail", None)})
    time.sleep(1.2)
    answer(client, name, reviewers["xena"], {rid[k13]: ("submitted", "pass", "looked again")})
    expected_majority[k13] = True

    out = tmp_path / "H"
    pulled = _cli(env, "review", "pull-verdicts", name, "--into", str(tmp_path / "V"), "--out", str(out))
    assert pulled.exit_code == 0, pulled.output
    report = json.loads((out / "pull_report.json").read_text())
    assert report["submitted"] == 12 + 12 + 1 and report["skipped"] == 1 and report["drafts"] == 0
    assert report["revised"] == 1 and report["stale"] == 0
    assert report["items_answered"] == 13 and report["items_disagreeing"] == 1 and report["items_tied"] == 1
    assert report["items_complete"] == 12  # two submitted answers each (min_submitted 2); xena's alone is not
    assert report["not_in_verdicts"] == 0 and report["changed_since_push"] == 0 and report["not_pushed"] == 0
    assert report["reviewers"] == {"vera": 12, "walt": 12, "xena": 1}
    hrows = read_rows(out, "human_verdicts")
    xena = [r for r in hrows if r["reviewer"] == "xena"]
    assert len(xena) == 1 and xena[0]["verdict"] is True and xena[0]["revised"] and xena[0]["reason"] == "looked again"
    assert {r["judge_verdict"] for r in hrows if row_key(r) == keys[0]} == {vrows[keys[0]]["verdict"]}

    agreed = _cli(env, "judge", "agree", str(tmp_path / "V"), "--human", str(out), "--out", str(tmp_path / "A"))
    assert agreed.exit_code == 0, agreed.output
    result = json.loads((tmp_path / "A" / "agreement.json").read_text())
    (comp,) = result["comparisons"]
    mk = sorted(expected_majority)
    people = [expected_majority[k] for k in mk]
    judge = [vrows[k]["verdict"] for k in mk]
    assert comp["overall"]["n"] == len(mk) == 12  # 12 answered by two + xena's, less the tie
    assert comp["overall"]["confusion"]["fn"] + comp["overall"]["confusion"]["fp"] == 2
    assert comp["overall"]["kappa"] == pytest.approx(cohen_kappa(people, judge), abs=1e-4)
    assert comp["alignment"]["ties"] == 1 and comp["alignment"]["unreviewed"] == n - 13  # vera's skip included
    assert result["bad_input"]["human"]["skipped"] == 1 and result["bad_input"]["human"]["revised"] == 1
    inter = result["human"]["inter_reviewer"]
    assert inter["units"] == 12 and inter["kappa"]["vera|walt"] == pytest.approx(
        cohen_kappa([vera[rid[k]][1] for k in keys[:12]], [walt[rid[k]][1] for k in keys[:12]]), abs=1e-4
    )
    assert result["human"]["per_reviewer"]["vera"]["V"]["n"] == 12

    # the dataset changes (an item reworded); judged again into the same folder and pushed again
    changed = [d.model_copy(deep=True) for d in chosen]
    target = next(
        it
        for d in changed
        if d.id == keys[0][0]
        for b in d.checklists[0]
        if b.turn == keys[0][2]
        for it in b.items
        if it.id == keys[0][3]
    )
    target.question = "Did the assistant reply in one sentence?"
    store.write_dataset(tmp_path / "ds2", changed)
    _judge(tmp_path / "ds2", tmp_path / "V2")
    repush = _cli(env, "review", "push-verdicts", str(tmp_path / "V2"), "--name", name)
    assert repush.exit_code == 0, repush.output
    # the reworded item and its turn's other items (their records list it among the turn's items) are sent again;
    # only the reworded one had its content changed under its reviewers
    same_turn = sum(1 for k in keys if k[:3] == keys[0][:3])
    assert f"0 new, {same_turn} updated, {n - same_turn} unchanged" in repush.output
    assert "1 reviewed items changed since their review" in repush.output
    assert len(fetch_records(client, ds)) == n  # nothing duplicated
    out2 = tmp_path / "H2"
    assert _cli(env, "review", "pull-verdicts", name, "--into", str(tmp_path / "V2"), "--out", str(out2)).exit_code == 0
    report2 = json.loads((out2 / "pull_report.json").read_text())
    assert report2["stale"] == 2 and report2["submitted"] == report["submitted"] - 2
    # the old answers against the new verdicts: the reworded item is left out and counted
    stale = agree([tmp_path / "V2"], human=out, resamples=100)
    assert stale["comparisons"][0]["alignment"]["item_changed"] == 1
    assert stale["comparisons"][0]["overall"]["n"] == 11


def test_judge_shown_as_a_suggestion(env: dict[str, str], client: Any, tmp_path: Path, sample_path: Path) -> None:
    folder, _ = _dataset(tmp_path, sample_path)
    _judge(folder, tmp_path / "V")
    vrows = {row_key(r): r for r in read_rows(tmp_path / "V")}
    shown = _cli(
        env,
        "review",
        "push-verdicts",
        str(tmp_path / "V"),
        "--name",
        "verdicts-shown",
        "--show-judge",
        "--min-submitted",
        "1",
    )
    assert shown.exit_code == 0 and "shown as a suggestion" in shown.output, shown.output
    ds = find_verdict_dataset(client, "verdicts-shown")
    assert ds.settings.distribution.min_submitted == 1
    suggested = {r.id: r.suggestions["passed"].value for r in ds.records(with_suggestions=True)}
    assert suggested == {record_id(*k): ("pass" if r["verdict"] else "fail") for k, r in vrows.items()}
    assert {r.suggestions["passed"].agent for r in ds.records(with_suggestions=True)} == {"fake-model prefix"}
    hidden = _cli(env, "review", "push-verdicts", str(tmp_path / "V"), "--name", "verdicts-shown")
    assert hidden.exit_code == 1 and "was created with the judge's verdicts shown" in hidden.output
    # a checklist-review dataset is not a verdict-review dataset
    store.write_dataset(tmp_path / "plain", load(folder)[0])
    assert _cli(env, "review", "push", str(tmp_path / "plain"), "--name", "checklists-not-verdicts").exit_code == 0
    wrong = _cli(
        env,
        "review",
        "pull-verdicts",
        "checklists-not-verdicts",
        "--into",
        str(tmp_path / "V"),
        "--out",
        str(tmp_path / "H"),
    )
    assert wrong.exit_code == 1 and "not a cm2data verdict-review dataset" in wrong.output
    assert not (tmp_path / "H").exists()
