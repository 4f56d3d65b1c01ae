"""The sweepers: stored events that were never processed, and stored messages never classified, go back
on their queues.

An event stays `received` when its enqueue failed (Redis down), when Redis lost the job (restarted empty,
flushed), or while its job waits in a long queue. After a grace period the sweeper sends it to the `ingest`
queue again and stamps `enqueued_at`, so a backlog is not re-sent on every sweep. Processing is idempotent,
so a sweep that races the original job costs a little work and changes nothing.

A message's `ai` job is sent after its ingest commit; if Redis loses that job the message stays
unclassified. `AiSweep` walks forward through stored messages in time (each message is looked at once per
clock, after INTAKE_AI_SWEEP_GRACE_SECONDS) and sends the inbound ones that have no classification back to
the `ai` queue. While `ai` jobs are waiting in Redis it does not move: the messages it would send are most
likely among them.

Mailgun's one-time tokens are claimed in `replay_tokens` (migration 0009). A claim matters only while its
timestamp could be accepted, 2 x INTAKE_WEBHOOK_TOLERANCE_SECONDS; `forget_replay_tokens` deletes older
ones, a bounded batch per statement.

The clock process (`workers.clock`) runs all three every INTAKE_SWEEP_INTERVAL_SECONDS; each takes its engine
and the function that sends a job, so nothing here knows the broker.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Engine, text

log = structlog.get_logger("intake.sweeper")

CLAIM_STUCK = text("""
UPDATE inbound_events SET enqueued_at = now()
WHERE id IN (SELECT id FROM inbound_events
             WHERE status = 'received' AND received_at < now() - :grace
               AND (enqueued_at IS NULL OR enqueued_at < now() - :grace)
             ORDER BY received_at LIMIT :limit FOR UPDATE SKIP LOCKED)
RETURNING tenant_id, id
""")
# One status per subquery, so each reads its own index (waiting events and settled ones are indexed apart).
STUCK_COUNTS = text("""
SELECT (SELECT count(*) FROM inbound_events WHERE status = 'received' AND received_at < now() - :grace) AS stuck,
       (SELECT count(*) FROM inbound_events WHERE status = 'failed') AS failed,
       coalesce(extract(epoch FROM now() - (SELECT min(received_at) FROM inbound_events
                                            WHERE status = 'received')), 0) AS oldest_s
""")
EXPIRED_REPLAY_TOKENS = text("""
DELETE FROM replay_tokens
WHERE (tenant_id, inbox_id, token) IN (SELECT tenant_id, inbox_id, token FROM replay_tokens
                                       WHERE claimed_at < now() - :older_than LIMIT :limit)
""")


UNCLASSIFIED = text("""
SELECT m.tenant_id, m.id FROM messages m
WHERE m.stored_at >= :since AND m.stored_at < :until AND m.direction = 'inbound'
  AND NOT EXISTS (SELECT 1 FROM ai_classifications a WHERE a.tenant_id = m.tenant_id AND a.message_id = m.id)
ORDER BY m.stored_at
""")


@dataclass(frozen=True)
class SweepResult:
    enqueued: int
    stuck: int
    failed: int
    oldest_seconds: float


Send = Callable[[uuid.UUID, list[uuid.UUID]], None]


def sweep(engine: Engine, send: Send, *, grace: timedelta, limit: int = 10_000, chunk: int = 100) -> SweepResult:
    """Enqueue events stuck longer than `grace`, at most `limit` per sweep, `chunk` per job."""
    with engine.begin() as conn:
        rows = conn.execute(CLAIM_STUCK, {"grace": grace, "limit": limit}).all()
        by_tenant: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
        for tenant_id, event_id in rows:
            by_tenant[tenant_id].append(event_id)
        # Sent inside the transaction: if Redis is down the claim rolls back and the next sweep retries.
        for tenant_id, ids in by_tenant.items():
            for start in range(0, len(ids), chunk):
                send(tenant_id, ids[start:start + chunk])
    with engine.connect() as conn:
        counts = conn.execute(STUCK_COUNTS, {"grace": grace}).one()
    result = SweepResult(len(rows), int(counts.stuck), int(counts.failed), float(counts.oldest_s))
    if rows:
        log.info("sweeper.enqueued", events=len(rows), tenants=len(by_tenant))
    return result


def forget_replay_tokens(engine: Engine, *, older_than: timedelta, limit: int = 50_000) -> int:
    """Delete the token claims made more than `older_than` ago, `limit` per transaction; how many."""
    forgotten = 0
    while True:
        with engine.begin() as conn:
            deleted = conn.execute(EXPIRED_REPLAY_TOKENS, {"older_than": older_than, "limit": limit}).rowcount
        forgotten += deleted
        if deleted < limit:
            break
    if forgotten:
        log.info("sweeper.replay_tokens_forgotten", tokens=forgotten)
    return forgotten


class AiSweep:
    """Stored inbound messages with no classification, found once each as the window moves forward."""

    def __init__(self, engine: Engine, send: Send, backlog: Callable[[], int], *, grace: timedelta,
                 horizon: timedelta, chunk: int = 50) -> None:
        self._engine = engine
        self._send = send
        self._backlog = backlog
        self._grace = grace
        self._chunk = chunk
        self._since: datetime | None = None
        self._horizon = horizon
        self.window: tuple[datetime, datetime] | None = None  # the stored_at range the last sweep looked at

    def __call__(self) -> int:
        """Send the unclassified messages stored since the last sweep; how many were sent."""
        if self._backlog() > 0:
            return 0  # `ai` jobs are waiting: the window waits too
        with self._engine.begin() as conn:
            now: datetime = conn.execute(text("SELECT now()")).scalar_one()
            since = self._since if self._since is not None else now - self._horizon
            until = now - self._grace
            rows = conn.execute(UNCLASSIFIED, {"since": since, "until": until}).all() if until > since else []
            by_tenant: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
            for tenant_id, message_id in rows:
                by_tenant[tenant_id].append(message_id)
            for tenant_id, ids in by_tenant.items():
                for start in range(0, len(ids), self._chunk):
                    self._send(tenant_id, ids[start:start + self._chunk])
        self._since = max(since, until)  # only once everything in the window was sent
        self.window = (since, until)
        if rows:
            log.info("sweeper.ai_enqueued", messages=len(rows), tenants=len(by_tenant))
        return len(rows)
