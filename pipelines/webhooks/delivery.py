"""Delivering one endpoint's events: plan, claim, send (with no database connection held), record.

    plan     the events past the endpoint's cursor become pending deliveries (one transaction)
    claim    up to `batch` due deliveries are leased: the first pending one of each conversation only, so an
             event is sent after the one before it is delivered or given up (events without a conversation
             are not ordered among themselves)
    send     each leased delivery is POSTed, signed, in parallel, to the address checked just before
    record   as the answers come in. 2xx: delivered. Otherwise the next try follows the retry schedule (a
             429's Retry-After instead), and after the last one the delivery is failed (`recover` sends it
             again). An endpoint with no 2xx for the disable window since its first failure is disabled and
             audited.

A lease outlives the HTTP timeout; a process killed mid-send leaves it to run out, and the delivery is sent
again (the receiver sees the same `webhook-id`). No row lock or transaction is held while a receiver is
being waited for. Jobs are wake-ups only: everything this module needs to resume is in PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson
import structlog
from sqlalchemy import Connection, Engine, text

from db.tenancy import TenantId, bind_tenant
from pipelines import audit
from pipelines.crypto import SecretBox
from pipelines.webhooks import signing, targets

log = structlog.get_logger("intake.webhooks")

EXCERPT_BYTES = 2048
MAX_RETRY_AFTER = 86_400.0
ACTOR = audit.Actor("system:webhooks")
TOGETHER_SECONDS = 0.02

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
CLAIM = text("""
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
RETURNING id
""")
LOAD = text("""
SELECT a.id, a.event_id, a.event_seq, a.attempts, c.type, c.data, c.created_at
FROM webhook_attempts a LEFT JOIN change_events c ON c.tenant_id = a.tenant_id AND c.seq = a.event_seq
WHERE a.tenant_id = :t AND a.id = ANY(:ids) ORDER BY a.event_seq
""")
ENDPOINT = text("SELECT url, secret, previous_secret, previous_secret_until, rate_limit_per_second "
                "FROM webhook_endpoints WHERE id = :e")
DELIVERED = text("""
UPDATE webhook_attempts SET status = 'delivered', delivered_at = now(), updated_at = now(), leased_until = NULL,
    last_status_code = :code, last_error = NULL, response_excerpt = :excerpt
WHERE id = :id AND status = 'pending'
""")
RETRY = text("""
UPDATE webhook_attempts SET status = :status, next_attempt_at = now() + :delay, updated_at = now(),
    leased_until = NULL, last_status_code = :code, last_error = :error, response_excerpt = :excerpt
WHERE id = :id AND status = 'pending'
""")
HEALTHY = text("UPDATE webhook_endpoints SET failing_since = NULL WHERE id = :e AND failing_since IS NOT NULL")
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
class Delivery:
    attempt_id: uuid.UUID
    event_id: str
    attempts: int
    body: bytes | None  # None: retention removed the event before it could be sent


@dataclass(frozen=True)
class Outcome:
    attempt_id: uuid.UUID
    attempts: int
    delivered: bool
    status_code: int | None = None
    error: str | None = None
    excerpt: str | None = None
    retry_after: float | None = None


@dataclass(frozen=True)
class Round:
    """What one pass over an endpoint did, and whether another should follow (at once, or after a second when
    the endpoint's rate limit was reached)."""

    planned: int
    sent: int
    delivered: int
    more: bool
    rate_limited: bool


def body(event_type: str, created_at: datetime, data: Any) -> bytes:
    return orjson.dumps({"type": event_type, "timestamp": created_at.astimezone(UTC).isoformat(), "data": data})


def plan(conn: Connection, tenant: TenantId, endpoint_id: uuid.UUID, limit: int = 1000) -> int:
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
    ids = [r.id for r in conn.execute(CLAIM, {"t": tenant, "e": endpoint_id, "limit": limit, "lease": lease})]
    if not ids:
        return []
    return [Delivery(r.id, str(r.event_id), r.attempts, None if r.type is None else body(r.type, r.created_at, r.data))
            for r in conn.execute(LOAD, {"t": tenant, "ids": ids})]


def secrets_of(box: SecretBox, endpoint: Any, now: datetime) -> list[str]:
    """The signing secrets: the current one, and the previous one during a rotation's overlap."""
    found = [box.open(endpoint.secret)["secret"]]
    if endpoint.previous_secret and endpoint.previous_secret_until and endpoint.previous_secret_until > now:
        found.append(box.open(endpoint.previous_secret)["secret"])
    return found


def retry_after(response: httpx.Response, now: datetime) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return min(max((when - now).total_seconds(), 0.0), MAX_RETRY_AFTER)


def excerpt(raw: bytes) -> str:
    """A response's first bytes as text PostgreSQL stores: invalid UTF-8 replaced, NUL dropped."""
    return raw[:EXCERPT_BYTES].decode("utf-8", "replace").replace("\x00", "")


def send(client: httpx.Client, url: str, secrets: list[str], delivery: Delivery, policy: Policy) -> Outcome:
    """POST one delivery; every failure is an Outcome, never an exception."""
    def failed(error: str, **more: Any) -> Outcome:
        return Outcome(delivery.attempt_id, delivery.attempts, False, error=error[:1000], **more)

    if delivery.body is None:
        return failed("the event is no longer stored (retention removed it)")
    try:
        target = targets.check(url, allow_private=policy.allow_private)
    except targets.UnsafeTarget as exc:
        return failed(f"refused target: the URL {exc}")
    timestamp = int(datetime.now(UTC).timestamp())
    headers = {"content-type": "application/json", "user-agent": "Intake-Webhooks/1",
               **signing.headers(secrets, delivery.event_id, timestamp, delivery.body)}
    request_url = httpx.URL(url)
    extensions: dict[str, Any] = {}
    if target.address is not None:  # connect to the address that was checked, naming the host as asked
        headers["host"] = request_url.netloc.decode("ascii")
        request_url = request_url.copy_with(host=target.address)
        extensions["sni_hostname"] = target.host
    try:
        request = client.build_request("POST", request_url, headers=headers, content=delivery.body,
                                       extensions=extensions, timeout=httpx.Timeout(policy.timeout))
        response = client.send(request, stream=True, follow_redirects=False)
        try:
            raw = b""
            for chunk in response.iter_raw():
                raw += chunk
                if len(raw) >= EXCERPT_BYTES:
                    break
        finally:
            response.close()
    except httpx.TimeoutException:
        return failed(f"no answer within {policy.timeout:g} s")
    except (httpx.HTTPError, OSError, ValueError) as exc:
        return failed(f"{type(exc).__name__}: {exc}")
    code = response.status_code
    if 200 <= code < 300:
        return Outcome(delivery.attempt_id, delivery.attempts, True, status_code=code, excerpt=excerpt(raw))
    wait = retry_after(response, datetime.now(UTC)) if code == 429 else None
    return failed(f"HTTP {code}", status_code=code, excerpt=excerpt(raw), retry_after=wait)


def record(conn: Connection, tenant: TenantId, endpoint_id: uuid.UUID, outcomes: Sequence[Outcome],
           policy: Policy) -> None:
    """Store what the sends got, and the endpoint's health (disabling it past the window, audited)."""
    for o in outcomes:
        if o.delivered:
            conn.execute(DELIVERED, {"id": o.attempt_id, "code": o.status_code, "excerpt": o.excerpt})
            continue
        give_up = o.attempts > len(policy.retry_delays)
        delay = 0.0 if give_up else policy.retry_delays[o.attempts - 1]
        if o.retry_after is not None and not give_up:
            delay = o.retry_after
        conn.execute(RETRY, {"id": o.attempt_id, "status": "failed" if give_up else "pending",
                             "delay": timedelta(seconds=delay), "code": o.status_code, "error": o.error,
                             "excerpt": o.excerpt})
    if any(o.delivered for o in outcomes):
        conn.execute(HEALTHY, {"e": endpoint_id})
    elif outcomes:
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


def deliver(engine: Engine, box: SecretBox, client: httpx.Client, tenant: TenantId, endpoint_id: uuid.UUID,
            policy: Policy) -> Round:
    """One pass over an endpoint: plan, claim, send in parallel (no connection held), record."""
    with engine.begin() as conn:
        bind_tenant(conn, tenant)
        planned = plan(conn, tenant, endpoint_id)
        endpoint = conn.execute(ENDPOINT, {"e": endpoint_id}).first()
        if endpoint is None:
            return Round(planned, 0, 0, False, False)
        limit = min(policy.batch, endpoint.rate_limit_per_second or policy.batch)
        deliveries = claim(conn, tenant, endpoint_id, limit, policy.lease)
    if not deliveries:
        return Round(planned, 0, 0, False, False)
    secrets = secrets_of(box, endpoint, datetime.now(UTC))
    outcomes: list[Outcome] = []

    def store(done: list[Outcome]) -> None:
        with engine.begin() as conn:
            bind_tenant(conn, tenant)
            record(conn, tenant, endpoint_id, done, policy)
        outcomes.extend(done)

    with ThreadPoolExecutor(max_workers=len(deliveries), thread_name_prefix="webhook-send") as pool:
        waiting = {pool.submit(send, client, endpoint.url, secrets, d, policy) for d in deliveries}
        while waiting:
            # Recorded as they finish (those finishing together, together): a slow receiver's answer for one
            # conversation does not hold back the next event of another.
            done, waiting = wait(waiting, return_when=FIRST_COMPLETED)
            if waiting:
                more, waiting = wait(waiting, timeout=TOGETHER_SECONDS)
                done |= more
            store([f.result() for f in done])
    delivered = sum(o.delivered for o in outcomes)
    log.info("webhooks.delivered", tenant_id=str(tenant), endpoint_id=str(endpoint_id), sent=len(outcomes),
             delivered=delivered)
    # Whatever was settled may have let the next event of its conversation through: look again at once.
    return Round(planned, len(outcomes), delivered, more=True,
                 rate_limited=endpoint.rate_limit_per_second is not None and len(deliveries) == limit)


def endpoints_of(conn: Connection, tenant: TenantId) -> list[uuid.UUID]:
    """The tenant's enabled endpoints (in a transaction bound to it)."""
    return [r.id for r in conn.execute(ENDPOINTS_OF, {"t": tenant})]


def due(conn: Connection, limit: int = 10_000) -> list[tuple[TenantId, uuid.UUID]]:
    """Endpoints with work, across tenants: ids only (intake_webhook_due, migration 0016)."""
    return [(TenantId(r.tenant_id), r.endpoint_id) for r in conn.execute(DUE, {"limit": limit})]
