"""Erasure of one person: every trace of them in one tenant removed or made anonymous, in one transaction.

The person is a contact, with the contacts merged into it or it into (one person, several rows). In order:

1. The tenant's backlog is stored first: every event still waiting (`received`), and every failed event
   that may name the person, runs through the ingest pipeline in this transaction (`pipelines.ingest`, as a
   worker runs it). Another contact's message that mentions the person is then stored (and redacted below,
   never lost), and the person's own waiting messages are stored (and erased below). An event that still
   fails stays `failed` with its ledger row, for a replay, redacted of the person like everything else.
2. Their own rows go: their identities, duplicate candidates and merge records; in their conversations
   (theirs and the replies to them) message text, HTML, quoted text, subject, attachment metadata, headers
   and other metadata, RFC Message-IDs, conversation subjects, AI reasoning, drafted replies and the AI's
   examples made from their messages; the raw events their messages came from and any processed event
   whose body names them (body and headers emptied, as retention does); ledger rows about those events and
   messages; audit details naming them.
3. Everyone else's rows that mention them are redacted in place (`pipelines.lifecycle.mentions`): their
   identities (phones in any common format), Telegram handles and name become `[erased]` in every text,
   JSON and bytea column of every tenant table (other people's messages, metadata such as a cc, AI output,
   the ledger, audit rows, failed events), and a processed event whose message was redacted has its raw
   body emptied, so the words do not survive in the delivery they came from.
4. When an example the tenant's AI learns from was deleted or redacted, the tenant's trained classifiers
   (`ai_models`, whose vocabulary holds their examples' words) are dropped; the caller schedules a training on
   the examples left (`Erasure.retrain`).

The erasure holds the tenant's ingest lock (the one each ingest batch takes) from its first read to its commit:
a message from the same person that a batch is storing meanwhile is either committed before the erasure
reads (and erased with the rest) or stored after it (a new contact), never left behind half-erased.

What stays, so every count still adds up: the contact row as a tombstone (`erased_at`, no name), the
message and conversation rows (ids, times, direction, provider ids that dedupe a late retry), the
classification's category, priority and sentiment. With no identity left, the same person writing again
becomes a new contact. Running it again changes nothing. An audit row records the counts, never the data.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, or_, select, text

from db import batch
from db.schema import inbound_events
from db.tenancy import TenantId
from pipelines import audit, changes, normalize
from pipelines.ingest import IngestPolicy, IngestResult, ingest_events
from pipelines.lifecycle.errors import LifecycleError
from pipelines.lifecycle.mentions import may_name, redact_mentions
from pipelines.lifecycle.redaction import Person, Redactor

KINDS = ("phone", "email", "telegram", "external")
MAX_VALUE = 1024
# Shorter identities (a Telegram chat id of a few digits) would match unrelated bodies by chance.
MIN_NEEDLE = 6
ERASED_METADATA = '{"erased": true}'
# The advisory lock `pipelines.ingest` takes for each batch of a tenant (`intake_ingest_take`, migration 0022):
# same key, same hash.
HOLD_TENANT = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")
# The backlog, stored before anything is erased, in batches the size a worker takes.
WAITING = text("SELECT id FROM inbound_events WHERE tenant_id = :t AND status = 'received' ORDER BY received_at, id")
BACKLOG_BATCH = 500
# An ingest batch bounds its lock waits (`lock_timeout`) for the rest of its transaction: put the erasure's back.
LOCK_TIMEOUT = text("SELECT current_setting('lock_timeout')")
SET_LOCK_TIMEOUT = text("SELECT set_config('lock_timeout', :value, true)")
# What the erasure knows a person by, besides their identities: every name of theirs, their Telegram handles.
NAMES = text("""
SELECT display_name FROM contacts WHERE tenant_id = :t AND id = ANY(:people) AND display_name IS NOT NULL
""")
HANDLES = text("""
SELECT DISTINCT metadata ->> 'username' FROM messages
WHERE tenant_id = :t AND contact_id = ANY(:people) AND metadata ->> 'username' IS NOT NULL
""")
# Processed events whose message another person's erasure redacted: the raw delivery still holds the words.
PURGE_REDACTED_EVENTS = text("""
UPDATE inbound_events SET body = ''::bytea, headers = '{}'::jsonb, error = NULL,
       body_purged_at = coalesce(body_purged_at, now())
WHERE tenant_id = :t AND id = ANY(:ids) AND status = 'processed'
AND (octet_length(body) > 0 OR headers <> '{}'::jsonb OR error IS NOT NULL)
""")
# The tenant's trained classifiers: their vocabulary holds words of the examples they learned from. Taken under
# the lock `pipelines.ai.training` trains under, so a training that read the examples before this erasure has
# stored its model (and this erasure drops it), and one that starts later reads them redacted.
HOLD_MODELS = text("SELECT pg_advisory_xact_lock(hashtextextended('intake.ai_models:' || :t, 0))")
DROP_MODELS = text("DELETE FROM ai_models WHERE tenant_id = :t")
Settle = Callable[[Connection, IngestResult, bool], None]


class ErasureError(LifecycleError):
    """The person to erase is not named well: a bad id, kind or value."""


@dataclass
class Erasure:
    contact_id: uuid.UUID | None
    already_erased: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    # The erased messages and events: the ids waiting jobs may still name (`pipelines.lifecycle.jobs`).
    job_ids: list[uuid.UUID] = field(default_factory=list)
    # Messages of other people the backlog stored: their AI job is the caller's to send, after the commit.
    stored: list[uuid.UUID] = field(default_factory=list)
    # What finds the person: the caller runs it over the jobs waiting in Redis, after the commit.
    redactor: Redactor | None = None

    @property
    def retrain(self) -> bool:
        """The tenant's classifiers were dropped: the caller schedules a training after the commit."""
        return self.counts.get("models", 0) > 0

    def as_dict(self) -> dict[str, Any]:
        return {"contact_id": str(self.contact_id) if self.contact_id else None,
                "already_erased": self.already_erased, "counts": self.counts}


def parse_identity(raw: str) -> tuple[str, str]:
    """KIND:VALUE as stored in contact_identities (phones in E.164, emails lower-cased)."""
    kind, sep, value = raw.partition(":")
    kind, value = kind.strip().lower(), value.strip()
    if not sep or kind not in KINDS:
        raise ErasureError(f"an identity is KIND:VALUE with KIND one of {', '.join(KINDS)}")
    if not value or len(value) > MAX_VALUE or any(ch in value for ch in "\x00\r\n"):
        raise ErasureError(f"the identity's value must be 1-{MAX_VALUE} characters on one line, without NUL")
    if kind == "phone":
        phone = normalize.phone_e164(value, None)
        if phone is None:
            raise ErasureError("not a phone number: write it in international format, e.g. +358401234567")
        return kind, phone
    if kind == "email":
        email = normalize.email_address(value)
        if email is None:
            raise ErasureError("not an email address")
        return kind, email
    return kind, value


def find_contact(conn: Connection, tenant: TenantId, *, contact_id: uuid.UUID | None = None,
                 identity: tuple[str, str] | None = None) -> uuid.UUID | None:
    """The contact to erase: by id (an unknown id is an error), or by identity (None when nobody has it)."""
    hold_tenant(conn, tenant)
    if contact_id is not None:
        found = conn.execute(text("SELECT id FROM contacts WHERE tenant_id = :t AND id = :c"),
                             {"t": tenant, "c": contact_id}).scalar()
        if found is None:
            raise ErasureError(f"no contact {contact_id} in this tenant")
        return contact_id
    assert identity is not None
    found = conn.execute(text("SELECT contact_id FROM contact_identities WHERE tenant_id = :t AND kind = :k "
                              "AND value = :v"), {"t": tenant, "k": identity[0], "v": identity[1]}).scalar()
    return None if found is None else uuid.UUID(str(found))


def erase_contact(conn: Connection, tenant: TenantId, contact_id: uuid.UUID | None, *, actor: audit.Actor | str,
                  policy: IngestPolicy, settle: Settle | None = None,
                  identity: tuple[str, str] | None = None) -> Erasure:
    """Erase the person behind `contact_id`, or behind `identity` (see the module's docstring); idempotent.

    With an `identity` nobody has (the person was never stored, or is erased already), the backlog is still
    stored first and every mention of the identity redacted. `policy` is the ingest policy the workers use;
    `settle(conn, result, retried)` records the ledger's part of each backlog batch in this transaction, as the
    ingest actor does after its own batches.
    """
    hold_tenant(conn, tenant)
    named = (identity,) if identity is not None else ()
    backlog, created = _store_backlog(conn, tenant, contact_id, named, policy, settle)
    if contact_id is None and identity is not None:  # the backlog may have stored the person's first message
        contact_id = find_contact(conn, tenant, identity=identity)
    people = _person(conn, tenant, contact_id) if contact_id is not None else []
    ids: dict[str, Any] = {"t": tenant, "people": people, "people_text": [str(p) for p in people]}
    person = _identify(conn, ids, named)
    needles = _needles(person)
    redactor = Redactor(person)
    ids["conversations"] = _ids(conn, "SELECT id FROM conversations WHERE tenant_id = :t AND contact_id = ANY(:people)",
                                ids)
    rows = conn.execute(text(
        "SELECT id, event_id FROM messages WHERE tenant_id = :t "
        "AND (contact_id = ANY(:people) OR conversation_id = ANY(:conversations))"), ids).all()
    messages = [row.id for row in rows]
    own_events = {row.event_id for row in rows if row.event_id}
    events = sorted(own_events | set(_events_naming(conn, tenant, needles)))
    ids.update(messages=messages, events=events, needles=needles, refs=[str(i) for i in (*messages, *own_events)])
    # The change feed first, while the contacts still have their names to look for.
    feed = changes.redact(conn, tenant, people, messages, needles, conversation_ids=ids["conversations"])
    counts = {name: conn.execute(text(statement), ids).rowcount for name, statement in STEPS}
    counts["change_events"] = feed
    redacted = redact_mentions(conn, tenant, redactor)
    counts["redacted"] = sum(redacted.rows.values())
    counts["events_emptied"] = conn.execute(PURGE_REDACTED_EVENTS, {
        "t": tenant, "ids": batch.uuids(redacted.events)}).rowcount
    counts["models"] = _drop_models(conn, tenant) if counts["examples"] or redacted.rows.get("ai_examples") else 0
    erasure = Erasure(contact_id, already_erased=not any(counts.values()), counts={**counts, **backlog},
                      job_ids=[*messages, *own_events], stored=[m for m in created if m not in set(messages)],
                      redactor=redactor)
    if not erasure.already_erased:
        subject = (("contact", str(contact_id)) if contact_id is not None
                   else ("identity", identity[0] if identity is not None else "unknown"))
        audit.record(conn, actor=actor, action="contact.erase", tenant_id=tenant, subject_type=subject[0],
                     subject_id=subject[1], after={"erased": counts, "redacted": redacted.rows, "backlog": backlog,
                                                   "contacts": [str(p) for p in people]})
        if contact_id is not None:  # last: the feed's head stays locked from here to the commit
            changes.record(conn, tenant, [changes.Change("contact.erased", {
                "contact": {"id": contact_id}, "merged_ids": [p for p in people if p != contact_id]},
                subject_id=contact_id)])
    return erasure


def _drop_models(conn: Connection, tenant: TenantId) -> int:
    """Drop the tenant's classifiers once examples they learned from lost the person (deleted or redacted): a
    model keeps its examples' words in its vocabulary. The caller schedules a training on what is left; the
    local provider's rules classify meanwhile."""
    conn.execute(HOLD_MODELS, {"t": str(tenant)})
    return conn.execute(DROP_MODELS, {"t": tenant}).rowcount


def _store_backlog(conn: Connection, tenant: TenantId, contact_id: uuid.UUID | None,
                   named: tuple[tuple[str, str], ...], policy: IngestPolicy,
                   settle: Settle | None) -> tuple[dict[str, int], list[uuid.UUID]]:
    """Run the tenant's waiting events, and its failed ones that may name the person, through the ingest
    pipeline, so that no message of the backlog is erased unstored or stored unerased; (counts, messages)."""
    people = _person(conn, tenant, contact_id) if contact_id is not None else []
    redactor = Redactor(_identify(conn, {"t": tenant, "people": people}, named))
    failed = _failed_naming(conn, tenant, redactor)
    waiting = _ids(conn, WAITING.text, {"t": tenant})
    saved = conn.execute(LOCK_TIMEOUT).scalar_one()
    counts = {"backlog_stored": 0, "backlog_failed": 0}
    created: list[uuid.UUID] = []
    batches = [(failed, True)] if failed else []
    batches += [(waiting[i:i + BACKLOG_BATCH], False) for i in range(0, len(waiting), BACKLOG_BATCH)]
    for event_ids, retried in batches:
        result = ingest_events(conn, tenant, event_ids, policy, retry_failed=retried)
        if settle is not None:
            settle(conn, result, retried)
        counts["backlog_stored"] += len(result.processed)
        counts["backlog_failed"] += len(result.failed)
        created += result.messages_created
    conn.execute(SET_LOCK_TIMEOUT, {"value": saved})
    return counts, created


def _identify(conn: Connection, ids: dict[str, Any], named: tuple[tuple[str, str], ...] = ()) -> Person:
    """Who the person is: the identities of their contacts (and `named`), their names, their Telegram handles."""
    identities = conn.execute(text(
        "SELECT kind, value FROM contact_identities WHERE tenant_id = :t AND contact_id = ANY(:people)"), ids).all()
    names = conn.execute(NAMES, ids).scalars().all()
    handles = conn.execute(HANDLES, ids).scalars().all()
    return Person(identities=tuple(dict.fromkeys([*((row.kind, row.value) for row in identities), *named])),
                  names=tuple(names), handles=tuple(h for h in handles if h))


def _failed_naming(conn: Connection, tenant: TenantId, redactor: Redactor) -> list[uuid.UUID]:
    """Failed events whose body, headers or error may name the person (the redactor's SQL filter)."""
    if redactor.empty:
        return []
    statement = select(inbound_events.c.id).where(
        inbound_events.c.tenant_id == tenant, inbound_events.c.status == "failed",
        or_(*(may_name(c, redactor) for c in (inbound_events.c.body, inbound_events.c.headers,
                                              inbound_events.c.error))))
    return [uuid.UUID(str(i)) for i in conn.execute(statement).scalars()]


def hold_tenant(conn: Connection, tenant: TenantId) -> None:
    """Wait for the tenant's ingest batch in progress, and keep the next one waiting until this transaction
    ends (each batch waits a second, then its job comes back later)."""
    conn.execute(HOLD_TENANT, {"key": f"intake.ingest:{tenant}"})


# In order; each changes only what is not erased yet, so a second run counts zeros. A message is judged by its
# texts, not by the marker alone: the `api` channel stores the sender's own metadata, which may be that marker.
STEPS: tuple[tuple[str, str], ...] = (
    ("messages", f"""
        UPDATE messages SET content = '', content_html = NULL, quoted_text = NULL, subject = NULL,
               rfc_message_id = NULL, attachments = '[]', metadata = '{ERASED_METADATA}', status_error = NULL
        WHERE tenant_id = :t AND id = ANY(:messages)
        AND (metadata <> '{ERASED_METADATA}' OR content <> '' OR content_html IS NOT NULL OR quoted_text IS NOT NULL
             OR subject IS NOT NULL OR rfc_message_id IS NOT NULL OR attachments <> '[]'
             OR status_error IS NOT NULL)"""),
    ("conversations", """
        UPDATE conversations SET subject = NULL WHERE tenant_id = :t AND id = ANY(:conversations)
        AND subject IS NOT NULL"""),
    ("classifications", """
        UPDATE ai_classifications SET reasoning = '' WHERE tenant_id = :t AND message_id = ANY(:messages)
        AND reasoning <> ''"""),
    # An example the tenant's AI learns from that was made of one of their messages goes with it.
    ("examples", "DELETE FROM ai_examples WHERE tenant_id = :t AND message_id = ANY(:messages)"),
    ("drafts", """
        UPDATE ai_drafts SET content = '' WHERE tenant_id = :t
        AND (message_id = ANY(:messages) OR conversation_id = ANY(:conversations)) AND content <> ''"""),
    # Processed events only (their messages are stored): one still failed stays, for its ledger, redacted.
    ("events", """
        UPDATE inbound_events SET body = ''::bytea, headers = '{}'::jsonb, error = NULL,
               body_purged_at = coalesce(body_purged_at, now())
        WHERE tenant_id = :t AND id = ANY(:events) AND status = 'processed'
        AND (octet_length(body) > 0 OR headers <> '{}'::jsonb OR error IS NOT NULL)"""),
    # Ledger rows about their own messages and events: nothing is left to replay. Others are redacted in place.
    ("failures", """
        UPDATE job_failures SET exception_message = 'erased', traceback = '',
               status = CASE status WHEN 'dead' THEN 'discarded' ELSE status END
        WHERE tenant_id = :t AND exception_message <> 'erased'
        AND EXISTS (SELECT 1 FROM unnest(CAST(:refs AS text[])) r WHERE strpos(coalesce(ref_id, ''), r) > 0)"""),
    # Rows naming one of their identities, and rows about their contacts (a merge lists every identity moved,
    # however short); not the erasure's own records, which hold counts only.
    ("audit_rows", """
        UPDATE audit_logs SET details = '{}', before = NULL, after = NULL
        WHERE tenant_id = :t AND action <> 'contact.erase'
        AND (details <> '{}' OR before IS NOT NULL OR after IS NOT NULL)
        AND EXISTS (
            SELECT 1 FROM unnest(CAST(:needles AS text[]) || CAST(:people_text AS text[])) n
            WHERE strpos(lower(subject_id || details::text || coalesce(before::text, '')
                               || coalesce(after::text, '')), n) > 0)"""),
    ("duplicate_candidates", """
        DELETE FROM contact_duplicate_candidates WHERE tenant_id = :t
        AND (contact_id = ANY(:people) OR candidate_id = ANY(:people))"""),
    ("merges", """
        DELETE FROM contact_merges WHERE tenant_id = :t
        AND (survivor_id = ANY(:people) OR merged_id = ANY(:people))"""),
    ("identities", "DELETE FROM contact_identities WHERE tenant_id = :t AND contact_id = ANY(:people)"),
    ("contacts", """
        UPDATE contacts SET display_name = NULL, erased_at = coalesce(erased_at, now()), updated_at = now()
        WHERE tenant_id = :t AND id = ANY(:people) AND (display_name IS NOT NULL OR erased_at IS NULL)"""),
)


def _person(conn: Connection, tenant: TenantId, contact_id: uuid.UUID) -> list[uuid.UUID]:
    """The contact and every contact merged into it or it into, transitively: one person."""
    people = {contact_id}
    while True:
        found = set(_ids(conn, """
            SELECT id FROM contacts WHERE tenant_id = :t AND merged_into_id = ANY(:people)
            UNION SELECT merged_into_id FROM contacts WHERE tenant_id = :t AND id = ANY(:people)
              AND merged_into_id IS NOT NULL""", {"t": tenant, "people": sorted(people)}))
        if found <= people:
            return sorted(people)
        people |= found


def _needles(person: Person) -> list[str]:
    """Lower-cased spellings of the person's identities to look for in raw bodies and free texts."""
    needles: set[str] = set()
    for kind, value in person.identities:
        for spelling in (value, value.removeprefix("+") if kind == "phone" else value,
                         value.split(":", 1)[-1] if kind == "external" else value):
            # A form-encoded body (Mailgun, Twilio) holds `erik%40example.se`.
            for written in (spelling, quote(spelling, safe="")):
                if len(written) >= MIN_NEEDLE:
                    needles.add(written.lower())
    return sorted(needles)


def _events_naming(conn: Connection, tenant: TenantId, needles: list[str]) -> list[uuid.UUID]:
    """Processed events whose body or headers contain one of `needles` (bytes read as escaped text)."""
    if not needles:
        return []
    return _ids(conn, """
        SELECT id FROM inbound_events WHERE tenant_id = :t AND body_purged_at IS NULL AND status = 'processed'
        AND EXISTS (SELECT 1 FROM unnest(CAST(:needles AS text[])) n
                    WHERE strpos(lower(encode(body, 'escape')), n) > 0 OR strpos(lower(headers::text), n) > 0)""",
        {"t": tenant, "needles": needles})


def _ids(conn: Connection, statement: str, params: dict[str, Any]) -> list[uuid.UUID]:
    return [uuid.UUID(str(row[0])) for row in conn.execute(text(statement), params)]
