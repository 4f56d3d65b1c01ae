"""The URL a provider signed, rebuilt from the request: providers sign the URL they were configured with."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache


@lru_cache(maxsize=4096)
def provider_urls(base: str, path: str, query: str) -> tuple[str, tuple[str, ...]]:
    """`base + path + query`, and the same URL with the default port added or removed (Twilio signs
    whichever form it was configured with). Cached: a provider posts to the same few URLs over and over."""
    url = base + path + (f"?{query}" if query else "")
    scheme, _, rest = base.partition("://")
    hostpart = rest.split("/", 1)[0]
    default_port = {"https": "443", "http": "80"}.get(scheme)
    if not default_port:
        return url, ()
    if hostpart.endswith(f":{default_port}"):
        alt_host = hostpart[: -len(default_port) - 1]
    elif ":" not in hostpart.rsplit("]", 1)[-1]:
        alt_host = f"{hostpart}:{default_port}"
    else:
        return url, ()
    return url, (url.replace(f"{scheme}://{hostpart}", f"{scheme}://{alt_host}", 1),)


def forwarded(headers: Mapping[str, str], name: str) -> str:
    """The entry the trusted proxy appended to an X-Forwarded-* header: the last one. Earlier entries
    are whatever the client wrote, and the client is not trusted."""
    return headers.get(name, "").rpartition(",")[2].strip()
