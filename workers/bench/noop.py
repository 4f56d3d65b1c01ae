"""A no-op actor on the fleet's own broker configuration: the dramatiq baseline."""

from __future__ import annotations

import dramatiq

from workers.broker import current

current()  # the fleet's broker and middleware: installed by the caller, or built from the environment

QUEUE = "bench-noop"


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop(n: int) -> None:
    """Nothing at all."""
