"""The consumer's poll interval."""

from __future__ import annotations

from typing import Any

import dramatiq


class PollInterval(dramatiq.Middleware):
    """Cap how long an idle or fully busy consumer sleeps before it asks Redis for more jobs.

    dramatiq backs off exponentially up to the worker timeout (1 s by default), also while every
    prefetched job is still running: a burst then waits up to a second for a consumer that is asleep. A
    lower cap costs a few Redis calls per second per consumer and takes that wait out of the latency.
    """

    def __init__(self, milliseconds: int) -> None:
        self.milliseconds = milliseconds

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        # Consumers are created after this hook and take the worker's timeout as their longest sleep.
        worker.worker_timeout = self.milliseconds
