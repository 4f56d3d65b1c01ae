"""The ingress's answers: acknowledgements, and errors with the body {"error": code, "detail": text}.

The body is `pipelines.errors.error_body`'s and the choice between 503 and 500 `failure_status`'s, the same
as the admin API's and the console's; credentials are scrubbed from what is logged by the log's own processor
(`config.redaction`), as in every process."""

from __future__ import annotations

import traceback
import uuid
from collections.abc import Mapping

import structlog
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from pipelines.errors import Refusal, error_body, failure_status, refusal_body
from workers.ratelimit import TokenBuckets
from workers.web.bodies import ParseTimeout

log = structlog.get_logger("intake.ingress")
TWIML_EMPTY = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def error(status: int, code: str, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, detail), status_code=status, headers=headers)


def refused(exc: Refusal, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """A refusal answered with its own status and code."""
    return JSONResponse(refusal_body(exc), status_code=exc.status, headers={**exc.headers, **(headers or {})} or None)


def client_slowed(wait: float) -> JSONResponse:
    return error(429, "rate_limited", "too many failed requests from this client",
                 {"Retry-After": TokenBuckets.retry_after(wait)})


def failure(exc: BaseException, **context: str) -> JSONResponse:
    """The answer to an exception nobody handled: 503 when a dependency is unavailable (retry later),
    else 500 with an error id; the traceback is logged under that id and never sent to the client."""
    if failure_status(exc) == 503:  # the database, its pool or Redis unavailable, the commit queue full, a parse late
        log.error("ingress.unavailable", error=repr(exc), **context)
        detail = str(exc) if isinstance(exc, ParseTimeout) else "the event could not be stored"
        return error(503, "unavailable", f"{detail}; retry later", {"Retry-After": "5"})
    error_id = uuid.uuid4().hex[:16]
    log.error("ingress.internal_error", error_id=error_id, error=repr(exc),
              traceback="".join(traceback.format_exception(exc)), **context)
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
