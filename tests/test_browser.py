"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright, against
the Procfile's web and worker. A screenshot of each page goes to test-artifacts/browser/."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .processes import REPO, Stack, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "browser-token-5f3a9c1e7b2d4068"
KEY = "browser-key"
ARTIFACTS = REPO / "test-artifacts" / "browser"

if not Path(CHROMIUM).exists():
    pytest.skip("needs Debian's chromium (.ci/run installs it)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    running = Stack(tmp_path, KEY, BULKHOOK_DASHBOARD_TOKEN=TOKEN,
                    BULKHOOK_HANDLERS="tests.handlers.fails_until_allowed",
                    BULKHOOK_RETRY_INTERVALS="0")  # fmt: skip
    yield running
    running.close()


@pytest.fixture
def page(stack: Stack):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox"])  # fmt: skip
        # A laptop screen, and a zone other than the server's UTC: times must follow it.
        context = browser.new_context(viewport={"width": 1366, "height": 768},
                                      timezone_id="Europe/Berlin", locale="en-GB")  # fmt: skip
        opened = context.new_page()
        opened.set_default_timeout(20_000)
        yield opened
        context.close()
        browser.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_log_in_watch_a_delivery_arrive_open_it_and_requeue_it(stack: Stack, page) -> None:
    # The server runs on loopback; "localhost" is a secure context, so the Secure cookie holds.
    base = f"http://localhost:{stack.port}/dashboard"
    expect = sync_api.expect

    page.goto(f"{base}/")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    shot(page, "1-login")
    page.get_by_label("Dashboard token").fill("wrong-token-wrong-token")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("not the dashboard token")
    page.get_by_label("Dashboard token").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Inbox")).to_be_visible()

    # A callback sent while the page is open shows up without a reload (live rows).
    body = json.dumps({"id": "browser-job-1", "status": "COMPLETED"}).encode()
    delivery_id = stack.post(body).json()["delivery_id"]
    row = page.locator("#rows tr", has_text="browser-job-1")
    expect(row).to_be_visible()
    # Times are shown in the browser's zone (Berlin is UTC+1 in December), not the server's.
    received = row.locator("time")
    iso = received.get_attribute("datetime")
    assert iso and received.inner_text() != iso
    expect(row).to_contain_text("failed", timeout=30_000)  # retries used up: dead-lettered
    shot(page, "2-inbox")

    row.get_by_role("link").click()
    expect(page.get_by_role("heading", name=f"Delivery {delivery_id}")).to_be_visible()
    expect(page.locator("pre.body")).to_contain_text("browser-job-1")
    expect(page.locator("pre.traceback")).to_contain_text("downstream system unavailable")
    shot(page, "3-delivery-failed")

    page.get_by_role("link", name="Dead letter").click()
    dead_row = page.locator(f"#dead-{delivery_id}")
    expect(dead_row).to_contain_text("downstream system unavailable")
    shot(page, "4-dead-letter")

    # The cause is fixed; requeue from the page, and see the task run.
    Path(f"{stack.output}.allow").touch()
    dead_row.get_by_role("button", name="Requeue").click()
    expect(page.get_by_role("heading", name=f"Delivery {delivery_id}")).to_be_visible()

    def processed() -> bool:
        page.reload()
        return page.locator("#state").inner_text() == "done"

    wait_for(processed, 30, "the requeued task to run")
    expect(page.locator("ol.timeline")).to_contain_text("attempt succeeded")
    shot(page, "5-delivery-done")
    assert "delivered after all" in page.content()

    page.get_by_role("link", name="Dead letter").click()
    expect(page.get_by_text("Nothing dead-lettered.")).to_be_visible()

    page.get_by_role("link", name="Jobs").click()
    expect(page.get_by_role("heading", name="Bulk jobs")).to_be_visible()
    shot(page, "6-jobs")

    page.get_by_role("link", name="Queues & workers").click()
    expect(page.locator("table")).to_contain_text("idle")  # the worker, at rest
    shot(page, "7-queues")

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.goto(f"{base}/queues")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()  # the session is gone
