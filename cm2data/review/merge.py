"""Merge reviewers' answers into the records (pure: no server, no files). Rules in docs/review.md, "Merge rules".

Per item, over the **current submitted** answers (answers given before the item's content last changed are stale
and do not count):

* fewer than ``min_answers`` answers → ``pending`` (no answer at all → ``unreviewed``), the item is kept as it is;
* the item in the folder differs from what the reviewers saw (its :func:`~cm2data.review.dataset.content_hash`
  changed since the push) → ``stale``, kept as it is;
* the verdict with the most votes wins; a tie between the top verdicts → ``tie``, kept as it is and flagged for a
  further review;
* ``keep`` keeps it; ``drop`` removes it (and removes it from the ``depends_on`` of the other items of its turn);
  ``fix`` applies the rewrite of the question and/or the pass condition — per text, the rewrite most fix voters
  gave (whitespace-normalised); different rewrites with equal support are a ``rewrite_conflict`` and that text is
  left as it is; a fix without any rewrite is flagged ``fix_without_rewrite``;
* a "what is wrong" label goes into the decision when more than half of the answers ticked it.

Per turn, every ``missing_criterion`` answer (JSON object or list, or ``key: value`` lines) that parses into a valid
criterion becomes a new item (id ``C<n>`` after the highest id the turn ever had, evidence empty, weight as given
or the mean weight of the turn's kept items); the same question from several reviewers is added once. Invalid ones
are reported, not added. When a turn lost or gained items, its weights are re-normalised to sum to 1 (the rule of
``weights_sum_to_one``); if all weights are 0 they become equal.

Each item keeps its own record of the decision in ``extra_info["review"]`` (what, who, when) and the dialogue gets
one entry per reviewed item in ``review.decisions`` (dropped items included), its ``review.reviewers`` and
``review.status``, per-record agreement in ``review.agreement`` and a ``review`` stage in ``provenance.history``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cm2data.review.agreement import percent_agreement
from cm2data.review.dataset import PROBLEMS, ItemKey, content_hash
from cm2data.schema import FOCUS_VALUES, ChecklistItem, Dialogue, TurnChecklist

VERDICT_VALUES = ("keep", "fix", "drop")
#: Decision actions: the verdicts, and what happens when no verdict can be applied.
ACTIONS = ("keep", "fix", "drop", "tie", "pending", "unreviewed", "stale")


@dataclass(frozen=True)
class Answer:
    """One reviewer's submitted answer to one item (``at``: when the server last saw it change, ISO 8601)."""

    reviewer: str
    verdict: str | None
    problems: tuple[str, ...] = ()
    rewrite_question: str | None = None
    rewrite_pass_condition: str | None = None
    missing_criterion: str | None = None
    at: str | None = None

    def brief(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reviewer": self.reviewer, "verdict": self.verdict, "at": self.at}
        if self.problems:
            out["problems"] = list(self.problems)
        if self.rewrite_question:
            out["rewrite_question"] = self.rewrite_question
        if self.rewrite_pass_condition:
            out["rewrite_pass_condition"] = self.rewrite_pass_condition
        if self.missing_criterion:
            out["missing_criterion"] = self.missing_criterion
        return out


@dataclass
class ItemReview:
    """What the review dataset holds for one item: the hash of the content the reviewers saw, the current submitted
    answers, and the submitted answers that are older than the content (``stale``)."""

    key: ItemKey
    content_hash: str | None
    answers: list[Answer] = field(default_factory=list)
    stale: list[Answer] = field(default_factory=list)


@dataclass
class MergeResult:
    """The merged records (copies; the inputs are not changed), every decision, and counts for the report."""

    records: list[Dialogue]
    decisions: list[dict[str, Any]]
    counts: dict[str, int]
    rejected_criteria: list[dict[str, Any]]
    not_in_folder: list[str]
    statuses: dict[str, int]


# ---------------------------------------------------------------------------------------------- small helpers


def _norm(text: str | None) -> str:
    return " ".join((text or "").split())


def _pick(candidates: list[str]) -> tuple[str | None, bool]:
    """The candidate with the most support, and whether a tie between different texts prevented a choice."""
    if not candidates:
        return None, False
    ranked = Counter(candidates).most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return None, True
    return ranked[0][0], False


def _number(item_id: str) -> int:
    m = re.fullmatch(r"C(\d+)", item_id)
    return int(m.group(1)) if m else -1


_CRITERION_KEYS = (
    "question",
    "pass_condition",
    "focus_on",
    "weight",
    "required_for_next_turn",
    "failure_examples",
    "depends_on",
)


def parse_missing_criterion(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Parse a ``missing_criterion`` answer into criteria and errors.

    Accepted: a JSON object, a JSON list of objects, or ``key: value`` lines (keys ``question``, ``pass_condition``,
    ``focus_on``, ``weight``, ``required_for_next_turn``, ``failure_examples`` (``;``-separated), ``depends_on``
    (``,``-separated)); criteria are separated by a blank line in the line form. ``question``, ``pass_condition``
    and a valid ``focus_on`` are required; ``weight`` must lie in (0, 1].
    """
    text = text.strip()
    if not text:
        return [], []
    raw: list[Any]
    if text[0] in "[{":
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            return [], [f"not valid JSON: {exc.msg} at position {exc.pos}"]
        raw = parsed if isinstance(parsed, list) else [parsed]
    else:
        raw = []
        for chunk in re.split(r"\n\s*\n", text):
            entry: dict[str, Any] = {}
            for line in chunk.splitlines():
                if not line.strip():
                    continue
                key, sep, value = line.partition(":")
                key = key.strip().lower().replace(" ", "_").replace("-", "_")
                if not sep or key not in _CRITERION_KEYS:
                    entry.setdefault("_bad", []).append(line.strip())
                    continue
                value = value.strip()
                if key == "failure_examples":
                    entry[key] = [x.strip() for x in value.split(";") if x.strip()]
                elif key == "depends_on":
                    entry[key] = [x.strip() for x in value.split(",") if x.strip()]
                else:
                    entry[key] = value
            raw.append(entry)
    criteria: list[dict[str, Any]] = []
    errors: list[str] = []
    for n, entry in enumerate(raw):
        where = f"criterion {n}"
        if not isinstance(entry, dict):
            errors.append(f"{where}: not an object")
            continue
        if entry.get("_bad"):
            errors.append(f"{where}: lines not of the form 'key: value' with a known key: {entry['_bad'][:3]}")
            continue
        question, passc = _norm(str(entry.get("question") or "")), _norm(str(entry.get("pass_condition") or ""))
        focus = str(entry.get("focus_on") or "").strip()
        problems = []
        if not question:
            problems.append("no question")
        if not passc:
            problems.append("no pass_condition")
        if focus not in FOCUS_VALUES:
            problems.append(f"focus_on {focus!r} is not one of {list(FOCUS_VALUES)}")
        weight: float | None = None
        if entry.get("weight") not in (None, ""):
            try:
                weight = float(entry["weight"])
            except (TypeError, ValueError):
                problems.append(f"weight {entry['weight']!r} is not a number")
            else:
                if not 0.0 < weight <= 1.0:
                    problems.append(f"weight {weight} is not in (0, 1]")
        required = entry.get("required_for_next_turn", False)
        if isinstance(required, str):
            required = required.strip().lower() in ("true", "yes", "1")
        examples = entry.get("failure_examples") or []
        if isinstance(examples, str):
            examples = [examples]
        deps = entry.get("depends_on") or []
        if isinstance(deps, str):
            deps = [deps]
        if problems:
            errors.append(f"{where}: " + "; ".join(problems))
            continue
        criteria.append(
            {
                "question": question,
                "pass_condition": passc,
                "focus_on": focus,
                "weight": weight,
                "required_for_next_turn": bool(required),
                "failure_examples": [str(x) for x in examples if str(x).strip()],
                "depends_on": [str(x) for x in deps],
            }
        )
    return criteria, errors


def renormalise(items: list[ChecklistItem]) -> None:
    """Scale the items' weights in place to sum to 1 (equal weights when they are all 0)."""
    if not items:
        return
    total = sum(max(0.0, float(it.weight)) for it in items)
    if total <= 0:
        for it in items:
            it.weight = 1.0 / len(items)
        return
    for it in items:
        it.weight = max(0.0, float(it.weight)) / total


# ------------------------------------------------------------------------------------------------ the decision


def decide(review: ItemReview | None, current_hash: str | None, min_answers: int) -> dict[str, Any]:
    """The decision for one item (without applying it): ``action``, ``votes``, ``problems`` (majority labels),
    ``flags``, chosen ``rewrite`` texts and the answers (``by``)."""
    answers = review.answers if review is not None else []
    out: dict[str, Any] = {
        "action": "unreviewed",
        "votes": {},
        "problems": [],
        "flags": [],
        "rewrite": {},
        "by": [a.brief() for a in answers],
    }
    if review is not None and review.stale:
        out["stale_answers"] = [a.brief() for a in review.stale]
    if not answers:
        if review is not None and review.stale:
            out["action"] = "stale"
            out["flags"].append("changed_since_review")
        return out
    votes = Counter(a.verdict for a in answers if a.verdict in VERDICT_VALUES)
    out["votes"] = dict(sorted(votes.items()))
    ticked = Counter(p for a in answers for p in set(a.problems))
    out["problems"] = sorted(p for p, n in ticked.items() if n * 2 > len(answers))
    if review is not None and current_hash is not None and review.content_hash not in (None, current_hash):
        out["action"] = "stale"
        out["flags"].append("folder_changed_since_push")
        return out
    if len(answers) < min_answers:
        out["action"] = "pending"
        return out
    ranked = votes.most_common()
    if not ranked:
        out["action"] = "pending"
        return out
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        out["action"] = "tie"
        out["flags"].append("tie")
        return out
    verdict = ranked[0][0]
    out["action"] = verdict
    if verdict == "fix":
        fixers = [a for a in answers if a.verdict == "fix"]
        for name, attr in (("question", "rewrite_question"), ("pass_condition", "rewrite_pass_condition")):
            chosen, conflict = _pick([_norm(getattr(a, attr)) for a in fixers if _norm(getattr(a, attr))])
            if conflict:
                out["flags"].append(f"rewrite_conflict:{name}")
            elif chosen is not None:
                out["rewrite"][name] = chosen
        if not out["rewrite"] and not any(f.startswith("rewrite_conflict") for f in out["flags"]):
            out["flags"].append("fix_without_rewrite")
    return out


# ------------------------------------------------------------------------------------------------------ merging


def _used_ids(d: Dialogue, variant: int, block: TurnChecklist) -> set[str]:
    used = {it.id for it in block.items}
    for dec in d.review.decisions:
        if dec.get("variant") == variant and dec.get("turn") == block.turn and isinstance(dec.get("item_id"), str):
            used.add(dec["item_id"])
    return used


def merge_reviews(
    records: Sequence[Dialogue],
    reviews: Mapping[str, ItemReview],
    *,
    reviewed_at: str,
    dataset: str = "",
    min_answers: int = 1,
) -> MergeResult:
    """Merge ``reviews`` (by Argilla record id, :attr:`ItemKey.record_id`) into copies of ``records``.

    ``reviewed_at`` stamps the decisions (ISO 8601), ``dataset`` names the review round (the Argilla dataset) and
    ``min_answers`` is the number of submitted answers an item needs before its verdict is applied (the dataset's
    overlap, ``min_submitted``). Returns a :class:`MergeResult`; see the module docstring for the rules.
    """
    merger = _Merger(reviews, reviewed_at=reviewed_at, dataset=dataset, min_answers=min_answers)
    merged = [merger.merge_record(original) for original in records]
    not_in_folder = sorted(rid for rid in reviews if rid not in merger.seen)
    statuses = Counter(d.review.status for d in merged)
    return MergeResult(
        merged, merger.decisions, dict(merger.counts), merger.rejected_criteria, not_in_folder, dict(statuses)
    )


@dataclass
class _RecordTally:
    """What merging one record gathers for its review stamp (:func:`_stamp`)."""

    decisions: list[dict[str, Any]] = field(default_factory=list)
    reviewers: set[str] = field(default_factory=set)
    empty_turns: list[str] = field(default_factory=list)
    verdict_units: list[list[str]] = field(default_factory=list)
    unreviewed: int = 0


class _Merger:
    """One merge: the reviews, the stamp of the round, and what it gathers over all records."""

    def __init__(self, reviews: Mapping[str, ItemReview], *, reviewed_at: str, dataset: str, min_answers: int):
        self.reviews = reviews
        self.reviewed_at = reviewed_at
        self.dataset = dataset
        self.min_answers = min_answers
        self.counts: Counter[str] = Counter({a: 0 for a in ACTIONS})
        self.counts.update({"items": 0, "applied": 0, "added": 0, "added_rejected": 0, "renormalised_turns": 0})
        self.decisions: list[dict[str, Any]] = []
        self.rejected_criteria: list[dict[str, Any]] = []
        self.seen: set[str] = set()

    def merge_record(self, original: Dialogue) -> Dialogue:
        """A merged copy of ``original``: every turn block of every variant, then the record's review stamp."""
        d = original.model_copy(deep=True)
        tally = _RecordTally()
        for v, variant in enumerate(d.checklists):
            for block in variant:
                self._merge_block(d, v, block, tally)
        self.decisions.extend({"dialogue_id": d.id, **e} for e in tally.decisions)
        if tally.decisions:
            _stamp(d, tally, self.dataset, self.reviewed_at)
        return d

    def _merge_block(self, d: Dialogue, v: int, block: TurnChecklist, tally: _RecordTally) -> None:
        """Decide every item of one turn block, add the proposed criteria, re-normalise the weights."""
        used = _used_ids(d, v, block)
        kept: list[ChecklistItem] = []
        dropped: list[str] = []
        missing_answers: list[Answer] = []
        for it in block.items:
            if self._merge_item(d, v, block, it, tally, missing_answers):
                kept.append(it)
            else:
                dropped.append(it.id)
        if dropped:  # dependencies on dropped items go
            for it in kept:
                if any(dep in dropped for dep in it.depends_on):
                    it.depends_on = [dep for dep in it.depends_on if dep not in dropped]
        added = self._add_criteria(d, v, block, kept, used, missing_answers, tally)
        block.items = kept + added
        if dropped or added:
            renormalise(block.items)
            self.counts["renormalised_turns"] += 1
        if not block.items:
            tally.empty_turns.append(f"variant {v} turn {block.turn}")

    def _merge_item(
        self,
        d: Dialogue,
        v: int,
        block: TurnChecklist,
        it: ChecklistItem,
        tally: _RecordTally,
        missing_answers: list[Answer],
    ) -> bool:
        """Decide one item and apply the decision (a rewrite, the item's own review record); False when it is
        dropped. Its ``missing_criterion`` answers go to ``missing_answers``."""
        rid = ItemKey(d.id, v, block.turn, it.id).record_id
        review = self.reviews.get(rid)
        if review is not None:
            self.seen.add(rid)
            missing_answers += [a for a in review.answers if _norm(a.missing_criterion)]
            tally.reviewers.update(a.reviewer for a in review.answers)
            tally.verdict_units.append([a.verdict for a in review.answers if a.verdict])
        self.counts["items"] += 1
        dec = decide(review, content_hash(d, block, it), self.min_answers)
        action = dec["action"]
        self.counts[action] += 1
        applied = action in ("keep", "drop") or (action == "fix" and bool(dec["rewrite"]))
        entry = {
            "dataset": self.dataset,
            "at": self.reviewed_at,
            "variant": v,
            "turn": block.turn,
            "item_id": it.id,
            "record_id": rid,
            "applied": applied,
            **dec,
        }
        if action == "fix" and dec["rewrite"]:
            entry["before"] = {k: getattr(it, k) for k in dec["rewrite"]}
            for k, text in dec["rewrite"].items():
                setattr(it, k, text)
            entry["after"] = dict(dec["rewrite"])
        entry.pop("rewrite")
        if applied:
            self.counts["applied"] += 1
        if action != "unreviewed":
            tally.decisions.append(entry)
        else:
            tally.unreviewed += 1
        if action == "drop":
            return False
        if action != "unreviewed":
            it.extra_info = {**it.extra_info, "review": _item_review(dec, entry, self.dataset, self.reviewed_at)}
        return True

    def _add_criteria(
        self,
        d: Dialogue,
        v: int,
        block: TurnChecklist,
        kept: list[ChecklistItem],
        used: set[str],
        missing_answers: list[Answer],
        tally: _RecordTally,
    ) -> list[ChecklistItem]:
        """The new items the turn's ``missing_criterion`` answers propose (once per distinct question not already
        asked); the answers that do not parse are reported in :attr:`rejected_criteria`."""
        added: list[ChecklistItem] = []
        known = {_norm(it.question).lower() for it in kept}
        next_n = max([_number(i) for i in used] + [-1]) + 1
        mean_weight = (sum(it.weight for it in kept) / len(kept)) if kept else 1.0
        for slot in self._proposals(d, v, block, missing_answers, known).values():
            c = slot["criterion"]
            item_id = f"C{next_n}"
            next_n += 1
            focus = {it.id: it.focus_on for it in kept}
            deps = [x for x in c["depends_on"] if focus.get(x) == "tool.content"]
            added.append(
                ChecklistItem(
                    id=item_id,
                    evidence=[],
                    focus_on=c["focus_on"],
                    question=c["question"],
                    pass_condition=c["pass_condition"],
                    failure_examples=c["failure_examples"],
                    required_for_next_turn=c["required_for_next_turn"],
                    depends_on=deps,
                    weight=c["weight"] if c["weight"] is not None else mean_weight,
                    extra_info={
                        "review": {
                            "dataset": self.dataset,
                            "decision": "add",
                            "applied": True,
                            "at": self.reviewed_at,
                            "by": slot["by"],
                        }
                    },
                )
            )
            self.counts["added"] += 1
            lost = set(c["depends_on"]) - set(deps)
            tally.decisions.append(
                {
                    "dataset": self.dataset,
                    "at": self.reviewed_at,
                    "variant": v,
                    "turn": block.turn,
                    "item_id": item_id,
                    "action": "add",
                    "applied": True,
                    "by": slot["by"],
                    "criterion": c,
                    **({"dropped_depends_on": sorted(lost)} if lost else {}),
                }
            )
        return added

    def _proposals(
        self, d: Dialogue, v: int, block: TurnChecklist, missing_answers: list[Answer], known: set[str]
    ) -> dict[str, dict[str, Any]]:
        """Lower-cased question → ``{"criterion", "by"}`` for every valid proposed criterion whose question the
        turn does not already ask; every parse error is counted and reported."""
        proposals: dict[str, dict[str, Any]] = {}
        for a in missing_answers:
            criteria, errors = parse_missing_criterion(a.missing_criterion or "")
            for err in errors:
                self.rejected_criteria.append(
                    {
                        "dialogue_id": d.id,
                        "variant": v,
                        "turn": block.turn,
                        "reviewer": a.reviewer,
                        "text": a.missing_criterion,
                        "reason": err,
                    }
                )
                self.counts["added_rejected"] += 1
            for c in criteria:
                norm_q = c["question"].lower()
                if norm_q in known and norm_q not in proposals:
                    continue
                slot = proposals.setdefault(norm_q, {"criterion": c, "by": []})
                slot["by"].append({"reviewer": a.reviewer, "at": a.at})
        return proposals


def _item_review(dec: dict[str, Any], entry: dict[str, Any], dataset: str, reviewed_at: str) -> dict[str, Any]:
    """The decision as the item keeps it in ``extra_info["review"]``."""
    return {
        "dataset": dataset,
        "decision": dec["action"],
        "applied": entry["applied"],
        "at": reviewed_at,
        "by": [{"reviewer": b["reviewer"], "verdict": b["verdict"], "at": b["at"]} for b in dec["by"]],
        **({"flags": dec["flags"]} if dec["flags"] else {}),
        **({"problems": dec["problems"]} if dec["problems"] else {}),
        **({"before": entry["before"]} if "before" in entry else {}),
    }


def _stamp(d: Dialogue, tally: _RecordTally, dataset: str, reviewed_at: str) -> None:
    """Review status, reviewers, decisions, agreement and provenance of one merged record: ``reviewed`` when
    every item got an applied verdict, ``rejected`` when a turn has no item left, else ``in_review``."""
    actions = Counter(e["action"] for e in tally.decisions)
    open_actions = actions["tie"] + actions["pending"] + actions["stale"] + tally.unreviewed
    decided = actions["keep"] + actions["fix"] + actions["drop"]
    if tally.empty_turns:
        d.review.status = "rejected"
    elif decided and not open_actions and all(e["applied"] for e in tally.decisions):
        d.review.status = "reviewed"
    else:
        d.review.status = "in_review"
    d.review.reviewers = sorted(set(d.review.reviewers) | tally.reviewers)
    d.review.decisions = [*d.review.decisions, *tally.decisions]
    if tally.empty_turns:
        d.review.decisions.append(
            {
                "dataset": dataset,
                "at": reviewed_at,
                "action": "reject_record",
                "reason": "no checklist items left in " + ", ".join(tally.empty_turns),
            }
        )
    agreement = percent_agreement(tally.verdict_units)
    if agreement is not None:
        d.review.agreement = {**d.review.agreement, "verdict_percent": round(agreement, 4)}
    d.provenance.stamp(
        "review",
        dataset=dataset,
        reviewers=sorted(tally.reviewers),
        **{k: actions[k] for k in ("keep", "fix", "drop", "add", "tie", "pending", "stale") if actions[k]},
    )


def problem_labels() -> list[str]:
    """Every "what is wrong" label (for :func:`cm2data.review.agreement.agreement_report`)."""
    return list(PROBLEMS)
