"""A webhook receiver for tests: a real local HTTP server that verifies each delivery's signatures with the
`standardwebhooks` library, as an application downstream would, and answers as a test tells it to."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    verified_by: list[str]  # the secrets whose signature verified

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


# What to answer: (status, headers, seconds to wait first, body or None for a short one); called with the
# delivery and how many deliveries with its webhook-id the receiver has had (this one included).
Answer = Callable[["Received", int], tuple[int, dict[str, str], float, bytes | None]]


@dataclass
class Receiver:
    url: str
    secrets: dict[str, list[str]] = field(default_factory=dict)  # path -> secrets to verify with
    answers: dict[str, Answer] = field(default_factory=dict)  # path -> how to answer
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def ids(self, path: str) -> list[str]:
        """The webhook-ids received on `path`, verified, in order of arrival (repeats included)."""
        return [r.webhook_id for r in self.on(path) if r.verified_by]


def verify(secrets: list[str], body: bytes, headers: dict[str, str]) -> list[str]:
    verified = []
    for secret in secrets:
        try:
            Webhook(secret).verify(body, headers)
        except WebhookVerificationError:
            continue
        verified.append(secret)
    return verified


@contextmanager
def receiver(host: str = "127.0.0.1") -> Iterator[Receiver]:
    """The receiver on a free port of `host` (another address than loopback for senders on other machines)."""
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            got = Received(self.path, headers, body, time.monotonic(),
                           verify(state.secrets.get(self.path, []), body, headers))
            with state.lock:
                state.received.append(got)
                count = len([r for r in state.received if r.headers.get("webhook-id") == got.headers.get("webhook-id")])
            answer = state.answers.get(self.path, lambda r, n: (200, {}, 0.0, None))
            status, extra, wait, payload = answer(got, count)
            if wait:
                time.sleep(wait)
            if not got.verified_by and status < 300:
                status = 401
            if payload is None:
                payload = b'{"ok": true}' if status < 300 else b"nope"
            try:
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                pass  # the sender gave up waiting

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            if isinstance(sys.exc_info()[1], OSError):
                return  # the sender went away mid-request (a killed worker, a machine that died)
            super().handle_error(request, client_address)

    server = Server((host, 0), Handler)
    server.daemon_threads = True
    state.url = f"http://{host}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
