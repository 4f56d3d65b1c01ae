"""The ingress at its edges, against real `intake serve` processes: what a stranger costs (nothing of anyone
else's budget), what an oversized or slow body costs (no one else's latency), what proxy headers are
trusted with, and how a bug is told apart from an outage."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest
import redis.exceptions
import structlog
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy import Engine, text

from config import Settings
from pipelines.channels import ADAPTERS, WebhookRequest
from pipelines.crypto import SecretBox
from pipelines.inboxes import CreatedInbox
from tests.factories import new_inbox
from tests.processes import web_server
from tests.webhooks import fixture, sign
from workers.ratelimit import TokenBuckets, client_key
from workers.web.answers import failure
from workers.web.bodies import ParseTimeout
from workers.web.inboxes import InboxDirectory
from workers.web.writer import WriterBusy

OTHER_ADDRESS = "127.0.0.2"  # a second client on the same machine: Linux routes all of 127/8 to loopback


def url_for(base: str, inbox: CreatedInbox) -> str:
    return f"{base}/v1/webhooks/{inbox.channel}/{inbox.id}"


def telegram_update(inbox: CreatedInbox, base: str) -> tuple[str, bytes, dict[str, str]]:
    update_id = uuid.uuid4().int % 2**31
    body = orjson.dumps({"update_id": update_id, "message": {
        "message_id": update_id, "date": 1700000000, "chat": {"id": 7, "type": "private"},
        "from": {"id": 7, "first_name": "Edge"}, "text": "hi"}})
    headers, body = sign("telegram", inbox.secrets, url_for(base, inbox), body, "application/json")
    return url_for(base, inbox), body, headers


def post_genuine(client: httpx.Client, base: str, inbox: CreatedInbox) -> httpx.Response:
    url, body, headers = telegram_update(inbox, base)
    return client.post(url, content=body, headers=headers)


def stored_count(engine: Engine, inbox: CreatedInbox) -> int:
    with engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.tenant_id', :t, true)"), {"t": str(inbox.tenant_id)})
        return int(conn.execute(text("SELECT count(*) FROM inbound_events WHERE inbox_id = :i"),
                                {"i": inbox.id}).scalar_one())


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    data = response.json()
    assert set(data) == {"error", "detail"} and data["error"] == code and data["detail"], data


def from_address(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10)


# -- authenticate before spending ---------------------------------------------------------------------
def test_junk_signatures_do_not_spend_the_inbox_rate(stack: dict[str, str], app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "telegram", settings={"rate_limit_per_second": 0.01, "rate_limit_burst": 5})
    with web_server({"INTAKE_CLIENT_ERROR_BURST": "100000"}) as base, httpx.Client(timeout=10) as client:
        url, body, headers = telegram_update(inbox, base)
        forged = {**headers, "x-telegram-bot-api-secret-token": "guess"}
        codes = {client.post(url, content=body, headers=forged).status_code for _ in range(1000)}
        assert codes == {401}
        assert [post_genuine(client, base, inbox).status_code for _ in range(5)] == [200] * 5
        # The inbox's own limit still holds for authentic traffic.
        assert_error(post_genuine(client, base, inbox), 429, "rate_limited")
    assert stored_count(app_engine, inbox) == 5


def test_a_prober_is_slowed_while_other_clients_deliver(stack: dict[str, str], app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "telegram")
    env = {"INTAKE_CLIENT_ERROR_BURST": "5", "INTAKE_CLIENT_ERROR_RATE_PER_SECOND": "0.01"}
    with web_server(env) as base, httpx.Client(timeout=10) as provider, from_address(OTHER_ADDRESS) as prober:
        assert post_genuine(provider, base, inbox).status_code == 200
        probes = [prober.post(f"{base}/v1/webhooks/telegram/{uuid.uuid4()}", content=b"{}") for _ in range(8)]
        assert [r.status_code for r in probes] == [404] * 5 + [429] * 3
        assert_error(probes[-1], 429, "rate_limited")
        assert int(probes[-1].headers["retry-after"]) >= 1
        # Forged signatures on a real inbox, malformed ids and the handshake are slowed alike, and a slowed
        # prober cannot tell a real inbox id from a made-up one.
        url, body, headers = telegram_update(inbox, base)
        forged = prober.post(url, content=body, headers={**headers, "x-telegram-bot-api-secret-token": "x"})
        assert_error(forged, 429, "rate_limited")
        assert_error(prober.post(f"{base}/v1/webhooks/telegram/not-an-id", content=b"{}"), 429, "rate_limited")
        assert_error(prober.get(f"{base}/v1/webhooks/whatsapp/{uuid.uuid4()}"), 429, "rate_limited")
        # Another client is unaffected, and so is the inbox: its genuine deliveries are accepted.
        assert [post_genuine(provider, base, inbox).status_code for _ in range(3)] == [200] * 3
        assert_error(provider.post(f"{base}/v1/webhooks/telegram/{uuid.uuid4()}", content=b"{}"), 404,
                     "unknown_inbox")
        # A provider that shares the prober's address (one proxy in front) still delivers to a real inbox.
        assert post_genuine(prober, base, inbox).status_code == 200
    assert stored_count(app_engine, inbox) == 5


def test_the_buckets_and_the_inbox_cache_stay_bounded(stack: dict[str, str], app_engine: Engine) -> None:
    buckets = TokenBuckets(max_keys=100)
    for i in range(10_000):
        buckets.take(f"10.0.{i // 256}.{i % 256}", 1.0, 5)
    assert len(buckets) == 100
    # A whole IPv6 /64 is one client; separate /64s are separate clients.
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert client_key("2001:db8:0:1::1") != client_key("2001:db8::1")
    assert client_key("198.51.100.7") == "198.51.100.7"
    assert client_key("[not an address") == "[not an address"

    inbox = new_inbox(app_engine, "api")

    async def scenario() -> None:
        pool = AsyncConnectionPool(stack["DATABASE_URL"], min_size=1, max_size=2, open=False)
        await pool.open()
        try:
            directory = InboxDirectory(pool, SecretBox(os.environ["INTAKE_SECRET_KEY"]), max_entries=64)
            for _ in range(500):
                assert await directory.get(str(uuid.uuid4())) is None
            assert len(directory) == 64
            found = await directory.get(str(inbox.id))
            assert found is not None and found.id == inbox.id and directory.known(str(inbox.id))
            assert not directory.known(str(uuid.uuid4()))
            # Strings that are not ids never reach the database and are not remembered.
            before = pool.get_stats().get("requests_num", 0)
            hostile = ["", "x" * 100_000, "\x00" * 36, "é" * 36, "{" + str(inbox.id) + "}",
                       f"urn:uuid:{inbox.id}", str(inbox.id).replace("-", ""), "../" * 12, "1e999"]
            for value in hostile + [uuid.uuid4().hex + str(i) for i in range(5_000)]:
                assert await directory.get(value) is None
            assert pool.get_stats().get("requests_num", 0) == before
            assert len(directory) == 64
            # Unknown ids are remembered too: asking again costs no query.
            unknown = str(uuid.uuid4())
            await directory.get(unknown)
            before = pool.get_stats().get("requests_num", 0)
            assert await directory.get(unknown) is None
            assert pool.get_stats().get("requests_num", 0) == before
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_requests_for_one_inbox_share_one_query(stack: dict[str, str], app_engine: Engine) -> None:
    """Hundreds of requests in flight when an inbox's entry is missing or expired cost one query, not one each;
    one waiter going away does not take the answer from the others."""
    inbox = new_inbox(app_engine, "api")

    async def scenario() -> None:
        pool = AsyncConnectionPool(stack["DATABASE_URL"], min_size=1, max_size=4, open=False)
        await pool.open()
        try:
            directory = InboxDirectory(pool, SecretBox(os.environ["INTAKE_SECRET_KEY"]), ttl=0.05)
            for inbox_id in (str(inbox.id), str(uuid.uuid4()), str(inbox.id)):  # new, unknown, expired
                await asyncio.sleep(0.06)  # past the ttl: the entry, if any, has expired
                before = pool.get_stats().get("requests_num", 0)
                impatient = asyncio.ensure_future(directory.get(inbox_id))
                await asyncio.sleep(0)  # it has sent the query; it goes away before the answer
                impatient.cancel()
                found = await asyncio.gather(*(directory.get(inbox_id) for _ in range(300)))
                assert pool.get_stats().get("requests_num", 0) == before + 1
                assert len({None if f is None else f.id for f in found}) == 1
                assert (found[0] is not None) == (inbox_id == str(inbox.id))
        finally:
            await pool.close()

    asyncio.run(scenario())


def raw_post(base: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"{}") -> int:
    """The status of one POST written byte for byte (headers no HTTP client would send)."""
    host, port = base.removeprefix("http://").split(":")
    lines = [b"POST " + path.encode() + b" HTTP/1.1", b"host: " + host.encode(), b"connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if not any(name == b"content-length" for name, _ in headers):
        lines.append(b"content-length: %d" % len(body))
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        answer = sock.makefile("rb").readline()
    return int(answer.split()[1]) if answer else 0


def test_hostile_ids_lengths_and_forwarded_headers_get_4xx(stack: dict[str, str], app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "api")
    env = {"INTAKE_CLIENT_ERROR_BURST": "100000", "INTAKE_TRUST_PROXY_HEADERS": "true"}
    with web_server(env) as base:
        path = f"/v1/webhooks/api/{inbox.id}"
        for segment in ["not-a-uuid", "%00" * 36, "%C3%A9" * 36, "x" * 4000, "%7B" + str(inbox.id) + "%7D",
                        str(inbox.id).replace("-", "")]:
            assert raw_post(base, f"/v1/webhooks/api/{segment}", []) == 404, segment
        for declared in [b"-1", b"1e3", b"9" * 5000, b"\xb2", b"0x10", b"2, 2"]:
            status = raw_post(base, path, [(b"content-length", declared)])
            assert status == 0 or 400 <= status < 500, (declared, status)  # 0: refused by the HTTP parser
        for value in [b"", b",,,", b"\xe9\xff", b"x" * 8000, b"::1, [2001:db8::1]:443", b"1.2.3.4, " * 500,
                      b"\xef\xbf\xbd\xe2\x80\xae", b"unknown"]:
            headers = [(b"x-forwarded-for", value), (b"x-forwarded-host", value), (b"x-forwarded-proto", value)]
            assert raw_post(base, path, headers) == 401, value
        assert httpx.get(base + "/healthz").status_code == 200


# -- 413 that arrives ---------------------------------------------------------------------------------
def urllib_post(url: str, data: bytes | Iterator[bytes], headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")  # noqa: S310  (http://)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.parametrize("chunked", [False, True])
def test_a_client_that_writes_its_whole_body_first_reads_the_413(
    stack: dict[str, str], app_engine: Engine, chunked: bool
) -> None:
    inbox = new_inbox(app_engine, "api")
    with web_server({"INTAKE_MAX_BODY_BYTES": "65536"}) as base:
        url = url_for(base, inbox)
        big = b'{"pad": "' + b"x" * 20_000_000 + b'"}'
        headers, big = sign("api", inbox.secrets, url, big, "application/json")
        # urllib sends `Connection: close` and writes everything before it reads a byte of the answer.
        data: bytes | Iterator[bytes] = iter([big[i:i + 65536] for i in range(0, len(big), 65536)]) if chunked else big
        status, body = urllib_post(url, data, headers)
        assert status == 413
        assert orjson.loads(body) == {"error": "payload_too_large", "detail": "the body exceeds 65536 bytes"}
        # The process is fine afterwards, and a delivery within the limit goes through.
        small = b'{"id": "m1", "type": "message", "sent_at": "2024-01-01T00:00:00Z", "text": "hi", ' \
                b'"contact": {"email": "a@example.com"}}'
        headers, small = sign("api", inbox.secrets, url, small, "application/json")
        assert urllib_post(url, small, headers)[0] == 200
    assert stored_count(app_engine, inbox) == 1


# -- heavy parsing off the event loop -------------------------------------------------------------------
def slow_email(seconds: float) -> tuple[bytes, float]:
    """A SendGrid post whose parse takes at least `seconds` here, found by doubling: one attached file of
    many short lines (parsing is linear, so only size makes it slow; the tests raise the body limit)."""
    head = fixture("sendgrid/inbound.multipart")[0].rpartition(b"--xYzZY--")[0]
    line = b"Gr\xfc\xdfe aus M\xfcnchen, eine Zeile\r\n"
    lines = 250_000
    while True:
        body = head + (b'--xYzZY\r\nContent-Disposition: form-data; name="scan"; filename="scan.txt"\r\n'
                       b"Content-Type: text/plain\r\n\r\n") + line * lines + b"\r\n--xYzZY--\r\n"
        request = WebhookRequest(method="POST", url="https://hooks.example/x", body=body,
                                 headers={"content-type": "multipart/form-data; boundary=xYzZY"})
        started = time.perf_counter()
        ADAPTERS["sendgrid"].parse(request)
        took = time.perf_counter() - started
        if took >= seconds:
            return body, took
        assert len(body) < 200_000_000, "no email parses slowly enough to test with"
        lines *= 2


def test_a_slow_email_does_not_delay_other_deliveries(stack: dict[str, str], app_engine: Engine) -> None:
    email_inbox = new_inbox(app_engine, "sendgrid")
    chat = new_inbox(app_engine, "telegram")
    body, parse_seconds = slow_email(2.0)
    env = {"INTAKE_PARSE_DEADLINE_SECONDS": "120", "INTAKE_MAX_EMAIL_BODY_BYTES": str(len(body) + 1024),
           "INTAKE_RATE_LIMIT_PER_SECOND": "100000", "INTAKE_RATE_LIMIT_BURST": "100000"}  # chats back to back
    with web_server(env) as base, httpx.Client(timeout=30) as client:
        assert post_genuine(client, base, chat).status_code == 200  # warm: the inbox is cached
        url = url_for(base, email_inbox)
        headers, body = sign("sendgrid", email_inbox.secrets, url, body, "multipart/form-data; boundary=xYzZY")
        email: dict[str, float] = {}

        def send_email() -> None:
            started = time.perf_counter()
            email["status"] = httpx.post(url, content=body, headers=headers, timeout=120).status_code
            email["seconds"] = time.perf_counter() - started

        email_thread = threading.Thread(target=send_email)
        email_thread.start()
        latencies: list[float] = []
        while email_thread.is_alive():  # chat deliveries, one after another, for as long as the email takes
            started = time.perf_counter()
            assert post_genuine(client, base, chat).status_code == 200
            latencies.append(time.perf_counter() - started)
        email_thread.join()
    assert email["status"] < 500 and email["seconds"] >= 1.5, email
    # Inline, the parse would have held the event loop: some chat delivery would have waited for all of it.
    # Off the loop, none waits for as much as half of it (the bound scales with the machine's own pace).
    assert len(latencies) >= 20 and max(latencies) < parse_seconds / 2, (len(latencies), max(latencies))
    assert stored_count(app_engine, chat) == len(latencies) + 1


def test_a_parse_past_the_deadline_is_503_and_not_acknowledged(stack: dict[str, str], app_engine: Engine) -> None:
    inbox = new_inbox(app_engine, "sendgrid")
    body, _ = slow_email(2.0)
    env = {"INTAKE_PARSE_DEADLINE_SECONDS": "0.3", "INTAKE_MAX_EMAIL_BODY_BYTES": str(len(body) + 1024)}
    with web_server(env) as base:
        url = url_for(base, inbox)
        headers, body = sign("sendgrid", inbox.secrets, url, body, "multipart/form-data; boundary=xYzZY")
        response = httpx.post(url, content=body, headers=headers, timeout=60)
        assert_error(response, 503, "unavailable")
        assert int(response.headers["retry-after"]) >= 1
    assert stored_count(app_engine, inbox) == 0


# -- proxy headers ----------------------------------------------------------------------------------------
def twilio_post(base: str, inbox: CreatedInbox, signed_for: str, extra: dict[str, str]) -> httpx.Response:
    body, ctype = fixture("twilio/sms_inbound.form")
    headers, body = sign("twilio", inbox.secrets, signed_for, body, ctype)
    return httpx.post(url_for(base, inbox), content=body, headers={**headers, **extra}, timeout=10)


def test_proxy_headers_are_ignored_unless_trusted_and_then_the_last_entry_counts(
    stack: dict[str, str], app_engine: Engine
) -> None:
    inbox = new_inbox(app_engine, "twilio")
    public = f"https://hooks.example/v1/webhooks/twilio/{inbox.id}"
    spoofed = {"x-forwarded-proto": "https", "x-forwarded-host": "hooks.example"}
    appended = {"x-forwarded-proto": "http, https", "x-forwarded-host": "evil.example, hooks.example"}
    with web_server({"INTAKE_CLIENT_ERROR_BURST": "2", "INTAKE_CLIENT_ERROR_RATE_PER_SECOND": "0.01"}) as base:
        # Default: the headers are the client's words; the URL is the one the server was reached at.
        assert_error(twilio_post(base, inbox, public, spoofed), 401, "invalid_signature")
        assert twilio_post(base, inbox, url_for(base, inbox), spoofed).status_code == 200
        # ...and X-Forwarded-For does not let a prober pose as a new client.
        probe = [httpx.post(f"{base}/v1/webhooks/twilio/{uuid.uuid4()}",
                            headers={"x-forwarded-for": f"198.51.100.{i}"}).status_code for i in range(3)]
        assert probe == [404, 429, 429]  # one 401 above and one 404 spent the burst of 2
    env = {"INTAKE_TRUST_PROXY_HEADERS": "true", "INTAKE_CLIENT_ERROR_BURST": "2",
           "INTAKE_CLIENT_ERROR_RATE_PER_SECOND": "0.01"}
    with web_server(env) as base:
        assert twilio_post(base, inbox, public, appended).status_code == 200
        assert_error(twilio_post(base, inbox, f"https://evil.example/v1/webhooks/twilio/{inbox.id}", appended),
                     401, "invalid_signature")
        # The client is the address the proxy appended; what the client wrote before it is ignored.
        probe = [httpx.post(f"{base}/v1/webhooks/twilio/{uuid.uuid4()}",
                            headers={"x-forwarded-for": f"10.9.9.{i}, 203.0.113.7"}).status_code for i in range(3)]
        assert probe == [404, 404, 429]
        other = httpx.post(f"{base}/v1/webhooks/twilio/{uuid.uuid4()}",
                           headers={"x-forwarded-for": "203.0.113.7, 203.0.113.8"})
        assert_error(other, 404, "unknown_inbox")
    with web_server({"INTAKE_TRUST_PROXY_HEADERS": "true",
                     "INTAKE_PUBLIC_BASE_URL": "https://public.example"}) as base:
        # The configured public origin always wins over any header.
        signed = f"https://public.example/v1/webhooks/twilio/{inbox.id}"
        assert twilio_post(base, inbox, signed, appended).status_code == 200
        assert_error(twilio_post(base, inbox, public, appended), 401, "invalid_signature")


# -- a bug is not an outage -------------------------------------------------------------------------------
def test_a_bug_is_a_500_with_an_error_id_in_the_log(
    stack: dict[str, str], app_engine: Engine, tmp_path: Path
) -> None:
    # An inbox whose stored settings hold a value of the wrong type: a real bug path after verification.
    inbox = new_inbox(app_engine, "telegram", settings={"rate_limit_per_second": "fast"})
    log_path = tmp_path / "web.log"
    with web_server({}, log_path) as base, httpx.Client(timeout=10) as client:
        response = post_genuine(client, base, inbox)
    assert_error(response, 500, "internal_error")
    error_id = response.json()["detail"].rsplit(" ", 1)[1]
    assert "Traceback" not in response.text and "fast" not in response.text
    records = [orjson.loads(line) for line in log_path.read_bytes().splitlines() if line.startswith(b"{")]
    (logged,) = [r for r in records if r.get("event") == "ingress.internal_error"]
    assert logged["error_id"] == error_id and "Traceback" in logged["traceback"]
    assert inbox.secrets["secret_token"] not in log_path.read_text()
    assert stored_count(app_engine, inbox) == 0


@pytest.mark.parametrize("exc", [
    psycopg.OperationalError("connection refused"), PoolTimeout("couldn't get a connection after 5 sec"),
    redis.exceptions.ConnectionError("refused"), WriterBusy("too many deliveries are waiting"),
    ParseTimeout("the body was not parsed within 10 s"),
])
def test_only_unavailability_is_503(exc: Exception) -> None:
    response = failure(exc)
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert orjson.loads(response.body)["error"] == "unavailable"


def test_anything_else_is_500_with_the_id_that_was_logged() -> None:
    empty: dict[str, int] = {}
    try:
        empty["missing"]
    except KeyError as exc:
        with structlog.testing.capture_logs() as logs:
            response = failure(exc, channel="api")
    data = orjson.loads(response.body)
    assert response.status_code == 500 and data["error"] == "internal_error"
    assert "retry-after" not in response.headers and "KeyError" not in data["detail"]
    (entry,) = logs
    assert entry["event"] == "ingress.internal_error" and data["detail"].endswith(entry["error_id"])
    assert "KeyError" in entry["traceback"] and entry["channel"] == "api"


def test_settings_default_to_untrusted_proxy_headers() -> None:
    assert Settings.model_fields["trust_proxy_headers"].default is False
