"""A network in the bench: a relay between the fleet and a service that delays each direction by half a round trip.

The bench's services are on this machine (PostgreSQL on a Unix socket), where a statement's round trip costs
microseconds; a managed PostgreSQL is 0.3-1 ms away, and that price is paid per round trip, so a job that
needs fifteen of them for one message pays for the network fifteen times. `intake bench --db-rtt-ms N` and
`--redis-rtt-ms N` put this relay in between (the machines have no netem): each route listens on 127.0.0.1,
connects each client to its upstream (a TCP address or a Unix socket), and carries the bytes both ways, each
chunk held until N/2 ms after it was read, in order. Two threads per connection do it, one per direction:
asyncio's timers wake on whole milliseconds (its epoll timeout is rounded up), too coarse for half of 1 ms.
The relay runs in a process of its own, so its threads never wait for the load generator's interpreter lock,
and its CPU is not the fleet's (the bench does not watch it).

It counts what crosses it, per route:
  - `round_trips`: turns of the conversation, each time the client sends after the server has answered (or
    first). Statements sent together without waiting (a pipeline) are one turn, as they are one wait.
  - `transactions` (PostgreSQL routes): the transactions the client ends, its COMMIT and ROLLBACK simple
    queries (how psycopg ends a transaction), read from the frontend protocol's message headers.
  - `connections`: connections accepted.

With N = 0 it delays nothing and only counts.
"""

from __future__ import annotations

import multiprocessing
import queue
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

FIELDS = ("round_trips", "transactions", "connections")
CHUNK = 256 * 1024
# The protocol's startup requests that precede the StartupMessage (the server answers each with one byte).
SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104
ENDS = (b"COMMIT", b"ROLLBACK", b"commit", b"rollback")


@dataclass(frozen=True)
class Route:
    """One listener: `upstream` is `host:port` or `unix:/path/to/socket`; `postgres` counts transactions."""

    label: str
    upstream: str
    postgres: bool = False


@dataclass(frozen=True)
class Counts:
    round_trips: int = 0
    transactions: int = 0
    connections: int = 0

    def __sub__(self, other: Counts) -> Counts:
        return Counts(self.round_trips - other.round_trips, self.transactions - other.transactions,
                      self.connections - other.connections)


class Relay:
    """The relay's process: `ports[label]` is where each route listens; `counts()` reads its counters."""

    def __init__(self, routes: list[Route], delay_ms: float) -> None:
        if delay_ms < 0:
            raise ValueError("a delay is at least 0 ms")
        self.routes = routes
        self.delay_ms = delay_ms
        context = multiprocessing.get_context("spawn")  # the bench's threads are not forked along
        self._counters: Any = context.Array("q", len(routes) * len(FIELDS))
        self._ready: Any = context.Queue()
        self._process: Any = context.Process(target=_serve, args=(routes, delay_ms, self._counters, self._ready),
                                             name="intake-bench-relay", daemon=True)
        self.ports: dict[str, int] = {}

    def start(self) -> None:
        self._process.start()
        try:
            self.ports = self._ready.get(timeout=30)
        except queue.Empty:
            self.stop()
            raise RuntimeError("the bench's relay did not start") from None

    def stop(self) -> None:
        if self._process.is_alive():
            self._process.terminate()
        self._process.join(10)

    def counts(self, label: str) -> Counts:
        index = [r.label for r in self.routes].index(label)
        with self._counters.get_lock():
            values = self._counters[index * len(FIELDS):(index + 1) * len(FIELDS)]
        return Counts(*values)


@contextmanager
def relay(routes: list[Route], delay_ms: float) -> Iterator[Relay]:
    """A started relay for the block's duration."""
    running = Relay(routes, delay_ms)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def _serve(routes: list[Route], delay_ms: float, counters: Any, ready: Any) -> None:
    """The relay process: a listener thread per route, two carrier threads per connection."""
    sys.setswitchinterval(0.0001)  # a thread woken for its due chunk should not wait 5 ms for the lock
    half = delay_ms / 2000
    ports = {}
    for index, route in enumerate(routes):
        listener = socket.create_server(("127.0.0.1", 0), backlog=512)
        ports[route.label] = listener.getsockname()[1]
        tally = _Tally(counters, index)
        threading.Thread(target=_accept, args=(listener, route, half, tally), daemon=True).start()
    ready.put(ports)
    threading.Event().wait()  # until terminated


class _Tally:
    """One route's counters in the shared array."""

    def __init__(self, counters: Any, index: int) -> None:
        self.counters = counters
        self.base = index * len(FIELDS)

    def add(self, field: str, n: int = 1) -> None:
        with self.counters.get_lock():
            self.counters[self.base + FIELDS.index(field)] += n


def _connect(upstream: str) -> socket.socket:
    if upstream.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(upstream.removeprefix("unix:"))
        return sock
    host, _, port = upstream.rpartition(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _accept(listener: socket.socket, route: Route, half: float, tally: _Tally) -> None:
    while True:
        client, _ = listener.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            server = _connect(route.upstream)
        except OSError:
            client.close()
            continue
        tally.add("connections")
        turn = _Turns(tally, _Frontend(tally) if route.postgres else None)
        for source, target, sending in ((client, server, True), (server, client, False)):
            chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()
            threading.Thread(target=_read, args=(source, target, chunks, half, turn, sending), daemon=True).start()
            threading.Thread(target=_write, args=(target, source, chunks), daemon=True).start()


class _Turns:
    """Whose turn it is on one connection: a client chunk after the server's is a new round trip."""

    def __init__(self, tally: _Tally, frontend: _Frontend | None) -> None:
        self.tally = tally
        self.frontend = frontend
        self.client_spoke_last = False
        self.lock = threading.Lock()

    def seen(self, data: bytes, from_client: bool) -> None:
        with self.lock:
            if from_client:
                if not self.client_spoke_last:
                    self.tally.add("round_trips")
                self.client_spoke_last = True
                if self.frontend is not None:
                    self.frontend.feed(data)
            else:
                self.client_spoke_last = False


def _read(source: socket.socket, target: socket.socket, chunks: queue.SimpleQueue[tuple[float, bytes]],
          half: float, turns: _Turns, from_client: bool) -> None:
    """Read what `source` sends, stamp each chunk with when it is due at the other side."""
    try:
        while data := source.recv(CHUNK):
            turns.seen(data, from_client)
            chunks.put((time.monotonic() + half, data))
    except OSError:
        pass
    chunks.put((0.0, b""))  # the end: the writer closes its side after what came before


def _write(target: socket.socket, source: socket.socket, chunks: queue.SimpleQueue[tuple[float, bytes]]) -> None:
    """Send each chunk when it is due, in order; at the end, close both sockets."""
    try:
        while True:
            due, data = chunks.get()
            if not data:
                break
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            target.sendall(data)
    except OSError:
        pass
    for sock in (target, source):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


class _Frontend:
    """PostgreSQL's frontend messages, read by their headers only: the COMMITs and ROLLBACKs among them."""

    def __init__(self, tally: _Tally) -> None:
        self.tally = tally
        self.buffer = bytearray()
        self.started = False  # past the StartupMessage, messages carry a type byte

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if not self.started:
                if len(self.buffer) < 8:
                    return
                length, code = struct.unpack_from("!ii", self.buffer)
                if len(self.buffer) < length:
                    return
                self.started = code not in (SSL_REQUEST, GSSENC_REQUEST)
                del self.buffer[:length]
                continue
            if len(self.buffer) < 5:
                return
            kind = self.buffer[0]
            (length,) = struct.unpack_from("!i", self.buffer, 1)
            if len(self.buffer) < length + 1:
                return
            if kind == ord("Q") and bytes(self.buffer[5:5 + 8]).startswith(ENDS):
                self.tally.add("transactions")
            del self.buffer[:length + 1]
