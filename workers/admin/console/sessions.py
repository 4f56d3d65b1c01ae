"""Console sign-in sessions: a random token in an HttpOnly, SameSite=Strict cookie, and what it stands for.

The API key typed at sign-in is checked once and then forgotten: the session remembers only who it stands
for (the key's id, name and tenant), so no key is ever kept in a cookie, a URL or a page. Each session has
its own CSRF token, which every form and every script sends back with a POST.

Sessions live in the memory of the admin process, as its jobs do (see `workers.admin.background`): a restart
signs everyone out, which for an operator console is the safe direction. They end after `IDLE_SECONDS`
without a request, after `MAX_SECONDS` in any case, at logout, as soon as their key is revoked or its
tenant disabled (each request looks the key up again; enabling the tenant does not bring a session back),
and when their key has `MAX_SESSIONS_PER_KEY` more recently used ones.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from pipelines.control.keys import Principal

COOKIE = "intake_console"
LOGIN_COOKIE = "intake_console_login"  # the CSRF token of the sign-in form, before any session exists
IDLE_SECONDS = 2 * 3600
MAX_SECONDS = 12 * 3600
MAX_SESSIONS = 10_000
# Sessions of one key (past it, its least recently used ends), so that signing in again and again with one
# key (a tenant's) cannot push everyone else's sessions out of the MAX_SESSIONS.
MAX_SESSIONS_PER_KEY = 50


@dataclass
class Session:
    principal: Principal
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    created: float = field(default_factory=time.monotonic)
    seen: float = field(default_factory=time.monotonic)

    def csrf_matches(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(self.csrf.encode(), presented.encode())


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sessions:
    """Sessions by the digest of their token (the tokens themselves are only in the browsers' cookies)."""

    def __init__(self) -> None:
        self._by_digest: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, principal: Principal) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        session = Session(principal)
        with self._lock:
            same_key = [d for d, other in self._by_digest.items() if other.principal.key_id == principal.key_id]
            for digest in same_key[:max(0, len(same_key) + 1 - MAX_SESSIONS_PER_KEY)]:
                del self._by_digest[digest]
            self._by_digest[_digest(token)] = session
            while len(self._by_digest) > MAX_SESSIONS:
                self._by_digest.popitem(last=False)
        return token, session

    def get(self, token: str | None) -> Session | None:
        if not token or len(token) > 100:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._by_digest.get(_digest(token))
            if session is None:
                return None
            if now - session.seen > IDLE_SECONDS or now - session.created > MAX_SECONDS:
                del self._by_digest[_digest(token)]
                return None
            session.seen = now
            self._by_digest.move_to_end(_digest(token))
            return session

    def end(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._by_digest.pop(_digest(token), None)

    def end_key(self, key_id: object) -> None:
        """Forget every session of a key (it was revoked)."""
        with self._lock:
            for digest, session in list(self._by_digest.items()):
                if session.principal.key_id == key_id:
                    del self._by_digest[digest]
