"""Webhook endpoints after their creation: list, show, update, delete, rotate the secret, recover, attempts.

An endpoint starts at the tenant's current head: it is sent what happens after its creation (recover sends
older events on request). Its secret is sealed with INTAKE_SECRET_KEY and shown once; a rotation keeps the
old one sealed until `previous_secret_until`, and deliveries carry both signatures meanwhile. Every change
writes an audit row in its transaction; neither the secret nor the URL's query string (which some receivers
use as a credential) is in it.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import Connection, delete, insert, select, text, update

from db.schema import change_events, webhook_attempts, webhook_endpoints
from db.tenancy import TenantId
from pipelines import audit
from pipelines.control.common import one, paged
from pipelines.control.errors import Invalid
from pipelines.control.models import Deleted, Listing, Page
from pipelines.crypto import SecretBox
from pipelines.webhooks import signing, targets
from pipelines.webhooks.models import (
    AttemptQuery,
    AttemptView,
    EndpointCreate,
    EndpointSecret,
    EndpointUpdate,
    EndpointView,
    Recover,
    Recovered,
    RotateEndpointSecret,
)

HEAD = text("SELECT last_seq FROM change_feed_heads WHERE tenant_id = :t")
# Every event of the endpoint's types since `since`, up to its cursor (later ones are planned anyway), is
# pending again: a delivered or failed one is sent once more, with its attempts counted afresh.
RECOVER = text("""
INSERT INTO webhook_attempts AS a (tenant_id, endpoint_id, event_seq, event_id, conversation_id)
SELECT c.tenant_id, :e, c.seq, c.id, c.conversation_id FROM change_events c
WHERE c.tenant_id = :t AND c.created_at >= :since AND c.seq <= :cursor
  AND (cardinality(CAST(:types AS text[])) = 0 OR c.type = ANY(CAST(:types AS text[])))
ON CONFLICT (tenant_id, endpoint_id, event_seq) DO UPDATE
SET status = 'pending', attempts = 0, next_attempt_at = now(), leased_until = NULL, updated_at = now(),
    delivered_at = NULL
""")
ACTION = "webhook_endpoint"


def shown_url(url: str) -> str:
    """The URL for the audit trail: without its query string, which may carry a receiver's token."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class Endpoints:
    """Endpoint operations with what they need besides a connection: the secret box and the target rule."""

    def __init__(self, box: SecretBox, *, allow_private: bool) -> None:
        self.box = box
        self.allow_private = allow_private

    def checked(self, url: str) -> str:
        try:
            targets.check(url, allow_private=self.allow_private)
        except targets.UnsafeTarget as exc:
            raise Invalid({"url": str(exc)}) from None
        return url

    @staticmethod
    def view(row: Any) -> EndpointView:
        return EndpointView(
            id=row.id, tenant_id=row.tenant_id, url=row.url, event_types=list(row.event_types or []),
            description=row.description, rate_limit_per_second=row.rate_limit_per_second, enabled=row.enabled,
            disabled_at=row.disabled_at, disabled_reason=row.disabled_reason, failing_since=row.failing_since,
            previous_secret_until=row.previous_secret_until, created_at=row.created_at, updated_at=row.updated_at)

    def get(self, conn: Connection, endpoint_id: uuid.UUID, *, lock: bool = False) -> EndpointView:
        return self.view(self._row(conn, endpoint_id, lock=lock))

    @staticmethod
    def _row(conn: Connection, endpoint_id: uuid.UUID, *, lock: bool = False) -> Any:
        query = select(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id)
        found = conn.execute(query.with_for_update() if lock else query).first()
        return one(found, "webhook endpoint", endpoint_id)

    def list_endpoints(self, conn: Connection, tenant: uuid.UUID, page: Page) -> Listing[EndpointView]:
        query = (select(webhook_endpoints).where(webhook_endpoints.c.tenant_id == tenant)
                 .order_by(webhook_endpoints.c.created_at, webhook_endpoints.c.id))
        return paged(conn, query, page, self.view)

    def create(self, conn: Connection, tenant: TenantId, request: EndpointCreate, actor: audit.Actor
               ) -> EndpointSecret:
        url = self.checked(request.url)
        secret = signing.new_secret()
        head = conn.execute(HEAD, {"t": tenant}).scalar()
        endpoint_id = uuid.uuid4()
        conn.execute(insert(webhook_endpoints).values(
            id=endpoint_id, tenant_id=tenant, url=url, event_types=list(request.event_types),
            description=request.description, rate_limit_per_second=request.rate_limit_per_second,
            secret=self.box.seal({"secret": secret}), cursor_seq=head or 0))
        view = self.get(conn, endpoint_id)
        audit.record(conn, actor=actor, action=f"{ACTION}.create", tenant_id=tenant, subject_type=ACTION,
                     subject_id=endpoint_id, after=_snapshot(view))
        return EndpointSecret(endpoint=view, secret=secret)

    def change(self, conn: Connection, endpoint_id: uuid.UUID, request: EndpointUpdate, actor: audit.Actor,
               now: datetime) -> EndpointView:
        before = self.get(conn, endpoint_id, lock=True)
        given = request.model_dump(exclude_unset=True)
        values: dict[str, Any] = {}
        if request.url is not None:
            values["url"] = self.checked(request.url)
        if request.event_types is not None:
            values["event_types"] = list(request.event_types)
        if request.description is not None:
            values["description"] = request.description
        if "rate_limit_per_second" in given:
            values["rate_limit_per_second"] = request.rate_limit_per_second
        if request.enabled is True and not before.enabled:
            values.update(enabled=True, disabled_at=None, disabled_reason=None, failing_since=None)
        elif request.enabled is False and before.enabled:
            values.update(enabled=False, disabled_at=now, disabled_reason=f"disabled by {actor.name}")
        if values:
            conn.execute(update(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id)
                         .values(**values, updated_at=now))
        return self._recorded(conn, f"{ACTION}.update", before, actor)

    def remove(self, conn: Connection, endpoint_id: uuid.UUID, actor: audit.Actor) -> Deleted:
        before = self.get(conn, endpoint_id, lock=True)
        conn.execute(delete(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id))
        audit.record(conn, actor=actor, action=f"{ACTION}.delete", tenant_id=before.tenant_id, subject_type=ACTION,
                     subject_id=endpoint_id, before=_snapshot(before))
        return Deleted(id=endpoint_id)

    def rotate(self, conn: Connection, endpoint_id: uuid.UUID, request: RotateEndpointSecret, actor: audit.Actor,
               now: datetime) -> EndpointSecret:
        """A new secret; the current one keeps signing for `overlap_seconds` (0: it stops at once)."""
        row = self._row(conn, endpoint_id, lock=True)
        before = self.view(row)
        secret = signing.new_secret()
        overlap = request.overlap_seconds > 0
        conn.execute(update(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id).values(
            secret=self.box.seal({"secret": secret}),
            previous_secret=row.secret if overlap else None,
            previous_secret_until=now + timedelta(seconds=request.overlap_seconds) if overlap else None,
            updated_at=now))
        return EndpointSecret(endpoint=self._recorded(conn, f"{ACTION}.rotate_secret", before, actor),
                              secret=secret)

    def recover(self, conn: Connection, endpoint_id: uuid.UUID, request: Recover, actor: audit.Actor) -> Recovered:
        row = self._row(conn, endpoint_id, lock=True)
        count = conn.execute(RECOVER, {"t": row.tenant_id, "e": endpoint_id, "since": request.since,
                                       "cursor": row.cursor_seq, "types": list(row.event_types or [])}).rowcount
        audit.record(conn, actor=actor, action=f"{ACTION}.recover", tenant_id=row.tenant_id, subject_type=ACTION,
                     subject_id=endpoint_id, after={"since": request.since.isoformat(), "events": count})
        return Recovered(endpoint_id=endpoint_id, events=count)

    def attempts(self, conn: Connection, endpoint_id: uuid.UUID, query: AttemptQuery) -> Listing[AttemptView]:
        endpoint = self._row(conn, endpoint_id)
        a, c = webhook_attempts.c, change_events.c
        found = (select(webhook_attempts, change_events.c.type.label("event_type"))
                 .outerjoin(change_events, (c.tenant_id == a.tenant_id) & (c.seq == a.event_seq))
                 .where(a.tenant_id == endpoint.tenant_id, a.endpoint_id == endpoint_id)
                 .order_by(a.event_seq.desc()))
        if query.status is not None:
            found = found.where(a.status == query.status)
        return paged(conn, found, Page(limit=query.limit, offset=query.offset),
                     lambda row: AttemptView.model_validate(dict(row)))

    def _recorded(self, conn: Connection, action: str, before: EndpointView, actor: audit.Actor) -> EndpointView:
        after = self.get(conn, before.id)
        audit.record(conn, actor=actor, action=action, tenant_id=before.tenant_id, subject_type=ACTION,
                     subject_id=before.id, before=_snapshot(before), after=_snapshot(after))
        return after


def _snapshot(view: EndpointView) -> dict[str, Any]:
    data = view.model_dump(mode="json", exclude={"created_at", "updated_at"})
    return {**data, "url": shown_url(view.url)}
