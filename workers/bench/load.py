"""A small HTTP/1.1 load generator: pre-rendered requests over keep-alive connections.

Requests are rendered to bytes before the clock starts, so the generator spends its time on sockets, not
on signing or formatting. `rate` paces requests on a fixed schedule (open loop), for latency at a given load.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def render(host: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items() if name.lower() != "content-length"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    acked_at: dict[int, float] = field(default_factory=dict)  # request index -> wall clock of its 2xx's last byte

    @property
    def completed(self) -> int:
        return len(self.latencies_ms)

    @property
    def per_second(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def _connection(host: str, port: int, requests: list[bytes], cursor: list[int], result: LoadResult,
                      start: float, rate: float | None, on_done: object) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            index = cursor[0]
            if index >= len(requests):
                return
            cursor[0] += 1
            if rate:
                delay = start + index / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            sent = time.perf_counter()
            writer.write(requests[index])
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            if 200 <= status < 300:
                result.acked_at[index] = time.time()
            result.latencies_ms.append((time.perf_counter() - sent) * 1000)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if callable(on_done):
                on_done()
            if b"connection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


async def run_load(host: str, ports: list[int], requests: list[bytes], *, concurrency: int,
                   rate: float | None = None, on_done: object = None) -> LoadResult:
    """Send every request over `concurrency` connections, spread over `ports` as a load balancer would."""
    result = LoadResult()
    cursor = [0]
    start = time.perf_counter()
    await asyncio.gather(*(_connection(host, ports[n % len(ports)], requests, cursor, result, start, rate, on_done)
                           for n in range(min(concurrency, len(requests)))))
    result.seconds = time.perf_counter() - start
    return result


def load(ports: list[int], requests: list[tuple[str, dict[str, str], bytes]], concurrency: int, *,
         rate: float | None = None, on_done: Callable[[], None] | None = None,
         host: str = "127.0.0.1:8000") -> LoadResult:
    """Render `requests` (path, headers, body) for `host`, then send them to the ports on 127.0.0.1."""
    rendered = [render(host, path, headers, body) for path, headers, body in requests]
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    result: LoadResult = runner(run_load("127.0.0.1", ports, rendered, concurrency=concurrency, rate=rate,
                                         on_done=on_done))
    return result
