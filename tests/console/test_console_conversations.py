"""The console shows a conversation's thread read-only, linked from its tenant's page, to that tenant's keys
and operators only; its text is escaped like any other."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import orjson
import pytest
from sqlalchemy import Engine

from tests.browser import admin_app, make_key, serve
from tests.console.test_console import sign_in
from tests.factories import deliver, new_inbox


@pytest.fixture(scope="module")
def app(stack: dict[str, str]) -> Iterator[str]:
    with serve(admin_app(stack)) as base:
        yield base


def test_the_tenant_page_links_to_a_read_only_thread(app: str, admin_engine: Engine, app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "api", tenant_name="Thread tenant")
    other = new_inbox(app_engine, "api", tenant_name="Other thread tenant")
    for target, words in ((inbox, "<script>alert(1)</script> where is my order?"), (other, "Their secret words")):
        body = orjson.dumps({"id": uuid.uuid4().hex, "type": "message", "sent_at": datetime.now(UTC).isoformat(),
                             "text": words, "contact": {"email": "thread@example.com"}})
        deliver(app_engine, target, body, "application/json", headers={"webhook-id": uuid.uuid4().hex})
    with httpx.Client(base_url=app, follow_redirects=False, timeout=30) as c:
        sign_in(c, make_key(admin_engine, inbox.tenant_id))
        tenant_page = c.get(f"/tenants/{inbox.tenant_id}")
        assert tenant_page.status_code == 200
        links = [part.split('"', 1)[0] for part in tenant_page.text.split('href="/conversations/')[1:]]
        assert len(links) == 1
        thread = c.get(f"/conversations/{links[0]}")
        assert thread.status_code == 200
        assert "&lt;script&gt;alert(1)&lt;/script&gt; where is my order?" in thread.text
        assert "<script>alert(1)" not in thread.text
        assert "<form" not in thread.text.split("<main", 1)[-1]  # read-only: nothing to post
        with httpx.Client(base_url=app, follow_redirects=False, timeout=30) as theirs:
            sign_in(theirs, make_key(admin_engine, other.tenant_id))
            assert theirs.get(f"/conversations/{links[0]}").status_code == 404  # as an id of nothing at all
        assert c.get(f"/conversations/{uuid.uuid4()}").status_code == 404
        assert c.get("/conversations/not-an-id").status_code == 404
