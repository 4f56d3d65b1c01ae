"""The fleet's one error family, and the one place any exception is sorted into permanent or retryable.

    IntakeError
    ├── PermanentError              retrying cannot help: no retries, straight to the dead-letter ledger
    │   ├── Refusal                 a request refused as asked: carries its HTTP `status` and error `code`
    │   │   ├── ChannelError            pipelines.channels: a delivery refused before it is acknowledged
    │   │   │   ├── SignatureError          not signed by the inbox's secret (401)
    │   │   │   └── PayloadError            not a payload the channel sends (400)
    │   │   ├── InboxConfigError        pipelines.inboxes: an inbox cannot be created as asked (400)
    │   │   ├── BodyTooLarge            the ingress, the admin API, a console form: over the size limit (413)
    │   │   ├── MalformedJson           the admin API: the body is not JSON (400)
    │   │   ├── Unauthorized            workers.admin.api: no valid API key (401)
    │   │   ├── RateLimited             workers.admin.api: the key spent its request bucket (429)
    │   │   ├── BadForm                 workers.admin.console: a form that is not URL-encoded UTF-8 (400)
    │   │   ├── BadInput                workers.cli: a value given on the command line cannot be used (exit 1)
    │   │   ├── LocalAIMissing          pipelines.ai.libraries: the local AI provider's work, its libraries absent (501)
    │   │   ├── ControlError            pipelines.control: a control-plane request refused as asked
    │   │   │   ├── NotFound                no such object, or not one this key may see (404)
    │   │   │   ├── Forbidden               the key may not act on this tenant, or needs operator scope (403)
    │   │   │   ├── Conflict                a name already taken, a state that forbids the change (409)
    │   │   │   └── Invalid                 field-level validation errors (422)
    │   │   └── LifecycleError          pipelines.lifecycle: an erasure, export or SLA policy refused as asked
    │   │       ├── ErasureError            no such contact, or an identity that is not KIND:VALUE
    │   │       ├── ExportError             the archive's path cannot be written
    │   │       ├── PolicyError             an SLA policy out of range
    │   │       └── CalendarError           business hours, a time zone or a holiday that does not parse
    │   ├── SecretKeyError          pipelines.crypto: INTAKE_SECRET_KEY cannot open the stored secrets
    │   ├── UnknownTenantError      a job names a tenant that does not exist (also a db.tenancy.UnknownTenant)
    │   ├── AIBadOutput             pipelines.ai: the answer is not in the shape asked for, even repaired
    │   ├── AIRefused               pipelines.ai: the provider refused the request (4xx but 408 and 429)
    │   ├── ResolutionConflict      pipelines.contacts: one message's identities kept changing hands
    │   ├── UnstorableEvent         workers.web: the database refuses this delivery's row (400)
    │   ├── UnsafeTarget            pipelines.webhooks: a webhook URL the fleet may not deliver to
    │   ├── NotConfigured           pipelines.outbound: the inbox lacks what its channel needs to send
    │   ├── SendRefused             pipelines.outbound: the provider refused the reply for good (its code and text)
    │   ├── Stopped                 workers.admin: an export job asked to stop ends between two batches
    │   └── HostUnusable            workers.embedded: a --host that names no address of this machine
    └── RetryableError              a later attempt may succeed: back off and retry
        ├── AIUnavailable           pipelines.ai: timeouts, 408, 429, 5xx, unreachable
        ├── ProviderUnavailable     pipelines.outbound: a send API could not take a reply now (429, 5xx, timeout)
        ├── SendInProgress          pipelines.outbound: another worker's fresh claim on the reply (come back later)
        ├── RetryLater              workers.actors: a provider's refusal for now, carrying its Retry-After
        ├── TenantBusy              pipelines.ingest: another batch holds the tenant (the job comes back)
        ├── WriterBusy              workers.web: the write queue is full (503)
        ├── ParseTimeout            workers.web: the body was not parsed in time (503)
        ├── ListenerDeaf            workers.web: the inbox listener does not hear its own notification
        ├── ServicesUnavailable     workers: PostgreSQL or Redis cannot be reached or is not set up
        │   └── PortUnavailable         workers.embedded: a port `intake run` needs is taken (exit 1, naming it)
        └── ServiceError            workers: an embedded PostgreSQL or Redis did not start or stop

Every edge answers an error through this module: a `Refusal` with its own `status` and `code` in the body
`error_body` makes (`{"error": code, "detail": text}`, the same at the ingress, the admin API and the
console), anything else with the 503 or 500 that `failure_status` decides from `is_retryable`; the CLI prints
the errors `explained` says are for the user as one line (every refusal, and the classes that say so:
`SecretKeyError`, `ServicesUnavailable`, `ServiceError`) and exits 1. Credentials are scrubbed from every log
line by the log's own processor and from stored error text by `scrub`, both from `config.redaction`.

`AIBadOutput`, `AIRefused` and `AIUnavailable` also share `pipelines.ai.base.AIError`. Each class is
defined next to the code that raises it; only the two branches and the root live here, so this module
imports no other part of `pipelines`. Two errors stay outside the family on purpose, because their
packages sit below `pipelines` and cannot import it: `config.SettingsError` (the process cannot start)
and `db.tenancy.UnknownTenant` (sorted here as permanent, and raised again by the workers' TenantScope
middleware as `UnknownTenantError`, its subclass in the family, so whoever catches the one catches both).

Library exceptions are sorted by `is_retryable`, used by the broker's retry policy, by the ledger, by the
ingest batch's isolation, by the ingress's group commit and by the web's catch-all (503 or 500), so they
cannot disagree. Retryable is about the
moment, not the data: the connection was lost or the pool had none free, a lock wait timed out, a deadlock
or a serialization conflict was broken, a statement was canceled, the server is shutting down or out of
resources, Redis or the network is down, or the job was interrupted (time limit, shutdown). Everything
else is permanent, unrecognised exceptions included: a bug or a value the database refuses fails the same
way on every attempt, so retrying it only delays the ledger. In an ingest batch a permanent error is the
fault of the event being stored, which is set aside alone; a retryable one is nobody's fault, and the
whole job retries with every event in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import psycopg
import redis
import sqlalchemy.exc
from sqlalchemy.exc import DBAPIError

from config import SettingsError
from config.redaction import scrub
from db.tenancy import UnknownTenant

__all__ = ["scrub"]  # credential scrubbing lives in config.redaction, below every layer; stored errors use it


class IntakeError(Exception):
    """Root of the fleet's own errors; a subclass says whether retrying can help by its branch."""

    # The message tells whoever ran the command what to do (the CLI prints it as one line, exit 1); every
    # Refusal is explained, and a few others (the services down, a secret key that cannot open the secrets).
    explained: ClassVar[bool] = False


class PermanentError(IntakeError):
    """Retrying cannot help: the job goes to the dead-letter ledger after one attempt."""


class RetryableError(IntakeError):
    """A later attempt may succeed: the job backs off and retries."""


class Refusal(PermanentError):
    """A request refused as asked: its message tells the caller why, and its class says how each edge answers
    it (the HTTP `status` and the body's `error` code; the CLI prints the message and exits 1)."""

    explained = True

    status: ClassVar[int] = 400
    code: ClassVar[str] = "refused"
    # Headers the answer carries (a 429's Retry-After); an instance may set its own.
    headers: Mapping[str, str] = {}

    def detail(self) -> str:
        """The body's `detail`: the message, unless the class says it otherwise (a 422 names its fields apart)."""
        return str(self)

    def extra(self) -> dict[str, Any]:
        """Members of the error body beyond `error` and `detail` (a 422's `fields`)."""
        return {}


class BodyTooLarge(Refusal):
    """A request body over the limit of where it was sent: the ingress's channel limit, the admin API's, a
    console form's."""

    status, code = 413, "payload_too_large"

    def __init__(self, limit: int, *, unread: bool = False, drainable: bool = True) -> None:
        super().__init__(f"the body exceeds {limit} bytes")
        self.limit = limit
        self.unread = unread  # the rest of the body is still on the wire
        self.drainable = drainable  # and short enough to read and discard


class MalformedJson(Refusal):
    """A body that is not JSON."""

    status, code = 400, "malformed_json"

    def __init__(self) -> None:
        super().__init__("the body is not valid JSON")


def error_body(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    """The body of every error answer of every HTTP edge: `{"error": code, "detail": text, ...}`."""
    return {"error": code, "detail": detail, **extra}


def refusal_body(exc: Refusal) -> dict[str, Any]:
    return error_body(exc.code, exc.detail(), **exc.extra())


def explained(exc: BaseException) -> bool:
    """An error whose message is for the user (the CLI prints it as one line, exit 1): the family's explained
    classes, and the two outside it (a setting that cannot be used, a tenant that does not exist)."""
    return isinstance(exc, SettingsError | UnknownTenant) or (isinstance(exc, IntakeError) and exc.explained)


def failure_status(exc: BaseException) -> int:
    """The status of an error no edge expected: 503 (retry later) when retrying may help, else 500 (a bug,
    logged with an id). The ingress, the admin API and the console ask this one function."""
    return 503 if is_retryable(exc) else 500


class UnknownTenantError(UnknownTenant, PermanentError):
    """A job names a tenant that does not exist: db.tenancy's UnknownTenant in the fleet's family (whoever
    catches one catches both)."""


# SQLSTATE classes about the moment, not the data: 08 connection exception, 40 transaction rollback
# (serialization failure, deadlock), 53 insufficient resources, 57 operator intervention (query canceled,
# admin shutdown), 58 system error.
TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57", "58"})
# Of class 55 (object not in prerequisite state), only waiting for a lock or for an object in use.
BUSY_STATES = frozenset({"55P03", "55006"})
# Redis is down, slow, loading or failing over; other Redis errors (a wrong type, a script error) are bugs.
REDIS_TRANSIENT = redis.ConnectionError | redis.TimeoutError | redis.exceptions.ReadOnlyError


def is_retryable(exc: BaseException) -> bool:
    """True when a later attempt may succeed; False when retrying cannot help (see the module docstring)."""
    if isinstance(exc, IntakeError):
        return isinstance(exc, RetryableError)
    if not isinstance(exc, Exception):
        return True  # dramatiq's time limit or shutdown interrupted the job: it did not fail by itself
    if isinstance(exc, sqlalchemy.exc.TimeoutError):
        return True  # no pooled connection came free in time
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig or exc
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        if state is None:  # raised by the client, not the server: the connection broke
            return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
        return state[:2] in TRANSIENT_CLASSES or state in BUSY_STATES
    if isinstance(exc, UnknownTenant):
        return False
    return isinstance(exc, REDIS_TRANSIENT | OSError)  # OSError: sockets, DNS, TimeoutError


def underlying(exc: BaseException) -> BaseException:
    """The driver's own error under SQLAlchemy's wrapper (a CheckViolation, not an IntegrityError), else `exc`:
    statements run through SQLAlchemy and directly on the driver (`db.direct`) are then named alike."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return exc.orig
    return exc


def describe(exc: BaseException) -> str:
    """One line for `inbound_events.error`: the error's type and message, storable as PostgreSQL text.

    A database error is described by the driver's own error, without the statement and its parameters
    (which, in a batch, hold other events' data).
    """
    exc = underlying(exc)
    return escaped(f"{type(exc).__name__}: {exc}")[:2000]


def escaped(text: str) -> str:
    """`text` as PostgreSQL text can hold it: NUL and lone surrogates written as escapes (`\\x00`, `\\udc80`),
    so an error message says what was there rather than hiding it."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
