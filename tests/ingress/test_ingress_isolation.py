"""One delivery cannot spoil anyone else's: the group commit isolates a row the database refuses, the writer
queue answers 503 when full instead of growing, and a Mailgun token is accepted once across web processes
whatever happens to Redis. Real PostgreSQL, Redis, `intake serve` processes and HTTP throughout."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from urllib.parse import parse_qsl

import httpx
import orjson
import psycopg
import pytest
import redis
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Engine, text

from db.tenancy import TenantId
from pipelines.inboxes import CreatedInbox
from tests.factories import new_inbox
from tests.processes import INTAKE, free_port, web_server
from tests.webhooks import fixture, sign
from workers.web.writer import EventRow, EventWriter, Outcome, UnstorableEvent

GOOD_ROWS = 255


def stored_keys(engine: Engine, inbox: CreatedInbox) -> list[str]:
    with engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.tenant_id', :t, true)"), {"t": str(inbox.tenant_id)})
        return list(conn.execute(text("SELECT dedupe_key FROM inbound_events WHERE inbox_id = :i"),
                                 {"i": inbox.id}).scalars())


def event_row(inbox: CreatedInbox, key: str, **changes: object) -> EventRow:
    row = EventRow(inbox.tenant_id, inbox.id, inbox.channel, key, "application/json",
                   {"content-type": "application/json"}, b'{"text": "hello"}', datetime.now(UTC))
    for name, value in changes.items():
        setattr(row, name, value)
    return row


async def commit_together(url: str, make_rows: Callable[[], list[EventRow]], *, pool_timeout: float = 5,
                          ) -> tuple[list[Outcome | BaseException], list[int], list[uuid.UUID]]:
    """Queue every row first, then start one writer: the rows share one group commit. Returns each row's
    outcome, the size of every statement the writer ran (as its `on_batch` reports them to the metrics) and
    the enqueued event ids."""
    rows = make_rows()  # in the loop: each row holds a future of it
    enqueued: list[uuid.UUID] = []

    async def enqueue(jobs: list[tuple[uuid.UUID, list[uuid.UUID]]]) -> None:
        enqueued.extend(i for _, ids in jobs for i in ids)

    pool = AsyncConnectionPool(url, min_size=1, max_size=2, open=False, timeout=pool_timeout,
                               kwargs={"autocommit": True})
    await pool.open(wait=False)
    batches: list[int] = []
    writer = EventWriter(pool, enqueue, writers=1, batch_max=len(rows), queue_max=len(rows),
                         on_batch=batches.append)
    try:
        pending = [asyncio.create_task(writer.submit(row)) for row in rows]
        await asyncio.sleep(0)  # every submit is queued before the writer takes its first batch
        writer.start()
        outcomes = await asyncio.gather(*pending, return_exceptions=True)
    finally:
        await writer.stop()
        await pool.close()
    return outcomes, batches, enqueued


@pytest.fixture(scope="module")
def tenants(app_engine: Engine) -> list[CreatedInbox]:
    return [new_inbox(app_engine, "api", tenant_name=f"Isolation {i}") for i in range(3)]


# -- the group commit survives one bad member ---------------------------------------------------------

HOSTILE_ROWS = {
    "nul_in_dedupe_key": {"dedupe_key": "<a\x00b@mail.example.com>"},
    "nul_in_header": {"headers": {"content-type": "application/json", "user-agent": "a\x00b"}},
    "nul_in_content_type": {"content_type": "text/plain\x00"},
    "lone_surrogate_in_dedupe_key": {"dedupe_key": "id-\udc80"},
    "dedupe_key_too_large_to_index": {"dedupe_key": "".join(uuid.uuid4().hex for _ in range(300))},
    "inbox_that_does_not_exist": {"inbox_id": uuid.uuid4()},
    "nul_in_replay_token": {"replay_token": "tok\x00en"},
    "lone_surrogate_in_replay_token": {"replay_token": "tok\udc80en"},
    "replay_token_too_large_to_index": {"replay_token": "".join(uuid.uuid4().hex for _ in range(300))},
}


@pytest.mark.parametrize("shape", sorted(HOSTILE_ROWS))
def test_one_refused_row_among_255_good_ones_from_three_tenants(
        stack: dict[str, str], app_engine: Engine, tenants: list[CreatedInbox], shape: str) -> None:
    run = uuid.uuid4().hex[:8]
    good_keys = [(i % 3, f"{run}-{i}") for i in range(GOOD_ROWS)]

    def rows() -> list[EventRow]:
        good = [event_row(tenants[t], key) for t, key in good_keys]
        bad = event_row(tenants[1], f"{run}-bad", **HOSTILE_ROWS[shape])
        return [*good[:100], bad, *good[100:]]

    outcomes, batches, enqueued = asyncio.run(commit_together(stack["DATABASE_URL"], rows))

    refused = outcomes[100]
    assert isinstance(refused, UnstorableEvent)
    assert str(refused).startswith("the delivery cannot be stored: ")
    for leak in ("inbound_events", "violates", "DETAIL", "\\u0000", "0x00", "Key ("):
        assert leak not in str(refused)
    assert outcomes[:100] + outcomes[101:] == [Outcome.STORED] * GOOD_ROWS
    for t, inbox in enumerate(tenants):
        mine = {k for k in stored_keys(app_engine, inbox) if k.startswith(run)}
        assert mine == {key for owner, key in good_keys if owner == t}
    assert len(enqueued) == GOOD_ROWS
    # Bisection: about two statements per halving, not one per row.
    assert sum(batches) == GOOD_ROWS and len(batches) <= 2 * 9


def test_several_bad_rows_in_one_batch_are_each_refused_alone(
        stack: dict[str, str], app_engine: Engine, tenants: list[CreatedInbox]) -> None:
    run = uuid.uuid4().hex[:8]
    culprits = {5, 6, 33, 63}
    rows = lambda: [event_row(tenants[i % 3], f"{run}-{i}" + ("\x00" if i in culprits else ""))  # noqa: E731
                    for i in range(64)]
    outcomes, _, _ = asyncio.run(commit_together(stack["DATABASE_URL"], rows))
    assert {i for i, o in enumerate(outcomes) if isinstance(o, UnstorableEvent)} == culprits
    assert sum(o is Outcome.STORED for o in outcomes) == 64 - len(culprits)


def test_a_duplicate_in_a_split_batch_is_still_a_duplicate(
        stack: dict[str, str], tenants: list[CreatedInbox]) -> None:
    run = uuid.uuid4().hex[:8]
    once = lambda: [event_row(tenants[0], f"{run}-once")]  # noqa: E731
    first, _, _ = asyncio.run(commit_together(stack["DATABASE_URL"], once))
    assert first == [Outcome.STORED]
    rows = lambda: [event_row(tenants[0], f"{run}-once"), event_row(tenants[0], f"{run}-\x00"),  # noqa: E731
                    event_row(tenants[0], f"{run}-new")]
    outcomes, _, enqueued = asyncio.run(commit_together(stack["DATABASE_URL"], rows))
    assert outcomes[0] is Outcome.DUPLICATE and isinstance(outcomes[1], UnstorableEvent)
    assert outcomes[2] is Outcome.STORED and len(enqueued) == 1


def test_an_unreachable_database_fails_the_whole_batch_without_splitting() -> None:
    url = f"postgresql://intake@127.0.0.1:{free_port()}/intake?connect_timeout=1"
    inbox = CreatedInbox(id=uuid.uuid4(), tenant_id=TenantId(uuid.uuid4()), channel="api", name="", secrets={})
    started = time.monotonic()
    outcomes, batches, _ = asyncio.run(commit_together(url, lambda: [event_row(inbox, f"k{i}") for i in range(8)],
                                                       pool_timeout=1))
    assert all(isinstance(o, psycopg.OperationalError) for o in outcomes), outcomes
    assert not any(isinstance(o, UnstorableEvent) for o in outcomes)
    assert batches == []
    assert time.monotonic() - started < 5  # one pool timeout, not one per bisection step


# -- the bounded writer queue ------------------------------------------------------------------------

QUEUE_MAX, BATCH_MAX = 8, 4


def telegram(server: str, inbox: CreatedInbox, update_id: int) -> tuple[str, bytes, dict[str, str]]:
    body = orjson.dumps({"update_id": update_id, "message": {
        "message_id": update_id, "date": 1700000000, "chat": {"id": 7, "type": "private"},
        "from": {"id": 7, "first_name": "Queue"}, "text": "hi"}})
    url = f"{server}/v1/webhooks/telegram/{inbox.id}"
    headers, body = sign("telegram", inbox.secrets, url, body, "application/json")
    return url, body, headers


def test_a_full_writer_queue_answers_503_at_once_and_every_2xx_is_stored(
        stack: dict[str, str], app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "telegram")
    env = {"INTAKE_COMMIT_QUEUE_MAX": str(QUEUE_MAX), "INTAKE_COMMIT_BATCH_MAX": str(BATCH_MAX),
           "INTAKE_DB_POOL_SIZE": "2", "INTAKE_RATE_LIMIT_PER_SECOND": "10000",
           "INTAKE_RATE_LIMIT_BURST": "10000"}
    total = 60
    with web_server(env) as server:
        url, body, headers = telegram(server, inbox, 1)
        assert httpx.post(url, content=body, headers=headers).status_code == 200  # the inbox is cached
        # A transaction that holds a lock every insert into inbound_events waits for: a stalled database.
        with psycopg.connect(stack["INTAKE_ADMIN_DATABASE_URL"]) as blocker:
            blocker.execute("LOCK TABLE inbound_events IN SHARE MODE")
            answers = asyncio.run(burst(server, inbox, total, release=blocker.commit))
    codes = [status for _, status, _, _ in answers]
    overloaded = [a for a in answers if a[1] == 503]
    # At most the queue and one batch in flight wait for the database; everyone else is told at once.
    assert len(overloaded) >= total - QUEUE_MAX - BATCH_MAX
    assert set(codes) == {200, 503}
    for _, _, seconds, response in overloaded:
        assert seconds < 5 and response["error"] == "overloaded"
    stored = stored_update_ids(app_engine, inbox)
    assert {update_id for update_id, status, _, _ in answers if status == 200} <= stored
    assert not {update_id for update_id, status, _, _ in answers if status == 503} & stored


def stored_update_ids(engine: Engine, inbox: CreatedInbox) -> set[int]:
    with engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.tenant_id', :t, true)"), {"t": str(inbox.tenant_id)})
        bodies = conn.execute(text("SELECT body FROM inbound_events WHERE inbox_id = :i"), {"i": inbox.id})
        return {int(orjson.loads(bytes(body))["update_id"]) for body in bodies.scalars()}


async def burst(server: str, inbox: CreatedInbox, total: int, release: object) -> list[
        tuple[int, int, float, dict[str, object]]]:
    """`total` deliveries at once; once every request but a queue's worth is answered, `release()`."""
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=total)) as client:
        async def one(update_id: int) -> tuple[int, int, float, dict[str, object]]:
            url, body, headers = telegram(server, inbox, update_id)
            started = time.monotonic()
            response = await client.post(url, content=body, headers=headers)
            if response.status_code == 503:
                assert response.headers["retry-after"]
            return update_id, response.status_code, time.monotonic() - started, response.json()

        tasks = [asyncio.create_task(one(100 + i)) for i in range(total)]
        deadline = time.monotonic() + 20
        while sum(t.done() for t in tasks) < total - QUEUE_MAX - BATCH_MAX and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert all(t.result()[1] == 503 for t in tasks if t.done())  # nothing was stored while stalled
        release()  # type: ignore[operator]
        return await asyncio.gather(*tasks)


# -- Mailgun's one-time tokens, claimed in PostgreSQL ------------------------------------------------

@pytest.fixture(scope="module")
def two_servers(stack: dict[str, str]) -> Iterator[tuple[str, str]]:
    with web_server() as first, web_server() as second:
        yield first, second


def mailgun(server: str, inbox: CreatedInbox) -> tuple[str, bytes, dict[str, str]]:
    """A genuine delivery, signed with a new token."""
    body, ctype = fixture("mailgun/inbound.form")
    url = f"{server}/v1/webhooks/mailgun/{inbox.id}"
    headers, signed = sign("mailgun", inbox.secrets, url, body, ctype)
    return url, signed, headers


def other_body(signed: bytes) -> bytes:
    """The same timestamp, token and signature around another message (another Message-Id too)."""
    replay = signed.replace(b"Thanks%2C+that+works", b"Send+money+now")
    assert b"Message-Id=" in replay
    return replay.replace(b"Message-Id=", b"Message-Id=%3Cforged-" + uuid.uuid4().hex.encode() + b"%40x%3E&x=", 1)


def forged_401(server: str, inbox: CreatedInbox) -> httpx.Response:
    url, signed, headers = mailgun(server, inbox)
    return httpx.post(url, content=signed.replace(b"signature=", b"signature=0"), headers=headers)


def test_a_token_is_accepted_once_across_web_processes_and_after_redis_forgets(
        two_servers: tuple[str, str], app_engine: Engine, redis_client: redis.Redis) -> None:
    first, second = two_servers
    inbox = new_inbox(app_engine, "mailgun")
    url, signed, headers = mailgun(first, inbox)
    assert httpx.post(url, content=signed, headers=headers).status_code == 200
    refused = forged_401(first, inbox)
    assert refused.status_code == 401

    for body in (other_body(signed), signed.replace(b"Thanks%2C+that+works", b"Send+money+now")):
        replay = httpx.post(url.replace(first, second), content=body, headers=headers)
        assert (replay.status_code, replay.json()) == (401, refused.json())
    redis_client.flushall()
    replay = httpx.post(url, content=other_body(signed), headers=headers)
    assert (replay.status_code, replay.json()) == (401, refused.json())
    assert len(stored_keys(app_engine, inbox)) == 1


def test_a_genuine_retry_with_the_same_token_is_a_duplicate(
        two_servers: tuple[str, str], app_engine: Engine) -> None:
    first, second = two_servers
    inbox = new_inbox(app_engine, "mailgun")
    url, signed, headers = mailgun(first, inbox)
    assert httpx.post(url, content=signed, headers=headers).status_code == 200
    assert httpx.post(url.replace(first, second), content=signed, headers=headers).status_code == 200
    assert httpx.post(url, content=signed, headers=headers).status_code == 200
    assert len(stored_keys(app_engine, inbox)) == 1


def test_racing_replays_of_one_token_store_exactly_one(
        two_servers: tuple[str, str], app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "mailgun")
    url, signed, headers = mailgun(two_servers[0], inbox)
    bodies = [other_body(signed) for _ in range(12)]

    async def race() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            return [r.status_code for r in await asyncio.gather(*(
                client.post(url.replace(two_servers[0], two_servers[i % 2]), content=body, headers=headers)
                for i, body in enumerate(bodies)))]

    codes = asyncio.run(race())
    assert sorted(codes) == [200] + [401] * 11
    assert len(stored_keys(app_engine, inbox)) == 1


def token_of(signed: bytes) -> str:
    return dict(parse_qsl(signed.decode()))["token"]


def claims(engine: Engine, inbox: CreatedInbox) -> dict[str, str]:
    """The inbox's claimed tokens, each with the dedupe key of the delivery that claimed it."""
    with engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.tenant_id', :t, true)"), {"t": str(inbox.tenant_id)})
        rows = conn.execute(text("SELECT token, dedupe_key FROM replay_tokens WHERE inbox_id = :i"),
                            {"i": inbox.id})
        return {str(token): str(key) for token, key in rows}


def test_a_retry_with_a_fresh_token_claims_that_token_too(
        two_servers: tuple[str, str], app_engine: Engine) -> None:
    first, second = two_servers
    inbox = new_inbox(app_engine, "mailgun")
    url, signed, headers = mailgun(first, inbox)
    assert httpx.post(url, content=signed, headers=headers).status_code == 200
    (key,) = stored_keys(app_engine, inbox)
    _, retry, _ = mailgun(first, inbox)  # Mailgun retries the same email with a new timestamp and token
    assert token_of(retry) != token_of(signed)
    assert httpx.post(url.replace(first, second), content=retry, headers=headers).status_code == 200
    assert claims(app_engine, inbox) == {token_of(signed): key, token_of(retry): key}

    # Whoever captured the retry cannot use its token: not with another email, not with other bytes.
    refused = forged_401(first, inbox)
    for server in (first, second):
        for body in (other_body(retry), retry.replace(b"Thanks%2C+that+works", b"Send+money+now")):
            replay = httpx.post(url.replace(first, server), content=body, headers=headers)
            assert (replay.status_code, replay.json()) == (401, refused.json())
    assert httpx.post(url, content=retry, headers=headers).status_code == 200  # the retry itself, once more
    assert stored_keys(app_engine, inbox) == [key]


def test_every_token_of_one_group_commit_is_claimed_or_refused(
        stack: dict[str, str], app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "mailgun")
    run = uuid.uuid4().hex[:8]
    row = lambda key, token, body: event_row(inbox, f"{run}-{key}", replay_token=f"{run}-{token}",  # noqa: E731
                                             body=body)
    # An email, its retry with a fresh token, and that fresh token around another email, in one commit.
    outcomes, _, enqueued = asyncio.run(commit_together(stack["DATABASE_URL"], lambda: [
        row("mail", "t1", b"first"), row("mail", "t2", b"retry"), row("forged", "t2", b"forged")]))
    assert outcomes[2] is Outcome.REPLAYED
    assert Outcome.REPLAYED not in outcomes[:2] and len(enqueued) == 1
    # One token with one Message-Id but two bodies: the first to arrive claims it (odd Unicode or not).
    outcomes, _, _ = asyncio.run(commit_together(stack["DATABASE_URL"], lambda: [
        row("other", "t3\u202e\ufeff\U0001f600", b"genuine"), row("other", "t3\u202e\ufeff\U0001f600", b"forged")]))
    assert outcomes == [Outcome.STORED, Outcome.REPLAYED]
    # Later, each token stays with the delivery that claimed it.
    outcomes, _, enqueued = asyncio.run(commit_together(stack["DATABASE_URL"], lambda: [
        row("mail", "t2", b"retry"), row("late", "t2", b"forged"), row("late", "t1", b"forged")]))
    assert outcomes == [Outcome.DUPLICATE, Outcome.REPLAYED, Outcome.REPLAYED] and enqueued == []
    assert sorted(stored_keys(app_engine, inbox)) == [f"{run}-mail", f"{run}-other"]


MAINTAINER = "e_replay_tokens_clock"  # a login role in intake_maintenance, as an operator would create


def test_the_clock_forgets_claims_once_their_timestamps_are_refused_anyway(
        two_servers: tuple[str, str], stack: dict[str, str], app_engine: Engine, admin_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "mailgun")
    tokens = []
    for _ in range(3):
        url, signed, headers = mailgun(two_servers[0], inbox)
        assert httpx.post(url, content=signed, headers=headers).status_code == 200
        tokens.append(token_of(signed))
    tolerance = 300  # INTAKE_WEBHOOK_TOLERANCE_SECONDS: past twice that, a token's timestamp is refused anyway
    window = 2 * tolerance
    expired, kept, fresh = tokens
    with admin_engine.begin() as conn:
        for token, age in ((expired, window + 5), (kept, window - 60)):
            conn.execute(text("UPDATE replay_tokens SET claimed_at = now() - make_interval(secs => :age) "
                              "WHERE token = :token"), {"age": age, "token": token})
        conn.execute(text(f"""DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{MAINTAINER}') THEN
                CREATE ROLE {MAINTAINER} LOGIN NOSUPERUSER NOBYPASSRLS;
            END IF; END $$"""))
        conn.execute(text(f"GRANT intake_maintenance TO {MAINTAINER}"))
    env = {**os.environ, "INTAKE_WEBHOOK_TOLERANCE_SECONDS": str(tolerance),
           "INTAKE_ADMIN_DATABASE_URL": stack["DATABASE_URL"].replace("intake_app@", f"{MAINTAINER}@")}
    clock = subprocess.run([INTAKE, "clock", "--once", "--json"], capture_output=True, text=True, env=env,
                           timeout=120)
    assert clock.returncode == 0, clock.stderr
    assert json.loads(clock.stdout)["replay_tokens_forgotten"] >= 1
    assert set(claims(app_engine, inbox)) == {kept, fresh}


def test_the_guard_holds_while_redis_is_down(stack: dict[str, str], app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "mailgun")
    nowhere = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}  # nothing listens there
    with web_server(nowhere) as first, web_server(nowhere) as second:
        url, signed, headers = mailgun(first, inbox)
        assert httpx.post(url, content=signed, headers=headers, timeout=10).status_code == 200  # stored
        for server in (first, second):
            retry = httpx.post(url.replace(first, server), content=signed, headers=headers, timeout=10)
            assert retry.status_code == 200
            replay = httpx.post(url.replace(first, server), content=other_body(signed), headers=headers,
                                timeout=10)
            assert replay.status_code == 401
    assert len(stored_keys(app_engine, inbox)) == 1


def test_an_email_the_database_refuses_does_not_fail_the_deliveries_it_shares_a_commit_with(
        stack: dict[str, str], app_engine: Engine) -> None:
    chats = [new_inbox(app_engine, "telegram", tenant_name=f"Neighbour {i}") for i in range(3)]
    email_inbox = new_inbox(app_engine, "mailgun")
    with web_server({"INTAKE_RATE_LIMIT_PER_SECOND": "10000", "INTAKE_RATE_LIMIT_BURST": "10000"}) as server:
        url, signed, headers = mailgun(server, email_inbox)
        poison = signed.replace(b"Message-Id=%3CCAF", b"Message-Id=%3Ca%00b", 1)

        async def together() -> tuple[httpx.Response, list[int]]:
            async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as client:
                async def chat(i: int) -> int:
                    chat_url, body, chat_headers = telegram(server, chats[i % 3], 5000 + i)
                    return (await client.post(chat_url, content=body, headers=chat_headers)).status_code
                email = asyncio.create_task(client.post(url, content=poison, headers=headers))
                codes = await asyncio.gather(*(chat(i) for i in range(90)))
                return await email, list(codes)

        email, codes = asyncio.run(together())
    assert codes == [200] * 90
    for i, inbox in enumerate(chats):
        assert stored_update_ids(app_engine, inbox) == {5000 + n for n in range(i, 90, 3)}
    # Refused alone with a clear 400, or stored once its key is made storable: never a 503.
    if email.status_code == 400:
        assert email.json()["error"] == "unstorable_payload"
    else:
        assert email.status_code == 200 and len(stored_keys(app_engine, email_inbox)) == 1


def test_a_large_delivery_is_committed_in_a_batch_of_its_own(stack: dict[str, str], app_engine: Engine) -> None:
    """The chat messages queued around a 2 MiB email do not wait for its insert: it goes alone."""
    from workers.web.writer import ALONE_BYTES

    inbox = new_inbox(app_engine, "postmark")
    sizes: list[int] = []

    async def run() -> list[Outcome | BaseException]:
        rows = ([event_row(inbox, f"small-{n}") for n in range(10)]
                + [event_row(inbox, "large", body=b"x" * (2 * ALONE_BYTES))]
                + [event_row(inbox, f"small-{n}") for n in range(10, 20)])

        async def enqueue(jobs: list[tuple[uuid.UUID, list[uuid.UUID]]]) -> None:
            return None

        pool = AsyncConnectionPool(stack["DATABASE_URL"], min_size=1, max_size=2, open=False,
                                   kwargs={"autocommit": True})
        await pool.open(wait=False)
        writer = EventWriter(pool, enqueue, writers=1, batch_max=len(rows), queue_max=len(rows),
                             on_batch=sizes.append)
        try:
            pending = [asyncio.create_task(writer.submit(row)) for row in rows]
            await asyncio.sleep(0)  # all queued before the writer takes its first batch
            writer.start()
            return await asyncio.gather(*pending, return_exceptions=True)
        finally:
            await writer.stop()
            await pool.close()

    outcomes = asyncio.run(run())
    assert outcomes == [Outcome.STORED] * 21
    assert sizes == [10, 1, 10]
    assert len(stored_keys(app_engine, inbox)) == 21


def test_jobs_that_come_while_a_send_is_in_flight_leave_together(stack: dict[str, str], app_engine: Engine) -> None:
    """A lone job leaves at once; the jobs of other tenants stored while it is being sent leave in the sender's
    next command, together: with many tenants the web spends one Redis command on many jobs."""
    inboxes = [new_inbox(app_engine, "api") for _ in range(4)]
    sent: list[set[uuid.UUID]] = []

    async def run() -> None:
        release = asyncio.Event()

        async def enqueue(jobs: list[tuple[uuid.UUID, list[uuid.UUID]]]) -> None:
            sent.append({tenant for tenant, _ in jobs})
            if len(sent) == 1:
                await release.wait()  # Redis is slow to answer the first command

        pool = AsyncConnectionPool(stack["DATABASE_URL"], min_size=1, max_size=2, open=False,
                                   kwargs={"autocommit": True})
        await pool.open(wait=False)
        writer = EventWriter(pool, enqueue, writers=1, batch_max=10, enqueue_window=0.0)
        writer.start()
        try:
            assert await writer.submit(event_row(inboxes[0], "first")) is Outcome.STORED
            for _ in range(500):  # the first job leaves as soon as its event is stored
                if sent:
                    break
                await asyncio.sleep(0.01)
            assert len(sent) == 1
            outcomes = await asyncio.gather(*(writer.submit(event_row(i, "next")) for i in inboxes[1:]))
            assert outcomes == [Outcome.STORED] * 3 and len(sent) == 1  # stored and waiting for the sender
            release.set()
        finally:
            await writer.stop()
            await pool.close()

    asyncio.run(run())
    assert sent == [{inboxes[0].tenant_id}, {i.tenant_id for i in inboxes[1:]}]
