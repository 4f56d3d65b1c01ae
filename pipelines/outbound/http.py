"""The one place replies meet the network: a client that never follows a redirect, gives up after the
configured time, and reads at most `max_bytes` of an answer (a provider's answer is small; a hostile or
broken `reply_url` could stream forever).

A timeout or a connection that fails is `Retryable`: the provider may or may not have taken the message (see
the README on at-least-once). A redirect is a refusal: a provider API does not move, and following one would
send the inbox's credentials, or a signed reply, somewhere nobody configured.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlencode, urlsplit

import httpx

from config import Settings
from pipelines.outbound.base import Outcome, ProviderRequest, Refused, Retryable


def client(settings: Settings, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """A client for every provider, shared by a worker's threads (httpx.Client is thread-safe)."""
    timeout = settings.outbound_timeout_seconds
    return httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)), follow_redirects=False,
                        transport=transport, headers={"User-Agent": "Intake"},
                        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20))


Answer = Callable[[int, dict[str, str], bytes], Outcome]


def call(http: httpx.Client, request: ProviderRequest, answer: Answer, max_bytes: int) -> Outcome:
    """Send `request` and read the answer with the provider's `answer`; the network's failures are sorted here."""
    headers = dict(request.headers)
    content: bytes | None = None
    if request.json is not None:
        content = request.body()
        headers["Content-Type"] = "application/json"
    elif request.form is not None:
        content = urlencode(request.form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        with http.stream("POST", request.url, headers=headers, content=content, auth=request.auth) as response:
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) >= max_bytes:
                    del body[max_bytes:]
                    break
            status, answer_headers = response.status_code, {k.lower(): v for k, v in response.headers.items()}
    except httpx.TimeoutException as exc:
        return Retryable(f"timed out ({type(exc).__name__})")
    except httpx.TransportError as exc:
        return Retryable(f"unreachable ({type(exc).__name__})")
    if 300 <= status < 400:
        return Refused(str(status), "the provider answered with a redirect, which is never followed")
    return answer(status, answer_headers, bytes(body))


def private_address(url: str) -> str | None:
    """The loopback, private, link-local or otherwise non-public address `url`'s host resolves to, if any."""
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None  # it does not resolve: the call fails as unreachable, and is retried
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global or address.is_multicast:
            return str(address)
    return None
