"""Pull a review round: submitted responses → merged dataset folder + review report (``cm2data review pull``).

:func:`pull` reads the pushed dataset folder (``into``), lists the review dataset's records with every user's
responses, turns them into :class:`~cm2data.review.merge.ItemReview` objects (:func:`item_reviews`, pure), merges
them (:func:`cm2data.review.merge.merge_reviews`), computes agreement (:mod:`cm2data.review.agreement`) and runs the
validation gate on the merged records. Only when everything succeeded does it write ``out``: the dataset folder
(its card gets a "Human review" section), ``review_report.json`` and ``review_report.md``. When the gate fails it
writes nothing and :class:`PullGateFailed` carries the report with the failing rules.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cm2data.review.agreement import agreement_report
from cm2data.review.dataset import (
    M_CONTENT_HASH,
    M_DIALOGUE,
    M_ITEM,
    M_TURN,
    M_VARIANT,
    PROBLEMS,
    Q_MISSING,
    Q_PROBLEMS,
    Q_REWRITE_PASS,
    Q_REWRITE_QUESTION,
    Q_VERDICT,
    ItemKey,
    decode_text,
)
from cm2data.review.merge import Answer, ItemReview, MergeResult, merge_reviews
from cm2data.review.push import ReviewError, ServerRecord, fetch_records, find_dataset, load_source, server_errors
from cm2data.review.status import user_names
from cm2data.schema import Dialogue

if TYPE_CHECKING:
    import argilla as rg
    from rich.console import Console

REPORT_JSON = "review_report.json"
REPORT_MD = "review_report.md"


class PullGateFailed(ReviewError):
    """The merged records fail the validation gate; ``report["gate"]`` says which rules and records."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class PullResult:
    """What a pull wrote: the merged records' folder, the report (also written as JSON and markdown)."""

    out: Path
    records: int
    report: dict[str, Any]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def item_reviews(records: dict[str, ServerRecord], names: dict[str, str]) -> dict[str, ItemReview]:
    """``{record id: ItemReview}`` from the server's records: submitted responses become :class:`Answer` objects
    (reviewer = username), split into current and stale by the record's ``stale_responses`` marks (pure)."""
    out: dict[str, ItemReview] = {}
    for rid, rec in records.items():
        meta = rec.metadata
        key = ItemKey(
            decode_text(str(meta.get(M_DIALOGUE, ""))),
            int(meta.get(M_VARIANT, 0) or 0),
            int(meta.get(M_TURN, 0) or 0),
            decode_text(str(meta.get(M_ITEM, ""))),
        )
        review = ItemReview(key, meta.get(M_CONTENT_HASH))
        marks = rec.stale_marks
        for r in rec.submitted:
            v = r.values
            problems = v.get(Q_PROBLEMS) or []
            answer = Answer(
                reviewer=names.get(r.user_id, r.user_id),
                verdict=_text(v.get(Q_VERDICT)),
                problems=tuple(str(p) for p in (problems if isinstance(problems, list) else [problems])),
                rewrite_question=_text(v.get(Q_REWRITE_QUESTION)),
                rewrite_pass_condition=_text(v.get(Q_REWRITE_PASS)),
                missing_criterion=_text(v.get(Q_MISSING)),
                at=r.updated_at or None,
            )
            (review.stale if r.mark in marks else review.answers).append(answer)
        out[rid] = review
    return out


def round_agreement(reviews: dict[str, ItemReview]) -> dict[str, Any]:
    """Agreement figures of the current answers (:func:`cm2data.review.agreement.agreement_report`)."""
    verdicts = {rid: {a.reviewer: a.verdict for a in r.answers if a.verdict} for rid, r in reviews.items()}
    problems = {rid: {a.reviewer: list(a.problems) for a in r.answers if a.verdict} for rid, r in reviews.items()}
    return agreement_report(verdicts, problems, list(PROBLEMS))


def build_report(
    name: str,
    workspace: str,
    merged: MergeResult,
    reviews: dict[str, ItemReview],
    agreement: dict[str, Any],
    *,
    pulled_at: str,
    min_answers: int,
    into: Path,
    out: Path,
) -> dict[str, Any]:
    """The review report (JSON-ready): counts, per-reviewer verdicts, agreement, ties, rejected criteria."""
    per_reviewer: dict[str, Counter[str]] = {}
    for r in reviews.values():
        for a in r.answers:
            c = per_reviewer.setdefault(a.reviewer, Counter())
            c["answers"] += 1
            if a.verdict:
                c[a.verdict] += 1
        for a in r.stale:
            per_reviewer.setdefault(a.reviewer, Counter())["stale"] += 1
    majority_problems = Counter(p for d in merged.decisions for p in d.get("problems", []))
    open_items = [
        {k: d.get(k) for k in ("dialogue_id", "variant", "turn", "item_id", "action", "votes", "flags")}
        for d in merged.decisions
        if d.get("action") in ("tie", "stale") or (d.get("action") == "fix" and not d.get("applied"))
    ]
    return {
        "dataset": name,
        "workspace": workspace,
        "pulled_at": pulled_at,
        "into": str(into),
        "out": str(out),
        "min_answers": min_answers,
        "records": len(merged.records),
        "statuses": merged.statuses,
        "items": merged.counts,
        "reviewers": {k: dict(sorted(v.items())) for k, v in sorted(per_reviewer.items())},
        "agreement": agreement,
        "problems": dict(majority_problems.most_common()),
        "open_items": open_items,
        "rejected_criteria": merged.rejected_criteria,
        "not_in_folder": len(merged.not_in_folder),
    }


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def report_markdown(report: dict[str, Any]) -> str:
    """The report as a markdown section ("## Human review") that a dataset card can include."""
    c = report["items"]
    ag = report["agreement"]
    v = ag["verdict"]
    lines = [
        "## Human review",
        "",
        f"Reviewed in Argilla dataset `{report['dataset']}` (workspace `{report['workspace']}`), pulled "
        f"{report['pulled_at']}; a verdict applies once an item has {report['min_answers']} submitted answers.",
        "",
        "| items | keep | fix | drop | added | tie | pending | stale | unreviewed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {c['items']} | {c['keep']} | {c['fix']} | {c['drop']} | {c['added']} | {c['tie']} | {c['pending']} | "
        f"{c['stale']} | {c['unreviewed']} |",
        "",
        "Records: " + ", ".join(f"{n} {s}" for s, n in sorted(report["statuses"].items())) + ". "
        f"Turns re-normalised after a drop or an addition: {c['renormalised_turns']}.",
        "",
        "Agreement (verdict keep/fix/drop): Krippendorff's α (nominal) " + _fmt(v["alpha"]) + f" over {v['units']} "
        f"items with ≥ 2 answers, {v['reviewers']} reviewers; all answers equal on "
        + _fmt(v["percent"])
        + " of them; Cohen's κ (mean over reviewer pairs) "
        + _fmt(v["kappa_mean"])
        + ".",
        "",
        "| what is wrong (per label, binary) | α | majority count |",
        "| --- | --- | --- |",
    ]
    for label, figures in ag["problems"].items():
        lines.append(f"| {PROBLEMS[label]} | {_fmt(figures['alpha'])} | {report['problems'].get(label, 0)} |")
    lines += ["", "| reviewer | answers | keep | fix | drop | stale |", "| --- | --- | --- | --- | --- | --- |"]
    for who, counts in report["reviewers"].items():
        lines.append(
            f"| {who} | {counts.get('answers', 0)} | {counts.get('keep', 0)} | {counts.get('fix', 0)} | "
            f"{counts.get('drop', 0)} | {counts.get('stale', 0)} |"
        )
    lines.append("")
    return "\n".join(lines)


def _read_splits(into: Path) -> dict[str, list[Dialogue]]:
    """The pushed records by split (a dataset folder keeps its splits; any other source is one ``train`` split)."""
    from cm2data import store

    if not store.is_dataset_folder(into):
        return {store.DEFAULT_SPLIT: load_source(into)}
    out: dict[str, list[Dialogue]] = {}
    try:
        for split in store.split_files(into):
            out[split] = store.read_dataset(into, split=split)
    except (OSError, ValueError) as exc:
        raise ReviewError(f"cannot read {into}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    return out


def pull(
    name: str,
    *,
    into: Path,
    out: Path,
    client: rg.Argilla,
    workspace: str | None = None,
    min_answers: int | None = None,
    now: str | None = None,
) -> PullResult:
    """Merge the submitted responses of review dataset ``name`` into the records of ``into`` and write ``out``.

    ``min_answers`` defaults to the dataset's ``min_submitted``; ``now`` (ISO 8601) stamps the decisions. Raises
    :class:`ReviewError` on server or input failures and :class:`PullGateFailed` when the merged records fail the
    validation gate; in both cases nothing is written.
    """
    from cm2data import store
    from cm2data.validate import run_gate

    into, out = Path(into), Path(out)
    if out.resolve() == into.resolve():
        raise ReviewError("--out must differ from --into: the pushed folder is what the reviews are checked against")
    if out.exists() and any(out.iterdir()) and not store.is_dataset_folder(out):
        raise ReviewError(f"{out} exists and is neither empty nor a dataset folder")
    splits = _read_splits(into)
    records = [d for split in splits.values() for d in split]
    with server_errors(client.api_url):
        ds = find_dataset(client, name, workspace)
        if ds is None:
            raise ReviewError(f"no review dataset {name!r} in workspace {workspace or '(default)'}")
        server = fetch_records(client, ds)
        names = user_names(client)
        need = min_answers or ds.settings.distribution.min_submitted
        workspace_name = ds.workspace.name
    pulled_at = now or datetime.now(UTC).isoformat(timespec="seconds")
    reviews = item_reviews(server, names)
    merged = merge_reviews(records, reviews, reviewed_at=pulled_at, dataset=name, min_answers=need)
    agreement = round_agreement(reviews)
    report = build_report(
        name, workspace_name, merged, reviews, agreement, pulled_at=pulled_at, min_answers=need, into=into, out=out
    )
    gate = run_gate(merged.records)
    report["gate"] = {
        "passed": gate.passed,
        "failing_rules": {k: v for k, v in gate.counts.items() if v},
        "rejects": [{"record_id": r.record_id, "rule": r.rule, "message": r.message} for r in gate.rejects[:50]],
    }
    if not gate.passed:
        rules = ", ".join(f"{k} ({v} records)" for k, v in report["gate"]["failing_rules"].items())
        raise PullGateFailed(f"the merged records fail the validation gate: {rules}; nothing written", report)
    for d in merged.records:
        agreement_figures = {
            f"verdict_{k}": report["agreement"]["verdict"][k]
            for k in ("alpha", "kappa_mean")
            if report["agreement"]["verdict"][k] is not None
        }
        if d.review.decisions and agreement_figures:
            d.review.agreement = {**d.review.agreement, **{f"round_{k}": v for k, v in agreement_figures.items()}}
    by_id = {d.id: d for d in merged.records}
    for split, split_records in splits.items():
        store.write_dataset(out, [by_id[d.id] for d in split_records], split=split)
    section = report_markdown(report)
    body = store.card_body(out)
    marker = "## Human review"
    if marker in body:
        body = body[: body.index(marker)].rstrip() + "\n"
    store.write_card(out, body=body.rstrip() + "\n\n" + section)
    (out / REPORT_JSON).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / REPORT_MD).write_text(section, encoding="utf-8")
    return PullResult(out, len(merged.records), report)


def print_pull(result: PullResult, console: Console) -> None:
    """A short summary of a pull (for the CLI)."""
    r = result.report
    c = r["items"]
    v = r["agreement"]["verdict"]
    console.print(
        f"merged {r['dataset']} into {result.records} records → {result.out}: {c['keep']} kept, "
        f"{c['fix']} fixed ({c['applied'] - c['keep'] - c['drop']} applied), {c['drop']} dropped, "
        f"{c['added']} added; {c['tie']} ties, {c['pending']} pending, {c['stale']} stale, "
        f"{c['unreviewed']} unreviewed"
    )
    console.print(f"agreement on the verdict: α {_fmt(v['alpha'])}, κ {_fmt(v['kappa_mean'])} over {v['units']} items")
    if r["rejected_criteria"]:
        console.print(f"{len(r['rejected_criteria'])} proposed criteria were not added (see {REPORT_JSON})")
    console.print(f"report → {result.out / REPORT_JSON}, {result.out / REPORT_MD}")
