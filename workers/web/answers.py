"""The ingress's answers: acknowledgements, and errors with the body {"error": code, "detail": text}."""

from __future__ import annotations

import traceback
import uuid
from collections.abc import Mapping

import structlog
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from pipelines.errors import is_retryable, scrub
from workers.web.bodies import ParseTimeout
from workers.web.ratelimit import TokenBuckets

log = structlog.get_logger("intake.ingress")
TWIML_EMPTY = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def error(status: int, code: str, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def client_slowed(wait: float) -> JSONResponse:
    return error(429, "rate_limited", "too many failed requests from this client",
                 {"Retry-After": TokenBuckets.retry_after(wait)})


def failure(exc: BaseException, **context: str) -> JSONResponse:
    """The answer to an exception nobody handled: 503 when a dependency is unavailable (retry later),
    else 500 with an error id; the traceback is logged under that id and never sent to the client."""
    if is_retryable(exc):  # the database, its pool or Redis unavailable, the commit queue full, a parse late
        log.error("ingress.unavailable", error=scrub(repr(exc)), **context)
        detail = str(exc) if isinstance(exc, ParseTimeout) else "the event could not be stored"
        return error(503, "unavailable", f"{detail}; retry later", {"Retry-After": "5"})
    error_id = uuid.uuid4().hex[:16]
    log.error("ingress.internal_error", error_id=error_id, error=scrub(repr(exc)),
              traceback=scrub("".join(traceback.format_exception(exc))), **context)
    return error(500, "internal_error", f"an internal error occurred; error id {error_id}")


class Prepared:
    """An answer that never changes, encoded once and sent as two raw ASGI messages: the acknowledgement
    goes out on every delivery, and a Response's own `__call__` costs more than the two sends."""

    __slots__ = ("_body", "_headers", "status_code")

    def __init__(self, response: Response) -> None:
        self.status_code = response.status_code
        self._headers = response.raw_headers
        self._body = bytes(response.body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self._headers})
        await send({"type": "http.response.body", "body": self._body})


# What the ingress answers: a Response, or for the acknowledgements a Prepared one.
Answer = Response | Prepared
ACCEPTED = Prepared(JSONResponse({"status": "accepted"}))
ACCEPTED_TWIML = Prepared(Response(TWIML_EMPTY, media_type="text/xml"))


def accepted(channel: str) -> Prepared:
    return ACCEPTED_TWIML if channel == "twilio" else ACCEPTED
