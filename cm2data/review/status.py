"""Progress of a review dataset: records per state, responses per state and per reviewer (``cm2data review status``)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from cm2data.review.dataset import M_CHANGED, Q_VERDICT
from cm2data.review.push import ReviewError, ServerRecord, fetch_records, find_dataset, server_errors

if TYPE_CHECKING:
    import argilla as rg
    from rich.console import Console


def user_names(client: rg.Argilla) -> dict[str, str]:
    """``{user id: username}`` of every user the key may list (an owner sees all)."""
    return {str(u.id): u.username for u in client.users}


def summarize(records: dict[str, ServerRecord], names: dict[str, str], min_submitted: int) -> dict[str, Any]:
    """Counts for :func:`review_status` from the server's records (pure).

    ``by_state``: records ``pending``/``completed`` (Argilla completes a record at ``min_submitted`` submitted
    responses); ``responses``: per response state; ``reviewers``: per username, responses per state and submitted
    verdicts; ``changed_since_review``: records flagged by push; ``stale_responses``: submitted responses older
    than their record's content.
    """
    by_state: Counter[str] = Counter({"pending": 0, "completed": 0})
    responses: Counter[str] = Counter({"submitted": 0, "draft": 0, "discarded": 0})
    reviewers: dict[str, Counter[str]] = {}
    changed = stale = 0
    for rec in records.values():
        by_state[rec.status or "pending"] += 1
        if rec.metadata.get(M_CHANGED) == "yes":
            changed += 1
        marks = rec.stale_marks
        for r in rec.responses:
            responses[r.status] += 1
            who = reviewers.setdefault(names.get(r.user_id, r.user_id), Counter())
            who[r.status] += 1
            if r.status == "submitted":
                verdict = r.values.get(Q_VERDICT)
                if verdict:
                    who[f"verdict_{verdict}"] += 1
                if r.mark in marks:
                    stale += 1
                    who["stale"] += 1
    return {
        "records": len(records),
        "min_submitted": min_submitted,
        "by_state": dict(by_state),
        "responses": dict(responses),
        "changed_since_review": changed,
        "stale_responses": stale,
        "reviewers": {name: dict(sorted(c.items())) for name, c in sorted(reviewers.items())},
    }


def review_status(name: str, *, client: rg.Argilla, workspace: str | None = None) -> dict[str, Any]:
    """Progress of the review dataset ``name``: see :func:`summarize`, plus ``dataset`` and ``workspace``.
    Raises :class:`ReviewError` when the dataset does not exist or the server fails."""
    with server_errors(client.api_url):
        ds = find_dataset(client, name, workspace)
        if ds is None:
            raise ReviewError(f"no review dataset {name!r} in workspace {workspace or '(default)'}")
        records = fetch_records(client, ds)
        names = user_names(client)
        min_submitted = ds.settings.distribution.min_submitted
        workspace_name = ds.workspace.name
    return {"dataset": name, "workspace": workspace_name, **summarize(records, names, min_submitted)}


def print_status(status: dict[str, Any], console: Console) -> None:
    """The status as two rich tables (states, reviewers)."""
    from rich.table import Table

    s = status
    console.print(
        f"[bold]{s['dataset']}[/] (workspace {s['workspace']}): {s['records']} records, "
        f"{s['by_state'].get('completed', 0)} completed, {s['by_state'].get('pending', 0)} pending "
        f"(complete at {s['min_submitted']} submitted responses)"
    )
    r = s["responses"]
    console.print(
        f"responses: {r.get('submitted', 0)} submitted, {r.get('draft', 0)} draft, "
        f"{r.get('discarded', 0)} discarded; {s['changed_since_review']} records changed since review, "
        f"{s['stale_responses']} submitted responses older than their record's content"
    )
    if s["reviewers"]:
        table = Table(title="per reviewer")
        for col in ("reviewer", "submitted", "draft", "discarded", "keep", "fix", "drop", "stale"):
            table.add_column(col)
        for who, c in s["reviewers"].items():
            table.add_row(
                who,
                *(
                    str(c.get(k, 0))
                    for k in ("submitted", "draft", "discarded", "verdict_keep", "verdict_fix", "verdict_drop", "stale")
                ),
            )
        console.print(table)
