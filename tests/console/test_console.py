"""The console over HTTP (in process): sign-in, cookies, CSRF, tenant isolation, hostile forms.

The same pages in a real browser are in tests/console/test_console_browser.py.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from unittest.mock import patch

import httpx
import orjson
import pytest
from sqlalchemy import Engine, text

from db.tenancy import bind_tenant
from pipelines.control.keys import Principal
from pipelines.inboxes import CreatedInbox
from tests.browser import admin_app, make_key, serve
from tests.factories import new_inbox
from workers.admin.console.sessions import MAX_SESSIONS_PER_KEY, Sessions

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture(scope="module")
def app(stack: dict[str, str]) -> Iterator[str]:
    """The admin process's app on a real port; its base URL."""
    with serve(admin_app(stack)) as base:
        yield base


@pytest.fixture
def client() -> Iterator[Callable[..., httpx.Client]]:
    """Clients of the console (closed after the test); with `https`, as a TLS-terminating proxy on the same
    host forwards requests."""
    made: list[httpx.Client] = []

    def make(base: str, https: bool = False) -> httpx.Client:
        made.append(httpx.Client(base_url=base, follow_redirects=False, timeout=30,
                                 headers={"x-forwarded-proto": "https"} if https else {}))
        return made[-1]

    yield make
    for each in made:
        each.close()


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def sign_in(c: httpx.Client, key: str) -> str:
    """Sign in; the session's CSRF token."""
    form = c.get("/login")
    answer = c.post("/login", data={"csrf": csrf_of(form.text), "key": key})
    assert answer.status_code == 303 and answer.headers["location"] == "/", answer.text
    return csrf_of(c.get("/failures").text)


def failure_row(admin_engine: Engine, inbox: CreatedInbox, error: str = "AIUnavailable") -> uuid.UUID:
    """A dead failure as the ledger records it."""
    message = {"queue_name": "ai", "actor_name": "assist_messages", "args": [str(inbox.tenant_id), []],
               "kwargs": {}, "options": {}, "message_id": str(uuid.uuid4()), "message_timestamp": 0}
    with admin_engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        return uuid.UUID(str(conn.execute(text(
            "INSERT INTO job_failures (tenant_id, queue, actor, message_id, message, exception_type, "
            "exception_message, traceback, attempts) VALUES (:t, 'ai', 'assist_messages', :m, CAST(:msg AS jsonb), "
            ":e, 'the provider is down', 'Traceback (most recent call last):\n  boom', 3) RETURNING id"),
            {"t": inbox.tenant_id, "m": message["message_id"], "msg": orjson.dumps(message).decode(),
             "e": error}).scalar_one()))


def test_sign_in_sets_a_strict_http_only_cookie_and_never_shows_the_key(app: str, client: Callable[..., httpx.Client], admin_engine: Engine) -> None:
    key = make_key(admin_engine)
    c = client(app)
    assert c.get("/").headers["location"] == "/login"
    form = c.get("/login")
    assert form.status_code == 200 and "no-store" in form.headers["cache-control"]
    assert "default-src 'self'" in form.headers["content-security-policy"]
    refused = c.post("/login", data={"key": key})  # no CSRF token: refused before the key is looked at
    assert refused.status_code == 403 and "intake_console=" not in refused.headers.get("set-cookie", "")
    wrong = c.post("/login", data={"csrf": csrf_of(c.get("/login").text), "key": key[:-2] + "xx"})
    assert wrong.status_code == 401 and "not valid" in wrong.text

    c.get("/login")
    answer = c.post("/login", data={"csrf": csrf_of(c.get("/login").text), "key": key})
    cookie = answer.headers["set-cookie"]
    assert answer.status_code == 303
    assert "intake_console=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie and key not in cookie
    for path in ("/", "/failures", "/events", "/tenants", "/audit"):
        page = c.get(path)
        assert page.status_code == 200, (path, page.text)
        assert key not in page.text  # (its 12-character prefix, which names it in `intake key list`, may be)

    # Over HTTPS both cookies are Secure (the client, talking plain HTTP to the proxy's side, sends it by hand).
    secure = client(app, https=True)
    form = secure.get("/login")
    assert "Secure" in form.headers["set-cookie"]
    answer = secure.post("/login", data={"csrf": csrf_of(form.text), "key": key},
                         headers={"cookie": f"intake_console_login={form.cookies['intake_console_login']}"})
    assert answer.status_code == 303 and "Secure" in answer.headers["set-cookie"]


def test_every_post_needs_the_session_csrf_token(app: str, client: Callable[..., httpx.Client], admin_engine: Engine, app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "api")
    failure = failure_row(admin_engine, inbox)
    c = client(app)
    token = sign_in(c, make_key(admin_engine))
    posts = {"/failures/confirm": {"action": "discard:selected", "ids": str(failure)},
             "/failures/run": {"action": "discard:selected", "ids": str(failure)},
             f"/inboxes/{inbox.id}/rotate-secrets": {"overlap_hours": "0"},
             f"/inboxes/{inbox.id}/disable": {}, f"/tenants/{inbox.tenant_id}/disable": {},
             "/tenants": {"name": "Forged"}, "/logout": {}}
    for path, form in posts.items():
        assert c.post(path, data=form).status_code == 403, path
        assert c.post(path, data={**form, "csrf": "forged"}).status_code == 403, path
        assert c.post(path, data=form, headers={"x-csrf-token": token[:-1]}).status_code == 403, path
    with admin_engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM job_failures WHERE id = :id"), {"id": failure}).scalar() == "dead"
        assert conn.execute(text("SELECT enabled FROM inboxes WHERE id = :id"), {"id": inbox.id}).scalar() is True
    # With the token the same posts work; a script may send it as a header instead.
    confirm = c.post("/failures/confirm", data={"action": "discard:selected", "ids": str(failure), "csrf": token})
    assert confirm.status_code == 200 and 'data-count="1"' in confirm.text
    assert c.post(f"/inboxes/{inbox.id}/disable", headers={"x-csrf-token": token}).status_code == 303
    assert c.post("/logout", data={"csrf": token}).status_code == 303
    assert c.get("/failures").headers["location"] == "/login"
    assert c.post("/failures/confirm", data={"csrf": token}).status_code == 401  # the session is gone


def test_a_tenant_key_sees_only_its_tenant(app: str, client: Callable[..., httpx.Client], admin_engine: Engine, app_engine: Engine) -> None:
    mine, theirs = new_inbox(app_engine, "api", tenant_name="Mine"), new_inbox(app_engine, "twilio",
                                                                              tenant_name="Theirs")
    my_failure, their_failure = failure_row(admin_engine, mine), failure_row(admin_engine, theirs)
    c = client(app)
    token = sign_in(c, make_key(admin_engine, mine.tenant_id))
    for path in (f"/tenants/{theirs.tenant_id}", f"/inboxes/{theirs.id}", f"/failures/{their_failure}"):
        page = c.get(path)  # word for word the page of an id that does not exist
        parent, their_id = path.rsplit("/", 1)
        nobody = str(uuid.uuid4())
        missing = c.get(f"{parent}/{nobody}")
        assert page.status_code == missing.status_code == 404, path
        assert page.text.replace(their_id, "ID") == missing.text.replace(nobody, "ID"), path
    for path in (f"/tenants/{theirs.tenant_id}/disable", f"/inboxes/{theirs.id}/rotate-secrets",
                 f"/tenants/{theirs.tenant_id}/settings"):
        assert c.post(path, data={"csrf": token}).status_code == 404, path
    assert c.get(f"/tenants/{mine.tenant_id}").status_code == 200
    listed = c.get("/failures", params={"status": "any"}).text
    assert str(my_failure) in listed and str(their_failure) not in listed
    # A filter naming the other tenant is ignored: the key's own tenant is the filter.
    assert str(their_failure) not in c.get("/failures", params={"tenant_id": str(theirs.tenant_id)}).text
    tenants = c.get("/tenants").text
    assert "Mine" in tenants and str(theirs.tenant_id) not in tenants
    # A replay of everything it can see takes only its own failures.
    confirm = c.post("/failures/confirm", data={"action": "discard:filter", "csrf": token})
    assert 'data-count="1"' in confirm.text
    assert c.post("/failures/confirm", data={"action": "discard:selected", "ids": str(their_failure),
                                             "csrf": token}).text.count('data-count="0"') == 1


def test_hostile_forms_get_clear_answers(app: str, client: Callable[..., httpx.Client], admin_engine: Engine, app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "api")
    c = client(app)
    token = sign_in(c, make_key(admin_engine))
    settings = f"/tenants/{inbox.tenant_id}/settings"
    assert c.post(settings, content=b"csrf=" + token.encode() + b"&name=" + b"x" * 300_000,
                  headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 413
    assert c.post(settings, content=b"csrf=" + token.encode() + b"&name=\xff\xfe",
                  headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 400
    assert c.post(settings, content=b"{}", headers={"content-type": "application/json",
                                                    "x-csrf-token": token}).status_code == 400
    many = "&".join(f"f{n}=1" for n in range(2000))
    assert c.post(settings, content=f"csrf={token}&{many}".encode(),
                  headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 400
    invalid = c.post(settings, data={"csrf": token, "name": "Fine", "settings.default_region": "Narnia",
                                     "settings.reopen_window_hours": "soon", "settings.ai.model": "a\x00b"})
    assert invalid.status_code == 422
    for field in ("settings.default_region", "settings.reopen_window_hours", "settings.ai.model"):
        assert f'id="e-{field}"' in invalid.text, field
    assert "NUL" in invalid.text
    saved = c.post(settings, data={"csrf": token, "name": "Renamed \u202e\U0001f600", "settings.default_region": "gb"})
    assert saved.status_code == 303
    page = c.get(saved.headers["location"]).text
    assert 'value="GB"' in page and "Saved." in page
    assert c.get("/tenants/not-a-uuid").status_code == 404
    assert c.get(f"/tenants/{uuid.uuid4()}").status_code == 404
    bad_filter = c.get("/failures", params={"since": "yesterday", "tenant_id": "x" * 5000})
    assert bad_filter.status_code == 200 and 'id="e-since"' in bad_filter.text and 'id="e-tenant_id"' in bad_filter.text
    assert c.get("/events", params={"status": "<script>", "offset": "-4"}).status_code == 200
    assert "<script>" not in c.get("/events", params={"dedupe_key": "<script>"}).text.split("</header>")[1]
    assert c.post("/failures/confirm", data={"csrf": token, "action": "explode"}).status_code == 422
    assert c.post("/failures/confirm", data={"csrf": token, "action": "replay:selected",
                                             "ids": "not-a-uuid"}).status_code == 422


def test_odd_digits_nul_and_huge_numbers_are_4xx_not_500(app: str, client: Callable[..., httpx.Client], admin_engine: Engine, app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "api")
    c = client(app)
    form = c.get("/login")  # a NUL in a typed key is a wrong key, before anyone is signed in
    assert c.post("/login", data={"csrf": csrf_of(form.text), "key": "ik_\x00" + "x" * 43}).status_code == 401
    token = sign_in(c, make_key(admin_engine))
    for path in ("/failures", "/events", "/audit", "/tenants"):  # "²" is a digit to str.isdigit, not to int
        assert c.get(path, params={"offset": "\u00b2"}).status_code == 200, path
    assert c.get("/tenants", params={"q": "a\x00b"}).status_code == 422
    for hours in ("\u00b2", "9" * 400, "1" * 5000):
        rotated = c.post(f"/inboxes/{inbox.id}/rotate-secrets", data={"csrf": token, "overlap_hours": hours})
        assert rotated.status_code == 422 and 'id="e-overlap_hours"' in rotated.text, hours[:5]


def test_signing_in_again_and_again_with_one_key_ends_only_its_own_sessions() -> None:
    sessions = Sessions()
    operator = Principal(uuid.uuid4(), "operator", None)
    operator_token, _ = sessions.start(operator)
    tenant = Principal(uuid.uuid4(), "tenant", uuid.uuid4())
    tokens = [sessions.start(tenant)[0] for _ in range(MAX_SESSIONS_PER_KEY + 10)]
    with patch("workers.admin.console.sessions.MAX_SESSIONS", MAX_SESSIONS_PER_KEY + 1):
        sessions.start(tenant)
    assert sessions.get(operator_token) is not None
    assert sum(sessions.get(t) is not None for t in tokens) == MAX_SESSIONS_PER_KEY - 1
    assert sessions.get(tokens[-1]) is not None and sessions.get(tokens[0]) is None


def test_a_revoked_key_ends_its_sessions(app: str, client: Callable[..., httpx.Client], admin_engine: Engine) -> None:
    key = make_key(admin_engine)
    c = client(app)
    sign_in(c, key)
    with admin_engine.begin() as conn:
        conn.execute(text("UPDATE api_keys SET revoked_at = now() WHERE prefix = :p"), {"p": key[:12]})
    assert c.get("/failures").headers["location"] == "/login"


def test_event_pages_hide_credentials(app: str, client: Callable[..., httpx.Client], admin_engine: Engine, app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "mailgun")
    with app_engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        event_id = conn.execute(text(
            "INSERT INTO inbound_events (tenant_id, inbox_id, channel, dedupe_key, content_type, headers, body) "
            "VALUES (:t, :i, 'mailgun', 'tok-1', 'application/x-www-form-urlencoded', CAST(:h AS jsonb), :b) "
            "RETURNING id"), {"t": inbox.tenant_id, "i": inbox.id,
                              "h": '{"authorization": "Basic c2VjcmV0OnBhc3M=", "user-agent": "mailgun"}',
                              "b": b"signature=deadbeefcafe&token=tok-secret-1&timestamp=1&subject=Hello+there"}
        ).scalar_one()
    c = client(app)
    token = sign_in(c, make_key(admin_engine))
    page = c.get(f"/events/{event_id}").text
    assert "Hello there" in page and "mailgun" in page
    for secret in ("c2VjcmV0OnBhc3M", "deadbeefcafe", "tok-secret-1"):
        assert secret not in page
    # Mailgun signs multipart posts in their body too; a body's text is shown up to 64 KiB, however it is kept.
    parts = {"signature": "cafebabe0123", "token": "tok-secret-2", "timestamp": "1", "subject": "Multi part",
             "body-plain": "y" * 100_000}
    multipart = b"".join(b'--b0\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (k.encode(), v.encode())
                         for k, v in parts.items()) + b"--b0--\r\n"
    with app_engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        other = conn.execute(text(
            "INSERT INTO inbound_events (tenant_id, inbox_id, channel, dedupe_key, content_type, headers, body) "
            "VALUES (:t, :i, 'mailgun', 'tok-2', 'multipart/form-data; boundary=b0', '{}', :b) RETURNING id"),
            {"t": inbox.tenant_id, "i": inbox.id, "b": multipart}).scalar_one()
    page = c.get(f"/events/{other}").text
    assert "Multi part" in page and "cafebabe0123" not in page and "tok-secret-2" not in page
    assert "y" * 60_000 in page and "y" * 70_000 not in page and "(truncated)" in page
    listed = c.get("/events", params={"dedupe_key": "tok-1", "inbox_id": str(inbox.id)}).text
    assert str(event_id) in listed
    job = c.post(f"/events/{event_id}/reprocess", data={"csrf": token})
    assert job.status_code == 303 and job.headers["location"].startswith("/jobs/")
    assert "events.reprocess" in c.get(job.headers["location"]).text
