"""Safe targets: a webhook goes to the public internet, never into the network the fleet runs in.

A URL is refused when it is not http(s), is not ASCII, carries credentials, or names a host that resolves to a loopback,
private, link-local (cloud metadata services live at 169.254.169.254 and fd00:ec2::254), CGNAT, multicast,
reserved or unspecified address, in IPv4 or IPv6 (IPv4-mapped and 6to4/NAT64-embedded IPv4 included). It is
checked when an endpoint is created or changed and again before each delivery, since DNS can change; the
delivery then connects to the address that was checked (`Target.address`), never resolving the name a second
time. `INTAKE_WEBHOOK_ALLOW_PRIVATE_NETWORKS=true` lifts the address rule (development and tests).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from pipelines.errors import PermanentError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
MAX_URL = 2000


class UnsafeTarget(PermanentError):
    """The URL may not receive webhooks: a scheme, a credential or an address the fleet refuses."""


@dataclass(frozen=True)
class Target:
    url: str
    host: str
    address: str | None  # the checked address to connect to; None: resolve as usual (private networks allowed)


def refused(address: IPAddress) -> str | None:
    """Why this address may not be a target, or None."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return refused(embedded)
    checks = (("loopback", address.is_loopback), ("link-local", address.is_link_local),
              ("multicast", address.is_multicast), ("unspecified", address.is_unspecified),
              ("private", address.is_private), ("reserved", address.is_reserved),
              ("CGNAT", isinstance(address, ipaddress.IPv4Address) and address in CGNAT))
    return next((f"a {name} address" for name, hit in checks if hit), None)


def parse(url: str) -> SplitResult:
    if len(url) > MAX_URL:
        raise UnsafeTarget(f"must be at most {MAX_URL} characters")
    if not url.isascii():
        raise UnsafeTarget("must be ASCII: percent-encode other characters, and give an international domain "
                           "name in its xn-- form")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise UnsafeTarget("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a port that is not a number in range)
    except ValueError:
        raise UnsafeTarget("is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeTarget("must be an http or https URL")
    if not parts.hostname:
        raise UnsafeTarget("must name a host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeTarget("must not carry credentials; the signature authenticates the delivery")
    return parts


def check(url: str, *, allow_private: bool) -> Target:
    """The URL's target, resolved and checked; UnsafeTarget names what is wrong."""
    parts = parse(url)
    host = parts.hostname
    assert host is not None
    if allow_private:
        return Target(url, host, None)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise UnsafeTarget(f"names a host that does not resolve: {host}") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    for address in addresses:
        reason = refused(address)
        if reason is not None:
            raise UnsafeTarget(f"resolves to {reason} ({address}); webhooks go to public addresses only")
    if not addresses:
        raise UnsafeTarget(f"names a host that does not resolve: {host}")
    return Target(url, host, str(addresses[0]))
