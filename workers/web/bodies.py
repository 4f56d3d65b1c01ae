"""Reading a request body within a limit, and what goes wrong while reading or parsing it."""

from __future__ import annotations

from starlette.requests import ClientDisconnect
from starlette.types import Receive

from pipelines.channels import PayloadError
from pipelines.errors import BodyTooLarge, RetryableError

# An oversized body is read and discarded up to this many bytes so the client reads its 413.
DRAIN_LIMIT_BYTES = 64 * 1_048_576


__all__ = ["BodyTooLarge", "ParseTimeout", "drain", "read_body"]  # BodyTooLarge: the one of pipelines.errors


class ParseTimeout(RetryableError):
    """An authentic body was not parsed within INTAKE_PARSE_DEADLINE_SECONDS; nothing was stored."""


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    if declared is not None:
        if not (declared.isascii() and declared.isdigit() and len(declared) <= 18):
            raise PayloadError("invalid Content-Length")
        if int(declared) > limit:
            raise BodyTooLarge(limit, unread=True, drainable=int(declared) <= DRAIN_LIMIT_BYTES)
    message = await receive()
    if message["type"] != "http.request":
        raise ClientDisconnect
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):  # the usual case: the whole body in one message
        if len(body) > limit:
            raise BodyTooLarge(limit)
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit, unread=message.get("more_body", False))
        chunks.append(chunk)
    return b"".join(chunks)

async def drain(receive: Receive, cap: int) -> bool:
    """Read and discard the rest of the body, up to `cap` bytes: True when it was read to its end."""
    size = 0
    while size <= cap:
        message = await receive()
        if message["type"] != "http.request":
            return False
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
    return False
