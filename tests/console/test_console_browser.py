"""The console in a real headless Chromium: sign in, a failure from a broken AI provider replayed after the
fix, a secret rotated, tenants kept apart, forged posts refused, a slow job found on the jobs page and cancelled. Each page visited is saved as a PNG in
tests/screenshots/ for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import Engine, text

from db.tenancy import bind_tenant
from pipelines.crypto import SecretBox
from pipelines.inboxes import CreatedInbox
from tests.browser import admin_app, make_key, require_chromium, screenshot, serve
from tests.factories import new_inbox
from tests.openai_server import openai_stub
from tests.processes import wait_for, web_server, worker
from tests.webhooks import sign

TIMEOUT_MS = 20_000
FAST_FAILURE = {"INTAKE_JOB_MAX_RETRIES": "0", "INTAKE_JOB_MIN_BACKOFF_MS": "100", "INTAKE_JOB_MAX_BACKOFF_MS": "200",
                "INTAKE_AI_MAX_RETRIES": "0", "INTAKE_AI_TIMEOUT_SECONDS": "1"}


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    path = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def console(stack: dict[str, str]) -> Iterator[str]:
    with serve(admin_app(stack)) as base:
        yield base


@pytest.fixture
def page(chromium: Any, console: str) -> Iterator[Any]:
    context = chromium.new_context(base_url=console, viewport={"width": 1280, "height": 860})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=console)
    context.set_default_timeout(TIMEOUT_MS)
    yield context.new_page()
    context.close()


def sign_in(page: Any, key: str, shot: str | None = None) -> None:
    from playwright.sync_api import expect

    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login$"))
    if shot:
        screenshot(page, shot)
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Overview")


def post_api(base: str, inbox: CreatedInbox, text_: str) -> None:
    body = orjson.dumps({"id": uuid.uuid4().hex, "type": "message", "sent_at": datetime.now(UTC).isoformat(),
                         "text": text_, "contact": {"email": "ada@example.com", "name": "Ada Lovelace"}})
    url = f"{base}/v1/webhooks/api/{inbox.id}"
    headers, body = sign("api", inbox.secrets, url, body, "application/json")
    assert httpx.post(url, content=body, headers=headers).status_code == 200


def dead_ai_failures(admin_engine: Engine, tenant: uuid.UUID) -> list[Any]:
    with admin_engine.connect() as conn:
        return list(conn.execute(text("SELECT id, status FROM job_failures WHERE tenant_id = :t "
                                      "AND actor = 'assist_messages'"), {"t": tenant}))


def test_a_broken_ai_provider_failure_is_seen_and_replayed_after_the_fix(
    page: Any, stack: dict[str, str], admin_engine: Engine, app_engine: Engine
) -> None:
    from playwright.sync_api import expect

    inbox = new_inbox(app_engine, "api", settings={"ai_drafts": False}, tenant_name="Broken AI Ltd")
    with app_engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        conn.execute(text("UPDATE tenants SET settings = jsonb_set(settings, '{ai}', '{\"provider\": \"openai\"}')"))
    down = {**FAST_FAILURE, "INTAKE_AI_BASE_URL": "http://127.0.0.1:9/v1"}
    with web_server() as web, worker(processes=1, threads=2, env=down):
        post_api(web, inbox, "My order 1234 has not arrived")
        wait_for(lambda: len(dead_ai_failures(admin_engine, inbox.tenant_id)) == 1, timeout=60)
    ((failure_id, _),) = dead_ai_failures(admin_engine, inbox.tenant_id)

    sign_in(page, make_key(admin_engine, name="ops-oncall"), shot="01-login")
    expect(page.locator("[data-figure=dead]")).not_to_have_text("0")
    screenshot(page, "02-overview")
    page.get_by_role("link", name="Failures").click()
    page.get_by_label("Tenant id").fill(str(inbox.tenant_id))
    page.get_by_role("button", name="Filter").click()
    row = page.locator("tbody tr", has_text="AIUnavailable")
    expect(row).to_have_count(1)
    expect(page.locator("#by-error")).to_contain_text("1 matching")
    screenshot(page, "03-failures")
    row.get_by_role("link", name="AIUnavailable").click()
    expect(page.locator("pre.code").first).to_contain_text("Traceback")
    expect(page.locator("[data-status]")).to_have_text("dead")
    screenshot(page, "04-failure")

    # The fix: a provider that answers. The failure's page stays open in the first tab and is watched.
    answer = json.dumps({"category": "shipping", "priority": "normal", "sentiment": "negative",
                         "sentiment_score": -0.3, "language": "en", "confidence": 0.8,
                         "reasoning": "A late order.", "team": None})
    with openai_stub() as (url, stub):
        stub.default_content = answer
        with worker(processes=1, threads=2, env={**FAST_FAILURE, "INTAKE_AI_BASE_URL": url}):
            second = page.context.new_page()
            second.goto(f"/failures/{failure_id}")
            second.get_by_role("button", name="Replay…").click()
            expect(second.locator("[data-count]")).to_have_attribute("data-count", "1")
            screenshot(second, "05-confirm-replay")
            second.get_by_role("button", name="Yes, replay 1").click()
            expect(second.locator("[data-job-status]")).to_have_attribute("data-job-status", "succeeded")
            expect(second.get_by_text("1 of 1 done")).to_be_visible()
            screenshot(second, "06-job")
            expect(page.locator("[data-status]")).to_have_text("replayed")  # refreshed in place, no reload
            screenshot(page, "07-failure-replayed")

            def classified() -> int:
                with app_engine.begin() as conn:
                    bind_tenant(conn, inbox.tenant_id)
                    return int(conn.execute(text("SELECT count(*) FROM ai_classifications")).scalar_one())
            wait_for(lambda: classified() == 1, timeout=60)
    assert dead_ai_failures(admin_engine, inbox.tenant_id) == [(failure_id, "replayed")]


def test_an_inbox_secret_is_rotated_and_shown_once(
    page: Any, stack: dict[str, str], admin_engine: Engine, app_engine: Engine
) -> None:
    from playwright.sync_api import expect

    name = f"Rotation {uuid.uuid4().hex[:6]}"
    inbox = new_inbox(app_engine, "api", tenant_name=name)
    sign_in(page, make_key(admin_engine))
    page.get_by_role("link", name="Tenants").click()
    page.get_by_label("Name contains, or id").fill(name)
    page.get_by_role("button", name="Search").click()
    screenshot(page, "08-tenants")
    page.get_by_role("link", name=name).click()
    page.get_by_label("Default region").fill("Narnia")
    page.get_by_role("button", name="Save settings").click()
    expect(page.locator("#e-settings\\.default_region")).to_contain_text("should match pattern")
    screenshot(page, "09-tenant-invalid-setting")
    page.get_by_role("link", name=inbox.name).click()
    expect(page.locator("#webhook-url")).to_have_value(f"http://127.0.0.1:8000/v1/webhooks/api/{inbox.id}")
    page.get_by_role("button", name="Copy").first.click()
    assert page.evaluate("navigator.clipboard.readText()").endswith(str(inbox.id))
    screenshot(page, "10-inbox")
    page.get_by_label("Old secrets keep working for (hours)").fill("0")
    page.get_by_role("button", name="Rotate secrets").click()
    shown = page.locator("[data-secret=signing_secret]").input_value()
    screenshot(page, "11-secrets-shown-once")
    assert shown.startswith("whsec_") and shown != inbox.secrets["signing_secret"]
    with app_engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        sealed = conn.execute(text("SELECT secrets FROM inboxes WHERE id = :id"), {"id": inbox.id}).scalar_one()
    assert SecretBox(os.environ["INTAKE_SECRET_KEY"]).open(sealed)["signing_secret"] == shown
    page.get_by_role("link", name="← Inbox").click()
    assert shown not in page.content() and shown[-4:] in page.content()  # masked from now on
    page.get_by_role("link", name="Audit").click()
    page.get_by_label("Action").fill("inbox.rotate_secrets")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tbody tr").first).to_contain_text("inbox.rotate_secrets")
    assert shown not in page.content()
    screenshot(page, "12-audit")


def test_a_tenant_key_cannot_reach_another_tenant(
    page: Any, stack: dict[str, str], admin_engine: Engine, app_engine: Engine
) -> None:
    from playwright.sync_api import expect

    mine = new_inbox(app_engine, "api", tenant_name="Own Tenant")
    theirs = new_inbox(app_engine, "api", tenant_name="Other Tenant")
    with web_server() as web:
        post_api(web, mine, "Hello from my customer")
    sign_in(page, make_key(admin_engine, mine.tenant_id, name="tenant-admin"))
    page.get_by_role("link", name="Events").click()
    expect(page.locator("tbody tr").first).to_contain_text("api")
    screenshot(page, "13-events-tenant-key")
    page.locator("tbody tr a").first.click()
    expect(page.locator("[data-body]")).to_contain_text("Hello from my customer")
    expect(page.locator("[data-headers]")).to_contain_text("(hidden: a credential)")
    screenshot(page, "14-event")
    for path in (f"/tenants/{theirs.tenant_id}", f"/inboxes/{theirs.id}"):
        response = page.goto(path)
        assert response is not None and response.status == 404
        expect(page.get_by_role("alert")).to_contain_text("no ")
    screenshot(page, "15-other-tenant-forbidden")
    page.goto("/tenants")
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(page.locator("tbody")).to_contain_text("Own Tenant")


def test_posts_without_the_csrf_token_are_refused(page: Any, admin_engine: Engine, app_engine: Engine) -> None:
    from playwright.sync_api import expect

    inbox = new_inbox(app_engine, "api", tenant_name="Forgery Target")
    sign_in(page, make_key(admin_engine))
    statuses = page.evaluate("""async (paths) => Promise.all(paths.map(async (path) =>
        (await fetch(path, {method: "POST", body: new URLSearchParams({name: "x", overlap_hours: "0"})})).status))""",
                             ["/tenants", f"/inboxes/{inbox.id}/rotate-secrets", f"/inboxes/{inbox.id}/disable"])
    assert statuses == [403, 403, 403]
    page.goto(f"/inboxes/{inbox.id}")
    page.evaluate("document.querySelectorAll('input[name=csrf]').forEach((field) => field.remove())")
    page.get_by_role("button", name="Disable inbox").click()
    expect(page.get_by_role("alert")).to_contain_text("CSRF token is missing")
    screenshot(page, "16-csrf-refused")
    with app_engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        assert conn.execute(text("SELECT enabled FROM inboxes WHERE id = :id"), {"id": inbox.id}).scalar_one()
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.goto("/failures")
    expect(page.get_by_role("heading", level=1)).to_have_text("Failures")
    screenshot(page, "17-failures-phone")


def test_a_slow_replay_is_found_on_the_jobs_page_and_cancelled(page: Any, console: str, admin_engine: Engine) -> None:
    from playwright.sync_api import expect

    from tests.admin.test_admin_api import seed_failures
    from tests.admin_server import make_tenant

    tenants = [make_tenant(admin_engine, name) for name in ("Slow Replays Oy", "Later Replays AB")]
    for tenant in tenants:
        seed_failures(admin_engine, str(tenant), 3)
    keys = [make_key(admin_engine, tenant, name="replayer") for tenant in tenants]

    def replay(key: str) -> str:
        answer = httpx.post(f"{console}/v1/admin/failures/replay", json={"all": True, "rate": 0.1},
                            headers={"authorization": f"Bearer {key}"})
        assert answer.status_code == 202, answer.text
        return str(answer.json()["id"])

    first = replay(keys[0])
    sign_in(page, make_key(admin_engine, name="ops-jobs"))
    page.get_by_role("link", name="Jobs").click()
    row = page.locator(f"tr[data-job='{first}']")
    expect(row).to_contain_text("failures.replay")
    expect(row).to_contain_text("Slow Replays Oy")
    expect(row.locator(".badge")).to_have_text("running")
    expect(row).to_contain_text("1 of 3")
    # A job started after the page loaded appears on its own: the table refreshes.
    second = replay(keys[1])
    expect(page.locator(f"tr[data-job='{second}']")).to_contain_text("Later Replays AB")
    screenshot(page, "20-jobs")

    row.get_by_role("button", name=re.compile("^Cancel job failures.replay")).click()
    expect(page.locator("[data-job-status]")).to_have_attribute("data-job-status", "cancelled")
    screenshot(page, "21-job-cancelled")
    page.get_by_role("link", name="← Jobs").click()
    expect(page.locator(f"tr[data-job='{first}'] .badge")).to_have_text("cancelled")
    expect(page.locator(f"tr[data-job='{first}']").get_by_role("button")).to_have_count(0)
    page.locator(f"tr[data-job='{second}']").get_by_role("button", name=re.compile("^Cancel")).click()
    expect(page.locator("[data-job-status]")).to_have_attribute("data-job-status", "cancelled")
