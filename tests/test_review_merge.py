"""Human review, the parts that need no server: merge rules, re-normalisation, majority and ties, added criteria,
agreement against textbook values, the push plan, and the item template's escaping (run in headless Chromium)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from cm2data.review import agreement as ag
from cm2data.review.dataset import (
    M_CHANGED,
    M_CONTENT_HASH,
    M_PAYLOAD_HASH,
    M_STALE,
    ItemKey,
    content_hash,
    decode_text,
    encode_text,
    find_snippet,
    load_template,
    record_id,
    review_items,
)
from cm2data.review.merge import Answer, ItemReview, merge_reviews, parse_missing_criterion, renormalise
from cm2data.review.pull import item_reviews, report_markdown, round_agreement
from cm2data.review.push import ServerRecord, ServerResponse, plan_push
from cm2data.schema import ChecklistItem, Dialogue, Message, ToolCall
from cm2data.validate import run_gate

NOW = "2026-03-01T12:00:00+00:00"


def _review(
    d: Dialogue, turn: int, item_id: str, *answers: Answer, variant: int = 0, stale: tuple[Answer, ...] = ()
) -> tuple[str, ItemReview]:
    block = d.checklists[variant][turn]
    item = next(it for it in block.items if it.id == item_id)
    key = ItemKey(d.id, variant, turn, item_id)
    return key.record_id, ItemReview(key, content_hash(d, block, item), list(answers), list(stale))


def _a(reviewer: str, verdict: str, **kw: object) -> Answer:
    return Answer(reviewer=reviewer, verdict=verdict, at="2026-03-01T10:00:00", **kw)  # type: ignore[arg-type]


def _items(d: Dialogue, turn: int) -> dict[str, ChecklistItem]:
    return {it.id: it for it in d.checklists[0][turn].items}


# ------------------------------------------------------------------------------------------------- agreement


def test_krippendorff_alpha_textbook_values() -> None:
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 coders, 12 units, nominal α = 0.743
    n = None
    coders = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
        [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n],
    ]
    alpha = ag.krippendorff_alpha_nominal(list(zip(*coders, strict=True)))
    assert alpha == pytest.approx(0.743, abs=5e-4)
    # the same paper's two-coder binary example: α = 0.095
    a = [0, 1, 0, 0, 0, 0, 0, 0, 1, 0]
    b = [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]
    assert ag.krippendorff_alpha_nominal(list(zip(a, b, strict=True))) == pytest.approx(0.095, abs=5e-4)
    assert ag.krippendorff_alpha_nominal([["x", "x"], ["y", "y"]]) == pytest.approx(1.0)
    assert ag.krippendorff_alpha_nominal([["x", "x"], ["x", "x"]]) is None  # one category: undefined
    assert ag.krippendorff_alpha_nominal([["x"], [None, "y"]]) is None  # nothing pairable


def test_cohen_kappa_textbook_values() -> None:
    # 50 units: yes/yes 20, yes/no 5, no/yes 10, no/no 15 → p_o 0.7, p_e 0.5, κ = 0.4
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert ag.cohen_kappa(a, b) == pytest.approx(0.4)
    assert ag.cohen_kappa(["a", "b", "c"], ["a", "b", "c"]) == pytest.approx(1.0)
    assert ag.cohen_kappa(["a", "a"], ["a", "a"]) is None
    assert ag.cohen_kappa([], []) is None
    with pytest.raises(ValueError):
        ag.cohen_kappa(["a"], ["a", "b"])


def test_agreement_report_per_question() -> None:
    verdicts = {
        "i1": {"ann": "keep", "bob": "keep"},
        "i2": {"ann": "drop", "bob": "keep"},
        "i3": {"ann": "fix", "bob": "fix"},
        "i4": {"ann": "keep"},
    }
    problems = {
        "i1": {"ann": [], "bob": []},
        "i2": {"ann": ["style_only"], "bob": ["style_only"]},
        "i3": {"ann": ["not_atomic"], "bob": []},
        "i4": {"ann": []},
    }
    rep = ag.agreement_report(verdicts, problems, ["style_only", "not_atomic"])
    v = rep["verdict"]
    assert v["units"] == 3 and v["reviewers"] == 2
    assert v["percent"] == pytest.approx(2 / 3, abs=1e-4)
    assert v["kappa"]["ann|bob"] == pytest.approx(
        ag.cohen_kappa(["keep", "drop", "fix"], ["keep", "keep", "fix"]), abs=1e-4
    )
    assert v["alpha"] == pytest.approx(
        ag.krippendorff_alpha_nominal([["keep", "keep"], ["drop", "keep"], ["fix", "fix"]]), abs=1e-4
    )
    assert rep["problems"]["style_only"]["alpha"] == pytest.approx(1.0)
    assert rep["problems"]["not_atomic"]["percent"] == pytest.approx(2 / 3, abs=1e-4)
    json.dumps(rep)  # no NaN: valid JSON


# ---------------------------------------------------------------------------------------------------- merging


def test_drop_renormalises_the_turn_and_clears_dependencies(reference_record: Dialogue) -> None:
    d = reference_record
    before = {k: v.weight for k, v in _items(d, 0).items()}
    reviews = dict(
        [
            _review(d, 0, "C1", _a("ann", "drop"), _a("bob", "drop")),
            _review(d, 0, "C0", _a("ann", "keep"), _a("bob", "keep")),
        ]
    )
    result = merge_reviews([d], reviews, reviewed_at=NOW, dataset="round1", min_answers=2)
    (m,) = result.records
    after = _items(m, 0)
    assert "C1" not in after
    assert sum(it.weight for it in after.values()) == pytest.approx(1.0, abs=1e-9)
    kept_total = sum(w for k, w in before.items() if k != "C1")
    for k, it in after.items():
        assert it.weight == pytest.approx(before[k] / kept_total)
        assert "C1" not in it.depends_on  # C2, C3, C5 depended on the dropped tool.content item
    assert _items(m, 1) == _items(d, 1)  # other turns untouched
    assert d.checklists[0][0].items[1].id == "C1"  # the input record is not changed
    assert result.counts["drop"] == 1 and result.counts["keep"] == 1 and result.counts["renormalised_turns"] == 1
    assert run_gate(result.records).passed


def test_fix_applies_the_rewrite_and_records_who_and_when(reference_record: Dialogue) -> None:
    d = reference_record
    old = _items(d, 1)["C2"]
    rid, review = _review(
        d,
        1,
        "C2",
        _a("ann", "fix", rewrite_question="Did the reply name the venue?"),
        _a(
            "bob",
            "fix",
            rewrite_question="  Did the reply   name the venue? ",
            rewrite_pass_condition="The final reply states the venue.",
        ),
        _a("cy", "keep"),
    )
    result = merge_reviews([d], {rid: review}, reviewed_at=NOW, dataset="round1", min_answers=2)
    (m,) = result.records
    it = _items(m, 1)["C2"]
    assert it.question == "Did the reply name the venue?"  # whitespace-normalised, 2 of 2 fixers
    assert it.pass_condition == "The final reply states the venue."
    assert it.weight == old.weight  # nothing dropped: no re-normalisation
    info = it.extra_info["review"]
    assert info["decision"] == "fix" and info["applied"] and info["at"] == NOW and info["dataset"] == "round1"
    assert [b["reviewer"] for b in info["by"]] == ["ann", "bob", "cy"]
    assert info["before"] == {"question": old.question, "pass_condition": old.pass_condition}
    dec = next(x for x in m.review.decisions if x["item_id"] == "C2")
    assert dec["votes"] == {"fix": 2, "keep": 1} and dec["after"]["question"] == it.question
    assert m.review.reviewers == ["ann", "bob", "cy"]
    assert m.review.status == "in_review"  # the other items were not reviewed
    stage = m.provenance.history[-1]
    assert stage["stage"] == "review" and stage["dataset"] == "round1" and stage["fix"] == 1
    assert run_gate(result.records).passed


def test_rewrite_conflict_and_fix_without_rewrite_are_flagged_not_applied(reference_record: Dialogue) -> None:
    d = reference_record
    items = _items(d, 2)
    reviews = dict(
        [
            _review(
                d, 2, "C0", _a("ann", "fix", rewrite_question="Q one?"), _a("bob", "fix", rewrite_question="Q two?")
            ),
            _review(d, 2, "C1", _a("ann", "fix"), _a("bob", "fix")),
        ]
    )
    result = merge_reviews([d], reviews, reviewed_at=NOW, min_answers=2)
    m = _items(result.records[0], 2)
    assert m["C0"].question == items["C0"].question and m["C1"].question == items["C1"].question
    flags = {x["item_id"]: x["flags"] for x in result.decisions}
    assert flags["C0"] == ["rewrite_conflict:question"] and flags["C1"] == ["fix_without_rewrite"]
    assert not any(x["applied"] for x in result.decisions)


def test_majority_wins_and_ties_stay_flagged(reference_record: Dialogue) -> None:
    d = reference_record
    reviews = dict(
        [
            _review(d, 0, "C4", _a("ann", "drop"), _a("bob", "drop"), _a("cy", "keep")),  # 2:1 → drop
            _review(d, 0, "C0", _a("ann", "drop"), _a("bob", "keep")),  # 1:1 → tie
            _review(d, 0, "C5", _a("ann", "drop"), _a("bob", "keep"), _a("cy", "fix")),  # 1:1:1 → tie
        ]
    )
    result = merge_reviews([d], reviews, reviewed_at=NOW, min_answers=2)
    (m,) = result.records
    items = _items(m, 0)
    assert "C4" not in items and "C0" in items and "C5" in items
    assert items["C0"].question == _items(d, 0)["C0"].question
    assert items["C0"].extra_info["review"]["flags"] == ["tie"] and not items["C0"].extra_info["review"]["applied"]
    assert result.counts["tie"] == 2 and result.counts["drop"] == 1
    assert sum(it.weight for it in items.values()) == pytest.approx(1.0)
    assert m.review.status == "in_review"
    report = {x["item_id"]: x["action"] for x in result.decisions}
    assert report == {"C4": "drop", "C0": "tie", "C5": "tie"}


def test_pending_stale_and_unreviewed(reference_record: Dialogue) -> None:
    d = reference_record
    rid_pending, pending = _review(d, 1, "C0", _a("ann", "drop"))  # 1 answer of 2
    rid_old, old = _review(d, 1, "C1", _a("ann", "drop"), _a("bob", "drop"))
    old.content_hash = "0" * 32  # the folder changed since the push
    rid_stale, stale = _review(d, 1, "C3", stale=(_a("ann", "drop"), _a("bob", "drop")))
    result = merge_reviews([d], {rid_pending: pending, rid_old: old, rid_stale: stale}, reviewed_at=NOW, min_answers=2)
    (m,) = result.records
    assert _items(m, 1).keys() == _items(d, 1).keys()
    actions = {x["item_id"]: (x["action"], x["flags"]) for x in result.decisions}
    assert actions == {
        "C0": ("pending", []),
        "C1": ("stale", ["folder_changed_since_push"]),
        "C3": ("stale", ["changed_since_review"]),
    }
    assert result.counts["unreviewed"] == 14 - 3
    assert result.records[0].review.status == "in_review"


def test_added_criteria_become_items(reference_record: Dialogue) -> None:
    d = reference_record
    as_json = json.dumps(
        {
            "question": "Did the assistant state the score of each game?",
            "pass_condition": "The final reply gives the score of every game it lists.",
            "focus_on": "assistant.content.user_visible_reply",
            "weight": 0.2,
            "depends_on": ["C1", "C0"],
        }
    )
    as_lines = (
        "question: Did the assistant state the score of each game?\n"
        "pass_condition: The reply lists all scores.\nfocus_on: assistant.content.user_visible_reply"
    )
    other = (
        "question: Did it avoid guessing dates?\npass_condition: No date is invented.\n"
        "focus_on: assistant.content.thinking"
    )
    bad = "question: Is it nice?\nfocus_on: vibes"
    reviews = dict(
        [
            _review(d, 0, "C0", _a("ann", "keep", missing_criterion=as_json), _a("bob", "keep", missing_criterion=bad)),
            _review(d, 0, "C2", _a("ann", "keep"), _a("bob", "keep", missing_criterion=as_lines + "\n\n" + other)),
        ]
    )
    result = merge_reviews([d], reviews, reviewed_at=NOW, dataset="r", min_answers=2)
    (m,) = result.records
    items = _items(m, 0)
    assert list(items) == ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7"]
    new = items["C6"]
    assert new.question == "Did the assistant state the score of each game?"
    assert new.depends_on == ["C1"]  # C0 is not a tool.content item
    assert new.evidence == [] and new.extra_info["review"]["decision"] == "add"
    assert [b["reviewer"] for b in new.extra_info["review"]["by"]] == ["ann", "bob"]  # same question, added once
    assert items["C7"].focus_on == "assistant.content.thinking"
    assert sum(it.weight for it in items.values()) == pytest.approx(1.0)
    assert result.counts["added"] == 2 and result.counts["added_rejected"] == 1
    (rej,) = result.rejected_criteria
    assert rej["reviewer"] == "bob" and "pass_condition" in rej["reason"] and "vibes" in rej["reason"]
    assert run_gate(result.records).passed
    # a second round that drops C6 and adds again must not reuse the dropped id
    rid, rv = _review(
        m,
        0,
        "C6",
        _a("ann", "drop"),
        _a("bob", "drop", missing_criterion="question: Q?\npass_condition: P.\nfocus_on: tool.content"),
    )
    (m2,) = merge_reviews([m], {rid: rv}, reviewed_at=NOW, min_answers=2).records
    assert list(_items(m2, 0)) == ["C0", "C1", "C2", "C3", "C4", "C5", "C7", "C8"]


def test_dropping_every_item_of_a_turn_rejects_the_record(reference_record: Dialogue) -> None:
    d = reference_record
    reviews = dict(_review(d, 1, i, _a("ann", "drop"), _a("bob", "drop")) for i in ("C0", "C1", "C2", "C3"))
    (m,) = merge_reviews([d], reviews, reviewed_at=NOW, min_answers=2).records
    assert m.checklists[0][1].items == []
    assert m.review.status == "rejected"
    assert m.review.decisions[-1]["action"] == "reject_record"


def test_a_fully_reviewed_record_is_reviewed(reference_record: Dialogue) -> None:
    d = reference_record
    reviews = dict(
        _review(d, b.turn, it.id, _a("ann", "keep"), _a("bob", "keep")) for b in d.checklists[0] for it in b.items
    )
    result = merge_reviews([d], reviews, reviewed_at=NOW, min_answers=2)
    assert result.records[0].review.status == "reviewed"
    assert result.records[0].review.agreement["verdict_percent"] == 1.0
    assert result.statuses == {"reviewed": 1}


def test_parse_missing_criterion_forms() -> None:
    ok, errors = parse_missing_criterion(
        '[{"question": "Q?", "pass_condition": "P", "focus_on": "tool.content", '
        '"required_for_next_turn": "yes", "failure_examples": "x"}]'
    )
    assert errors == [] and ok[0]["required_for_next_turn"] is True and ok[0]["failure_examples"] == ["x"]
    assert parse_missing_criterion("   ") == ([], [])
    _, errors = parse_missing_criterion("{not json")
    assert errors and errors[0].startswith("not valid JSON")
    _, errors = parse_missing_criterion("just some prose about what is missing")
    assert "key: value" in errors[0]
    _, errors = parse_missing_criterion(
        '{"question": "Q", "pass_condition": "P", "focus_on": "tool.content", "weight": 3}'
    )
    assert "not in (0, 1]" in errors[0]


def test_renormalise_all_zero_weights() -> None:
    items = [
        ChecklistItem(id=f"C{i}", focus_on="tool.content", question="q", pass_condition="p", weight=0.0)
        for i in range(3)
    ]
    renormalise(items)
    assert [it.weight for it in items] == pytest.approx([1 / 3] * 3)


# ------------------------------------------------------------------------------ server records → reviews, push plan


def _server(rid: str, meta: dict, responses: list[ServerResponse]) -> ServerRecord:
    return ServerRecord(
        id="00000000-0000-0000-0000-000000000000",
        external_id=rid,
        status="completed",
        metadata=meta,
        responses=responses,
    )


def test_item_reviews_split_current_and_stale_answers(reference_record: Dialogue) -> None:
    (item, *_) = review_items(reference_record)
    r1 = ServerResponse("u1", "submitted", {"verdict": "drop", "problems": ["style_only"]}, "2026-03-01T10:00:00")
    r2 = ServerResponse("u2", "submitted", {"verdict": "keep", "rewrite_question": "  "}, "2026-03-01T11:00:00")
    r3 = ServerResponse("u3", "draft", {"verdict": "fix"}, "2026-03-01T11:00:00")
    meta = {**item.metadata, M_STALE: [r1.mark]}
    reviews = item_reviews({item.record_id: _server(item.record_id, meta, [r1, r2, r3])}, {"u1": "ann", "u2": "bob"})
    rv = reviews[item.record_id]
    assert rv.key == item.key and rv.content_hash == item.content_hash
    assert [(a.reviewer, a.verdict, a.rewrite_question) for a in rv.answers] == [("bob", "keep", None)]
    assert [(a.reviewer, a.problems) for a in rv.stale] == [("ann", ("style_only",))]
    figures = round_agreement(reviews)
    assert figures["verdict"]["units"] == 0


def test_push_plan_is_idempotent_and_flags_changes_after_review(reference_record: Dialogue) -> None:
    items = review_items(reference_record)
    send, counts = plan_push(items, {})
    assert counts == {"created": 14, "updated": 0, "unchanged": 0, "changed_since_review": 0}
    server = {it.record_id: _server(it.record_id, meta, []) for it, meta in send}
    assert plan_push(items, server)[1]["unchanged"] == 14
    # two reviews on the first item, then its question changes
    first = items[0].record_id
    resp = [
        ServerResponse("u1", "submitted", {"verdict": "keep"}, "t1"),
        ServerResponse("u2", "submitted", {"verdict": "keep"}, "t2"),
    ]
    server[first].responses = resp
    changed = reference_record.model_copy(deep=True)
    changed.checklists[0][0].items[0].question = "A different question?"
    send2, counts2 = plan_push(review_items(changed), server)
    # the item and the 5 other items of its turn (they show its question) are sent; only the item was reviewed
    assert counts2 == {"created": 0, "updated": 6, "unchanged": 8, "changed_since_review": 1}
    sent = {it.record_id: meta for it, meta in send2}
    meta = sent[first]
    assert meta[M_CHANGED] == "yes" and meta[M_STALE] == ["u1@t1", "u2@t2"]
    assert all(m[M_CHANGED] == "no" for rid, m in sent.items() if rid != first)
    for rid, m in sent.items():
        server[rid].metadata = m
    # after the push; u1 submits again (new updated_at): u1's mark goes, the flag stays for u2
    server[first].responses = [ServerResponse("u1", "submitted", {"verdict": "fix"}, "t3"), resp[1]]
    ((_, meta3),), counts3 = plan_push(review_items(changed), server)
    assert counts3["updated"] == 1 and meta3[M_STALE] == ["u2@t2"] and meta3[M_CHANGED] == "yes"
    server[first].metadata = meta3
    server[first].responses = [server[first].responses[0], ServerResponse("u2", "submitted", {}, "t4")]
    ((_, meta4),), _ = plan_push(review_items(changed), server)
    assert meta4[M_CHANGED] == "no" and M_STALE not in meta4
    # a weight change alone (re-normalisation) updates the record but does not void its review
    server[first].metadata = meta4
    reweighted = changed.model_copy(deep=True)
    reweighted.checklists[0][0].items[0].weight = 0.5
    send5, counts5 = plan_push(review_items(reweighted), server)
    meta5 = dict((it.record_id, m) for it, m in send5)[first]
    assert counts5["changed_since_review"] == 0 and meta5[M_CHANGED] == "no"
    assert meta5[M_CONTENT_HASH] == meta4[M_CONTENT_HASH] and meta5[M_PAYLOAD_HASH] != meta4[M_PAYLOAD_HASH]


def test_record_ids_are_stable_and_distinct(reference_record: Dialogue) -> None:
    ids = [it.record_id for it in review_items(reference_record)]
    assert len(set(ids)) == len(ids) == 14
    assert ids == [it.record_id for it in review_items(reference_record.model_copy(deep=True))]
    assert record_id("d", 0, 1, "C0") != record_id("d", 1, 0, "C0")
    assert re.fullmatch(r"cm2-[0-9a-f]{32}", ids[0])


def test_report_markdown_section(reference_record: Dialogue) -> None:
    from cm2data.review.pull import build_report

    d = reference_record
    reviews = dict([_review(d, 0, "C1", _a("ann", "drop"), _a("bob", "keep"))])
    merged = merge_reviews([d], reviews, reviewed_at=NOW, min_answers=2)
    report = build_report(
        "r1",
        "ws",
        merged,
        reviews,
        round_agreement(reviews),
        pulled_at=NOW,
        min_answers=2,
        into=Path("in"),
        out=Path("out"),
    )
    text = report_markdown(report)
    assert text.startswith("## Human review") and "| 14 | 0 | 0 | 0 | 0 | 1 |" in text
    assert report["open_items"][0]["action"] == "tie"


# ------------------------------------------------------------------------------------------------ the template

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)> & </script><!--'


def _hostile_record() -> Dialogue:
    return Dialogue(
        id="evil",
        messages=[
            Message(role="system", content="sys " + HOSTILE),
            Message(role="user", content="find it " + HOSTILE),
            Message(
                role="assistant",
                content="",
                thinking="think " + HOSTILE,
                tool_calls=[ToolCall(id="c1", name="lookup", arguments=json.dumps({"q": HOSTILE}))],
            ),
            Message(role="tool", tool_call_id="c1", name="lookup", content=json.dumps({"r": HOSTILE})),
            Message(role="assistant", content="done " + HOSTILE),
        ],
        checklists=[
            [
                {
                    "turn": 0,
                    "items": [
                        {
                            "id": "C0",
                            "focus_on": "tool.content",
                            "question": "Q " + HOSTILE,
                            "pass_condition": "P " + HOSTILE,
                            "failure_examples": [HOSTILE],
                            "weight": 1.0,
                            "depends_on": [],
                            "evidence": [{"turn": 0, "step": 2, "from": "tool.content", "snippet": "<script>alert"}],
                        }
                    ],
                }
            ]
        ],
        metadata={"domain": "d" + HOSTILE},
    )


def test_encoded_values_carry_no_angle_brackets() -> None:
    (item,) = review_items(_hostile_record())
    raw = json.dumps({"fields": {"item": item.value}, "metadata": item.metadata})
    assert "<" not in raw and ">" not in raw  # nothing can close Argilla's <script> around the record
    assert decode_text(encode_text(HOSTILE)) == HOSTILE
    assert item.value["item"]["evidence"][0]["found"]


def test_template_never_writes_data_as_html() -> None:
    template = load_template()
    scripts = re.findall(r"<script>(.*?)</script>", template, flags=re.DOTALL)
    assert len(scripts) == 1
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        'setAttribute("on',
        "srcdoc",
        ".src =",
    ):
        assert sink not in scripts[0], sink
    assert "textContent" in scripts[0] and "createElement" in scripts[0]


def test_find_snippet_ignores_whitespace_differences() -> None:
    pretty = '{\n  "a": 1,\n  "b": "x y"\n}'
    start, end = find_snippet(pretty, '"a":1,"b"')  # type: ignore[misc]
    assert pretty[start:end] == '"a": 1,\n  "b"'
    assert find_snippet(pretty, "zzz") is None


# What Argilla's custom field (advanced mode) puts in the field's frame before the template: the record as JSON in a
# script element (see the comment at the top of ui/argilla/item_template.html)
_FRAME = """<!doctype html><html><head><meta charset="utf-8"></head><body>
<script>const record = {record};</script>
{template}
</body></html>"""
_ORIGIN = "http://cm2-template.invalid"  # never reached: the route below answers the page and aborts the rest


def render_in_chromium(browser: Any, template: str, record: dict[str, Any]) -> dict[str, Any]:
    """Run ``template`` on ``record`` in a fresh page of headless Chromium, the way Argilla's field frame does, and
    return what it rendered in ``#cm2`` (tag names, text, the serialised HTML, the texts of the ``mark`` elements and
    the classes of the ``details`` elements) with every sign of something else happening: requests beyond the page
    itself (an ``<img src=x>`` that became markup asks for ``/x``; they are aborted), failed requests, JS errors,
    console errors and warnings, and dialogs (``alert`` in the payloads)."""
    page_html = _FRAME.format(record=json.dumps(record), template=template)
    context = browser.new_context()
    requests: list[str] = []
    problems: list[str] = []

    def serve(route: Any) -> None:
        if route.request.url == f"{_ORIGIN}/item.html":
            route.fulfill(status=200, content_type="text/html; charset=utf-8", body=page_html)
        else:
            requests.append(route.request.url)
            route.abort()

    def dialog(d: Any) -> None:
        problems.append(f"dialog {d.type}: {d.message}")
        d.dismiss()

    try:
        context.route("**/*", serve)
        page = context.new_page()
        page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
        page.on(
            "console",
            lambda m: (
                problems.append(f"console.{m.type}: {m.text}") if m.type in ("error", "warning", "assert") else None
            ),
        )
        page.on("requestfailed", lambda r: problems.append(f"requestfailed: {r.url} ({r.failure})"))
        page.on("dialog", dialog)
        page.goto(f"{_ORIGIN}/item.html", wait_until="load")
        page.wait_for_timeout(200)  # an onerror handler of a failed image has run by now
        out = page.evaluate("""() => {
            const root = document.getElementById("cm2");
            return {tags: [...new Set([...root.querySelectorAll("*")].map((e) => e.tagName.toLowerCase()))],
                    text: root.textContent, html: root.innerHTML,
                    marks: [...root.querySelectorAll("mark")].map((m) => [m.title, m.textContent]),
                    details: [...root.querySelectorAll("details")].map((d) => d.className),
                    scripts_in_page: document.scripts.length};
        }""")
    finally:
        context.close()
    return {**out, "requests": requests, "problems": problems}


def test_template_renders_hostile_text_as_text(browser: Any) -> None:
    (item,) = review_items(_hostile_record())
    out = render_in_chromium(browser, load_template(), {"fields": {"item": item.value}, "metadata": item.metadata})
    # nothing ran, nothing was asked for: no dialog (alert), no JS error, no request but the page itself
    assert out["problems"] == [], out["problems"]
    assert out["requests"] == [], out["requests"]
    assert out["scripts_in_page"] == 2  # the record's and the template's: the payloads added none
    assert "script" not in out["tags"] and "img" not in out["tags"]
    assert set(out["tags"]) <= {"div", "h3", "span", "ul", "li", "details", "summary", "mark"}
    # the hostile strings arrive decoded, as text, in every place: system, user, thinking, tool call (pretty JSON),
    # tool result (pretty JSON), final reply, the item's question, pass condition and failure example, the domain
    text = out["text"]
    escaped = json.dumps(HOSTILE)[1:-1]  # inside the pretty-printed JSON of the tool call and the tool result
    for shown in (
        "sys " + HOSTILE,
        "find it " + HOSTILE,
        "think " + HOSTILE,
        f'"q": "{escaped}"',
        f'"r": "{escaped}"',
        "done " + HOSTILE,
        "Item C0 of turn 0 — Q " + HOSTILE,
        "P " + HOSTILE,
        "d" + HOSTILE,
    ):
        assert shown in text, (shown, text)
    # the seven plain places above and the failure example (a list item of its own); the two JSON-escaped ones
    assert text.count(HOSTILE) == 8 and text.count(escaped) == 2
    assert "&lt;script&gt;" in out["html"] and "<script>" not in out["html"] and "<img" not in out["html"]
    assert out["details"] == ["system", "thinking"]
    # the evidence snippet, as text: in the item's evidence row, and highlighted in the tool result it was found in
    assert out["marks"] == [["", "<script>alert"], ["evidence 0", "<script>alert"]]
    assert "turn 0 · step 2 · tool · lookup" in text and "Turn 0 (under review)" in text
