"""A token bucket per inbox, kept in the web process (no network round trip on the hot path).

Each web process enforces the limit on its own share of traffic: with N processes behind a balancer an
inbox may reach about N times the configured rate. Inbox settings `rate_limit_per_second` and
`rate_limit_burst` override the defaults from INTAKE_RATE_LIMIT_PER_SECOND and INTAKE_RATE_LIMIT_BURST.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class TokenBuckets:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[object, tuple[float, float]] = {}  # key -> (tokens, last refill time)

    def take(self, key: object, rate: float, burst: int) -> float:
        """Take one token: 0.0 when allowed, else the seconds to wait before the next token."""
        now = self._clock()
        tokens, last = self._buckets.get(key, (float(burst), now))
        tokens = min(float(burst), tokens + (now - last) * rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / rate

    @staticmethod
    def retry_after(wait: float) -> str:
        return str(max(1, math.ceil(wait)))
