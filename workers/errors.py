"""The two error families of the fleet, and the one place library exceptions are sorted into them.

    IntakeError
    ├── PermanentError        retrying cannot help: skip retries, go to the dead-letter ledger
    │   └── UnknownTenantError
    └── RetryableError        a later attempt may succeed: back off and retry
"""

from __future__ import annotations

import psycopg
import redis
import sqlalchemy.exc

from db.tenancy import UnknownTenant
from pipelines.ai.base import AIBadOutput, AIUnavailable
from pipelines.channels import ChannelError


class IntakeError(Exception):
    """Root of the fleet's own errors."""


class PermanentError(IntakeError):
    """Retrying cannot help."""


class UnknownTenantError(PermanentError):
    """A job names a tenant that does not exist."""


class RetryableError(IntakeError):
    """A later attempt may succeed."""


def is_permanent(exc: BaseException) -> bool:
    """Sort any exception into permanent (True) or retryable (False)."""
    if isinstance(exc, PermanentError | ChannelError | UnknownTenant | AIBadOutput):
        return True
    if isinstance(exc, RetryableError | AIUnavailable):
        return False
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        exc = exc.orig or exc
    errors = psycopg.errors
    if isinstance(exc, errors.IntegrityError | errors.DataError | errors.SyntaxErrorOrAccessRuleViolation):
        # Constraint violations that survive our upserts are bugs or bad data; retrying repeats them.
        return not isinstance(exc, psycopg.errors.UniqueViolation)
    if isinstance(exc, psycopg.OperationalError | redis.RedisError | OSError | TimeoutError):
        return False
    if isinstance(exc, ValueError | TypeError | KeyError):
        return True
    return False
