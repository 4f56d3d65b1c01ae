"""What the data lifecycle refuses: a request that cannot be carried out as asked (permanent, one clear line)."""

from __future__ import annotations

from pipelines.errors import PermanentError


class LifecycleError(PermanentError):
    """An erasure, export, SLA policy or calendar refused as asked; the message says what would do."""
