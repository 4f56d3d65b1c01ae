"""A local server that speaks the OpenAI API's documented shapes, errors included, for provider tests.

Each POST takes the next scripted reply: ("json", body), ("status", code, headers, body) or ("sleep", s).
When the script runs out, chat completions answer with `default_content` and embeddings with zeros.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class OpenAIStub:
    def __init__(self) -> None:
        self.script: list[tuple[Any, ...]] = []
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.default_content = "{}"
        self.dim = 8

    def completion(self, content: str, prompt_tokens: int = 120, completion_tokens: int = 40) -> dict[str, Any]:
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()), "model": "stub",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}


@contextmanager
def openai_stub() -> Iterator[tuple[str, OpenAIStub]]:
    stub = OpenAIStub()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(raw)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            payload = json.loads(self.rfile.read(length) or b"{}")
            stub.requests.append((self.path, payload, dict(self.headers)))
            step = stub.script.pop(0) if stub.script else None
            if step is not None and step[0] == "sleep":
                time.sleep(step[1])
                step = None
                if self.path.endswith("/chat/completions"):
                    self._send(200, stub.completion(stub.default_content))
                return
            if step is not None and step[0] == "status":
                self._send(step[1], step[3] if len(step) > 3 else {"error": {"message": "stub", "type": "server_error"}},
                           step[2] if len(step) > 2 else None)
                return
            if step is not None and step[0] == "content":
                self._send(200, stub.completion(step[1]))
                return
            if self.path.endswith("/embeddings"):
                inputs = payload["input"] if isinstance(payload["input"], list) else [payload["input"]]
                self._send(200, {"object": "list", "model": payload["model"], "usage": {"prompt_tokens": 5, "total_tokens": 5},
                                 "data": [{"object": "embedding", "index": i, "embedding": [0.1] * stub.dim}
                                          for i in range(len(inputs))]})
                return
            self._send(200, stub.completion(stub.default_content))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", stub
    finally:
        server.shutdown()
        server.server_close()
