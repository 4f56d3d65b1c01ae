"""A short cache of each tenant's storage figures in the admin process.

Reading a tenant's figures counts and sizes every row it holds in every table (`pipelines.lifecycle.stats`):
seconds for a tenant of a few hundred thousand events, and a full scan of its share of each table. So the
admin process reads them at most once per INTAKE_ADMIN_STATS_CACHE_SECONDS a tenant, whoever asks, and calls
that come while they are being read wait for that one read instead of starting their own: eight calls at once
cost one read, and a hundred calls a minute cost one too. Each answer says when its figures were read
(`cached_at`). A deleted tenant's entry goes with it. The entries are an LRU of bounded size.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

MAX_TENANTS = 10_000


@dataclass
class _Entry:
    lock: threading.Lock = field(default_factory=threading.Lock)
    value: Any = None
    read_at: datetime | None = None
    read_clock: float = 0.0


class TenantCache:
    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic,
                 max_tenants: int = MAX_TENANTS) -> None:
        self._seconds = seconds
        self._clock = clock
        self._max = max_tenants
        self._entries: OrderedDict[uuid.UUID, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, tenant: uuid.UUID, read: Callable[[], Any]) -> tuple[Any, datetime]:
        """The tenant's value and when it was read: the cached one while it is fresh, else `read()`'s (one
        caller reads, the others wait for it)."""
        with self._lock:
            entry = self._entries.setdefault(tenant, _Entry())
            self._entries.move_to_end(tenant)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        with entry.lock:
            if entry.read_at is not None and self._clock() - entry.read_clock < self._seconds:
                return entry.value, entry.read_at
            value = read()
            entry.value, entry.read_at, entry.read_clock = value, datetime.now(UTC), self._clock()
            return value, entry.read_at

    def forget(self, tenant: uuid.UUID) -> None:
        with self._lock:
            self._entries.pop(tenant, None)
