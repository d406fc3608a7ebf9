"""The dashboard through Flask's test client: access control, CSRF, pages and actions.

The browser tests (test_browser.py) drive the same pages in Chromium.
"""

from __future__ import annotations

import re

import pytest

from service import create_app
from service.config import Settings
from service.exceptions import ConfigError

from .conftest import BULK_BODY, EVENTS_BODY, post, work

TOKEN = "dashboard-token-0123456789abcdef"
BASE = "https://bulkhook.test"  # the session cookie is Secure: sent over https only


@pytest.fixture
def dash_app(config):
    return create_app({**config, "BULKHOOK_DASHBOARD_TOKEN": TOKEN})


@pytest.fixture
def dash(dash_app):
    return dash_app.test_client()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, "no CSRF field on the page"
    return found.group(1)


def log_in(client) -> None:
    form = client.get("/dashboard/login", base_url=BASE).get_data(as_text=True)
    answer = client.post("/dashboard/login", base_url=BASE,
                         data={"token": TOKEN, "csrf_token": csrf_of(form)})  # fmt: skip
    assert answer.status_code == 302 and answer.headers["Location"].endswith("/dashboard/")


def test_dashboard_is_off_without_a_token(client) -> None:
    answer = client.get("/dashboard/", headers=bearer())
    assert answer.status_code == 404
    assert "BULKHOOK_DASHBOARD_TOKEN" in answer.get_json()["detail"]


def test_a_short_token_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="at least 16 characters"):
        Settings.from_env({"BULKHOOK_DASHBOARD_TOKEN": "short"})


@pytest.mark.parametrize("path", ["/dashboard/", "/dashboard/jobs", "/dashboard/dead-letter",
                                  "/dashboard/queues", "/dashboard/deliveries/x"])  # fmt: skip
def test_every_page_needs_the_token(dash, path) -> None:
    anonymous = dash.get(path, base_url=BASE)
    wrong = dash.get(path, base_url=BASE, headers=bearer("not-the-token-at-all"))
    browser = dash.get(path, base_url=BASE, headers={"Accept": "text/html"})

    assert anonymous.status_code == wrong.status_code == browser.status_code == 401
    assert anonymous.get_json()["status"] == "unauthorized"
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert 'name="token"' in browser.get_data(as_text=True)  # people get the login form


@pytest.mark.parametrize("path", ["/dashboard/dead-letter/x/requeue",
                                  "/dashboard/dead-letter/x/discard"])  # fmt: skip
def test_every_action_needs_the_token(dash, path) -> None:
    assert dash.post(path, base_url=BASE).status_code == 401


def test_login_sets_a_secure_http_only_session_cookie(dash) -> None:
    form = dash.get("/dashboard/login", base_url=BASE).get_data(as_text=True)
    answer = dash.post("/dashboard/login", base_url=BASE,
                       data={"token": TOKEN, "csrf_token": csrf_of(form)})  # fmt: skip

    cookie = answer.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert TOKEN not in cookie
    assert dash.get("/dashboard/", base_url=BASE).status_code == 200


def test_login_with_a_wrong_token_or_without_csrf_is_refused(dash) -> None:
    form = dash.get("/dashboard/login", base_url=BASE).get_data(as_text=True)
    wrong = dash.post("/dashboard/login", base_url=BASE, headers={"Accept": "text/html"},
                      data={"token": "nope", "csrf_token": csrf_of(form)})  # fmt: skip
    forged = dash.post("/dashboard/login", base_url=BASE, data={"token": TOKEN})

    assert wrong.status_code == 401 and "not the dashboard token" in wrong.get_data(as_text=True)
    assert forged.status_code == 403
    assert dash.get("/dashboard/", base_url=BASE).status_code == 401


def test_session_posts_need_the_csrf_token(dash, conn, monkeypatch, client) -> None:
    monkeypatch.setenv("BULKHOOK_HANDLERS", "tests.handlers.always_fails")
    dead_id = post(client, "bulk", BULK_BODY).get_json()["delivery_id"]
    work(conn)
    log_in(dash)

    forged = dash.post(f"/dashboard/dead-letter/{dead_id}/requeue", base_url=BASE)
    page = dash.get("/dashboard/dead-letter", base_url=BASE).get_data(as_text=True)
    real = dash.post(f"/dashboard/dead-letter/{dead_id}/requeue", base_url=BASE,
                     data={"csrf_token": csrf_of(page)})  # fmt: skip

    assert forged.status_code == 403 and forged.get_json()["status"] == "forbidden"
    assert real.status_code == 302
    assert conn.hget(f"bulkhook:delivery:{dead_id}", "state") == b"queued"


def test_logout_ends_the_session(dash) -> None:
    log_in(dash)
    page = dash.get("/dashboard/", base_url=BASE).get_data(as_text=True)
    dash.post("/dashboard/logout", base_url=BASE, data={"csrf_token": csrf_of(page)})
    assert dash.get("/dashboard/", base_url=BASE).status_code == 401


def test_inbox_lists_filters_and_searches(dash, client) -> None:
    bulk_id = post(client, "bulk", BULK_BODY).get_json()["delivery_id"]
    events_id = post(client, "events", EVENTS_BODY).get_json()["delivery_id"]

    everything = dash.get("/dashboard/", headers=bearer()).get_data(as_text=True)
    events_only = dash.get("/dashboard/?kind=events", headers=bearer()).get_data(as_text=True)
    searched = dash.get("/dashboard/?q=42114492&partial=1", headers=bearer()).get_data(as_text=True)

    assert bulk_id[:12] in everything and events_id[:12] in everything
    assert events_id[:12] in events_only and bulk_id[:12] not in events_only
    assert bulk_id[:12] in searched and "<html" not in searched  # rows only, for live updates


def test_delivery_page_shows_headers_body_and_timeline_but_no_secret(dash, client, conn):
    delivery_id = post(client, "bulk", BULK_BODY).get_json()["delivery_id"]
    waiting = dash.get(f"/dashboard/deliveries/{delivery_id}", headers=bearer())
    work(conn)
    done = dash.get(f"/dashboard/deliveries/{delivery_id}", headers=bearer()).get_data(as_text=True)

    assert waiting.status_code == 200
    assert "42114492" in done and "COMPLETED" in done  # the body preview, kept after processing
    assert "application/json" in done  # Content-Type, from the safe headers
    assert "sha256=" not in done  # the signature header is never shown
    assert "taken by drain-" in done and "attempt 1 started" in done and "delivery done" in done


def test_missing_delivery_is_a_404(dash) -> None:
    assert dash.get("/dashboard/deliveries/nope", headers=bearer()).status_code == 404


def test_dead_letter_page_requeues_and_discards(dash, client, conn, monkeypatch) -> None:
    monkeypatch.setenv("BULKHOOK_HANDLERS", "tests.handlers.always_fails")
    first = post(client, "bulk", BULK_BODY).get_json()["delivery_id"]
    second = post(client, "events", EVENTS_BODY).get_json()["delivery_id"]
    work(conn)

    page = dash.get("/dashboard/dead-letter", headers=bearer()).get_data(as_text=True)
    discarded = dash.post(f"/dashboard/dead-letter/{second}/discard", headers=bearer())
    requeued = dash.post(f"/dashboard/dead-letter/{first}/requeue", headers=bearer())
    again = dash.post(f"/dashboard/dead-letter/{second}/discard", headers=bearer())
    after = dash.get("/dashboard/dead-letter", headers=bearer()).get_data(as_text=True)

    assert first[:12] in page and second[:12] in page and "always_fails" in page
    assert discarded.status_code == requeued.status_code == 302
    assert again.status_code == 404
    assert first[:12] not in after and second[:12] not in after
    assert not conn.exists(f"bulkhook:delivery:{second}")
    assert conn.hget(f"bulkhook:delivery:{first}", "state") == b"queued"


def test_jobs_page_hides_callback_tokens(dash, conn) -> None:
    from service import jobs

    jobs.record_started(conn, "job-77", object_name="contacts", direction="upload",
                        callback="https://hooks.example.com/callbacks/bulk?token=tok-secret-1",
                        token="tok-secret-1")  # fmt: skip
    page = dash.get("/dashboard/jobs", headers=bearer()).get_data(as_text=True)

    assert "job-77" in page and "contacts" in page
    assert "tok-secret-1" not in page


def test_queues_page_shows_counts_and_workers(dash, client) -> None:
    post(client, "bulk", BULK_BODY)
    page = dash.get("/dashboard/queues", headers=bearer()).get_data(as_text=True)
    assert re.search(r"<dt>Ready for a drain</dt><dd>1</dd>", page)
    assert re.search(r"<dt>Queued tasks</dt><dd>1</dd>", page)  # the drain task
    assert "No worker is running" in page


def test_static_files_are_served_without_the_token(dash) -> None:
    answer = dash.get("/dashboard/static/dashboard.js")
    answer.close()  # a file response: its file is open until closed
    assert answer.status_code == 200


def test_login_page_warns_when_the_session_cookie_cannot_stick(dash) -> None:
    plain = dash.get("/dashboard/login", base_url="http://hooks.example.com")
    secure = dash.get("/dashboard/login", base_url="https://hooks.example.com")
    loopback = dash.get("/dashboard/login", base_url="http://localhost:8000")

    assert 'id="insecure"' in plain.get_data(as_text=True)
    assert 'id="insecure"' not in secure.get_data(as_text=True)
    assert 'id="insecure"' not in loopback.get_data(as_text=True)
