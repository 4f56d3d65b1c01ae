"""What the data lifecycle refuses: a request that cannot be carried out as asked (permanent, one clear line)."""

from __future__ import annotations

from pipelines.errors import Refusal


class LifecycleError(Refusal):
    """An erasure, export, SLA policy or calendar refused as asked; the message says what would do."""
