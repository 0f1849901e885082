"""The review UI in a real browser: headless Chromium (Debian's ``chromium``, driven by Playwright; no browser
download) against this session's local Argilla stack. Every request to anything but loopback is blocked; each test
ends by asserting that no request was blocked or failed, no answer was an HTTP error and no script or console error
happened. Screenshots go to the test's tmp_path and, when ``CM2DATA_TEST_ARTEFACTS`` is set, into that folder.

1. A plain dataset: log in with the owner's username and password, open the dataset, the record renders, answer the
   label question and submit through the UI (``POST /api/v1/records/{id}/responses`` on the patched engine); the
   SDK reads the response back.
2. The CM2 reference dialogue pushed with an XSS payload in a tool result and in every item's pass condition
   (cm2data.review.push): the custom field's template renders the conversation and the item, the payload shows as
   text in both places and never runs (``window.__xss`` is undefined in the page and in every frame); a verdict
   submitted in the UI comes back through cm2data.review.pull.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import argilla as rg
import pytest

from cm2data import store
from cm2data.review import pull as review_pull
from cm2data.review import push as review_push
from cm2data.review.dataset import review_items

# The one outside request the Argilla 2.8.0 web UI makes: its bundled stylesheet
# (argilla_server/static/_nuxt/cb7f2348533ac73dbe67.css) @imports these two Google Fonts stylesheets. The page
# fixture answers exactly these with an empty stylesheet (nothing leaves the machine; the UI falls back to its font
# stack) and lists them in ``page.stubbed``; any other request off loopback is blocked and fails the test.
ARGILLA_UI_FONTS = frozenset(
    {
        "https://fonts.googleapis.com/css2?family=Inter:wght@300;400;500;600;700;800&display=swap",
        "https://fonts.googleapis.com/css2?family=Roboto+Condensed&display=swap",
    }
)
XSS_SCRIPT = "<script>window.__xss=1</script>"
# no quotes in the handler: the payload sits in a JSON string, whose escaped quotes (\") would turn a quoted handler
# into a syntax error instead of a run
XSS_IMG = "<img src=x onerror=window.__xss=1>"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("CM2DATA_SKIP_REVIEW_STACK") == "1", reason="CM2DATA_SKIP_REVIEW_STACK=1: no local Argilla stack"
    ),
]


# ------------------------------------------------------------------------------------------------------ fixtures
# chromium_path (Debian's chromium, apt-installed when missing) and browser (headless, Playwright) are in conftest.py


@pytest.fixture()
def page(browser: Any, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A fresh page (own cookies) whose requests may only reach loopback; the UI's two font stylesheets
    (``ARGILLA_UI_FONTS``) are answered with an empty one and listed in ``page.stubbed``. Everything that went wrong
    is listed on the page for the test to assert empty (:func:`_assert_nothing_went_wrong`): ``page.blocked``
    (requests to anything else off loopback, aborted), ``page.failed`` (requests that failed, blocked ones included),
    ``page.http_errors`` (answers with a status of 400 or more, frames included), ``page.errors`` (uncaught
    exceptions and console errors, iframes included). Its last state is saved as ``<test name>-last.png`` (tmp_path
    and the artefact folder), so a failing test leaves a picture of what the browser showed."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    stubbed: list[str] = []
    blocked: list[str] = []
    failed: list[str] = []
    http_errors: list[str] = []
    errors: list[str] = []

    def only_loopback(route: Any) -> None:
        url = route.request.url
        if url.startswith(("data:", "about:", "blob:")) or urlparse(url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        elif url in ARGILLA_UI_FONTS:
            stubbed.append(url)
            route.fulfill(status=200, content_type="text/css", body="")
        else:
            blocked.append(url)
            route.abort()

    context.route("**/*", only_loopback)
    context.on("requestfailed", lambda r: failed.append(f"{r.method} {r.url}: {r.failure}"))
    context.on(
        "response", lambda r: http_errors.append(f"{r.request.method} {r.url}: {r.status}") if r.status >= 400 else None
    )
    pg = context.new_page()
    pg.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    pg.on(
        "console",
        lambda m: (
            errors.append(f"console.error: {m.text} ({m.location.get('url', '')})") if m.type == "error" else None
        ),
    )
    pg.set_default_timeout(30_000)
    pg.stubbed, pg.blocked, pg.failed, pg.http_errors, pg.errors = stubbed, blocked, failed, http_errors, errors
    try:
        yield pg
    finally:
        with contextlib.suppress(Exception):  # a picture for the failure report, not a check
            _save_screenshot(pg, tmp_path, f"{request.node.name}-last.png")
        context.close()


def _assert_nothing_went_wrong(page: Any) -> None:
    """No request was blocked or failed, no answer was an HTTP error, no script error and no console error; the only
    requests off loopback were the UI's two font stylesheets (answered locally)."""
    assert set(page.stubbed) == ARGILLA_UI_FONTS, page.stubbed
    assert page.blocked == [], page.blocked
    assert page.failed == [], page.failed
    assert page.http_errors == [], page.http_errors
    assert page.errors == [], page.errors


def _login(page: Any, stack: Any) -> None:
    creds = stack.credentials
    page.goto(f"{stack.api_url}/sign-in")
    page.get_by_label("Username").fill(creds.username)
    page.get_by_label("Password").fill(creds.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "sign-in" not in url)


def _open_dataset(page: Any, ds: Any) -> None:
    """Open the dataset's annotation page the way a reviewer does, from the list on the home page. (A page.goto
    here would be a new document load that cancels the home page's requests still in flight, which shows up as
    failed requests; the UI's own navigation cancels nothing.)"""
    page.get_by_text(ds.name, exact=True).click()
    page.wait_for_url(f"**/dataset/{ds.id}/annotation-mode**")


def _save_screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    """Save a full-page screenshot as tmp_path/name and, when CM2DATA_TEST_ARTEFACTS is set, copy it there."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    artefacts = os.environ.get("CM2DATA_TEST_ARTEFACTS")
    if artefacts:
        Path(artefacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artefacts) / name)
    return path


def _screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    """:func:`_save_screenshot`, and the picture is of a rendered page, not a blank one."""
    path = _save_screenshot(page, tmp_path, name)
    assert path.stat().st_size > 10_000
    return path


def _submit(page: Any) -> Any:
    """Click the UI's Submit button and return the response of the request it makes."""
    with page.expect_response(lambda r: "/responses" in r.url and r.request.method in ("POST", "PUT")) as answer:
        page.get_by_role("button", name="Submit").click()
    return answer.value


# ------------------------------------------------------------------------------------------------------- tests


def test_login_render_and_submit_in_the_ui(page: Any, argilla_stack_handle: Any, tmp_path: Path) -> None:
    stack = argilla_stack_handle
    client = rg.Argilla(api_url=stack.api_url, api_key=stack.credentials.api_key)
    settings = rg.Settings(
        fields=[rg.TextField(name="text")], questions=[rg.LabelQuestion(name="label", labels=["yes", "no"])]
    )
    ds = rg.Dataset(
        name=f"browser-{uuid.uuid4().hex[:8]}", workspace=stack.workspace, settings=settings, client=client
    ).create()
    ds.records.log([{"id": "only", "text": "hello from the cm2data browser test"}])

    _login(page, stack)
    _open_dataset(page, ds)
    page.get_by_text("hello from the cm2data browser test").wait_for()
    page.get_by_text("no", exact=True).click()
    answer = _submit(page)
    assert answer.request.method == "POST" and answer.status == 201, answer.text()
    # the UI moves on: nothing pending is left (its wording depends on timing)
    page.get_by_text(re.compile("The task is completed|no pending records to annotate")).wait_for()
    _screenshot(page, tmp_path, "review-ui-plain.png")

    responses = [(a.question_name, a.value, a.status) for r in ds.records(with_responses=True) for a in r.responses]
    assert responses == [("label", "no", "submitted")]
    _assert_nothing_went_wrong(page)


def _reference_with_xss(reference_record: Any) -> Any:
    """The CM2 reference dialogue with both payloads added to its first tool result (still valid JSON) and to the
    pass condition of every checklist item (the template writes the tool result and the item's fields by different
    code paths)."""
    d = reference_record
    k = next(i for i, m in enumerate(d.messages) if m.role == "tool")
    content = d.messages[k].content.rstrip()
    assert content.endswith("}")
    d.messages[k].content = content[:-1] + ', "note": ' + json.dumps(XSS_SCRIPT + XSS_IMG) + "}"
    for block in d.checklists[0]:
        for it in block.items:
            it.pass_condition += " " + XSS_SCRIPT + XSS_IMG
    return d


def _item_frame(page: Any) -> Any:
    """The frame in which the custom field's template rendered the item (``#cm2 .item``)."""
    page.frame_locator("iframe").first.locator("#cm2 .item").wait_for()
    for frame in page.frames:
        if frame != page.main_frame and frame.locator("#cm2 .item").count():
            return frame
    raise AssertionError("no frame renders #cm2 .item")


def test_cm2_item_renders_safely_and_the_verdict_is_pulled(
    page: Any, argilla_stack_handle: Any, reference_record: Any, tmp_path: Path
) -> None:
    stack = argilla_stack_handle
    creds = stack.credentials
    client = rg.Argilla(api_url=stack.api_url, api_key=creds.api_key)
    src = tmp_path / "pushed"
    dialogue = _reference_with_xss(reference_record)
    store.write_dataset(src, [dialogue])
    items = {it.record_id: it.key for it in review_items(dialogue)}
    questions = {(b.turn, it.id): it.question for b in dialogue.checklists[0] for it in b.items}
    pass_conditions = {(b.turn, it.id): it.pass_condition for b in dialogue.checklists[0] for it in b.items}
    name = f"cm2-xss-{uuid.uuid4().hex[:8]}"
    pushed = review_push.push(src, name, client=client, workspace=stack.workspace, min_submitted=1, progress=False)
    assert pushed.items == pushed.created > 0
    ds = client.datasets(name, workspace=stack.workspace)

    _login(page, stack)
    _open_dataset(page, ds)
    frame = _item_frame(page)
    shown = frame.locator("#cm2").inner_text()
    # the item, from our template: header, pass condition, the dialogue's turns and the tool result
    header = frame.locator("#cm2 .item h3").inner_text()
    assert header.startswith("Item C") and " of turn " in header
    assert "pass condition" in shown and "focus on" in shown
    assert "Turn 0" in shown and "get_the_last_games_of_a_football_team" in shown
    # both payloads are on screen as text, as the pretty-printed tool result holds them and at the end of the item's
    # pass condition (once each: the dialogue shows the tool result once, the item box its own pass condition), and
    # nothing of them became markup
    assert '"note": ' + json.dumps(XSS_SCRIPT + XSS_IMG) in shown, shown[:3000]
    assert shown.count(XSS_SCRIPT + XSS_IMG) == 2, shown[:3000]
    assert frame.locator("#cm2 img").count() == 0 and frame.locator("#cm2 script").count() == 0
    page.wait_for_timeout(500)  # an <img src=x onerror> would have fired by now
    for f in page.frames:
        assert f.evaluate("typeof window.__xss") == "undefined", f"payload ran in frame {f.url[:80]}"
    _screenshot(page, tmp_path, "review-ui-cm2-item.png")

    # the verdict: drop (the labeller's suggestion is keep), submitted in the UI
    page.get_by_text("drop", exact=True).click()
    answer = _submit(page)
    assert answer.request.method == "POST" and answer.status == 201, answer.text()
    # the item on screen is the record the UI answered for (the answer names the server's id of the record; its
    # external id is the item's record id)
    server_id = answer.json()["record_id"]
    record_id = client.http_client.get(f"/api/v1/records/{server_id}").json()["external_id"]
    turn, item_id = items[record_id].turn, items[record_id].item_id
    assert header == f"Item {item_id} of turn {turn} — {questions[turn, item_id]}"
    assert pass_conditions[turn, item_id].endswith(XSS_IMG) and pass_conditions[turn, item_id] in shown
    _screenshot(page, tmp_path, "review-ui-cm2-submitted.png")

    result = review_pull.pull(
        name, into=src, out=tmp_path / "pulled", client=client, workspace=stack.workspace, min_answers=1
    )
    (merged,) = store.read_dataset(result.out)
    # the one decision is the drop of the item on screen, by the signed-in owner, applied
    (decision,) = merged.review.decisions
    assert (decision["action"], decision["applied"], decision["dataset"]) == ("drop", True, name), decision
    assert (decision["record_id"], decision["turn"], decision["item_id"]) == (record_id, turn, item_id)
    assert [(b["reviewer"], b["verdict"]) for b in decision["by"]] == [(creds.username, "drop")]
    assert (merged.review.status, merged.review.reviewers) == ("in_review", [creds.username])
    remaining = {(b.turn, it.id) for b in merged.checklists[0] for it in b.items}
    assert remaining == set(questions) - {(turn, item_id)}
    _assert_nothing_went_wrong(page)
