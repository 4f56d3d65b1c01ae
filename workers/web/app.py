"""The web ingress: verify each webhook, store it durably, acknowledge, then enqueue.

    POST /v1/webhooks/{channel}/{inbox_id}   a provider's delivery
    GET  /v1/webhooks/whatsapp/{inbox_id}    Meta's subscription handshake
    GET  /healthz  /readyz  /metrics

Order of checks: route and inbox (404), size (413), rate (429), signature (401), payload (400), then the
durable insert (503 when the database is unavailable, so the provider retries). Every error has the body
{"error": code, "detail": text}; nothing a provider sends can produce a 500.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

import redis.asyncio as aioredis
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from config import Settings
from pipelines.channels import ADAPTERS, PayloadError, SignatureError, VerifyContext, WebhookRequest
from pipelines.channels.whatsapp import handshake
from pipelines.crypto import SecretBox
from workers.web.inboxes import Inbox, InboxDirectory
from workers.web.ratelimit import TokenBuckets
from workers.web.writer import Enqueue, EventRow, EventWriter

log = structlog.get_logger("intake.ingress")

EMAIL_CHANNELS = frozenset({"postmark", "mailgun", "sendgrid"})
# Headers stored with each event: enough to verify and parse it again, never a credential.
STORED_HEADERS = frozenset({
    "content-type", "user-agent", "x-twilio-signature", "x-hub-signature-256", "webhook-id",
    "webhook-timestamp", "webhook-signature", "x-forwarded-for", "x-request-id", "i-twilio-idempotency-token",
})
WEBHOOK_PREFIX = "/v1/webhooks/"
TWIML_EMPTY = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


@lru_cache(maxsize=4096)
def _provider_url(base: str, path: str, query: str) -> tuple[str, tuple[str, ...]]:
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


def error(status: int, code: str, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


# The acknowledgements never change: built once, sent as they are (a Response holds no per-request state).
ACCEPTED = JSONResponse({"status": "accepted"})
ACCEPTED_TWIML = Response(TWIML_EMPTY, media_type="text/xml")


def accepted(channel: str) -> Response:
    return ACCEPTED_TWIML if channel == "twilio" else ACCEPTED


@dataclass
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    enqueue_failures: Counter
    batch_rows: Histogram
    _children: dict[tuple[str, str], tuple[Any, Any]] = field(default_factory=dict)

    def observe(self, channel: str, outcome: str, seconds: float) -> None:
        key = (channel, outcome)
        children = self._children.get(key)
        if children is None:  # prometheus_client's label look-up is slow on a hot path: look up once
            children = self._children[key] = (self.requests.labels(channel, outcome), self.latency.labels(channel))
        children[0].inc()
        children[1].observe(seconds)

    @classmethod
    def create(cls) -> Metrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter("intake_webhook_requests", "Webhook deliveries by channel and outcome",
                             ["channel", "outcome"], registry=registry),
            latency=Histogram("intake_webhook_latency_seconds", "Time from request to acknowledgement",
                              ["channel"], registry=registry,
                              buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5)),
            enqueue_failures=Counter("intake_enqueue_failures", "Stored events whose enqueue failed",
                                     registry=registry),
            batch_rows=Histogram("intake_commit_batch_rows", "Events per group commit", registry=registry,
                                 buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512)),
        )


class BodyTooLarge(Exception):
    """The request body exceeds the channel's limit."""


class Ingress:
    """The state one web process shares between requests."""

    def __init__(self, settings: Settings, database_url: str, redis_url: str, secret_key: str,
                 enqueue: Enqueue | None = None) -> None:
        self.settings = settings
        self.pool = AsyncConnectionPool(
            database_url, min_size=1, max_size=settings.db_pool_size, open=False, timeout=5,
            kwargs={"application_name": "intake-web", "autocommit": True},
        )
        self.redis = aioredis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=2)
        self.inboxes = InboxDirectory(self.pool, SecretBox(secret_key))
        self.buckets = TokenBuckets()
        self.metrics = Metrics.create()
        self.writer = EventWriter(
            self.pool, enqueue or self.send_to_ingest_queue, writers=max(1, settings.db_pool_size - 1),
            batch_max=settings.commit_batch_max, enqueue_window=settings.enqueue_window_ms / 1000,
            job_max_ids=settings.ingest_batch_max, on_enqueue_error=lambda _: self.metrics.enqueue_failures.inc(),
            on_batch=self.metrics.batch_rows.observe,
        )
        self._seen_tokens: dict[str, float] = {}

    async def start(self) -> None:
        import workers.actors  # noqa: F401  (import the broker now, not inside the first request)

        await self.pool.open(wait=False)
        self.writer.start()

    async def stop(self) -> None:
        await self.writer.stop()
        await self.pool.close()
        await self.redis.aclose()

    async def send_to_ingest_queue(self, tenant_id: uuid.UUID, event_ids: list[uuid.UUID]) -> None:
        from workers.actors import ingest_events
        from workers.broker import enqueue_async

        await enqueue_async(self.redis, ingest_events, str(tenant_id), [str(i) for i in event_ids])

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
                scheme = headers.get("x-forwarded-proto", scheme).split(",")[0].strip()
                host = headers.get("x-forwarded-host", host).split(",")[0].strip()
            base = f"{scheme}://{host}"
        query = scope.get("query_string", b"").decode("latin-1")
        return _provider_url(base, scope.get("root_path", "") + scope["path"], query)

    def body_limit(self, channel: str) -> int:
        return self.settings.max_email_body_bytes if channel in EMAIL_CHANNELS else self.settings.max_body_bytes

    @staticmethod
    async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
        if declared is not None:
            if not declared.isdigit():
                raise PayloadError("invalid Content-Length")
            if int(declared) > limit:
                raise BodyTooLarge
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):  # the usual case: the whole body in one message
            if len(body) > limit:
                raise BodyTooLarge
            return body
        chunks = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] != "http.request":
                raise ClientDisconnect
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    def rate_limited(self, inbox: Inbox) -> float:
        rate = float(inbox.settings.get("rate_limit_per_second", self.settings.rate_limit_per_second))
        burst = int(inbox.settings.get("rate_limit_burst", self.settings.rate_limit_burst))
        return self.buckets.take(inbox.id, rate, burst)

    async def claim_token(self, token: str, ttl: int) -> bool:
        """True the first time a one-time token is seen (Redis, or this process while Redis is down)."""
        key = f"intake:replay:{token}"
        try:
            return bool(await self.redis.set(key, b"1", nx=True, ex=ttl))
        except Exception as exc:
            log.warning("ingress.replay_guard.degraded", error=repr(exc))
            now = time.monotonic()
            if len(self._seen_tokens) > 100_000:
                self._seen_tokens = {k: v for k, v in self._seen_tokens.items() if v > now}
            if self._seen_tokens.get(key, 0) > now:
                return False
            self._seen_tokens[key] = now + ttl
            return True

    async def release_token(self, token: str) -> None:
        self._seen_tokens.pop(f"intake:replay:{token}", None)
        try:
            await self.redis.delete(f"intake:replay:{token}")
        except Exception as exc:
            log.warning("ingress.replay_guard.degraded", error=repr(exc))

    # -- handlers ---------------------------------------------------------------------------------
    async def inbox_for(self, channel: str, inbox_id: str) -> Inbox | None:
        if channel not in ADAPTERS:
            return None
        inbox = await self.inboxes.get(inbox_id)
        if inbox is None or not inbox.enabled or inbox.channel != channel:
            return None
        return inbox

    async def webhook(self, scope: Scope, receive: Receive, channel: str, inbox_id: str) -> Response:
        """One delivery, straight from the ASGI scope: the hot path builds no framework request object."""
        started = time.perf_counter()
        label = channel if channel in ADAPTERS else "unknown"
        try:
            response = await self._webhook(scope, receive, channel, inbox_id)
        except ClientDisconnect:
            response = error(400, "client_disconnected", "the request body was not received in full")
        except Exception as exc:
            # The database or pool is unavailable: nothing was stored, so ask the provider to retry.
            log.error("ingress.unavailable", channel=channel, error=repr(exc))
            response = error(503, "unavailable", "the event could not be stored; retry later",
                             {"Retry-After": "5"})
        outcome = str(response.status_code)
        self.metrics.observe(label, outcome, time.perf_counter() - started)
        return response

    async def _webhook(self, scope: Scope, receive: Receive, channel: str, inbox_id: str) -> Response:
        inbox = await self.inbox_for(channel, inbox_id)
        if inbox is None:
            return error(404, "unknown_inbox", "no enabled inbox of this channel has this id")
        # ASGI servers lower-case header names; a repeated header keeps its last value.
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = await self.read_body(receive, headers.get("content-length"), self.body_limit(channel))
        except BodyTooLarge:
            return error(413, "payload_too_large", f"the body exceeds {self.body_limit(channel)} bytes")
        except PayloadError as exc:
            return error(400, "malformed_payload", str(exc))
        wait = self.rate_limited(inbox)
        if wait > 0:
            return error(429, "rate_limited", "too many deliveries for this inbox",
                         {"Retry-After": TokenBuckets.retry_after(wait)})
        url, alternates = self.provider_url(scope, headers)
        query_string = scope.get("query_string", b"")
        query = dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)) if query_string else {}
        received_at = datetime.now(UTC)
        webhook = WebhookRequest(method="POST", url=url, headers=headers, body=body, query=query,
                                 alternate_urls=alternates, received_at=received_at)
        adapter = ADAPTERS[channel]
        context = VerifyContext(now=received_at, tolerance_seconds=self.settings.webhook_tolerance_seconds)
        try:
            adapter.verify(webhook, inbox.secrets, context)
        except Exception as exc:  # SignatureError, or any surprise from hostile input: never a 500
            if not isinstance(exc, SignatureError):
                log.warning("ingress.verify.crashed", channel=channel, error=repr(exc))
            return error(401, "invalid_signature", "signature verification failed")
        token = adapter.replay_token(webhook) if hasattr(adapter, "replay_token") else None
        if token is not None and not await self.claim_token(f"{channel}:{inbox.id}:{token}",
                                                            2 * self.settings.webhook_tolerance_seconds):
            return error(401, "invalid_signature", "signature verification failed")
        try:
            delivery = adapter.parse(webhook)
        except Exception as exc:
            if token is not None:
                await self.release_token(f"{channel}:{inbox.id}:{token}")
            detail = str(exc) if isinstance(exc, PayloadError) else "the body is not a payload this channel sends"
            if not isinstance(exc, PayloadError):
                log.warning("ingress.parse.crashed", channel=channel, error=repr(exc))
            return error(400, "malformed_payload", detail)
        stored = {k: v for k, v in headers.items() if k in STORED_HEADERS}
        stored["x-intake-url"] = url
        row = EventRow(inbox.tenant_id, inbox.id, channel, delivery.dedupe_key,
                       headers.get("content-type", ""), stored, body, received_at)
        try:
            await self.writer.submit(row)
        except Exception:
            if token is not None:
                await self.release_token(f"{channel}:{inbox.id}:{token}")
            raise
        return accepted(channel)

    async def whatsapp_handshake(self, request: Request) -> Response:
        inbox = await self.inbox_for("whatsapp", request.path_params["inbox_id"])
        if inbox is None:
            return error(404, "unknown_inbox", "no enabled inbox of this channel has this id")
        try:
            challenge = handshake(dict(request.query_params), inbox.secrets)
        except SignatureError:
            return error(403, "invalid_verify_token", "the verify token does not match")
        return PlainTextResponse(challenge)

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
        yield
        await ingress.stop()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail),
                     exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("ingress.unhandled", error=repr(exc))
        return error(503, "unavailable", "temporarily unavailable; retry later", {"Retry-After": "5"})

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
        # answers every outcome itself (never a 500); everything else (the handshake, health, metrics, 404s
        # and 405s) goes through the router.
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith(WEBHOOK_PREFIX):
            channel, _, inbox_id = scope["path"][len(WEBHOOK_PREFIX):].partition("/")
            if channel and inbox_id and "/" not in inbox_id:
                response = await ingress.webhook(scope, receive, channel, inbox_id)
                await response(scope, receive, send)
                return
        await routes(scope, receive, send)

    return app
