"""Jobs waiting in Redis that name a tenant's records: rewritten without erased ids, or removed with a tenant.

dramatiq keeps each queue's job bodies in a hash (`<ns>:<queue>.msgs`, also for the delay queue `.DQ` and
the dead letters `.XQ`) and their ids in a list (or, for dead letters, a sorted set) of the same name without
`.msgs`. The fleet's jobs name their tenant first and carry a list of ids second (events for `ingest`,
messages for `ai`): ids only, never content; a dead letter's options may carry the traceback of its last
failure, whose text may quote anything. After an erasure the erased ids are taken out of every waiting job
(a job left with none is removed), and every job of the tenant is redacted of the person; a deleted tenant's
jobs are all removed, with any key naming it.

A worker that already took a job runs it; the database is what makes such a job harmless (erased events are
marked processed, erased messages have nothing left to read, and AI results about a message erased while
they were computed are not stored).
"""

from __future__ import annotations

from collections.abc import Callable, Set
from typing import Any, Protocol

import orjson


class Redis(Protocol):
    def scan_iter(self, match: str | None = None, count: int | None = None) -> Any: ...
    def hscan_iter(self, name: str, match: str | None = None, count: int | None = None) -> Any: ...
    def hset(self, name: str, key: str, value: bytes) -> Any: ...
    def hdel(self, name: str, *keys: str) -> Any: ...
    def lrem(self, name: str, count: int, value: str) -> Any: ...
    def zrem(self, name: str, *values: str) -> Any: ...
    def type(self, name: str) -> Any: ...
    def delete(self, *names: str) -> Any: ...


def forget_jobs(client: Redis, namespace: str, tenant: str, ids: Set[str] | None = None,
                redact: Callable[[Any], Any] | None = None) -> int:
    """Take `ids` out of the tenant's waiting jobs (every job of the tenant when `ids` is None), and pass
    each of its jobs through `redact` (a dead letter's options may hold a traceback's text); how many jobs
    changed or went."""
    changed = 0
    for raw_key in client.scan_iter(match=f"{namespace}:*.msgs", count=500):
        key = _text(raw_key)
        for raw_id, body in client.hscan_iter(key, count=500):
            job_id = _text(raw_id)
            rewritten = _without(body, tenant, ids, redact)
            if rewritten is None:
                continue
            if rewritten == b"":
                _remove(client, key, job_id)
            else:
                client.hset(key, job_id, rewritten)
            changed += 1
    return changed


def forget_tenant_keys(client: Redis, tenant: str) -> int:
    """Delete every key whose name holds the tenant's id (rate limits, caches); how many."""
    keys = [_text(k) for k in client.scan_iter(match=f"*{tenant}*", count=500)]
    for start in range(0, len(keys), 500):
        client.delete(*keys[start:start + 500])
    return len(keys)


def _without(body: bytes, tenant: str, ids: Set[str] | None,
             redact: Callable[[Any], Any] | None = None) -> bytes | None:
    """The job without `ids`, redacted; b"" when nothing is left of it; None when it does not change."""
    try:
        job = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    args = job.get("args") if isinstance(job, dict) else None
    kwargs = job.get("kwargs") if isinstance(job, dict) else None
    named = (kwargs or {}).get("tenant_id") if isinstance(kwargs, dict) else None
    if str(named or (args[0] if isinstance(args, list) and args else "")) != tenant:
        return None
    if ids is None:
        return b""
    changed = False
    if isinstance(args, list) and len(args) >= 2 and isinstance(args[1], list):
        kept = [item for item in args[1] if str(item) not in ids]
        if not kept and args[1]:
            return b""
        if len(kept) != len(args[1]):
            job["args"], changed = [args[0], kept, *args[2:]], True
    if redact is not None:
        cleaned = redact(job)
        job, changed = cleaned, changed or cleaned != job
    return orjson.dumps(job) if changed else None


def _remove(client: Redis, hash_key: str, job_id: str) -> None:
    queue = hash_key.removesuffix(".msgs")
    if _text(client.type(queue)) == "zset":
        client.zrem(queue, job_id)
    else:
        client.lrem(queue, 0, job_id)
    client.hdel(hash_key, job_id)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
