"""Sending one delivery: the target checked, the POST signed, the answer read up to 2 KiB, never an exception.

A pass over an endpoint sends through its own `Connections`: HTTP/1.1 connections kept alive between its
deliveries (one per delivery in flight, at most), so a backlog costs a connection per conversation slot, not
one per event, and no pass waits for a connection another holds. They are the standard library's
`http.client` connections: a delivery is one request and a bounded read, and a general client's pool
bookkeeping cost several times the request itself here. Redirects are never followed (a 3xx is an answer like
any other), no proxy is used, and every network step (connect, send, each read) has the timeout.

Each delivery goes to an address checked as safe at most `TARGET_SECONDS` before (`Targets`): the check
resolves the host and refuses private addresses, and the connection is then made to the address that was
checked, never resolving the name again (TLS verifies the URL's host name). Keeping a checked address for a
second is as safe as checking per delivery: what is connected to is always an address that passed; a DNS
change takes effect at the next check instead of the next delivery.
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from pipelines.webhooks import signing, targets

EXCERPT_BYTES = 2048
MAX_RETRY_AFTER = 86_400.0
TARGET_SECONDS = 1.0
HEADERS = {"content-type": "application/json", "user-agent": "Intake-Webhooks/1"}
# A kept-alive connection the receiver closed meanwhile fails before any answer: sent again, once, on a new one.
STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


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


def failed(delivery: Delivery, error: str, **more: Any) -> Outcome:
    return Outcome(delivery.attempt_id, delivery.attempts, False, error=error[:1000], **more)


class Targets:
    """Checked targets by URL, each kept for `TARGET_SECONDS` (a refusal is not kept: it is checked again).
    One per pass over an endpoint, used from one thread."""

    def __init__(self, *, allow_private: bool, seconds: float = TARGET_SECONDS) -> None:
        self.allow_private = allow_private
        self.seconds = seconds
        self._checked: dict[str, tuple[float, targets.Target]] = {}

    def check(self, url: str) -> targets.Target:
        """The URL's target; UnsafeTarget when it may not receive."""
        now = time.monotonic()
        kept = self._checked.get(url)
        if kept is not None and now - kept[0] < self.seconds:
            return kept[1]
        target = targets.check(url, allow_private=self.allow_private)
        self._checked = {url: (now, target)}
        return target


_tls: list[ssl.SSLContext] = []
_tls_lock = threading.Lock()


def tls_context() -> ssl.SSLContext:
    """The process's TLS context (certificates verified, the CA bundle loaded once), built on first use."""
    with _tls_lock:
        if not _tls:
            import httpx  # its context: the same trust store (certifi) as the fleet's other outbound calls

            _tls.append(httpx.create_ssl_context())
        return _tls[0]


class _TLSConnection(http.client.HTTPSConnection):
    """TLS to the checked address, verifying the certificate for the URL's host name."""

    def __init__(self, address: str, port: int, *, server_name: str, timeout: float) -> None:
        super().__init__(address, port, timeout=timeout, context=tls_context())
        self.server_name = server_name

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.server_name)  # type: ignore[attr-defined]


Key = tuple[str, str, int, str]  # scheme, address to connect to, port, host name


class Connections:
    """One pass's kept-alive connections: a delivery takes an idle one to its target (or opens one) and gives it
    back when its answer was read to the end. Thread-safe; `close` when the pass ends."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._idle: dict[Key, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def take(self, key: Key) -> tuple[http.client.HTTPConnection, bool]:
        """A connection, and whether it was used before."""
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop(), True
        return self.open(key), False

    def open(self, key: Key) -> http.client.HTTPConnection:
        scheme, address, port, host = key
        if scheme == "https":
            return _TLSConnection(address, port, server_name=host, timeout=self.timeout)
        return http.client.HTTPConnection(address, port, timeout=self.timeout)

    def give(self, key: Key, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.setdefault(key, []).append(conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()


def retry_after(value: str | None, now: datetime) -> float | None:
    value = (value or "").strip()
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


def send(connections: Connections, target: targets.Target, secrets: list[str], delivery: Delivery) -> Outcome:
    """POST one delivery to a checked target; every failure is an Outcome, never an exception."""
    if delivery.body is None:
        return failed(delivery, "the event is no longer stored (retention removed it)")
    parts = urlsplit(target.url)
    scheme, host = parts.scheme, target.host
    key: Key = (scheme, target.address or host, parts.port or (443 if scheme == "https" else 80), host)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    timestamp = int(datetime.now(UTC).timestamp())
    headers = {"host": parts.netloc, **HEADERS, **signing.headers(secrets, delivery.event_id, timestamp, delivery.body)}
    conn, reused = connections.take(key)
    while True:
        try:
            conn.request("POST", path, body=delivery.body, headers=headers)
            response = conn.getresponse()
            raw = response.read(EXCERPT_BYTES)
        except STALE as exc:
            conn.close()
            if reused:  # the receiver had closed the idle connection: once more, on a new one
                conn, reused = connections.open(key), False
                continue
            return failed(delivery, f"{type(exc).__name__}: {exc}")
        except TimeoutError:
            conn.close()
            return failed(delivery, f"no answer within {connections.timeout:g} s")
        except (OSError, http.client.HTTPException, ValueError, UnicodeError) as exc:
            conn.close()
            return failed(delivery, f"{type(exc).__name__}: {exc}")
        break
    if response.isclosed() and not response.will_close:
        connections.give(key, conn)  # the answer was read to its end: the connection serves the next delivery
    else:
        conn.close()  # a body longer than the excerpt, or a receiver that closes: not reused
    code = response.status
    if 200 <= code < 300:
        return Outcome(delivery.attempt_id, delivery.attempts, True, status_code=code, excerpt=excerpt(raw))
    wait = retry_after(response.getheader("retry-after"), datetime.now(UTC)) if code == 429 else None
    return failed(delivery, f"HTTP {code}", status_code=code, excerpt=excerpt(raw), retry_after=wait)

