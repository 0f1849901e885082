"""Human review against the real local Argilla stack (``argilla_stack`` fixture): push, re-push, responses of two
reviewers submitted through the SDK, status, pull and merge, a change after review, and the faults."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import argilla
import pytest
from typer.testing import CliRunner

from cm2data import store
from cm2data.formats import read_records
from cm2data.review.agreement import agreement_report
from cm2data.review.commands import review_app
from cm2data.review.dataset import FIELD, PROBLEMS, record_id
from cm2data.review.push import connect, fetch_records, find_dataset, find_workspace, push
from cm2data.review.status import review_status
from cm2data.schema import Dialogue, Message, ToolCall

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(argilla_stack: tuple[str, str]) -> Iterator[dict[str, str]]:
    url, key = argilla_stack
    yield {"ARGILLA_API_URL": url, "ARGILLA_API_KEY": key}


@pytest.fixture(scope="module")
def client(env: dict[str, str]) -> Any:
    return connect(env["ARGILLA_API_URL"], env["ARGILLA_API_KEY"])


@pytest.fixture(scope="module")
def reviewers(client: Any) -> dict[str, Any]:
    """Two annotators, created through the SDK and given access to the owner's workspace."""
    ws = find_workspace(client, None)
    out = {}
    for name in ("ann", "bob"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            user = client.users(name)
        if user is None:
            user = argilla.User(username=name, password=f"{name}-password-1", role="annotator", client=client).create()
        user.add_to_workspace(ws)
        out[name] = user
    return out


def _run(env: dict[str, str], *args: str) -> Any:
    result = CliRunner().invoke(review_app, list(args), env=env, catch_exceptions=False)
    return result


def _records(sample_path: Path, reference: Dialogue) -> list[Dialogue]:
    sample = [r for r in read_records(sample_path, "cm2") if isinstance(r, Dialogue)]
    return [reference, *sample]


def submit(client: Any, name: str, user: Any, answers: dict[str, dict[str, Any]]) -> None:
    """Submit ``answers`` (``{record id: {question: value}}``) as ``user``, through the SDK (``records.log`` with
    ``rg.Response`` objects for that user's id)."""
    ds = find_dataset(client, name)
    wanted = set(answers)
    batch = []
    for rec in ds.records(with_responses=False, with_suggestions=False):
        if rec.id not in wanted:
            continue
        responses = [argilla.Response(q, v, user_id=user.id, status="submitted") for q, v in answers[rec.id].items()]
        batch.append(
            argilla.Record(id=rec.id, fields=rec.fields.to_dict(), metadata=dict(rec.metadata), responses=responses)
        )
    assert len(batch) == len(wanted)
    ds.records.log(batch)


def _submitted(client: Any, name: str) -> int:
    ds = find_dataset(client, name)
    return sum(len(r.submitted) for r in fetch_records(client, ds).values())


def _items(d: Dialogue, turn: int) -> dict[str, Any]:
    return {it.id: it for it in d.checklists[0][turn].items}


def test_push_review_pull_cycle(
    env: dict[str, str],
    client: Any,
    reviewers: dict[str, Any],
    tmp_path: Path,
    sample_path: Path,
    reference_record: Dialogue,
) -> None:
    name = "cycle"
    records = _records(sample_path, reference_record)
    folder = tmp_path / "in"
    store.write_dataset(folder, records[1:])
    store.write_dataset(folder, records[:1], split="test")  # pull keeps the splits
    n_items = sum(len(b.items) for d in records for v in d.checklists for b in v)

    # push, then push again: nothing new, nothing duplicated
    first = _run(env, "push", str(folder), "--name", name, "--min-submitted", "2")
    assert first.exit_code == 0, first.output
    assert f"{n_items} new, 0 updated, 0 unchanged" in first.output
    again = _run(env, "push", str(folder), "--name", name)
    assert again.exit_code == 0, again.output
    assert f"0 new, 0 updated, {n_items} unchanged" in again.output
    ds = find_dataset(client, name)
    assert len(fetch_records(client, ds)) == n_items
    assert ds.settings.distribution.min_submitted == 2  # as asked: pull's quorum below follows from it

    # the record: custom field with the template, suggestions from the labeller, metadata for filtering
    ref = reference_record
    rid = record_id(ref.id, 0, 0, "C0")
    (rec,) = [r for r in ds.records(with_suggestions=True) if r.id == rid]
    assert rec.fields[FIELD]["item"]["question"] == ref.checklists[0][0].items[0].question
    assert rec.suggestions["verdict"].value == "keep"
    # metadata for filtering: every item's turn and whether it must pass, as in the folder (both values occur)
    expected = {
        record_id(ref.id, 0, b.turn, it.id): (b.turn, "yes" if it.required_for_next_turn else "no")
        for b in ref.checklists[0]
        for it in b.items
    }
    served = {r.id: (r.metadata["turn"], r.metadata["must_pass"]) for r in ds.records() if r.id in expected}
    assert served == expected and {must for _, must in expected.values()} == {"yes", "no"}

    # two reviewers answer through the SDK
    rid = {(t, i): record_id(ref.id, 0, t, i) for t, b in enumerate(ref.checklists[0]) for i in _items(ref, t)}
    rewrite = "Did the final reply name the venue of the next game?"
    added = {
        "question": "Did the assistant give the date of every game it lists?",
        "pass_condition": "Each game in the final reply has its date.",
        "focus_on": "assistant.content.user_visible_reply",
        "weight": 0.1,
    }
    ann: dict[str, dict[str, Any]] = {r: {"verdict": "keep"} for r in rid.values()}
    bob: dict[str, dict[str, Any]] = {r: {"verdict": "keep"} for r in rid.values()}
    ann[rid[0, "C4"]] = {"verdict": "drop", "problems": ["style_only"]}
    bob[rid[0, "C4"]] = {"verdict": "drop", "problems": ["style_only", "not_observable"]}
    ann[rid[1, "C2"]] = {"verdict": "fix", "rewrite_question": rewrite, "problems": ["not_atomic"]}
    bob[rid[1, "C2"]] = {"verdict": "fix", "rewrite_question": rewrite}
    ann[rid[2, "C0"]] = {"verdict": "keep"}
    bob[rid[2, "C0"]] = {"verdict": "drop"}
    ann[rid[0, "C0"]] = {"verdict": "keep", "missing_criterion": json.dumps(added)}
    sample = records[1]  # fully kept by both
    for b in sample.checklists[0]:
        for it in b.items:
            ann[record_id(sample.id, 0, b.turn, it.id)] = {"verdict": "keep"}
            bob[record_id(sample.id, 0, b.turn, it.id)] = {"verdict": "keep"}
    other = records[2]  # one item answered by one reviewer only
    ann[record_id(other.id, 0, 0, other.checklists[0][0].items[0].id)] = {"verdict": "drop"}
    submit(client, name, reviewers["ann"], ann)
    submit(client, name, reviewers["bob"], bob)
    submitted = _submitted(client, name)
    assert submitted == len(ann) + len(bob)

    # status
    status = review_status(name, client=client)
    assert status["records"] == n_items
    assert status["by_state"]["completed"] == len(bob)  # every item bob answered, ann answered too
    assert status["reviewers"]["ann"]["submitted"] == len(ann) and status["reviewers"]["bob"]["verdict_drop"] == 2
    shown = _run(env, "status", name)
    assert shown.exit_code == 0 and "ann" in shown.output and "bob" in shown.output

    # pull: merge, provenance, re-normalisation, agreement, report
    out = tmp_path / "out"
    pulled = _run(env, "pull", name, "--into", str(folder), "--out", str(out))
    assert pulled.exit_code == 0, pulled.output
    merged = {d.id: d for d in store.read_dataset(out)}
    assert len(merged) == len(records)
    assert [d.id for d in store.read_dataset(out, split="test")] == [reference_record.id]
    m = merged[ref.id]
    t0, t1, t2 = _items(m, 0), _items(m, 1), _items(m, 2)
    assert "C4" not in t0 and list(t0) == ["C0", "C1", "C2", "C3", "C5", "C6"]
    assert t0["C6"].question == added["question"] and t0["C6"].extra_info["review"]["by"][0]["reviewer"] == "ann"
    for block in m.checklists[0]:
        assert sum(it.weight for it in block.items) == pytest.approx(1.0, abs=1e-9)
    old0 = _items(ref, 0)
    kept_total = sum(old0[k].weight for k in ("C0", "C1", "C2", "C3", "C5"))
    assert t0["C0"].weight == pytest.approx(old0["C0"].weight / (kept_total + 0.1))
    assert t1["C2"].question == rewrite
    assert t1["C2"].extra_info["review"]["before"]["question"] == _items(ref, 1)["C2"].question
    assert t2["C0"].question == _items(ref, 2)["C0"].question
    assert t2["C0"].extra_info["review"]["decision"] == "tie"
    info = t1["C0"].extra_info["review"]
    assert info["decision"] == "keep" and {b["reviewer"] for b in info["by"]} == {"ann", "bob"}
    assert all(b["at"] for b in info["by"]) and info["dataset"] == name
    assert m.review.status == "in_review" and m.review.reviewers == ["ann", "bob"]
    assert m.provenance.history[-1]["stage"] == "review"
    assert merged[sample.id].review.status == "reviewed"
    assert merged[other.id].review.status == "in_review"
    assert merged[records[3].id] == records[3]  # not reviewed: unchanged

    report = json.loads((out / "review_report.json").read_text())
    assert report["items"]["drop"] == 1 and report["items"]["fix"] == 1 and report["items"]["tie"] == 1
    assert report["items"]["added"] == 1 and report["items"]["pending"] == 1
    assert report["gate"]["passed"]
    verdicts = {r: {"ann": ann[r]["verdict"], "bob": bob[r]["verdict"]} for r in bob}
    problems = {r: {"ann": ann[r].get("problems", []), "bob": bob[r].get("problems", [])} for r in bob}
    expected = agreement_report(verdicts, problems, list(PROBLEMS))
    assert report["agreement"]["verdict"] == expected["verdict"]
    assert report["agreement"]["verdict"]["kappa"]["ann|bob"] is not None
    assert "## Human review" in (out / "README.md").read_text()
    assert (out / "review_report.md").read_text().startswith("## Human review")

    # a reviewed item changes in the folder; push again: flagged, nothing duplicated, no response lost
    changed = [d.model_copy(deep=True) for d in records]
    changed[0].checklists[0][1].items[0].question = "Did the assistant report the score of the last game?"
    folder2 = tmp_path / "in2"
    store.write_dataset(folder2, changed)
    repush = _run(env, "push", str(folder2), "--name", name)
    assert repush.exit_code == 0, repush.output
    assert "1 reviewed items changed since their review" in repush.output
    assert len(fetch_records(client, ds)) == n_items
    assert _submitted(client, name) == submitted
    status = review_status(name, client=client)
    assert status["changed_since_review"] == 1 and status["stale_responses"] == 2

    out2 = tmp_path / "out2"
    assert _run(env, "pull", name, "--into", str(folder2), "--out", str(out2)).exit_code == 0
    report2 = json.loads((out2 / "review_report.json").read_text())
    assert report2["items"]["stale"] == 1 and report2["items"]["drop"] == 1
    m2 = {d.id: d for d in store.read_dataset(out2)}[ref.id]
    assert _items(m2, 1)["C0"].extra_info["review"]["decision"] == "stale"

    # ann reviews the changed item again: her new answer counts, the flag stays until bob does too
    submit(client, name, reviewers["ann"], {rid[1, "C0"]: {"verdict": "keep"}})
    assert _run(env, "push", str(folder2), "--name", name).exit_code == 0
    status = review_status(name, client=client)
    assert status["stale_responses"] == 1 and status["changed_since_review"] == 1


def test_pushing_hostile_text_stores_no_markup(client: Any) -> None:
    hostile = "</script><script>alert(1)</script><img src=x onerror=alert(2)>"
    d = Dialogue(
        id="hostile",
        tools=[],
        messages=[
            Message(role="user", content="hi " + hostile),
            Message(role="assistant", tool_calls=[ToolCall(id="c", name="t", arguments="{}")]),
            Message(role="tool", tool_call_id="c", name="t", content=hostile),
            Message(role="assistant", content="ok " + hostile),
        ],
        checklists=[
            [
                {
                    "turn": 0,
                    "items": [
                        {
                            "id": "C0",
                            "focus_on": "tool.content",
                            "question": hostile,
                            "pass_condition": hostile,
                            "weight": 1.0,
                        }
                    ],
                }
            ]
        ],
        metadata={"domain": hostile},
    )
    result = push([d], "hostile", client=client, progress=False)
    assert result.created == 1
    ds = find_dataset(client, "hostile")
    body = client.http_client.get(f"/api/v1/datasets/{ds.id}/records", params={"limit": 10}).json()
    raw = json.dumps(body["items"][0]["fields"]) + json.dumps(body["items"][0]["metadata"])
    assert "<" not in raw and "&lt;/script&gt;" in raw


def test_faults_give_one_message_and_write_nothing(
    env: dict[str, str], tmp_path: Path, reference_record: Dialogue
) -> None:
    folder = tmp_path / "in"
    store.write_dataset(folder, [reference_record])
    wrong = {**env, "ARGILLA_API_KEY": "not-the-key-0123456789"}
    out = tmp_path / "out"
    for args in (
        ("push", str(folder), "--name", "faults"),
        ("status", "faults"),
        ("pull", "faults", "--into", str(folder), "--out", str(out)),
    ):
        result = _run(wrong, *args)
        assert result.exit_code != 0
        assert "rejected the API key" in result.output, result.output
        assert "not-the-key-0123456789" not in result.output
        assert "Traceback" not in result.output
    down = {**env, "ARGILLA_API_URL": "http://127.0.0.1:9"}
    result = _run(down, "pull", "faults", "--into", str(folder), "--out", str(out))
    assert result.exit_code != 0 and "cannot reach the Argilla server" in result.output
    assert env["ARGILLA_API_KEY"] not in result.output
    no_key = {k: v for k, v in env.items() if k != "ARGILLA_API_KEY"}
    result = _run({**no_key, "ARGILLA_API_KEY": ""}, "status", "faults")
    assert result.exit_code != 0 and "ARGILLA_API_KEY" in result.output
    missing = _run(env, "pull", "no-such-dataset", "--into", str(folder), "--out", str(out))
    assert missing.exit_code != 0 and "no review dataset" in missing.output
    assert not out.exists()


def test_pull_refuses_a_merge_that_fails_the_gate(
    env: dict[str, str], client: Any, tmp_path: Path, reference_record: Dialogue
) -> None:
    bad = reference_record.model_copy(deep=True)
    bad.checklists[0][2].items[0].weight = 0.9  # turn 2 no longer sums to 1, and no review fixes it
    folder = tmp_path / "in"
    store.write_dataset(folder, [bad])
    assert _run(env, "push", str(folder), "--name", "gate", "--min-submitted", "3").exit_code == 0
    assert find_dataset(client, "gate").settings.distribution.min_submitted == 3  # the option reaches the server
    out = tmp_path / "out"
    result = _run(env, "pull", "gate", "--into", str(folder), "--out", str(out))
    assert result.exit_code == 1
    assert "fail the validation gate: weights_sum_to_one" in result.output and "nothing written" in result.output
    assert not out.exists()
