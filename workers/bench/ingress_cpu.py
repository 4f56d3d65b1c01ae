"""CPU per delivery of the web ingress's app alone, in one process: no HTTP server, no client.

The ASGI app that `intake serve` runs (`workers.web.app.create_app`) is driven directly with signed
deliveries of every channel, `concurrency` at a time as a server would, against a real PostgreSQL and Redis.
Each round reports `time.process_time()` per acknowledged delivery, for each channel alone and for the mix
`intake bench` posts, and the same for the trivial app of `workers.bench.hello` driven the same way (the
harness's own share). The server's HTTP parsing is not included: `intake bench` measures that. Inboxes
stay cached for the whole run, so rounds measure the steady state rather than the reloads of a cache ttl.

    python -m workers.bench.ingress_cpu [--events 3000] [--rounds 3] [--profile FILE] [--without parse,verify]

`--without` measures what the door would cost without a step, to say what each costs: `parse` answers every
delivery's dedupe key with a digest of its body instead of the channel's parse (so nothing is refused as
malformed), `verify` accepts every signature. Neither is something `intake serve` can be told to do.

Services are embedded ones in a temporary home unless DATABASE_URL and REDIS_URL are set.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import hashlib
import os
import pstats
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import uvloop

from config import get_settings
from db.engine import make_engine
from pipelines.channels.signing import sign
from pipelines.crypto import SecretBox
from pipelines.inboxes import CreatedInbox, create_inbox, create_tenant
from workers.bench import hello
from workers.bench.stack import UNLIMITED, Stack, open_stack
from workers.bench.traffic import CHANNELS as BENCH_CHANNELS
from workers.bench.traffic import TEXTS, delivery_body
from workers.web.app import Ingress, create_app

ASGI = Callable[[Any, Any, Any], Coroutine[Any, Any, None]]
Request = tuple[str, dict[str, str], bytes]
CHANNELS = (*BENCH_CHANNELS, "mailgun", "sendgrid")
HOST = "127.0.0.1:8000"
ISSUED = {"twilio": {"auth_token": "bench-twilio"}, "whatsapp": {"app_secret": "bench-meta"},
          "mailgun": {"signing_key": "bench-mailgun"}}


def create_inboxes(stack: Stack, tenants: int) -> list[dict[str, CreatedInbox]]:
    engine = make_engine(stack.app_url, prepared_statements=True, pool_size=1, application_name="intake-bench")
    box = SecretBox(stack.secret_key)
    try:
        result = []
        for n in range(tenants):
            with engine.begin() as conn:
                tenant = create_tenant(conn, f"CPU bench tenant {n}")
                result.append({ch: create_inbox(conn, box, tenant, ch, given_secrets=ISSUED.get(ch), settings=UNLIMITED)
                               for ch in CHANNELS})
        return result
    finally:
        engine.dispose()


def _email_body(channel: str, rng: random.Random) -> tuple[bytes, str]:
    uid = uuid.UUID(int=rng.getrandbits(128)).hex
    person = rng.randrange(200)
    text = rng.choice(TEXTS)
    if channel == "mailgun":
        form = {"recipient": "support@help.example.com", "sender": f"customer{person}@example.com",
                "subject": "Help", "from": f"Customer {person} <customer{person}@example.com>",
                "Message-Id": f"<{uid}@mail.example.com>", "body-plain": text, "stripped-text": text}
        return urlencode(form).encode(), "application/x-www-form-urlencoded"
    fields = {"headers": f"From: Customer {person} <customer{person}@example.com>\nSubject: Help\n"
                         f"Message-ID: <{uid}@mail.example.com>\n",
              "from": f"Customer {person} <customer{person}@example.com>", "to": "support@help.example.com",
              "subject": "Help", "text": text, "charsets": '{"text":"UTF-8","subject":"UTF-8"}'}
    parts = "".join(f'--xYzZY\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items())
    return (parts + "--xYzZY--\r\n").encode(), "multipart/form-data; boundary=xYzZY"


def requests(inboxes: list[dict[str, CreatedInbox]], channels: tuple[str, ...], count: int, seed: int,
             duplicate_rate: float) -> list[Request]:
    """`count` signed deliveries of `channels`, about `duplicate_rate` of them repeats, as provider retries are."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    out: list[Request] = []
    while len(out) < count:
        if out and rng.random() < duplicate_rate:
            out.append(out[rng.randrange(max(0, len(out) - 200), len(out))])
            continue
        channel = rng.choice(channels)
        inbox = rng.choice(inboxes)[channel]
        webhook_id = None
        if channel in BENCH_CHANNELS:
            body, ctype, webhook_id, _ = delivery_body(channel, rng.randrange(200), rng, now)
        else:
            body, ctype = _email_body(channel, rng)
        path = f"/v1/webhooks/{channel}/{inbox.id}"
        headers, body = sign(channel, inbox.secrets, f"http://{HOST}{path}", body, ctype, webhook_id=webhook_id)
        headers["user-agent"] = "bench/1.0"
        out.append((path, headers, body))
    return out


async def call(app: ASGI, path: str, headers: dict[str, str], body: bytes) -> int:
    """One request through `app`, as uvicorn hands it over: the status it answered."""
    raw = [(b"host", HOST.encode()), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000), "scheme": "http", "method": "POST",
             "root_path": "", "path": path, "raw_path": path.encode(), "query_string": b"", "headers": raw}
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    status = 0

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        await asyncio.Future()  # never: the client stays connected
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def post_all(app: ASGI, batch: list[Request], concurrency: int) -> tuple[float, dict[int, int]]:
    """Every request, `concurrency` at a time: CPU seconds spent and the count of each status."""
    statuses: dict[int, int] = {}
    queue = iter(batch)

    async def client() -> None:
        for path, headers, body in queue:
            status = await call(app, path, headers, body)
            statuses[status] = statuses.get(status, 0) + 1

    started = time.process_time()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.process_time() - started, statuses


async def started(app: ASGI) -> Callable[[], Awaitable[None]]:
    """Run the app's lifespan startup; the function returned shuts it down."""
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    done = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        if message["type"].endswith(".complete"):
            done.set()

    await messages.put({"type": "lifespan.startup"})
    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, messages.get, send))
    await done.wait()
    done.clear()

    async def shutdown() -> None:
        await messages.put({"type": "lifespan.shutdown"})
        await done.wait()
        await task

    return shutdown


@contextlib.contextmanager
def without(steps: set[str]) -> Iterator[None]:
    """The door with `steps` (parse, verify) taken out, for this measurement only."""
    kept = Ingress.parse, Ingress.verified

    async def digest(self: Ingress, channel: str, webhook: Any) -> Any:
        return SimpleNamespace(dedupe_key=hashlib.sha256(webhook.body).hexdigest())

    try:
        if "parse" in steps:
            Ingress.parse = digest  # type: ignore[method-assign]
        if "verify" in steps:
            Ingress.verified = staticmethod(lambda *_: True)  # type: ignore[method-assign,assignment]
        yield
    finally:
        Ingress.parse, Ingress.verified = kept  # type: ignore[method-assign]


async def measure(stack: Stack, options: argparse.Namespace) -> None:
    # Inboxes stay cached for the whole run: a round measures the steady state, not the reloads a ttl forces.
    settings = get_settings().model_copy(update={"inbox_cache_seconds": 3600.0})
    app: Any = create_app(settings, database_url=stack.app_url, redis_url=stack.redis_url, secret_key=stack.secret_key)
    inboxes = create_inboxes(stack, options.tenants)
    shutdown = await started(app)
    try:
        await rounds(app, inboxes, options)
    finally:
        await shutdown()


async def rounds(app: ASGI, inboxes: list[dict[str, CreatedInbox]], options: argparse.Namespace) -> None:
    groups = {name: channels for name, channels in {"mix": BENCH_CHANNELS, **{ch: (ch,) for ch in CHANNELS}}.items()
              if name in options.groups.split(",")}
    await post_all(app, requests(inboxes, CHANNELS, 500, 0, 0.1), options.concurrency)  # warm the caches
    results: dict[str, list[float]] = {name: [] for name in ("hello", *groups)}
    profile = cProfile.Profile() if options.profile else None
    for round_ in range(options.rounds):
        gc.collect()
        spent, _ = await post_all(hello.app, requests(inboxes, BENCH_CHANNELS, options.events, 99, 0.0),
                                  options.concurrency)
        results["hello"].append(spent / options.events * 1000)
        for n, (name, channels) in enumerate(groups.items()):
            batch = requests(inboxes, channels, options.events, round_ * 100 + n + 1, 0.1 if name == "mix" else 0.0)
            gc.collect()  # the previous group's garbage is not this group's cost
            if profile is not None and name == "mix":
                profile.enable()
            spent, statuses = await post_all(app, batch, options.concurrency)
            if profile is not None and name == "mix":
                profile.disable()
            results[name].append(spent / options.events * 1000)
            if set(statuses) != {200}:
                print(f"{name}: unexpected answers {statuses}")
        print(f"round {round_ + 1}: " + "  ".join(f"{k} {v[-1]:.4f}" for k, v in results.items()), flush=True)
    print("median CPU ms per delivery: " + "  ".join(f"{k} {statistics.median(v):.4f}" for k, v in results.items()))
    if profile is not None:
        profile.dump_stats(options.profile)
        pstats.Stats(profile).sort_stats("tottime").print_stats(45)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=3000, help="deliveries per channel group per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--groups", default=",".join(("mix", *CHANNELS)),
                        help="comma-separated: mix (the channels `intake bench` posts) and channel names")
    parser.add_argument("--profile", help="write a cProfile of the mixed deliveries to this file")
    parser.add_argument("--without", type=_steps, default=set(),
                        help="comma-separated: parse, verify (what the door would cost without them)")
    options = parser.parse_args()
    with open_stack(os.environ.get("DATABASE_URL"), os.environ.get("INTAKE_ADMIN_DATABASE_URL"),
                    os.environ.get("REDIS_URL")) as stack, without(options.without):
        uvloop.run(measure(stack, options))


def _steps(value: str) -> set[str]:
    steps = {step.strip() for step in value.split(",") if step.strip()}
    unknown = steps - {"parse", "verify"}
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown steps {sorted(unknown)}: parse and verify can be left out")
    return steps


if __name__ == "__main__":
    main()
