"""Delivering one endpoint's events: plan, claim, send (with no database connection held), record.

    plan     the events past the endpoint's cursor become pending deliveries
    claim    due deliveries are leased: the first pending one of each conversation only, so an event is sent
             after the one before it is delivered or given up (events without a conversation are not ordered
             among themselves)
    send     each leased delivery is POSTed, signed, on a thread of the pass's own, to an address checked as
             safe just before (`sending`)
    record   as the answers come in. 2xx: delivered. Otherwise the next try follows the retry schedule (a
             429's Retry-After instead), and after the last one the delivery is failed (`recover` sends it
             again). An endpoint with no 2xx for the disable window since its first failure is disabled and
             audited.

A pass (`deliver`) keeps up to `batch` deliveries in flight for as long as it is given. Whenever answers come
in, one short transaction records them all (a statement for the delivered, one for the others) and, in the
same transaction, plans and claims as many as were settled: an answer for a conversation lets its next event
go at once, and a fast receiver is never waiting for the slowest delivery of a batch. The pass's threads are
its own, so a receiver that hangs holds only its own endpoint's pass.

A lease outlives the HTTP timeout; a process killed mid-send leaves it to run out, and the delivery is sent
again (the receiver sees the same `webhook-id`). No row lock or transaction is held while a receiver is
being waited for. Jobs are wake-ups only: everything this module needs to resume is in PostgreSQL.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog
from sqlalchemy import Connection, Engine, text

from db.tenancy import TenantId, bind_tenant
from pipelines import audit
from pipelines.crypto import SecretBox
from pipelines.webhooks import targets
from pipelines.webhooks.sending import Connections, Delivery, Outcome, Targets, failed, send

log = structlog.get_logger("intake.webhooks")

ACTOR = audit.Actor("system:webhooks")
TOGETHER_SECONDS = 0.005  # answers arriving within this of the first are recorded in its transaction
PLAN_LIMIT = 1000

ENDPOINT = text("""
SELECT e.url, e.secret, e.previous_secret, e.previous_secret_until, e.rate_limit_per_second, e.cursor_seq,
       coalesce((SELECT h.last_seq FROM change_feed_heads h WHERE h.tenant_id = e.tenant_id), 0) AS head
FROM webhook_endpoints e WHERE e.id = :e AND e.enabled
""")
PLAN_LOCK = text("SELECT cursor_seq, event_types FROM webhook_endpoints WHERE id = :e AND enabled "
                 "FOR UPDATE SKIP LOCKED")
PLAN = text("""
WITH batch AS (SELECT seq, id, type, conversation_id FROM change_events
               WHERE tenant_id = :t AND seq > :cursor ORDER BY seq LIMIT :limit),
planned AS (INSERT INTO webhook_attempts (tenant_id, endpoint_id, event_seq, event_id, conversation_id)
            SELECT :t, :e, seq, id, conversation_id FROM batch
            WHERE cardinality(CAST(:types AS text[])) = 0 OR type = ANY(CAST(:types AS text[]))
            ON CONFLICT DO NOTHING RETURNING 1)
UPDATE webhook_endpoints SET cursor_seq = (SELECT max(seq) FROM batch)
WHERE id = :e AND EXISTS (SELECT 1 FROM batch)
RETURNING cursor_seq, (SELECT count(*) FROM planned) AS planned
""")
# Leased and loaded in one statement: the first pending delivery of each conversation that is due and not in
# flight, with its event.
CLAIM = text("""
WITH claimed AS (
    UPDATE webhook_attempts SET leased_until = now() + :lease, attempts = attempts + 1, updated_at = now()
    WHERE id IN (
        SELECT a.id FROM webhook_attempts a
        WHERE a.tenant_id = :t AND a.endpoint_id = :e AND a.status = 'pending' AND a.next_attempt_at <= now()
          AND (a.leased_until IS NULL OR a.leased_until < now())
          AND (a.conversation_id IS NULL OR NOT EXISTS (
              SELECT 1 FROM webhook_attempts b
              WHERE b.tenant_id = a.tenant_id AND b.endpoint_id = a.endpoint_id AND b.status = 'pending'
                AND b.conversation_id = a.conversation_id AND b.event_seq < a.event_seq))
        ORDER BY a.event_seq LIMIT :limit FOR UPDATE SKIP LOCKED)
      AND EXISTS (SELECT 1 FROM webhook_endpoints WHERE id = :e AND enabled)
    RETURNING id, event_id, event_seq, attempts)
SELECT c.id, c.event_id, c.attempts, e.type, CAST(e.data AS text) AS data, e.created_at
FROM claimed c LEFT JOIN change_events e ON e.tenant_id = :t AND e.seq = c.event_seq
ORDER BY c.event_seq
""")
# Every delivered answer of a round in one statement, and the endpoint healthy again.
DELIVERED = text("""
WITH done AS (
    UPDATE webhook_attempts a SET status = 'delivered', delivered_at = now(), updated_at = now(),
        leased_until = NULL, last_status_code = u.code, last_error = NULL, response_excerpt = u.excerpt
    FROM unnest(CAST(:ids AS uuid[]), CAST(:codes AS integer[]), CAST(:excerpts AS text[])) AS u(id, code, excerpt)
    WHERE a.tenant_id = :t AND a.id = u.id AND a.status = 'pending'
    RETURNING 1)
UPDATE webhook_endpoints SET failing_since = NULL WHERE id = :e AND failing_since IS NOT NULL
""")
RETRY = text("""
UPDATE webhook_attempts a SET status = u.status, next_attempt_at = now() + make_interval(secs => u.delay),
    updated_at = now(), leased_until = NULL, last_status_code = u.code, last_error = u.error,
    response_excerpt = u.excerpt
FROM unnest(CAST(:ids AS uuid[]), CAST(:statuses AS text[]), CAST(:delays AS float8[]), CAST(:codes AS integer[]),
            CAST(:errors AS text[]), CAST(:excerpts AS text[])) AS u(id, status, delay, code, error, excerpt)
WHERE a.tenant_id = :t AND a.id = u.id AND a.status = 'pending'
""")
FAILING = text("""
UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, now()) WHERE id = :e
RETURNING enabled, failing_since, now() - failing_since >= :window AS expired
""")
DISABLE = text("""
UPDATE webhook_endpoints SET enabled = false, disabled_at = now(), disabled_reason = :reason, updated_at = now()
WHERE id = :e AND enabled
""")
ENDPOINTS_OF = text("SELECT id FROM webhook_endpoints WHERE tenant_id = :t AND enabled")
DUE = text("SELECT tenant_id, endpoint_id FROM intake_webhook_due(:limit)")


@dataclass(frozen=True)
class Policy:
    """How deliveries are tried: the settings' values, handed in."""

    retry_delays: Sequence[float]
    disable_after: timedelta
    timeout: float
    batch: int
    allow_private: bool

    @property
    def lease(self) -> timedelta:
        """Longer than any send can take (connect, write and read, each up to the timeout), with a margin."""
        return timedelta(seconds=3 * self.timeout + 5)


@dataclass(frozen=True)
class Round:
    """What one pass over an endpoint did, and whether another should follow (at once, or after a second when
    the endpoint's rate limit was reached)."""

    planned: int
    sent: int
    delivered: int
    more: bool
    rate_limited: bool


def body(event_type: str, created_at: datetime, data: str) -> bytes:
    """The delivery's JSON body. `data` is the event's as PostgreSQL prints it (valid JSON), put in as it is
    rather than parsed and printed again."""
    head = orjson.dumps({"type": event_type, "timestamp": created_at.astimezone(UTC).isoformat()})
    return head[:-1] + b',"data":' + data.encode() + b"}"


def plan(conn: Connection, tenant: TenantId, endpoint_id: uuid.UUID, limit: int = PLAN_LIMIT) -> int:
    """Turn the events past the endpoint's cursor into pending deliveries; how many. A second caller at the
    same time skips: the one holding the endpoint's row plans for both."""
    endpoint = conn.execute(PLAN_LOCK, {"e": endpoint_id}).first()
    if endpoint is None:
        return 0
    row = conn.execute(PLAN, {"t": tenant, "e": endpoint_id, "cursor": endpoint.cursor_seq, "limit": limit,
                              "types": list(endpoint.event_types or [])}).first()
    return 0 if row is None else int(row.planned)


def claim(conn: Connection, tenant: TenantId, endpoint_id: uuid.UUID, limit: int, lease: timedelta
          ) -> list[Delivery]:
    rows = conn.execute(CLAIM, {"t": tenant, "e": endpoint_id, "limit": limit, "lease": lease})
    return [Delivery(r.id, str(r.event_id), r.attempts, None if r.type is None else body(r.type, r.created_at, r.data))
            for r in rows]


def secrets_of(box: SecretBox, endpoint: Any, now: datetime) -> list[str]:
    """The signing secrets: the current one, and the previous one during a rotation's overlap."""
    found = [box.open(endpoint.secret)["secret"]]
    if endpoint.previous_secret and endpoint.previous_secret_until and endpoint.previous_secret_until > now:
        found.append(box.open(endpoint.previous_secret)["secret"])
    return found


def record(conn: Connection, tenant: TenantId, endpoint_id: uuid.UUID, outcomes: Sequence[Outcome],
           policy: Policy) -> None:
    """Store what the sends got (one statement for the delivered, one for the others), and the endpoint's
    health (disabling it past the window, audited)."""
    delivered = [o for o in outcomes if o.delivered]
    if delivered:
        conn.execute(DELIVERED, {"t": tenant, "e": endpoint_id, "ids": [o.attempt_id for o in delivered],
                                 "codes": [o.status_code for o in delivered],
                                 "excerpts": [o.excerpt for o in delivered]})
    others = [o for o in outcomes if not o.delivered]
    if others:
        statuses, delays = [], []
        for o in others:
            give_up = o.attempts > len(policy.retry_delays)
            delay = 0.0 if give_up else policy.retry_delays[o.attempts - 1]
            if o.retry_after is not None and not give_up:
                delay = o.retry_after
            statuses.append("failed" if give_up else "pending")
            delays.append(delay)
        conn.execute(RETRY, {"t": tenant, "ids": [o.attempt_id for o in others], "statuses": statuses,
                             "delays": delays, "codes": [o.status_code for o in others],
                             "errors": [o.error for o in others], "excerpts": [o.excerpt for o in others]})
    if others and not delivered:
        health = conn.execute(FAILING, {"e": endpoint_id, "window": policy.disable_after}).one()
        if health.enabled and health.expired:
            disable(conn, tenant, endpoint_id, health.failing_since, policy.disable_after)


def disable(conn: Connection, tenant: TenantId, endpoint_id: uuid.UUID, since: datetime, window: timedelta) -> None:
    reason = f"no successful delivery since {since.isoformat()} (more than {window})"
    conn.execute(DISABLE, {"e": endpoint_id, "reason": reason})
    audit.record(conn, actor=ACTOR, action="webhook_endpoint.disable", tenant_id=tenant,
                 subject_type="webhook_endpoint", subject_id=endpoint_id,
                 before={"enabled": True}, after={"enabled": False, "disabled_reason": reason})
    log.warning("webhooks.endpoint.disabled", tenant_id=str(tenant), endpoint_id=str(endpoint_id))


class Signer:
    """The endpoint's signing secrets, opened once per sealed value rather than per round."""

    def __init__(self, box: SecretBox) -> None:
        self.box = box
        self._opened: tuple[tuple[Any, ...], list[str]] | None = None

    def secrets(self, endpoint: Any) -> list[str]:
        now = datetime.now(UTC)
        key = (endpoint.secret, endpoint.previous_secret,
               bool(endpoint.previous_secret_until and endpoint.previous_secret_until > now))
        if self._opened is None or self._opened[0] != key:
            self._opened = (key, secrets_of(self.box, endpoint, now))
        return self._opened[1]


def deliver(engine: Engine, box: SecretBox, tenant: TenantId, endpoint_id: uuid.UUID, policy: Policy, *,
            seconds: float = 0.0) -> Round:
    """A pass over an endpoint: deliveries kept in flight (up to `batch`), claimed and recorded as answers come
    in, for about `seconds` (at least one round); then what is in flight is waited for and recorded. No
    database connection is held while a receiver is waited for."""
    deadline = time.monotonic() + seconds
    checked, signer = Targets(allow_private=policy.allow_private), Signer(box)
    flying: dict[Future[Outcome], Delivery] = {}
    settled: list[Outcome] = []
    planned = sent = delivered = 0
    claiming, rate_limited, expired = True, False, False
    connections = Connections(policy.timeout)  # the pass's own, kept alive between its deliveries
    try:
        with ThreadPoolExecutor(max_workers=policy.batch, thread_name_prefix="webhook-send") as pool:
            while True:
                room = policy.batch - len(flying)
                with engine.begin() as conn:
                    bind_tenant(conn, tenant)
                    if settled:
                        record(conn, tenant, endpoint_id, settled, policy)
                        delivered += sum(o.delivered for o in settled)
                        settled = []
                    endpoint, deliveries = None, []
                    if claiming and room > 0:
                        endpoint = conn.execute(ENDPOINT, {"e": endpoint_id}).first()
                        if endpoint is None:  # disabled or deleted meanwhile: what is in flight is still recorded
                            claiming = False
                        else:
                            if endpoint.cursor_seq < endpoint.head:
                                planned += plan(conn, tenant, endpoint_id)
                            limit = room
                            if endpoint.rate_limit_per_second is not None:
                                limit = min(limit, endpoint.rate_limit_per_second - sent)
                            deliveries = claim(conn, tenant, endpoint_id, limit, policy.lease) if limit > 0 else []
                if endpoint is not None and deliveries:
                    sent += len(deliveries)
                    try:
                        target = checked.check(endpoint.url)
                    except targets.UnsafeTarget as exc:
                        settled += [failed(d, f"refused target: the URL {exc}") for d in deliveries]
                    else:
                        secrets = signer.secrets(endpoint)
                        for d in deliveries:
                            flying[pool.submit(send, connections, target, secrets, d)] = d
                if endpoint is not None and endpoint.rate_limit_per_second is not None \
                        and sent >= endpoint.rate_limit_per_second:
                    claiming, rate_limited = False, True  # this second's share is taken: the next job, a second later
                if claiming and time.monotonic() >= deadline:
                    claiming, expired = False, True  # the pass hands over to a new job (and the queue's others)
                if settled and not flying:
                    continue  # refused targets: recorded (and the next claimed) at once
                if not flying:
                    break
                # Recorded as they finish (those finishing together, together): a slow receiver's answer for one
                # conversation does not hold back the next event of another.
                done, _ = wait(flying, return_when=FIRST_COMPLETED)
                if len(done) < len(flying):
                    more, _ = wait(flying.keys() - done, timeout=TOGETHER_SECONDS)
                    done |= more
                for future in done:
                    del flying[future]
                    settled.append(future.result())
    finally:
        connections.close()  # the idle ones; each in flight was closed or given back by its send
    if sent:
        log.info("webhooks.delivered", tenant_id=str(tenant), endpoint_id=str(endpoint_id), sent=sent,
                 delivered=delivered)
    # A pass that ran out of claimable work ends with nothing to hand over; one stopped by its time or the
    # endpoint's rate limit may have more.
    return Round(planned, sent, delivered, more=rate_limited or expired, rate_limited=rate_limited)


def endpoints_of(conn: Connection, tenant: TenantId) -> list[uuid.UUID]:
    """The tenant's enabled endpoints (in a transaction bound to it)."""
    return [r.id for r in conn.execute(ENDPOINTS_OF, {"t": tenant})]


def due(conn: Connection, limit: int = 10_000) -> list[tuple[TenantId, uuid.UUID]]:
    """Endpoints with work, across tenants: ids only (intake_webhook_due, migration 0016)."""
    return [(TenantId(r.tenant_id), r.endpoint_id) for r in conn.execute(DUE, {"limit": limit})]
