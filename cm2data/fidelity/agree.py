"""``cm2data judge agree``: how far a judge's verdicts agree with people's and with another (careful) judge's.

Inputs are verdict folders (``cm2data judge run``), optionally a human verdict folder (``cm2data review
pull-verdicts``), another verdict folder to compare against (``--against``, typically the careful ``reference`` mode)
and the current dataset (``--dataset``, to leave out verdicts about items that changed since).

What is compared, on the same (dialogue, variant, turn, item):

* each judge (``VERDICTS``) against the people's majority verdict (``--human``), against each reviewer, and against
  the ``--against`` judge; the ``--against`` judge against the people too;
* people against each other (Krippendorff's α and Cohen's κ per pair, :mod:`cm2data.review.agreement`): the
  ceiling a judge can be expected to reach;
* each judge alone: its pass rate on the reference dialogues, which are known-good — its fails are mostly false
  negatives.

Each comparison has n, accuracy, Cohen's κ, bootstrap intervals, the confusion matrix (:mod:`cm2data.stats.agreement`),
overall and per ``focus_on``. Nothing is dropped silently: every row left out is counted under ``bad_input`` with the
reason — duplicates (and whether they conflict), items without a verdict, reviewers' skips (discarded responses)
and drafts, ties between reviewers, verdicts whose item changed or no longer exists (fingerprints differ or the key is
missing), items nobody reviewed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cm2data.review.agreement import question_agreement
from cm2data.stats.agreement import binary_agreement
from cm2data.verdicts import (
    HUMAN_VERDICTS,
    PULL_REPORT,
    Key,
    VerdictError,
    item_refs,
    match_rows,
    read_rows,
    read_run,
    row_key,
)

AGREEMENT_JSON = "agreement.json"
AGREEMENT_HTML = "agreement.html"
KIND = "cm2data.judge_agreement"


@dataclass
class VerdictSet:
    """One judge's verdicts, de-duplicated and checked: ``rows`` by key (judged items only)."""

    name: str
    path: str
    mode: str
    judge_model: str
    prompt_version: str
    rows: dict[Key, dict[str, Any]]
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.mode}, {self.judge_model})"


def dedupe(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[Key, dict[str, Any]], int, int]:
    """``({key: first row}, duplicate rows, duplicates whose verdict or fingerprints differ from the first)``."""
    out: dict[Key, dict[str, Any]] = {}
    duplicates = conflicting = 0
    for row in rows:
        key = row_key(row)
        first = out.get(key)
        if first is None:
            out[key] = dict(row)
            continue
        duplicates += 1
        if any(first.get(k) != row.get(k) for k in ("verdict", "item_fingerprint", "context_fingerprint")):
            conflicting += 1
    return out, duplicates, conflicting


def load_verdict_set(path: Path, *, dataset_items: Mapping[Key, Any] | None = None) -> VerdictSet:
    """A verdict folder, de-duplicated, without its unjudged rows and (with ``dataset_items``) without the rows whose
    item changed or no longer exists in the current dataset; each exclusion counted."""
    path = Path(path)
    rows = read_rows(path)
    try:
        run = read_run(path)
    except VerdictError:
        run = {}
    unique, duplicates, conflicting = dedupe(rows)
    counts = {"rows": len(rows), "duplicate_rows": duplicates, "conflicting_duplicates": conflicting}
    unjudged = [k for k, r in unique.items() if r.get("verdict") is None]
    for k in unjudged:
        del unique[k]
    counts["unjudged"] = len(unjudged)
    if dataset_items is not None:
        matched = match_rows(unique.values(), dataset_items)
        counts.update({f"dataset_{k}": v for k, v in matched.counts().items() if k != "matched"})
        unique = {row_key(r): r for r in matched.current}
    counts["usable"] = len(unique)
    first = next(iter(unique.values()), None) or (rows[0] if rows else {})
    return VerdictSet(
        name=path.name,
        path=str(path),
        mode=str(run.get("mode") or first.get("mode") or "?"),
        judge_model=str(run.get("judge_model") or first.get("judge_model") or "?"),
        prompt_version=str(run.get("prompt_version") or first.get("prompt_version") or "?"),
        rows=unique,
        counts=counts,
    )


@dataclass
class HumanSet:
    """People's verdicts: ``answers[key][reviewer] = (verdict, row)`` of the submitted responses, de-duplicated."""

    path: str
    dataset: str | None
    answers: dict[Key, dict[str, dict[str, Any]]]
    counts: dict[str, int]
    pull_report: dict[str, Any] | None = None


def load_human(path: Path) -> HumanSet:
    """A human verdict folder: submitted answers by item and reviewer; skips (discarded), drafts, answers without a
    verdict and duplicate rows counted (a duplicate keeps the latest answer)."""
    import json

    path = Path(path)
    rows = read_rows(path, HUMAN_VERDICTS)
    statuses = Counter(str(r.get("status") or "") for r in rows)
    answers: dict[Key, dict[str, dict[str, Any]]] = defaultdict(dict)
    duplicates = conflicting = no_answer = 0
    for row in rows:
        if row.get("status") != "submitted":
            continue
        if row.get("verdict") is None:
            no_answer += 1
            continue
        key, who = row_key(row), str(row.get("reviewer"))
        earlier = answers[key].get(who)
        if earlier is not None:
            duplicates += 1
            if earlier["verdict"] != row["verdict"]:
                conflicting += 1
            if str(row.get("answered_at") or "") < str(earlier.get("answered_at") or ""):
                continue
        answers[key][who] = dict(row)
    report = path / PULL_REPORT
    pull_report = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else None
    counts = {
        "rows": len(rows),
        "submitted": statuses.get("submitted", 0),
        "skipped": statuses.get("discarded", 0),
        "drafts": statuses.get("draft", 0),
        "submitted_without_verdict": no_answer,
        "duplicate_rows": duplicates,
        "conflicting_duplicates": conflicting,
        "revised": sum(1 for r in rows if r.get("status") == "submitted" and r.get("revised")),
        "reviewers": len({str(r.get("reviewer")) for r in rows}),
    }
    dataset = next((str(r["dataset"]) for r in rows if r.get("dataset")), None)
    return HumanSet(str(path), dataset, dict(answers), counts, pull_report)


def human_majority(human: HumanSet) -> tuple[dict[Key, bool], dict[Key, dict[str, Any]], int]:
    """``({key: majority verdict}, {key: a row carrying the reviewed fingerprints}, ties)``; a tie is no verdict."""
    out: dict[Key, bool] = {}
    rows: dict[Key, dict[str, Any]] = {}
    ties = 0
    for key, by_reviewer in human.answers.items():
        votes = Counter(bool(r["verdict"]) for r in by_reviewer.values())
        rows[key] = next(iter(by_reviewer.values()))
        if votes[True] == votes[False]:
            ties += 1
            continue
        out[key] = votes[True] > votes[False]
    return out, rows, ties


def _fingerprint_state(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    if a.get("item_fingerprint") != b.get("item_fingerprint"):
        return "item_changed"
    if a.get("context_fingerprint") != b.get("context_fingerprint"):
        return "dialogue_changed"
    return "same"


def compare(
    reference: Mapping[Key, bool],
    compared: Mapping[Key, bool],
    focus: Mapping[Key, str],
    *,
    resamples: int,
    seed: int,
    level: float,
) -> dict[str, Any]:
    """Overall and per-focus agreement on the keys both have (the caller has already aligned and checked them)."""
    keys = sorted(k for k in compared if k in reference)
    overall = binary_agreement(
        [reference[k] for k in keys], [compared[k] for k in keys], resamples=resamples, seed=seed, level=level
    )
    by_focus: dict[str, Any] = {}
    for name in sorted({focus.get(k, "?") for k in keys}):
        sub = [k for k in keys if focus.get(k, "?") == name]
        by_focus[name] = binary_agreement(
            [reference[k] for k in sub], [compared[k] for k in sub], resamples=resamples, seed=seed, level=level
        )
    return {"overall": overall, "by_focus": by_focus}


def _align(left: VerdictSet, right_rows: Mapping[Key, Mapping[str, Any]]) -> tuple[list[Key], dict[str, int]]:
    """Keys whose item both sides judged with the same fingerprints, and the counts of the others."""
    counts = Counter({"only_in_verdicts": 0, "only_in_other": 0, "item_changed": 0, "dialogue_changed": 0})
    keys = []
    for key, row in left.rows.items():
        other = right_rows.get(key)
        if other is None:
            counts["only_in_verdicts"] += 1
            continue
        state = _fingerprint_state(row, other)
        if state == "same":
            keys.append(key)
        else:
            counts[state] += 1
    counts["only_in_other"] = sum(1 for k in right_rows if k not in left.rows)
    return keys, dict(counts)


def judge_summary(v: VerdictSet) -> dict[str, Any]:
    """One judge alone: pass rate on the reference dialogues (known-good), overall and per focus."""
    by_focus: dict[str, list[bool]] = defaultdict(list)
    for r in v.rows.values():
        by_focus[str(r.get("focus_on") or "?")].append(bool(r["verdict"]))
    rows = list(v.rows.values())

    def rate(values: Sequence[bool]) -> float | None:
        return round(sum(values) / len(values), 4) if values else None

    return {
        "name": v.name,
        "path": v.path,
        "mode": v.mode,
        "judge_model": v.judge_model,
        "prompt_version": v.prompt_version,
        "items": len(rows),
        "pass_rate": rate([bool(r["verdict"]) for r in rows]),
        "failed_calls_items": sum(1 for r in rows if r.get("failed")),
        "short_circuit_items": sum(1 for r in rows if r.get("short_circuit")),
        "by_focus": {f: {"items": len(vals), "pass_rate": rate(vals)} for f, vals in sorted(by_focus.items())},
    }


def agree(
    verdicts: Sequence[Path],
    *,
    human: Path | None = None,
    against: Path | None = None,
    dataset: Path | None = None,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """The agreement report (JSON-ready; see the module docstring). Raises :class:`VerdictError` on unreadable
    input."""
    if not verdicts:
        raise VerdictError("give at least one verdict folder")
    dataset_items = None
    if dataset is not None:
        from cm2data.fidelity.run import FidelityError, load_dataset_records

        try:
            dataset_items = item_refs(load_dataset_records(dataset))
        except FidelityError as exc:
            raise VerdictError(str(exc)) from None
    judges = [load_verdict_set(p, dataset_items=dataset_items) for p in verdicts]
    ref = load_verdict_set(against, dataset_items=dataset_items) if against is not None else None
    every = [*judges, *([ref] if ref is not None else [])]
    names = Counter(j.name for j in every)
    for j in every:  # two folders with the same name: tell them apart by their path
        if names[j.name] > 1:
            j.name = j.path
    opts: dict[str, Any] = {"resamples": resamples, "seed": seed, "level": level}
    report: dict[str, Any] = {
        "kind": KIND,
        "version": 1,
        "bootstrap": {"resamples": resamples, "seed": seed, "level": level, "method": "percentile"},
        "dataset": str(dataset) if dataset is not None else None,
        "judges": [judge_summary(j) for j in judges],
        "against": judge_summary(ref) if ref is not None else None,
        "comparisons": [],
        "human": None,
        "bad_input": {"verdicts": {j.name: dict(j.counts) for j in judges}},
    }
    if ref is not None:
        report["bad_input"]["against"] = {ref.name: dict(ref.counts)}

    def add(
        kind: str,
        compared: VerdictSet,
        reference_name: str,
        reference_mode: str,
        reference_labels: Mapping[Key, bool],
        keys: Sequence[Key],
        alignment: dict[str, int],
    ) -> None:
        focus = {k: str(compared.rows[k].get("focus_on") or "?") for k in keys}
        figures = compare(
            {k: reference_labels[k] for k in keys}, {k: bool(compared.rows[k]["verdict"]) for k in keys}, focus, **opts
        )
        report["comparisons"].append(
            {
                "kind": kind,
                "compared": compared.name,
                "mode": compared.mode,
                "judge_model": compared.judge_model,
                "reference": reference_name,
                "reference_mode": reference_mode,
                "alignment": alignment,
                **figures,
            }
        )

    # judge vs judge
    if ref is not None:
        ref_labels = {k: bool(r["verdict"]) for k, r in ref.rows.items()}
        for j in judges:
            keys, alignment = _align(j, ref.rows)
            add("judge", j, ref.name, ref.mode, ref_labels, keys, alignment)

    # judges vs people
    if human is not None:
        people = load_human(human)
        majority, reviewed_rows, ties = human_majority(people)
        reviewers = sorted({who for by in people.answers.values() for who in by})
        report["bad_input"]["human"] = {**people.counts, "ties": ties, "items_answered": len(people.answers)}
        inter = question_agreement(
            {
                "|".join(map(str, k)): {who: ("pass" if r["verdict"] else "fail") for who, r in by.items()}
                for k, by in people.answers.items()
            }
        )
        per_reviewer: dict[str, Any] = {}
        for j in [*judges, *([ref] if ref is not None else [])]:
            keys, alignment = _align(j, reviewed_rows)
            alignment["unreviewed"] = alignment.pop("only_in_verdicts")
            alignment["reviewed_not_in_verdicts"] = alignment.pop("only_in_other")
            alignment["ties"] = sum(1 for k in keys if k not in majority)
            keys = [k for k in keys if k in majority]
            add("human", j, "people (majority)", "human", majority, keys, alignment)
            for who in reviewers:
                mine = {k: bool(by[who]["verdict"]) for k, by in people.answers.items() if who in by}
                shared = [
                    k for k in mine if k in j.rows and _fingerprint_state(j.rows[k], people.answers[k][who]) == "same"
                ]
                per_reviewer.setdefault(who, {})[j.name] = binary_agreement(
                    [mine[k] for k in shared], [bool(j.rows[k]["verdict"]) for k in shared], **opts
                )
        report["human"] = {
            "path": people.path,
            "dataset": people.dataset,
            "reviewers": reviewers,
            "items_with_majority": len(majority),
            "inter_reviewer": inter,
            "per_reviewer": per_reviewer,
        }
    return report


def write_agreement(folder: Path, report: Mapping[str, Any]) -> tuple[Path, Path]:
    """``agreement.json`` and ``agreement.html`` in ``folder`` (created when missing)."""
    import json

    from cm2data.fidelity.report import render_html

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / AGREEMENT_JSON
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    html_path = folder / AGREEMENT_HTML
    html_path.write_text(render_html(report), encoding="utf-8")
    return json_path, html_path
