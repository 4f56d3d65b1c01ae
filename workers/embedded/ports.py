"""The ports a fleet will listen on, checked before any of its processes starts.

A process that cannot bind its port dies and is restarted by `intake run` again and again, while the
command goes on printing the console's URL: whatever else answers on that port is what a newcomer signs in
to. So every port is tried first (as its server will bind it, with SO_REUSEADDR, so connections lingering
in TIME_WAIT do not count), and the first one that cannot be had ends the command, naming the flag or
setting that moves it.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from pipelines.errors import PermanentError
from workers.startup import ServicesUnavailable


class PortUnavailable(ServicesUnavailable):
    """A port the fleet needs is taken (or cannot be bound) on its host."""


@dataclass(frozen=True)
class Port:
    """One listening socket of the fleet: where, for what, and how a user moves it."""

    number: int
    host: str
    what: str  # "the web ingress", "the clock's metrics"
    change: str  # the flag or setting that changes the port: "--admin-port", "INTAKE_CLOCK_METRICS_PORT"
    change_host: str = "--host"  # and the one that changes the host


def check_ports(ports: Iterable[Port]) -> None:
    """Refuse two processes on one port, and any port something else holds, before anything starts."""
    seen: dict[int, Port] = {}
    for port in ports:
        other = seen.setdefault(port.number, port)
        if other is not port:
            raise PortUnavailable(f"{other.what} and {port.what} would both listen on port {port.number}: "
                                  f"choose another with {port.change}")
    for port in seen.values():
        try:
            problem = bind_problem(port.host, port.number)
        except HostUnusable as exc:
            raise PortUnavailable(f"{port.what} cannot listen on {port.host!r}: {exc}; choose another host with "
                                  f"{port.change_host}") from None
        if problem is not None:
            raise PortUnavailable(f"port {port.number} on {port.host} ({port.what}) is not available: {problem}; "
                                  f"stop what listens there, or choose another port with {port.change}")


class HostUnusable(PermanentError):
    """The host names no address of this machine (or no address at all)."""


def bind_problem(host: str, number: int) -> str | None:
    """Why a server could not listen on `number` at `host`, or None when it could (HostUnusable when the
    host itself is the problem)."""
    try:
        addresses = socket.getaddrinfo(host, number, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise HostUnusable(f"it does not resolve ({exc})") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise HostUnusable("it is not an address of this machine") from None
                return exc.strerror or type(exc).__name__
    return None
