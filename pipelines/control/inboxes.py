"""Inboxes after their creation: list, show (secrets masked), update, disable and enable, rotate secrets.

A rotation keeps the secrets it replaces, sealed, in `previous_secrets` until `previous_secrets_until`:
during that overlap the ingress accepts deliveries signed with either set (for Basic-auth channels, either
credential), so the provider's console can be updated without losing a delivery. After it the old set
no longer verifies; the next rotation replaces it. Secrets the provider issues (Twilio's auth token, Meta's
app secret, Mailgun's signing key) change only when a new value is given; the others are generated anew.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select, update

from db.schema import inboxes
from db.tenancy import TenantId
from pipelines import audit
from pipelines.control.common import one, paged, refusals
from pipelines.control.errors import Invalid
from pipelines.control.models import InboxCreate, InboxSecrets, InboxUpdate, InboxView, Listing, Page, RotateSecrets
from pipelines.control.settings import OPERATOR_INBOX_SETTINGS, InboxSettings, guard, initial, merged
from pipelines.crypto import SecretBox
from pipelines.inboxes import InboxConfigError, channel_spec, complete_secrets, create_inbox, webhook_url

PERSONA_REFUSED = {"persona_id": "no persona with this id in the inbox's tenant"}


def mask(value: str) -> str:
    """Enough of a secret to tell two apart, never enough to use: its last four characters."""
    return "****" + value[-4:] if len(value) >= 16 else "****"


class Inboxes:
    """Inbox operations with what they need besides a connection: the secret box and the public URL."""

    def __init__(self, box: SecretBox, base_url: str) -> None:
        self.box = box
        self.base_url = base_url

    def view(self, row: Any) -> InboxView:
        values = self.box.open(row.secrets)
        masked = {k: mask(v) for k, v in values.items()}
        shown = {**values, "basic_password": "****"} if channel_spec(row.channel).basic_auth else values
        return InboxView(
            id=row.id, tenant_id=row.tenant_id, channel=row.channel, name=row.name, enabled=row.enabled,
            settings=row.settings or {}, persona_id=row.persona_id,
            webhook_url=webhook_url(self.base_url, row.channel, row.id, shown), secrets=masked,
            previous_secrets_until=row.previous_secrets_until, created_at=row.created_at,
        )

    def get(self, conn: Connection, inbox_id: uuid.UUID, *, lock: bool = False) -> InboxView:
        return self.view(self._row(conn, inbox_id, lock=lock))

    @staticmethod
    def _row(conn: Connection, inbox_id: uuid.UUID, *, lock: bool = False) -> Any:
        query = select(inboxes).where(inboxes.c.id == inbox_id)
        return one(conn.execute(query.with_for_update() if lock else query).first(), "inbox", inbox_id)

    def list_inboxes(self, conn: Connection, page: Page, tenant: uuid.UUID | None = None) -> Listing[InboxView]:
        query = select(inboxes).order_by(inboxes.c.created_at, inboxes.c.id)
        if tenant is not None:
            query = query.where(inboxes.c.tenant_id == tenant)
        return paged(conn, query, page, self.view)

    def create(self, conn: Connection, tenant: TenantId, request: InboxCreate, actor: audit.Actor) -> InboxSecrets:
        settings = initial(request.settings)
        guard({}, settings, OPERATOR_INBOX_SETTINGS, actor)
        try:
            with refusals(conflict="an inbox with this id exists", foreign=PERSONA_REFUSED):
                created = create_inbox(conn, self.box, tenant, request.channel, name=request.name,
                                       given_secrets=request.secrets, settings=settings)
                if request.persona_id is not None:
                    conn.execute(update(inboxes).where(inboxes.c.id == created.id)
                                 .values(persona_id=request.persona_id))
        except InboxConfigError as exc:
            raise Invalid({"secrets": str(exc)}) from None
        view = self.get(conn, created.id)
        audit.record(conn, actor=actor, action="inbox.create", tenant_id=tenant, subject_type="inbox",
                     subject_id=created.id, after=_snapshot(view))
        return InboxSecrets(inbox=view, secrets=created.secrets,
                            webhook_url=webhook_url(self.base_url, created.channel, created.id, created.secrets))

    def change(self, conn: Connection, inbox_id: uuid.UUID, request: InboxUpdate, actor: audit.Actor) -> InboxView:
        before = self.get(conn, inbox_id, lock=True)
        given = request.model_dump(exclude_unset=True)
        values: dict[str, Any] = {}
        if request.name is not None:
            values["name"] = request.name
        if request.settings is not None:
            values["settings"] = merged(before.settings, request.settings, InboxSettings)
            guard(before.settings, values["settings"], OPERATOR_INBOX_SETTINGS, actor)
        if "persona_id" in given:
            values["persona_id"] = request.persona_id
        if values:
            with refusals(conflict="the inbox changed meanwhile", foreign=PERSONA_REFUSED):
                conn.execute(update(inboxes).where(inboxes.c.id == inbox_id).values(**values))
        return self._recorded(conn, "inbox.update", before, actor)

    def set_enabled(self, conn: Connection, inbox_id: uuid.UUID, enabled: bool, actor: audit.Actor) -> InboxView:
        before = self.get(conn, inbox_id, lock=True)
        conn.execute(update(inboxes).where(inboxes.c.id == inbox_id).values(enabled=enabled))
        return self._recorded(conn, "inbox.enable" if enabled else "inbox.disable", before, actor)

    def rotate(self, conn: Connection, inbox_id: uuid.UUID, request: RotateSecrets, actor: audit.Actor,
               now: datetime) -> InboxSecrets:
        """New secrets; the current ones keep verifying for `overlap_seconds` (0: stop at once)."""
        row = self._row(conn, inbox_id, lock=True)
        before = self.view(row)
        current = self.box.open(row.secrets)
        issued = {s.name: current[s.name] for s in channel_spec(row.channel).secrets
                  if s.generate is None and s.name in current}
        try:
            fresh = complete_secrets(row.channel, {**issued, **request.secrets})
        except InboxConfigError as exc:
            raise Invalid({"secrets": str(exc)}) from None
        overlap = request.overlap_seconds > 0
        conn.execute(update(inboxes).where(inboxes.c.id == inbox_id).values(
            secrets=self.box.seal(fresh),
            previous_secrets=self.box.seal(current) if overlap else None,
            previous_secrets_until=now + timedelta(seconds=request.overlap_seconds) if overlap else None,
        ))
        view = self._recorded(conn, "inbox.rotate_secrets", before, actor)
        return InboxSecrets(inbox=view, secrets=fresh,
                            webhook_url=webhook_url(self.base_url, row.channel, row.id, fresh))

    def _recorded(self, conn: Connection, action: str, before: InboxView, actor: audit.Actor) -> InboxView:
        after = self.get(conn, before.id)
        audit.record(conn, actor=actor, action=action, tenant_id=before.tenant_id,
                     subject_type="inbox", subject_id=before.id, before=_snapshot(before), after=_snapshot(after))
        return after


def _snapshot(view: InboxView) -> dict[str, Any]:
    """An inbox for the audit trail: no secrets, not even masked, and no URL (Basic auth puts one in it)."""
    return view.model_dump(mode="json", exclude={"secrets", "webhook_url", "created_at"})
