"""A local server that answers as a channel provider's send API does, errors included, for outbound tests.

Every request is recorded (path, headers, body, arrival time). Each takes the next scripted answer, if any:
("answer", status, body, headers) or ("sleep", seconds) before the default answer; when the script is
empty, the provider's documented success answer for that request.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float  # time.time() on arrival

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))


Answer = tuple[int, Any, dict[str, str]]
_ids = itertools.count(5000)


def success(channel: str, request: Recorded) -> Answer:
    """Each provider's documented answer to a send it took."""
    if channel == "twilio":
        form = request.form()
        return 201, {"sid": "SM" + uuid.uuid4().hex, "status": "queued", "to": form.get("To"),
                     "from": form.get("From"), "body": form.get("Body"), "error_code": None}, {}
    if channel == "whatsapp":
        to = request.json()["to"]
        return 200, {"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}],
                     "messages": [{"id": "wamid." + uuid.uuid4().hex.upper()}]}, {}
    if channel == "telegram":
        payload = request.json()
        return 200, {"ok": True, "result": {"message_id": next(_ids), "date": int(time.time()),
                                            "chat": {"id": payload["chat_id"], "type": "private"},
                                            "text": payload["text"]}}, {}
    if channel == "postmark":
        payload = request.json()
        return 200, {"To": payload["To"], "SubmittedAt": "2026-12-07T16:00:00.0000000Z",
                     "MessageID": str(uuid.uuid4()), "ErrorCode": 0, "Message": "OK"}, {}
    if channel == "mailgun":
        return 200, {"id": f"<{uuid.uuid4().hex}@mg.example.com>", "message": "Queued. Thank you."}, {}
    if channel == "sendgrid":
        return 202, b"", {"X-Message-Id": uuid.uuid4().hex[:22]}
    return 200, {"received": True}, {}


class ProviderStub:
    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.script: list[tuple[Any, ...]] = []
        self.requests: list[Recorded] = []
        self.answers: list[Answer] = []  # what each request was answered, in order
        self.lock = threading.Lock()
        self.default: Callable[[Recorded], Answer] = lambda r: success(channel, r)

    def answer(self, request: Recorded) -> Answer | None:
        with self.lock:
            self.requests.append(request)
            step = self.script.pop(0) if self.script else None
        if step is not None and step[0] == "sleep":
            time.sleep(step[1])
            step = None
        if step is not None and step[0] == "close":
            return None
        result = (step[1], step[2], step[3] if len(step) > 3 else {}) if step else self.default(request)
        with self.lock:
            self.answers.append(result)
        return result


@contextmanager
def provider_server(channel: str) -> Iterator[tuple[str, ProviderStub]]:
    stub = ProviderStub(channel)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            recorded = Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
            result = stub.answer(recorded)
            if result is None:  # ("close",): hang up without an answer
                self.close_connection = True
                return
            status, payload, headers = result
            raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(raw)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", stub
    finally:
        server.shutdown()
        server.server_close()
