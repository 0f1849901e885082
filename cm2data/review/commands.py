"""``cm2data review …``: human review of checklists in Argilla (docs/review.md).

``review_app`` is registered on the main command as ``review``. This file holds the ``stack`` sub-commands (the
local Argilla stack, :mod:`cm2data.review.stack`); the review commands proper (push, pull, status) are added to the
same ``review_app``. Imports stay light here: argilla and the stack's work are imported inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cm2data.cli_options import EXIT_FAILED, JsonFlag, fail
from cm2data.cli_options import err as _err

review_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Human review of checklists in Argilla: the local stack, push, pull.",
)
stack_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="The local Argilla stack (Redis, in-memory OpenSearch, argilla-server 2.8.0) on 127.0.0.1.",
)
review_app.add_typer(stack_app, name="stack")

StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir", help="The stack's state folder (default: $CM2DATA_ARGILLA_DIR, else $CM2DATA_CACHE/argilla)."
    ),
]
Workspace = Annotated[
    str | None,
    typer.Option(
        "--workspace", "-w", help="Argilla workspace (default: $ARGILLA_WORKSPACE, else the user's first workspace)."
    ),
]
ApiUrl = Annotated[
    str | None,
    typer.Option(
        "--api-url", help="Argilla server (default: $ARGILLA_API_URL). The key is read from $ARGILLA_API_KEY only."
    ),
]


@stack_app.command("start")
def stack_start(
    state_dir: StateDir = None,
    port: Annotated[int | None, typer.Option(help="The server's port on 127.0.0.1 (default: a free one).")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete the database first (credentials are kept).")] = False,
    workers: Annotated[int, typer.Option(help="Background-job workers (0: none).")] = 1,
    username: Annotated[str | None, typer.Option(help="The owner user (default: owner, or the stored one).")] = None,
    workspace: Annotated[str | None, typer.Option(help="The owner's workspace (default: cm2data).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Start the stack (or reuse the running one) and print `export ARGILLA_API_URL=…` and `export
    ARGILLA_API_KEY=…` on stdout: `eval "$(cm2data review stack start)"`. The first start builds the server's
    environment (~30 s) and apt-installs redis-server when missing; a start takes ~10-15 s."""
    from cm2data.review import stack as st

    running = st.status(state_dir)
    if running is None:
        _err.print("starting the local Argilla stack (~10-15 s; the first run builds its environment first)…")
    try:
        stack = st.start(state_dir, port=port, fresh=fresh, workers=workers, username=username, workspace=workspace)
    except st.StackError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    how = (
        "already running" if running is not None and running.pids == stack.pids else f"ready in {stack.ready_seconds} s"
    )
    if as_json:
        print(json.dumps(stack.as_dict(), indent=2))
    else:
        print(stack.export_lines())
    _err.print(
        f"Argilla {how}: web UI and API at {stack.api_url}; user {stack.username!r}, workspace "
        f"{stack.workspace!r}; password and API key in {Path(stack.state_dir) / st.CREDENTIALS_FILE}; "
        f"logs in {Path(stack.state_dir) / 'logs'}; stop with `cm2data review stack stop`",
        highlight=False,
    )


@stack_app.command("stop")
def stack_stop(state_dir: StateDir = None) -> None:
    """Stop the stack (SIGTERM to each component, SIGKILL after 15 s). The database and credentials stay."""
    from cm2data.review import stack as st

    try:
        stopped = st.stop(state_dir)
    except st.StackError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    _err.print(
        f"stopped the Argilla stack at {stopped.api_url}" if stopped else "the Argilla stack is not running",
        highlight=False,
    )


@stack_app.command("status")
def stack_status(
    state_dir: StateDir = None,
    as_json: JsonFlag = False,
    export: Annotated[bool, typer.Option("--export", help="Print the export lines (API URL and key) again.")] = False,
) -> None:
    """Say whether the stack runs, where, and which component is up; exit 0 when it is healthy, 1 otherwise."""
    from cm2data.review import stack as st

    running = st.status(state_dir)
    healthy = running is not None and all(running.alive().values()) and running.healthy()
    if as_json:
        print(
            json.dumps(
                None if running is None else {**running.as_dict(), "alive": running.alive(), "healthy": healthy},
                indent=2,
            )
        )
    elif running is None:
        _err.print(f"the Argilla stack is not running (state folder {st.stack_dir(state_dir)})", highlight=False)
    else:
        parts = ", ".join(
            f"{name} {'up' if up else 'DOWN'} (pid {running.pids[name]})" for name, up in running.alive().items()
        )
        _err.print(
            f"{'healthy' if healthy else 'NOT healthy'} at {running.api_url}: {parts}; ports redis "
            f"{running.redis_port}, osmem {running.osmem_port}; logs in {Path(running.state_dir) / 'logs'}",
            highlight=False,
        )
        if export:
            print(running.export_lines())
    raise typer.Exit(0 if healthy else EXIT_FAILED)


# ------------------------------------------------------------------------------------ push / status / pull


def _client(api_url: str | None):
    from cm2data.review.push import connect

    return connect(api_url)


def _workspace(workspace: str | None) -> str | None:
    import os

    return workspace or os.environ.get("ARGILLA_WORKSPACE") or None


@review_app.command("push")
def review_push(
    src: Annotated[Path, typer.Argument(help="Dataset folder (or file in a registered format) with checklists.")],
    name: Annotated[str, typer.Option("--name", "-n", help="The Argilla review dataset (created on first push).")],
    workspace: Workspace = None,
    min_submitted: Annotated[
        int,
        typer.Option(
            "--min-submitted", help="Reviewers per item (task distribution overlap) when the dataset is created."
        ),
    ] = 2,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Records per request (max 500).")] = 500,
    api_url: ApiUrl = None,
) -> None:
    """Push every checklist item of SRC to an Argilla review dataset, one record per item. Pushing again updates
    in place: nothing is duplicated, submitted responses stay, items changed since their review are flagged."""
    from cm2data.review.push import ReviewError, print_push, push

    try:
        client = _client(api_url)
        result = push(
            src,
            name,
            client=client,
            workspace=_workspace(workspace),
            min_submitted=min_submitted,
            batch_size=batch_size,
            console=_err,
        )
    except (ReviewError, ValueError) as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    print_push(result, Console(soft_wrap=True, highlight=False))


@review_app.command("status")
def review_status(
    name: Annotated[str, typer.Argument(help="The Argilla review dataset.")],
    workspace: Workspace = None,
    as_json: JsonFlag = False,
    api_url: ApiUrl = None,
) -> None:
    """Review progress: records pending/completed, responses per state, per reviewer."""
    from cm2data.review.push import ReviewError
    from cm2data.review.status import print_status
    from cm2data.review.status import review_status as get_status

    try:
        status = get_status(name, client=_client(api_url), workspace=_workspace(workspace))
    except ReviewError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    if as_json:
        print(json.dumps(status, indent=2))
    else:
        print_status(status, Console(soft_wrap=True, highlight=False))


@review_app.command("pull")
def review_pull(
    name: Annotated[str, typer.Argument(help="The Argilla review dataset.")],
    into: Annotated[Path, typer.Option("--into", help="The dataset folder that was pushed.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the merged dataset folder and report.")],
    workspace: Workspace = None,
    min_answers: Annotated[
        int | None,
        typer.Option(
            "--min-answers",
            help="Submitted answers an item needs before its verdict applies (default: the dataset's min_submitted).",
        ),
    ] = None,
    api_url: ApiUrl = None,
) -> None:
    """Merge the submitted reviews into the records of --into (majority per item, ties stay flagged; drop, fix, add
    criteria, re-normalise weights), validate, write --out with review_report.json and .md."""
    from cm2data.review.pull import PullGateFailed, print_pull, pull
    from cm2data.review.push import ReviewError

    try:
        result = pull(
            name, into=into, out=out, client=_client(api_url), workspace=_workspace(workspace), min_answers=min_answers
        )
    except PullGateFailed as exc:
        for r in exc.report["gate"]["rejects"][:10]:
            _err.print(f"  {escape(str(r['record_id']))}: {r['rule']}: {escape(r['message'])}", highlight=False)
        raise fail(str(exc), EXIT_FAILED) from None
    except ReviewError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    print_pull(result, Console(soft_wrap=True, highlight=False))


# ------------------------------------------------------------------------ judge fidelity: people's verdicts


@review_app.command("push-verdicts")
def review_push_verdicts(
    verdicts: Annotated[Path, typer.Argument(help="A verdict folder (cm2data judge run).")],
    name: Annotated[
        str, typer.Option("--name", "-n", help="The Argilla verdict-review dataset (created on first push).")
    ],
    workspace: Workspace = None,
    min_submitted: Annotated[
        int, typer.Option("--min-submitted", help="Reviewers per item when the dataset is created.")
    ] = 2,
    show_judge: Annotated[
        bool,
        typer.Option(
            "--show-judge",
            help="Show the judge's verdict as a pre-filled "
            "suggestion (hidden by default; fixed when the "
            "dataset is created).",
        ),
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Records per request (max 500).")] = 500,
    api_url: ApiUrl = None,
) -> None:
    """Push every judged item of VERDICTS for people to answer pass/fail (with an optional reason), one record per
    item, the dialogue up to the item's turn shown. Pushing again updates in place."""
    from cm2data.review.push import ReviewError
    from cm2data.review.verdicts import print_push_verdicts, push_verdicts

    try:
        result = push_verdicts(
            verdicts,
            name,
            client=_client(api_url),
            workspace=_workspace(workspace),
            min_submitted=min_submitted,
            show_judge=show_judge,
            batch_size=batch_size,
        )
    except (ReviewError, ValueError) as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    print_push_verdicts(result, Console(soft_wrap=True, highlight=False))


@review_app.command("pull-verdicts")
def review_pull_verdicts(
    name: Annotated[str, typer.Argument(help="The Argilla verdict-review dataset.")],
    into: Annotated[Path, typer.Option("--into", help="The verdict folder that was pushed.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The human verdict folder to write.")],
    workspace: Workspace = None,
    api_url: ApiUrl = None,
) -> None:
    """Pull people's pass/fail answers into a human verdict folder (one row per item and reviewer, skips and drafts
    included and counted), checked against the verdict folder --into; then `cm2data judge agree INTO --human OUT`."""
    from cm2data.review.push import ReviewError
    from cm2data.review.verdicts import print_pull_verdicts, pull_verdicts

    try:
        result = pull_verdicts(name, into=into, out=out, client=_client(api_url), workspace=_workspace(workspace))
    except ReviewError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    print_pull_verdicts(result, Console(soft_wrap=True, highlight=False))
