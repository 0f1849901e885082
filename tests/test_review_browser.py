"""The review UI in a real browser: headless Chromium (Debian's ``chromium``, driven by Playwright; no browser
download) against this session's local Argilla stack. Every request to anything but loopback is blocked and
listed. Screenshots go to the test's tmp_path and, when ``CM2DATA_TEST_ARTEFACTS`` is set, into that folder.

1. A plain dataset: log in with the owner's username and password, open the dataset, the record renders, answer the
   label question and submit through the UI (``POST /api/v1/records/{id}/responses`` on the patched engine); the
   SDK reads the response back.
2. The CM2 reference dialogue pushed with an XSS payload in a tool result (cm2data.review.push): the custom field's
   template renders the conversation and the item, the payload shows as text and never runs (``window.__xss`` is
   undefined in the page and in every frame); a verdict submitted in the UI comes back through cm2data.review.pull.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

TESTS = Path(__file__).parent
CHROMIUM = os.environ.get("CM2DATA_CHROMIUM", "/usr/bin/chromium")
XSS_SCRIPT = "<script>window.__xss=1</script>"
XSS_IMG = '<img src=x onerror="window.__xss=1">'

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("CM2DATA_SKIP_REVIEW_STACK") == "1",
                                 reason="CM2DATA_SKIP_REVIEW_STACK=1: no local Argilla stack")]


# ------------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def chromium_path() -> str:
    """Debian's chromium, apt-installed (scripts/argilla_stack.sh debs) when missing."""
    if not os.access(CHROMIUM, os.X_OK) and CHROMIUM == "/usr/bin/chromium":
        subprocess.run(["bash", str(TESTS.parent / "scripts" / "argilla_stack.sh"), "debs", "chromium"],
                       stdin=subprocess.DEVNULL, check=False)
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no browser at {CHROMIUM}: apt-get install chromium (or set CM2DATA_CHROMIUM)", pytrace=False)
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    """A headless Chromium for this module (Playwright's own browser builds are never downloaded)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # as root, chromium refuses to start without --no-sandbox
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        b = pw.chromium.launch(executable_path=chromium_path, headless=True, args=args)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture()
def page(browser: Any, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A fresh page (own cookies) whose requests may only reach loopback; the others are aborted and listed in
    ``page.blocked``. Its last state is saved as ``<test name>-last.png`` (tmp_path and the artefact folder), so a
    failing test leaves a picture of what the browser showed."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    blocked: list[str] = []

    def only_loopback(route: Any) -> None:
        url = route.request.url
        if url.startswith(("data:", "about:", "blob:")) or urlparse(url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    context.route("**/*", only_loopback)
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    pg.blocked = blocked
    try:
        yield pg
    finally:
        with contextlib.suppress(Exception):
            _screenshot(pg, tmp_path, f"{request.node.name}-last.png", check=False)
        context.close()


def _login(page: Any, stack: Any) -> None:
    creds = stack.credentials
    page.goto(f"{stack.api_url}/sign-in")
    page.get_by_label("Username").fill(creds.username)
    page.get_by_label("Password").fill(creds.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "sign-in" not in url)


def _screenshot(page: Any, tmp_path: Path, name: str, check: bool = True) -> Path:
    """Save a full-page screenshot as tmp_path/name and, when CM2DATA_TEST_ARTEFACTS is set, copy it there;
    ``check``: assert that something was rendered."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    artefacts = os.environ.get("CM2DATA_TEST_ARTEFACTS")
    if artefacts:
        Path(artefacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artefacts) / name)
    if check:
        assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    return path


def _submit(page: Any) -> Any:
    """Click the UI's Submit button and return the response of the request it makes."""
    with page.expect_response(lambda r: "/responses" in r.url and r.request.method in ("POST", "PUT")) as answer:
        page.get_by_role("button", name="Submit").click()
    return answer.value


# ------------------------------------------------------------------------------------------------------- tests

def test_login_render_and_submit_in_the_ui(page: Any, argilla_stack_handle: Any, tmp_path: Path) -> None:
    import argilla as rg

    stack = argilla_stack_handle
    client = rg.Argilla(api_url=stack.api_url, api_key=stack.credentials.api_key)
    settings = rg.Settings(fields=[rg.TextField(name="text")],
                           questions=[rg.LabelQuestion(name="label", labels=["yes", "no"])])
    ds = rg.Dataset(name=f"browser-{uuid.uuid4().hex[:8]}", workspace=stack.workspace, settings=settings,
                    client=client).create()
    ds.records.log([{"id": "only", "text": "hello from the cm2data browser test"}])

    _login(page, stack)
    page.goto(f"{stack.api_url}/dataset/{ds.id}/annotation-mode")
    page.get_by_text("hello from the cm2data browser test").wait_for()
    page.get_by_text("no", exact=True).click()
    answer = _submit(page)
    assert answer.request.method == "POST" and answer.status == 201, answer.text()
    # the UI moves on: nothing pending is left (its wording depends on timing)
    page.get_by_text(re.compile("The task is completed|no pending records to annotate")).wait_for()
    _screenshot(page, tmp_path, "review-ui-plain.png")

    responses = [(a.question_name, a.value, a.status) for r in ds.records(with_responses=True) for a in r.responses]
    assert responses == [("label", "no", "submitted")]
    assert all(urlparse(u).hostname not in ("127.0.0.1", "localhost") for u in page.blocked)


def _reference_with_xss(reference_record: Any) -> Any:
    """The CM2 reference dialogue with both payloads added to its first tool result (still valid JSON)."""
    d = reference_record
    k = next(i for i, m in enumerate(d.messages) if m.role == "tool")
    content = d.messages[k].content.rstrip()
    assert content.endswith("}")
    d.messages[k].content = content[:-1] + ", \"note\": " + json.dumps(XSS_SCRIPT + XSS_IMG) + "}"
    return d


def _item_frame(page: Any) -> Any:
    """The frame in which the custom field's template rendered the item (``#cm2 .item``)."""
    page.frame_locator("iframe").first.locator("#cm2 .item").wait_for()
    for frame in page.frames:
        if frame != page.main_frame and frame.locator("#cm2 .item").count():
            return frame
    raise AssertionError("no frame renders #cm2 .item")


def test_cm2_item_renders_safely_and_the_verdict_is_pulled(page: Any, argilla_stack_handle: Any,
                                                           reference_record: Any, tmp_path: Path) -> None:
    review_push = pytest.importorskip("cm2data.review.push")
    review_pull = pytest.importorskip("cm2data.review.pull")
    import argilla as rg

    from cm2data import store

    stack = argilla_stack_handle
    creds = stack.credentials
    client = rg.Argilla(api_url=stack.api_url, api_key=creds.api_key)
    src = tmp_path / "pushed"
    store.write_dataset(src, [_reference_with_xss(reference_record)])
    name = f"cm2-xss-{uuid.uuid4().hex[:8]}"
    pushed = review_push.push(src, name, client=client, workspace=stack.workspace, min_submitted=1, progress=False)
    assert pushed.items == pushed.created > 0
    ds = client.datasets(name, workspace=stack.workspace)

    _login(page, stack)
    page.goto(f"{stack.api_url}/dataset/{ds.id}/annotation-mode")
    frame = _item_frame(page)
    shown = frame.locator("#cm2").inner_text()
    # the item, from our template: header, pass condition, the dialogue's turns and the tool result
    header = frame.locator("#cm2 .item h3").inner_text()
    assert header.startswith("Item C") and " of turn " in header
    assert "pass condition" in shown and "focus on" in shown
    assert "Turn 0" in shown and "get_the_last_games_of_a_football_team" in shown
    # both payloads are on screen as text, and nothing of them became markup
    assert XSS_SCRIPT in shown and "onerror=" in shown, shown[:2000]
    assert frame.locator("#cm2 img").count() == 0 and frame.locator("#cm2 script").count() == 0
    page.wait_for_timeout(500)  # an <img src=x onerror> would have fired by now
    for f in page.frames:
        assert f.evaluate("typeof window.__xss") == "undefined", f"payload ran in frame {f.url[:80]}"
    _screenshot(page, tmp_path, "review-ui-cm2-item.png")

    # the verdict: drop (the labeller's suggestion is keep), submitted in the UI
    page.get_by_text("drop", exact=True).click()
    answer = _submit(page)
    assert answer.status in (200, 201), answer.text()
    record_id = answer.json()["record_id"]
    turn, item_id = header.split(" of turn ")[1].split(" ")[0], header.split(" ")[1]
    _screenshot(page, tmp_path, "review-ui-cm2-submitted.png")

    result = review_pull.pull(name, into=src, out=tmp_path / "pulled", client=client, workspace=stack.workspace,
                              min_answers=1)
    (merged,) = store.read_dataset(result.out)
    decisions = [e for e in merged.review.decisions if e.get("action") == "drop"]
    assert len(decisions) == 1, merged.review.decisions
    decision = json.dumps(decisions[0])
    assert creds.username in decision or record_id in decision or item_id in decision, decision
    remaining = {(b.turn, it.id) for b in merged.checklists[0] for it in b.items}
    assert (int(turn), item_id) not in remaining
    assert all(urlparse(u).hostname not in ("127.0.0.1", "localhost") for u in page.blocked)
