"""The web ingress: verify each webhook, store it durably, acknowledge, then enqueue.

    POST /v1/webhooks/{channel}/{inbox_id}   a provider's delivery
    GET  /v1/webhooks/whatsapp/{inbox_id}    Meta's subscription handshake
    GET  /healthz  /readyz  /metrics

Order of checks: route and inbox (404), size (413), signature (401), the inbox's rate (429), payload (400),
then the durable insert. Nothing is spent on a delivery before it is authenticated: the inbox's rate is
charged only after the signature holds, and the 401 and 404 answers are charged to the client's own bucket
(429 once it is empty; an unknown inbox id then costs no database query). Heavy parsing (MIME and multipart
email, and any body over PARSE_INLINE_BYTES) runs in a small thread pool with a deadline, so one slow email cannot stall
the event loop that answers everyone else.

A body over the limit is answered 413 after the rest of it is read and discarded (up to DRAIN_LIMIT_BYTES),
because clients that write the whole body before reading (urllib, many SDKs) would otherwise see a
connection reset instead of the 413, and retry.

Every error has the body {"error": code, "detail": text}. 503 with Retry-After means the database, its
pool, Redis or the commit queue is unavailable right now: nothing was stored and the provider should retry.
Anything else that goes wrong is a bug, answered 500 with an error id that is logged with its traceback
(never sent to the client), so a bug is not mistaken for an outage and retried forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import redis.asyncio as aioredis
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from config import Settings
from db.engine import driver_options
from pipelines.channels import ADAPTERS, Delivery, PayloadError, SignatureError, VerifyContext, WebhookRequest
from pipelines.channels.whatsapp import handshake
from pipelines.crypto import SecretBox
from workers import redis_clients
from workers.queues import INGEST_ACTOR, INGEST_QUEUE, enqueue_async
from workers.ratelimit import TokenBuckets, client_key
from workers.web.answers import Answer, accepted, client_slowed, error, failure, refused
from workers.web.bodies import DRAIN_LIMIT_BYTES, BodyTooLarge, ParseTimeout, drain, read_body
from workers.web.inboxes import Inbox, InboxDirectory
from workers.web.metrics import Metrics
from workers.web.urls import forwarded, provider_urls
from workers.web.writer import Enqueue, EventRow, EventWriter, Outcome, UnstorableEvent, WriterBusy

log = structlog.get_logger("intake.ingress")

EMAIL_CHANNELS = frozenset({"postmark", "mailgun", "sendgrid"})
# Channels that post MIME or multipart forms: the stdlib parsers spend about half a millisecond a part, so
# even a small body of many parts is parsed off the event loop. JSON and URL-encoded bodies parse in
# microseconds a kilobyte and stay inline up to PARSE_INLINE_BYTES.
MIME_CHANNELS = frozenset({"mailgun", "sendgrid"})
# Headers stored with each event: enough to verify and parse it again, never a credential.
STORED_HEADERS = frozenset({
    "content-type", "user-agent", "x-twilio-signature", "x-hub-signature-256", "webhook-id",
    "webhook-timestamp", "webhook-signature", "x-forwarded-for", "x-request-id", "i-twilio-idempotency-token",
})
WEBHOOK_PREFIX = "/v1/webhooks/"
# Chat payloads under this size parse inline (the hot path: a thread hop would cost more than the parse).
PARSE_INLINE_BYTES = 65_536


class Ingress:
    """The state one web process shares between requests."""

    def __init__(self, settings: Settings, database_url: str, redis_url: str, secret_key: str,
                 enqueue: Enqueue | None = None) -> None:
        self.settings = settings
        self.pool = AsyncConnectionPool(
            database_url, min_size=1, max_size=settings.db_pool_size, open=False, timeout=5,
            kwargs={"application_name": "intake-web", "autocommit": True,
                    **driver_options(prepared_statements=settings.db_prepared_statements)},
        )
        self.redis: aioredis.Redis = redis_clients.async_client(settings, redis_url, socket_connect_timeout=1,
                                                                socket_timeout=2)
        self.inboxes = InboxDirectory(self.pool, SecretBox(secret_key), ttl=settings.inbox_cache_seconds,
                                      max_entries=settings.inbox_cache_size,
                                      listened_ttl=settings.inbox_cache_listen_seconds)
        # LISTEN needs a session of its own: INTAKE_LISTEN_DATABASE_URL where DATABASE_URL goes through PgBouncer.
        self.listen_url = settings.listen_database_url or database_url
        self.listener: asyncio.Task[None] | None = None
        self.buckets = TokenBuckets(max_keys=max(settings.inbox_cache_size, 10_000))  # per inbox
        self.client_buckets = TokenBuckets()  # per client address, charged for 401 and 404 answers
        self.parsers = ThreadPoolExecutor(settings.parse_threads, thread_name_prefix="intake-parse")
        self.metrics = Metrics.create()
        self.writer = EventWriter(
            self.pool, enqueue or self.send_to_ingest_queue, writers=max(1, settings.db_pool_size - 1),
            batch_max=settings.commit_batch_max, queue_max=settings.commit_queue_max,
            enqueue_window=settings.enqueue_window_ms / 1000,
            job_max_ids=settings.ingest_batch_max,
            on_enqueue_error=lambda _, events: self.metrics.enqueue_failures.inc(events),
            on_batch=self.metrics.batch_rows.observe,
        )

    async def start(self) -> None:
        await self.pool.open(wait=False)
        self.writer.start()
        self.listener = asyncio.create_task(self.inboxes.listen(self.listen_url))

    async def stop(self) -> None:
        if self.listener is not None:
            self.listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.listener
        await self.writer.stop()
        await self.pool.close()
        self.parsers.shutdown(wait=False, cancel_futures=True)
        await self.redis.aclose()

    async def send_to_ingest_queue(self, jobs: list[tuple[uuid.UUID, list[uuid.UUID]]]) -> None:
        await enqueue_async(self.redis, INGEST_QUEUE, INGEST_ACTOR,
                            [(str(tenant_id), [str(i) for i in event_ids]) for tenant_id, event_ids in jobs])

    # -- the pieces of a delivery -----------------------------------------------------------------
    def provider_url(self, scope: Scope, headers: Mapping[str, str]) -> tuple[str, tuple[str, ...]]:
        """The URL as the provider requested it, and its variant with or without the default port."""
        if self.settings.public_base_url:
            base = self.settings.public_base_url.rstrip("/")
        else:
            scheme = scope.get("scheme", "http")
            host = headers.get("host")
            if not host:
                server = scope.get("server")
                host = "" if server is None else (
                    server[0] if server[1] == {"https": 443, "http": 80}.get(scheme) else f"{server[0]}:{server[1]}")
            if self.settings.trust_proxy_headers:
                scheme = forwarded(headers, "x-forwarded-proto") or scheme
                host = forwarded(headers, "x-forwarded-host") or host
            base = f"{scheme}://{host}"
        query = scope.get("query_string", b"").decode("latin-1")
        return provider_urls(base, scope.get("root_path", "") + scope["path"], query)

    def client(self, scope: Scope, headers: Mapping[str, str]) -> str:
        """The client's bucket key: the peer address, or the address the trusted proxy saw."""
        if self.settings.trust_proxy_headers:
            address = forwarded(headers, "x-forwarded-for")
            if address:
                return client_key(address)
        peer = scope.get("client")
        return client_key(peer[0]) if peer else "unknown"

    def body_limit(self, channel: str) -> int:
        return self.settings.max_email_body_bytes if channel in EMAIL_CHANNELS else self.settings.max_body_bytes

    async def too_large(self, receive: Receive, headers: Mapping[str, str], channel: str,
                        exc: BodyTooLarge) -> Response:
        """413, sent once the client has finished writing (when that is cheap enough) so it reads it.

        A client that asked `Expect: 100-continue` has not sent its body and will not: it reads the 413 at
        once. A body longer than DRAIN_LIMIT_BYTES is refused without reading it, and the connection is
        closed.
        """
        complete = not exc.unread
        if exc.unread and exc.drainable and headers.get("expect", "").lower() != "100-continue":
            complete = await drain(receive, DRAIN_LIMIT_BYTES)
        return refused(exc, None if complete else {"Connection": "close"})

    @property
    def client_rate(self) -> tuple[float, int]:
        return self.settings.client_error_rate_per_second, self.settings.client_error_burst

    def slow_guesser(self, scope: Scope, headers: Mapping[str, str], inbox_id: str) -> Response | None:
        """429 for an id not known to be an inbox, from a client that has failed too often: a guess then
        costs no database query. Ids that recently named a real inbox pass, so a provider sharing an
        address with a prober (one proxy, headers not trusted) keeps delivering."""
        if self.inboxes.known(inbox_id):
            return None
        wait = self.client_buckets.wait(self.client(scope, headers), *self.client_rate)
        return client_slowed(wait) if wait > 0 else None

    def refuse(self, scope: Scope, headers: Mapping[str, str], status: int, code: str, detail: str) -> Response:
        """A 401 or 404, charged to the client's bucket: 429 instead once the client has failed too often,
        which also stops a prober from telling real inbox ids from made-up ones."""
        wait = self.client_buckets.take(self.client(scope, headers), *self.client_rate)
        return client_slowed(wait) if wait > 0 else error(status, code, detail)

    async def parse(self, channel: str, webhook: WebhookRequest) -> Delivery:
        """The adapter's parse: inline for small chat payloads, else in the parse threads, within the
        deadline. Past it the delivery is not acknowledged (ParseTimeout, answered 503 so the provider
        retries): the adapters parse in linear time, so a miss means a busy process rather than a body
        that can never be parsed, and a 4xx would drop an authentic message for good."""
        adapter = ADAPTERS[channel]
        if channel not in MIME_CHANNELS and len(webhook.body) <= PARSE_INLINE_BYTES:
            return adapter.parse(webhook)
        job = asyncio.get_running_loop().run_in_executor(self.parsers, adapter.parse, webhook)
        try:
            return await asyncio.wait_for(job, self.settings.parse_deadline_seconds)
        except TimeoutError:
            log.warning("ingress.parse.timeout", channel=channel, bytes=len(webhook.body))
            raise ParseTimeout(f"the body was not parsed within {self.settings.parse_deadline_seconds} s") from None

    def rate_limited(self, inbox: Inbox) -> float:
        rate, burst = inbox.rate_limit
        return self.buckets.take(inbox.id.int,  # an int hashes in C, a UUID in Python
                                 float(self.settings.rate_limit_per_second) if rate is None else rate,
                                 int(self.settings.rate_limit_burst) if burst is None else burst)

    @staticmethod
    def verified(adapter: Any, webhook: WebhookRequest, inbox: Inbox, context: VerifyContext) -> bool:
        """Signed with the inbox's secrets, or during a rotation's overlap with the previous ones."""
        for secrets in inbox.secret_sets(context.now):
            try:
                adapter.verify(webhook, secrets, context)
                return True
            except Exception as exc:  # SignatureError, or any surprise from hostile input: never a 500
                if not isinstance(exc, SignatureError):
                    log.warning("ingress.verify.crashed", channel=inbox.channel,
                                error=repr(exc))
        return False

    # -- handlers ---------------------------------------------------------------------------------
    async def inbox_for(self, channel: str, inbox_id: str) -> Inbox | None:
        if channel not in ADAPTERS:
            return None
        inbox = await self.inboxes.get(inbox_id)
        if inbox is None or not inbox.enabled or inbox.channel != channel:
            return None
        return inbox

    async def webhook(self, scope: Scope, receive: Receive, channel: str, inbox_id: str) -> Answer:
        """One delivery, straight from the ASGI scope: the hot path builds no framework request object."""
        started = time.perf_counter()
        label = channel if channel in ADAPTERS else "unknown"
        try:
            response: Answer = await self._webhook(scope, receive, channel, inbox_id)
        except ClientDisconnect:
            response = error(400, "client_disconnected", "the request body was not received in full")
        except Exception as exc:  # nothing was stored: 503 if a dependency is down, else a bug (500)
            response = failure(exc, channel=label)
        self.metrics.observe(label, response.status_code, time.perf_counter() - started)
        return response

    async def _webhook(self, scope: Scope, receive: Receive, channel: str, inbox_id: str) -> Answer:
        # ASGI servers lower-case header names; a repeated header keeps its last value.
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        slowed = self.slow_guesser(scope, headers, inbox_id)
        if slowed is not None:
            return slowed
        inbox = await self.inbox_for(channel, inbox_id)
        if inbox is None:
            return self.refuse(scope, headers, 404, "unknown_inbox", "no enabled inbox of this channel has this id")
        try:
            body = await read_body(receive, headers.get("content-length"), self.body_limit(channel))
        except BodyTooLarge as exc:
            return await self.too_large(receive, headers, channel, exc)
        except PayloadError as exc:
            return refused(exc)
        url, alternates = self.provider_url(scope, headers)
        query_string = scope.get("query_string", b"")
        query = dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)) if query_string else {}
        received_at = datetime.now(UTC)
        webhook = WebhookRequest(method="POST", url=url, headers=headers, body=body, query=query,
                                 alternate_urls=alternates, received_at=received_at)
        adapter = ADAPTERS[channel]
        context = VerifyContext(now=received_at, tolerance_seconds=self.settings.webhook_tolerance_seconds)
        if not self.verified(adapter, webhook, inbox, context):
            return self.refuse(scope, headers, 401, "invalid_signature", "signature verification failed")
        wait = self.rate_limited(inbox)  # charged only now: a stranger's junk never spends the inbox's budget
        if wait > 0:
            return error(429, "rate_limited", "too many deliveries for this inbox",
                         {"Retry-After": TokenBuckets.retry_after(wait)})
        # A one-time token (Mailgun's) is claimed in PostgreSQL by the group commit, a duplicate's too.
        token = adapter.replay_token(webhook) if adapter.replay_token is not None else None
        try:
            delivery = await self.parse(channel, webhook)
        except Exception as exc:
            if isinstance(exc, ParseTimeout):  # not the body's fault: 503, so the provider retries
                raise
            detail = str(exc) if isinstance(exc, PayloadError) else "the body is not a payload this channel sends"
            if not isinstance(exc, PayloadError):
                log.warning("ingress.parse.crashed", channel=channel, error=repr(exc))
            return error(400, "malformed_payload", detail)
        stored = {k: v for k, v in headers.items() if k in STORED_HEADERS}
        stored["x-intake-url"] = url
        row = EventRow(inbox.tenant_id, inbox.id, channel, delivery.dedupe_key,
                       headers.get("content-type", ""), stored, body, received_at, token)
        try:
            outcome = await self.writer.submit(row)
        except WriterBusy as exc:
            return error(503, "overloaded", f"{exc}; retry later", {"Retry-After": "2"})
        except UnstorableEvent as exc:
            return error(400, "unstorable_payload", str(exc))
        if outcome is Outcome.REPLAYED:  # the token came with another delivery: a captured signature
            return self.refuse(scope, headers, 401, "invalid_signature", "signature verification failed")
        return accepted(channel)

    async def whatsapp_handshake(self, request: Request) -> Response:
        inbox_id = request.path_params["inbox_id"]
        slowed = self.slow_guesser(request.scope, request.headers, inbox_id)
        if slowed is not None:
            return slowed
        inbox = await self.inbox_for("whatsapp", inbox_id)
        if inbox is None:
            return self.refuse(request.scope, request.headers, 404, "unknown_inbox",
                               "no enabled inbox of this channel has this id")
        for secrets in inbox.secret_sets(datetime.now(UTC)):
            try:
                return PlainTextResponse(handshake(dict(request.query_params), secrets))
            except SignatureError:
                continue
        return error(403, "invalid_verify_token", "the verify token does not match")

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        checks: dict[str, str] = {}
        try:
            async with self.pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
            checks["postgres"] = "ok"
        except Exception as exc:
            checks["postgres"] = f"unavailable: {type(exc).__name__}"
        try:
            await self.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unavailable: {type(exc).__name__}"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ready" if ready else "unavailable", "checks": checks},
                            status_code=200 if ready else 503)

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def create_app(settings: Settings, *, database_url: str, redis_url: str, secret_key: str,
               enqueue: Enqueue | None = None) -> ASGIApp:
    ingress = Ingress(settings, database_url, redis_url, secret_key, enqueue)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await ingress.start()
        # What exists now (modules, pydantic schemas, the app) lives as long as the process: moved out of
        # the collector's generations, a full collection no longer walks it, which cut its cost about 4x.
        gc.freeze()
        yield
        await ingress.stop()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail),
                     exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        return failure(exc, path=request.url.path)

    handlers: dict[Any, Any] = {HTTPException: http_error, Exception: server_error}
    routes = Starlette(
        routes=[
            Route("/v1/webhooks/whatsapp/{inbox_id}", ingress.whatsapp_handshake, methods=["GET"]),
            Route("/healthz", ingress.healthz, methods=["GET"]),
            Route("/readyz", ingress.readyz, methods=["GET"]),
            Route("/metrics", ingress.metrics_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers=handlers,
    )
    routes.state.ingress = ingress

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        # Deliveries (POST /v1/webhooks/{channel}/{inbox_id}), the hot path, go straight to `webhook`, which
        # answers every outcome itself (a 500 only for a bug); everything else (the handshake, health, metrics, 404s
        # and 405s) goes through the router.
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith(WEBHOOK_PREFIX):
            channel, _, inbox_id = scope["path"][len(WEBHOOK_PREFIX):].partition("/")
            if channel and inbox_id and "/" not in inbox_id:
                response = await ingress.webhook(scope, receive, channel, inbox_id)
                await response(scope, receive, send)
                return
        await routes(scope, receive, send)

    return app
