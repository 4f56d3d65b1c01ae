"""The worker's booted heap, kept out of the cyclic garbage collector's way."""

from __future__ import annotations

import gc
from typing import Any

import dramatiq


class FreezeBootHeap(dramatiq.Middleware):
    """Once a worker process has booted, move what it holds into the collector's permanent generation.

    A booted worker holds some 150,000 objects (modules, SQLAlchemy and pydantic schemas, compiled
    statements) that live as long as the process. Every full collection walked them all: about 0.03 ms of
    CPU per stored message, a fifth of the ingest worker's own time. Frozen, they are no longer walked;
    what jobs allocate is collected as before. Cyclic garbage left by the boot is collected first, so
    nothing that is already garbage is kept for good.
    """

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        gc.collect()
        gc.freeze()
