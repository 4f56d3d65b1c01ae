"""Token buckets kept in the web process (no network round trip on the hot path).

Two families use them. Each inbox has a bucket charged for every *verified* delivery, so a stranger's junk
never spends a provider's budget: inbox settings `rate_limit_per_second` and `rate_limit_burst` override
INTAKE_RATE_LIMIT_PER_SECOND and INTAKE_RATE_LIMIT_BURST. Each client address has a bucket charged only for
the 401 and 404 answers it earns (INTAKE_CLIENT_ERROR_RATE_PER_SECOND, INTAKE_CLIENT_ERROR_BURST), so whoever
probes inbox ids or forges signatures is slowed down without touching anyone's inbox.

Each web process enforces the limits on its own share of traffic: with N processes behind a balancer an
inbox may reach about N times the configured rate. The buckets are an LRU of bounded size: a client cycling
through keys evicts the least recently used buckets instead of growing memory. An evicted bucket comes back
full, which at worst forgives a key that has been idle while `max_keys` others were used.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable


class TokenBuckets:
    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()  # key -> (tokens, last refill)

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, key: Hashable, rate: float, burst: int, now: float) -> float:
        tokens, last = self._buckets.get(key, (float(burst), now))
        return min(float(burst), tokens + (now - last) * rate)

    def wait(self, key: Hashable, rate: float, burst: int) -> float:
        """The seconds until `key` has a token (0.0 when it has one now), taking nothing."""
        tokens = self._tokens(key, rate, burst, self._clock())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / rate

    def take(self, key: Hashable, rate: float, burst: int) -> float:
        """Take one token: 0.0 when allowed, else the seconds to wait before the next token."""
        now = self._clock()
        tokens = self._tokens(key, rate, burst, now)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return 0.0 if allowed else (1.0 - tokens) / rate

    @staticmethod
    def retry_after(wait: float) -> str:
        return str(max(1, math.ceil(wait)))


def client_key(address: str) -> str:
    """The bucket key of a client address: the address itself, or its /64 network for IPv6, since one
    IPv6 subscriber is usually handed a whole /64 and could otherwise take a fresh bucket per address."""
    if ":" not in address:
        return address
    try:
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    except ValueError:
        return address
