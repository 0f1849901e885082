"""People's pass/fail verdicts on checklist items in Argilla: ``cm2data review push-verdicts`` and
``pull-verdicts`` (docs/judge-fidelity.md, "People").

**Push** turns every judged row of a verdict folder (:mod:`cm2data.verdicts`) into one Argilla record. The reviewer
sees the same custom field as in checklist review (:func:`cm2data.review.dataset.item_value` rendered by
``ui/argilla/item_template.html``): the dialogue up to the end of the item's turn, the item — question, pass
condition, focus, failure examples, evidence highlighted — and answers ``passed`` (pass / fail, required) with an
optional free-text ``reason``. The judge's verdict is **not sent** unless ``show_judge`` is set (then it is the
pre-filled suggestion, agent = the judge model and mode); a dataset keeps the choice it was created with.

The record id is a hash of (dialogue, variant, turn, item): pushing again updates in place, never duplicates. The
planning is :func:`cm2data.review.push.plan_push`'s: unchanged records are not sent; a record whose content (the
item's and the dialogue's fingerprints) changed while it had submitted responses gets those responses marked stale.

**Pull** lists every response (submitted, discarded = the reviewer skipped, draft), checks each record against the
verdict folder that was pushed (``into``) and writes a human verdict folder: one row per (item, reviewer) with the
reviewer's verdict, reason and time, whether they revised an earlier answer (Argilla keeps one response per user
and record: a second submission replaces the first, so it is counted, never doubled), and the judge's verdict when
the fingerprints match. ``pull_report.json`` counts everything left out or odd: skips, drafts, stale responses,
revisions, disagreements and ties between reviewers, records the folder no longer has, items never pushed.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cm2data.review.dataset import (
    FIELD,
    M_CHANGED,
    M_CONTENT_HASH,
    M_PAYLOAD_HASH,
    M_STALE,
    ItemKey,
    ReviewItem,
    _encode,
    decode_text,
    encode_text,
    item_value,
    load_template,
)
from cm2data.review.push import (
    DEFAULT_BATCH,
    ReviewError,
    _stderr_quiet,
    fetch_records,
    find_workspace,
    plan_push,
    server_errors,
)
from cm2data.schema import canonical_json
from cm2data.verdicts import (
    Key,
    VerdictError,
    item_fingerprint,
    read_dialogues,
    read_rows,
    read_run,
    row_key,
    write_human,
)

if TYPE_CHECKING:
    import argilla as rg
    from rich.console import Console

Q_PASSED = "passed"
Q_REASON = "reason"
PASS_LABELS: dict[str, str] = {"pass": "pass", "fail": "fail"}

M_DIALOGUE, M_VARIANT, M_TURN, M_ITEM = "dialogue_id", "variant", "turn", "item_id"
M_FOCUS, M_MUST_PASS, M_DOMAIN = "focus_on", "must_pass", "domain"
M_ITEM_FP, M_CONTEXT_FP = "item_fingerprint", "context_fingerprint"
M_JUDGE_SHOWN = "judge_shown"

GUIDELINES = """\
### Does the assistant satisfy this checklist item?

Each record is **one checklist item** of one user turn, shown under the dialogue up to the end of that turn (the
evidence snippets are highlighted). Read the turn under review and decide whether the assistant's behaviour in that
turn **satisfies the item**, following its pass condition literally:

1. **passed** — *pass* if the pass condition holds at some point of the turn; *fail* otherwise. A tool call counts
   only if it was actually made (not if it is only mentioned in the thinking); a tool call whose response is an
   error does not count. The failure examples show what does not pass; other routes to the same verifiable result
   do pass.
2. **reason** — optional, one sentence: why, especially for a fail or a hard case.

Judge the dialogue, not the item's wording. If you cannot decide, use *Discard* (it is counted as a skip).
"""


# -------------------------------------------------------------------------------------------------- settings


def build_settings(min_submitted: int = 2, template: str | None = None) -> rg.Settings:
    """The verdict-review dataset's :class:`argilla.Settings`."""
    import argilla as rg

    if min_submitted < 1:
        raise ValueError(f"min_submitted must be at least 1, got {min_submitted}")
    return rg.Settings(
        guidelines=GUIDELINES,
        fields=[
            rg.CustomField(
                name=FIELD,
                title="Checklist item in its dialogue",
                template=template or load_template(),
                advanced_mode=True,
                required=True,
            )
        ],
        questions=[
            rg.LabelQuestion(
                name=Q_PASSED,
                title="Does the turn satisfy the item?",
                labels=PASS_LABELS,
                required=True,
                description="pass if the pass condition holds in the turn, else fail",
            ),
            rg.TextQuestion(
                name=Q_REASON,
                title="Reason (optional)",
                required=False,
                description="one sentence: why (especially for a fail or a hard case)",
            ),
        ],
        metadata=[
            rg.TermsMetadataProperty(name=M_DOMAIN, title="domain"),
            rg.IntegerMetadataProperty(name=M_TURN, title="turn", min=0),
            rg.TermsMetadataProperty(name=M_FOCUS, title="focus_on"),
            rg.TermsMetadataProperty(name=M_MUST_PASS, title="must pass (required for next turn)"),
            rg.TermsMetadataProperty(name=M_CHANGED, title="changed since review"),
            rg.TermsMetadataProperty(name=M_DIALOGUE, title="dialogue id", visible_for_annotators=False),
            rg.IntegerMetadataProperty(name=M_VARIANT, title="variant", min=0, visible_for_annotators=False),
            rg.TermsMetadataProperty(name=M_ITEM, title="item id", visible_for_annotators=False),
            rg.TermsMetadataProperty(name=M_ITEM_FP, title="item fingerprint", visible_for_annotators=False),
            rg.TermsMetadataProperty(name=M_CONTEXT_FP, title="dialogue fingerprint", visible_for_annotators=False),
            rg.TermsMetadataProperty(name=M_JUDGE_SHOWN, title="judge verdict shown", visible_for_annotators=False),
            rg.TermsMetadataProperty(name=M_CONTENT_HASH, title="content hash", visible_for_annotators=False),
            rg.TermsMetadataProperty(name=M_PAYLOAD_HASH, title="payload hash", visible_for_annotators=False),
            rg.TermsMetadataProperty(
                name=M_STALE, title="responses older than the content", visible_for_annotators=False
            ),
        ],
        distribution=rg.TaskDistribution(min_submitted=min_submitted),
    )


def find_verdict_dataset(client: rg.Argilla, name: str, workspace: str | None = None) -> rg.Dataset | None:
    """The verdict-review dataset ``name`` (``None`` when absent); :class:`ReviewError` when ``name`` is some other
    kind of dataset."""
    ws = find_workspace(client, workspace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = client.datasets(name=name, workspace=ws)
    if ds is not None and Q_PASSED not in {q.name for q in ds.settings.questions}:
        raise ReviewError(
            f"dataset {name!r} in workspace {ws.name!r} is not a cm2data verdict-review dataset "
            f"(no {Q_PASSED!r} question)"
        )
    return ds


# ------------------------------------------------------------------------------------------------------- push


def suggestion_agent(judge_model: str, mode: str) -> str:
    """``"<judge model> <mode>"`` in the characters Argilla allows in a suggestion's agent (letters, digits,
    ``-_:./`` and spaces; anything else becomes ``-``)."""
    return re.sub(r"[^A-Za-z0-9\-_:./ ]", "-", f"{judge_model} {mode}").strip() or "judge"


def _hash(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()[:32]


@dataclass
class VerdictItems:
    """What a verdict folder gives to push: the review items and the rows left out, counted by reason."""

    items: list[ReviewItem]
    judge: dict[str, bool]  # record id → the judge's verdict (sent only with show_judge)
    counts: dict[str, int] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)


def verdict_items(folder: Path, *, show_judge: bool = False) -> VerdictItems:
    """The review items of a verdict folder's judged rows (pure apart from reading the folder)."""
    try:
        rows = read_rows(folder)
        dialogues = {d.id: d for d in read_dialogues(folder)}
        run = read_run(folder)
    except VerdictError as exc:
        raise ReviewError(str(exc)) from None
    counts = Counter({"rows": len(rows), "duplicate_rows": 0, "unjudged": 0, "not_in_dialogues": 0, "item_changed": 0})
    seen: set[Key] = set()
    items: list[ReviewItem] = []
    judge: dict[str, bool] = {}
    for row in rows:
        key = row_key(row)
        if key in seen:
            counts["duplicate_rows"] += 1
            continue
        seen.add(key)
        if row.get("verdict") is None:
            counts["unjudged"] += 1
            continue
        d = dialogues.get(key[0])
        block = (
            next((b for b in d.checklists[key[1]] if b.turn == key[2]), None)
            if d is not None and key[1] < len(d.checklists)
            else None
        )
        item = next((it for it in block.items if it.id == key[3]), None) if block is not None else None
        if d is None or block is None or item is None:
            counts["not_in_dialogues"] += 1
            continue
        if item_fingerprint(item) != row.get("item_fingerprint"):
            counts["item_changed"] += 1
            continue
        ikey = ItemKey(*key)
        value = _encode(item_value(d, key[1], block, item))
        meta: dict[str, Any] = {
            M_DOMAIN: encode_text(str(d.metadata.get("domain") or "unknown")),
            M_TURN: key[2],
            M_FOCUS: encode_text(item.focus_on),
            M_MUST_PASS: "yes" if item.required_for_next_turn else "no",
            M_DIALOGUE: encode_text(key[0]),
            M_VARIANT: key[1],
            M_ITEM: encode_text(key[3]),
            M_ITEM_FP: str(row["item_fingerprint"]),
            M_CONTEXT_FP: str(row["context_fingerprint"]),
            M_JUDGE_SHOWN: "yes" if show_judge else "no",
        }
        content = _hash([row["item_fingerprint"], row["context_fingerprint"]])
        meta[M_CONTENT_HASH] = content
        agent = suggestion_agent(str(row.get("judge_model")), str(row.get("mode")))
        judge[ikey.record_id] = bool(row["verdict"])
        payload = {"value": value, "metadata": meta, "judge": ([bool(row["verdict"]), agent] if show_judge else None)}
        items.append(ReviewItem(ikey, value, meta, agent, content, _hash(payload)))
    counts["pushable"] = len(items)
    return VerdictItems(items, judge, dict(counts), run)


def _to_record(item: ReviewItem, metadata: dict[str, Any], judge: bool | None) -> rg.Record:
    import argilla as rg

    suggestions = (
        []
        if judge is None
        else [rg.Suggestion(question_name=Q_PASSED, value="pass" if judge else "fail", agent=item.suggestion_agent)]
    )
    return rg.Record(id=item.record_id, fields={FIELD: item.value}, metadata=metadata, suggestions=suggestions)


@dataclass
class VerdictPushResult:
    dataset: str
    workspace: str
    pushed: int
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    changed_since_review: int = 0
    orphaned: int = 0
    dataset_created: bool = False
    judge_shown: bool = False
    left_out: dict[str, int] = field(default_factory=dict)
    url: str = ""

    def summary(self) -> dict[str, Any]:
        return dict(self.__dict__)


def push_verdicts(
    folder: Path,
    name: str,
    *,
    client: rg.Argilla,
    workspace: str | None = None,
    min_submitted: int = 2,
    show_judge: bool = False,
    batch_size: int = DEFAULT_BATCH,
) -> VerdictPushResult:
    """Push the judged items of the verdict folder ``folder`` to the verdict-review dataset ``name`` (created on
    first use with ``min_submitted`` reviewers per record). Idempotent; see the module docstring."""
    import argilla as rg

    found = verdict_items(folder, show_judge=show_judge)
    if not found.items:
        raise ReviewError(f"{folder} has no judged item to push ({found.counts})")
    url = client.api_url
    batch_size = max(1, min(batch_size, DEFAULT_BATCH))
    with server_errors(url):
        ds = find_verdict_dataset(client, name, workspace)
        created = ds is None
        if ds is None:
            ds = rg.Dataset(
                name=name,
                workspace=find_workspace(client, workspace),
                settings=build_settings(min_submitted),
                client=client,
            )
            ds.create()
            existing = {}
        else:
            existing = fetch_records(client, ds)
            shown = {r.metadata.get(M_JUDGE_SHOWN) for r in existing.values()} - {None}
            if shown and shown != {"yes" if show_judge else "no"}:
                raise ReviewError(
                    f"dataset {name!r} was created with the judge's verdicts "
                    f"{'shown' if 'yes' in shown else 'hidden'}; push to a new name to change that"
                )
        send, counts = plan_push(found.items, existing)
        wanted = {it.record_id for it in found.items}
        orphaned = sum(1 for rid in existing if rid not in wanted)
        for start in range(0, len(send), batch_size):
            chunk = [
                _to_record(it, meta, found.judge[it.record_id] if show_judge else None)
                for it, meta in send[start : start + batch_size]
            ]
            with _stderr_quiet():
                ds.records.log(chunk, batch_size=len(chunk))
    left_out = {k: v for k, v in found.counts.items() if k not in ("rows", "pushable") and v}
    return VerdictPushResult(
        dataset=name,
        workspace=ds.workspace.name,
        pushed=len(found.items),
        orphaned=orphaned,
        dataset_created=created,
        judge_shown=show_judge,
        left_out=left_out,
        url=f"{url}/dataset/{ds.id}/annotation-mode",
        **counts,
    )


def print_push_verdicts(result: VerdictPushResult, console: Console) -> None:
    console.print(
        f"pushed {result.pushed} judged items to [bold]{result.dataset}[/] (workspace {result.workspace}"
        f"{', new dataset' if result.dataset_created else ''}; judge verdict "
        f"{'shown as a suggestion' if result.judge_shown else 'hidden'}): {result.created} new, "
        f"{result.updated} updated, {result.unchanged} unchanged"
    )
    if result.left_out:
        console.print("left out: " + ", ".join(f"{k} {v}" for k, v in result.left_out.items()))
    if result.changed_since_review:
        console.print(
            f"{result.changed_since_review} reviewed items changed since their review: their earlier "
            "responses no longer count"
        )
    if result.orphaned:
        console.print(f"{result.orphaned} records on the server are not in this verdict folder (left as they are)")
    console.print(result.url)


# ------------------------------------------------------------------------------------------------------- pull


#: A response updated this long after it was first stored was answered again (one bulk request stamps its responses
#: inserted_at and updated_at microseconds apart).
REVISION_SECONDS = 0.5


def answered_again(inserted_at: str, updated_at: str) -> bool:
    """Whether a response was changed after it was first stored (Argilla keeps one response per user and record: a
    second submission replaces the first and moves ``updated_at``)."""
    try:
        first, last = datetime.fromisoformat(inserted_at), datetime.fromisoformat(updated_at)
    except (TypeError, ValueError):
        return False
    return (last - first).total_seconds() > REVISION_SECONDS


def human_rows(
    records: Mapping[str, Any], names: Mapping[str, str], judge_rows: Mapping[Key, Mapping[str, Any]], dataset: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per (record, reviewer) response and the counts of :func:`pull_verdicts`'s report (pure)."""
    rows: list[dict[str, Any]] = []
    c = Counter(
        {
            k: 0
            for k in (
                "records",
                "responses",
                "submitted",
                "skipped",
                "drafts",
                "stale",
                "revised",
                "not_in_verdicts",
                "changed_since_push",
                "items_answered",
                "items_complete",
                "items_disagreeing",
                "items_tied",
            )
        }
    )
    reviewed_keys: set[Key] = set()
    for rec in records.values():
        c["records"] += 1
        meta = rec.metadata
        key: Key = (
            decode_text(str(meta.get(M_DIALOGUE, ""))),
            int(meta.get(M_VARIANT, 0) or 0),
            int(meta.get(M_TURN, 0) or 0),
            decode_text(str(meta.get(M_ITEM, ""))),
        )
        reviewed_keys.add(key)
        judge_row = judge_rows.get(key)
        fps = (meta.get(M_ITEM_FP), meta.get(M_CONTEXT_FP))
        if judge_row is None:
            c["not_in_verdicts"] += 1
        elif (judge_row.get("item_fingerprint"), judge_row.get("context_fingerprint")) != fps:
            c["changed_since_push"] += 1
            judge_row = None
        marks = rec.stale_marks
        votes: list[bool] = []
        for r in rec.responses:
            c["responses"] += 1
            status = r.status
            if r.status == "submitted" and r.mark in marks:
                status = "stale"
            c[
                {"submitted": "submitted", "discarded": "skipped", "draft": "drafts", "stale": "stale"}.get(
                    status, status
                )
            ] += 1
            revised = answered_again(r.inserted_at, r.updated_at)
            c["revised"] += revised
            label = r.values.get(Q_PASSED)
            verdict = None if label not in PASS_LABELS else label == "pass"
            if status == "submitted" and verdict is not None:
                votes.append(verdict)
            reason = r.values.get(Q_REASON)
            rows.append(
                {
                    "dialogue_id": key[0],
                    "variant": key[1],
                    "turn": key[2],
                    "item_id": key[3],
                    "focus_on": decode_text(str(meta.get(M_FOCUS) or "")),
                    "item_fingerprint": fps[0],
                    "context_fingerprint": fps[1],
                    "reviewer": names.get(r.user_id, r.user_id),
                    "status": status,
                    "verdict": verdict,
                    "reason": reason if isinstance(reason, str) and reason.strip() else None,
                    "answered_at": r.updated_at or None,
                    "revised": revised,
                    "judge_verdict": None if judge_row is None else judge_row.get("verdict"),
                    "dataset": dataset,
                }
            )
        if votes:
            c["items_answered"] += 1
            if len(set(votes)) > 1:
                c["items_disagreeing"] += 1
                if votes.count(True) * 2 == len(votes):
                    c["items_tied"] += 1
        if rec.status == "completed":
            c["items_complete"] += 1
    c["not_pushed"] = sum(1 for k, r in judge_rows.items() if k not in reviewed_keys and r.get("verdict") is not None)
    return rows, dict(c)


@dataclass
class VerdictPullResult:
    out: Path
    rows: int
    report: dict[str, Any]


def pull_verdicts(
    name: str, *, into: Path, out: Path, client: rg.Argilla, workspace: str | None = None, now: str | None = None
) -> VerdictPullResult:
    """Pull the responses of verdict-review dataset ``name``, check them against the verdict folder ``into`` (the one
    that was pushed) and write the human verdict folder ``out`` (see the module docstring)."""
    from cm2data.review.status import user_names

    into, out = Path(into), Path(out)
    if out.resolve() == into.resolve():
        raise ReviewError("--out must differ from --into: the verdict folder is what the answers are checked against")
    try:
        judge_rows: dict[Key, dict[str, Any]] = {}
        for r in read_rows(into):
            judge_rows.setdefault(row_key(r), r)
    except VerdictError as exc:
        raise ReviewError(str(exc)) from None
    with server_errors(client.api_url):
        ds = find_verdict_dataset(client, name, workspace)
        if ds is None:
            raise ReviewError(f"no verdict-review dataset {name!r} in workspace {workspace or '(default)'}")
        records = fetch_records(client, ds)
        names = user_names(client)
        min_submitted = ds.settings.distribution.min_submitted
        workspace_name = ds.workspace.name
    rows, counts = human_rows(records, names, judge_rows, name)
    report = {
        "dataset": name,
        "workspace": workspace_name,
        "into": str(into),
        "out": str(out),
        "pulled_at": now or datetime.now(UTC).isoformat(timespec="seconds"),
        "min_submitted": min_submitted,
        "reviewers": dict(sorted(Counter(r["reviewer"] for r in rows if r["status"] == "submitted").items())),
        **counts,
    }
    try:
        write_human(out, rows, report)
    except VerdictError as exc:
        raise ReviewError(str(exc)) from None
    return VerdictPullResult(out, len(rows), report)


def print_pull_verdicts(result: VerdictPullResult, console: Console) -> None:
    r = result.report
    console.print(
        f"pulled {r['responses']} responses on {r['records']} records of {r['dataset']} → {result.out}: "
        f"{r['submitted']} submitted, {r['skipped']} skipped (discarded), {r['drafts']} drafts, "
        f"{r['stale']} stale (item changed after the answer), {r['revised']} revised answers"
    )
    console.print(
        f"{r['items_answered']} items answered ({r['items_complete']} complete), {r['items_disagreeing']} "
        f"with disagreeing reviewers ({r['items_tied']} tied); {r['not_in_verdicts']} records not in "
        f"{r['into']}, {r['changed_since_push']} changed there since the push, {r['not_pushed']} judged "
        "items never pushed"
    )
    console.print(f"compare: cm2data judge agree {r['into']} --human {result.out}")
