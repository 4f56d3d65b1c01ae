"""A no-op actor on the fleet's own broker configuration: the dramatiq baseline."""

from __future__ import annotations

import dramatiq

from workers import broker as _broker  # noqa: F401  (same broker, same middleware as the fleet)

QUEUE = "bench-noop"


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop(n: int) -> None:
    """Nothing at all."""
