"""One LISTEN connection per admin process, shared by every open change stream.

`intake_record_changes` notifies `intake_changes` with `<tenant>:<last seq>` when a transaction that recorded
changes commits (migration 0015). A stream does not hold a connection of its own while it waits: it
subscribes here for its tenant and sleeps on an asyncio event, which the listener's thread sets when a
notification names that tenant. A thousand open streams cost this one connection; each reads its tenant's
new rows only when woken, in a short transaction of its own bound to the tenant.

A wake-up is a flag, not a queue: however many notifications arrive while a stream is busy writing to a slow
client, it reads once more when it is done, from the last seq it sent. When the listening connection is lost
the thread connects again and wakes every stream (a notification may have been missed meanwhile); the
streams' heartbeats carry on regardless. `close` wakes every stream for the last time, so that they end and a
shutdown does not wait on them.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import defaultdict

import psycopg
import structlog
from sqlalchemy.engine import make_url

log = structlog.get_logger("intake.admin.feed")

CHANNEL = "intake_changes"
POLL_SECONDS = 1.0  # how often the thread looks up from the socket to see whether it should stop
RECONNECT_SECONDS = 1.0


class Subscription:
    """One stream's wake-up flag, set from the listener's thread, awaited on the stream's event loop."""

    def __init__(self, tenant: uuid.UUID, loop: asyncio.AbstractEventLoop) -> None:
        self.tenant = tenant
        self.closed = False
        self._loop = loop
        self._event = asyncio.Event()

    def wake(self) -> None:
        """Thread-safe: the next (or current) `wait` returns at once."""
        try:
            self._loop.call_soon_threadsafe(self._event.set)
        except RuntimeError:  # the loop is closed: the stream is gone
            pass

    def clear(self) -> None:
        """Forget earlier wake-ups: call before reading, so a change committed during the read wakes the next wait."""
        self._event.clear()

    async def wait(self, timeout: float) -> bool:
        """True when woken, False after `timeout` seconds of quiet."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        return True


class ChangeListener:
    """The process's LISTEN connection (started with the first subscription) and who waits on which tenant."""

    def __init__(self, database_url: str) -> None:
        self._dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._subscribers: dict[uuid.UUID, set[Subscription]] = defaultdict(set)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()  # set while LISTEN is in effect (tests wait on it)

    def subscribe(self, tenant: uuid.UUID) -> Subscription:
        subscription = Subscription(tenant, asyncio.get_running_loop())
        with self._lock:
            if self._stop.is_set():
                subscription.closed = True
                return subscription
            self._subscribers[tenant].add(subscription)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="intake-change-listener", daemon=True)
                self._thread.start()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            waiting = self._subscribers.get(subscription.tenant)
            if waiting is not None:
                waiting.discard(subscription)
                if not waiting:
                    del self._subscribers[subscription.tenant]

    def subscribers(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._subscribers.values())

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            everyone = [s for subs in self._subscribers.values() for s in subs]
        for subscription in everyone:
            subscription.closed = True
            subscription.wake()
        if self._thread is not None:
            self._thread.join(timeout=POLL_SECONDS * 3)

    def _wake(self, tenant: uuid.UUID | None) -> None:
        with self._lock:
            chosen = [s for t, subs in self._subscribers.items() if tenant is None or t == tenant for s in subs]
        for subscription in chosen:
            subscription.wake()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, application_name="intake-admin-feed") as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    self._wake(None)  # whatever was committed while no one listened
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=POLL_SECONDS):
                            tenant = _tenant_of(notice.payload)
                            if tenant is not None:
                                self._wake(tenant)
            except psycopg.Error as exc:
                self.listening.clear()
                log.warning("admin.feed.listen_lost", error=str(exc))
                self._stop.wait(RECONNECT_SECONDS)
        self.listening.clear()


def _tenant_of(payload: str) -> uuid.UUID | None:
    """The tenant of a `<tenant>:<last seq>` payload (None for anything else on the channel)."""
    tenant, _, _ = payload.partition(":")
    try:
        return uuid.UUID(tenant)
    except ValueError:
        return None
