"""The HTTP collector (aiohttp): our API, Segment-compatible tracking, vendor webhooks.

aiohttp is the framework: asyncio-native, fast enough to be limited by Kafka
round trips rather than by HTTP parsing, and already installed (Faust depends
on it), so the collector adds no web stack of its own.

Every request follows the same path: authenticate (API key or the vendor's
signature) → adapt the body into Touchpoints and rejections (``ingest.webhooks``,
pure) → publish accepted touchpoints to ``touchpoints.raw`` and rejections to
``touchpoints.dlq``, waiting for ``acks=all`` → answer 2xx with the accepted
count and each rejection's reason. Kafka unreachable → 503, nothing acknowledged.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ingest.collector import security
from ingest.collector.metrics import CollectorMetrics
from ingest.collector.openapi import openapi_document
from ingest.collector.publisher import Publisher
from ingest.webhooks import (
    IdentityMap,
    Parsed,
    PayloadError,
    Pii,
    mailgun_signature_fields,
    parse_ads,
    parse_mailgun,
    parse_native,
    parse_segment,
    parse_sendgrid,
    parse_twilio,
    parse_zendesk,
)
from ingest.webhooks.base import decode_json
from schemas.dead_letter import DeadLetter
from schemas.errors import BrokerError
from schemas.rows import DeadLetterRow
from schemas.settings import CollectorSettings

__all__ = ["Collector", "create_app"]

logger = logging.getLogger(__name__)

_EMPTY_TWIML: Final = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Collector:
    """The collector's collaborators; :func:`create_app` wires routes to its methods."""

    settings: CollectorSettings
    publisher: Publisher
    metrics: CollectorMetrics
    clock: Callable[[], datetime] = _now
    identities: IdentityMap = field(default_factory=IdentityMap)

    @property
    def pii(self) -> Pii:
        return Pii(self.settings.hash_pii, self.settings.pii_salt.get_secret_value())

    # -- authentication ------------------------------------------------------------

    def source_for_key(self, presented: str | None) -> str | None:
        """The source whose API key matches (every key is compared, in constant time)."""
        matched = None
        for source in self.settings.api_keys:
            if (
                presented
                and security.check_api_key(presented, self.settings.api_keys, source) is None
            ):
                matched = source
        return matched

    def bearer_source(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        return self.source_for_key(token or request.headers.get("X-Touchpoint-Key"))

    def basic_source(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith("basic "):
            return self.source_for_key(request.headers.get("X-Touchpoint-Key"))
        try:
            user = base64.b64decode(header[6:].strip(), validate=True).decode().split(":", 1)[0]
        except (binascii.Error, UnicodeDecodeError):
            return None
        return self.source_for_key(user)

    def unauthorized(self, source: str, reason: str) -> web.Response:
        self.metrics.unauthorized.labels(source).inc()
        logger.info("refused a %s request: %s", source, reason)
        return web.json_response({"error": "unauthorized", "detail": reason}, status=401)

    # -- the common path -------------------------------------------------------------

    async def accept(self, source: str, endpoint: str, parsed: Parsed) -> dict[str, Any]:
        """Publish a parsed request; raises BrokerError (→ 503) if Kafka does not ack."""
        received = len(parsed.touchpoints) + len(parsed.rejected)
        self.metrics.received.labels(source).inc(received)
        request_id = uuid.uuid4().hex[:16]
        now = self.clock()
        letters = [
            DeadLetterRow.from_dead_letter(
                DeadLetter.build(
                    reason=rejection.reason,
                    detail=rejection.detail,
                    raw=rejection.raw,
                    source=f"collector:{endpoint}",
                    position=f"request {request_id} item {rejection.index}",
                    recorded_at=now,
                )
            )
            for rejection in parsed.rejected
        ]
        try:
            result = await self.publisher.publish(parsed.touchpoints, letters)
        except BrokerError:
            self.metrics.produce_errors.inc()
            raise
        if result.records:
            self.metrics.produce_seconds.observe(result.seconds)
        self.metrics.accepted.labels(source).inc(len(parsed.touchpoints))
        for rejection in parsed.rejected:
            self.metrics.rejected.labels(source, rejection.reason.value).inc()
        return {
            "accepted": len(parsed.touchpoints),
            "rejected": [rejection.to_json() for rejection in parsed.rejected],
        }


def _json(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(payload, status=status)


def create_app(collector: Collector) -> web.Application:
    """The aiohttp application for ``collector`` (its routes, middleware and metrics)."""
    settings = collector.settings

    @web.middleware
    async def errors(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        endpoint = (
            request.match_info.route.resource.canonical
            if request.match_info.route.resource
            else "unknown"
        )
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = _json(
                {"error": exc.reason.lower().replace(" ", "_"), "detail": exc.text or ""},
                exc.status,
            )
        except PayloadError as exc:
            response = _json({"error": exc.reason.value, "detail": exc.detail}, 400)
        except BrokerError as exc:
            logger.warning("answering 503: %s", exc)
            response = _json(
                {"error": "kafka_unavailable", "detail": "events were not accepted; retry later"},
                503,
            )
        collector.metrics.requests.labels(endpoint, str(response.status)).inc()
        return response

    async def read_body(request: web.Request) -> bytes:
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise web.HTTPRequestEntityTooLarge(
                max_size=settings.max_body_bytes,
                actual_size=request.content_length or 0,
                text=f"the body limit is {settings.max_body_bytes} bytes",
            ) from None

    async def touchpoints(request: web.Request) -> web.Response:
        source = collector.bearer_source(request)
        if source is None:
            return collector.unauthorized("api", "missing or invalid API key")
        body = await read_body(request)
        parsed = parse_native(body, request.content_type, collector.clock())
        return _json(await collector.accept(source, "touchpoints", parsed))

    def segment_handler(kind: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            source = collector.basic_source(request)
            if source is None:
                return collector.unauthorized("segment", "missing or invalid write key")
            body = await read_body(request)
            parsed = parse_segment(kind, body, collector.clock(), collector.identities)  # type: ignore[arg-type]
            result = await collector.accept(source, f"segment.{kind}", parsed)
            return _json({"success": True, **result})

        return handle

    async def sendgrid(request: web.Request) -> web.Response:
        body = await read_body(request)
        reason = security.check_sendgrid(
            settings.sendgrid_public_key,
            request.headers.get("X-Twilio-Email-Event-Webhook-Signature"),
            request.headers.get("X-Twilio-Email-Event-Webhook-Timestamp"),
            body,
            collector.clock(),
            settings.signature_tolerance,
        )
        if reason:
            return collector.unauthorized("sendgrid", reason)
        parsed = parse_sendgrid(body, collector.clock(), collector.pii)
        return _json(await collector.accept("sendgrid", "webhooks.sendgrid", parsed))

    async def mailgun(request: web.Request) -> web.Response:
        body = await read_body(request)
        fields = mailgun_signature_fields(decode_json(body))
        reason = security.check_mailgun(
            settings.mailgun_signing_key, fields, collector.clock(), settings.signature_tolerance
        )
        if reason:
            return collector.unauthorized("mailgun", reason)
        parsed = parse_mailgun(body, collector.clock(), collector.pii)
        return _json(await collector.accept("mailgun", "webhooks.mailgun", parsed))

    async def twilio(request: web.Request) -> web.Response:
        form = {key: str(value) for key, value in (await request.post()).items()}
        url = (
            (settings.public_url.rstrip("/") + request.path_qs)
            if settings.public_url
            else str(request.url)
        )
        reason = security.check_twilio(
            settings.twilio_auth_token, request.headers.get("X-Twilio-Signature"), url, form
        )
        if reason:
            return collector.unauthorized("twilio", reason)
        parsed = parse_twilio(form, collector.clock(), collector.pii)
        await collector.accept("twilio", "webhooks.twilio", parsed)
        return web.Response(text=_EMPTY_TWIML, content_type="text/xml")

    async def zendesk(request: web.Request) -> web.Response:
        body = await read_body(request)
        reason = security.check_zendesk(
            settings.zendesk_signing_secret,
            request.headers.get("X-Zendesk-Webhook-Signature"),
            request.headers.get("X-Zendesk-Webhook-Signature-Timestamp"),
            body,
            collector.clock(),
            settings.signature_tolerance,
        )
        if reason:
            return collector.unauthorized("zendesk", reason)
        parsed = parse_zendesk(body, collector.clock(), collector.pii)
        return _json(await collector.accept("zendesk", "webhooks.zendesk", parsed))

    async def ads(request: web.Request) -> web.Response:
        source = collector.bearer_source(request)
        if source is None:
            return collector.unauthorized("ads", "missing or invalid API key")
        body = await read_body(request)
        parsed = parse_ads(body, collector.clock())
        return _json(await collector.accept(source, "webhooks.ads", parsed))

    async def healthz(_: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if await collector.publisher.ready():
            return _json({"status": "ready"})
        return _json({"status": "kafka_unavailable"}, 503)

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(collector.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    document = json.dumps(openapi_document()).encode()

    async def openapi(_: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    async def close_publisher(_: web.Application) -> None:
        collector.publisher.close()

    app = web.Application(middlewares=[errors], client_max_size=settings.max_body_bytes)
    app.on_cleanup.append(close_publisher)
    app.add_routes(
        [
            web.post("/v1/touchpoints", touchpoints),
            web.post("/v1/track", segment_handler("track")),
            web.post("/v1/page", segment_handler("page")),
            web.post("/v1/identify", segment_handler("identify")),
            web.post("/v1/batch", segment_handler("batch")),
            web.post("/v1/webhooks/sendgrid", sendgrid),
            web.post("/v1/webhooks/mailgun", mailgun),
            web.post("/v1/webhooks/twilio", twilio),
            web.post("/v1/webhooks/zendesk", zendesk),
            web.post("/v1/webhooks/ads", ads),
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics),
            web.get("/openapi.json", openapi),
        ]
    )
    return app


def new_metrics() -> CollectorMetrics:
    return CollectorMetrics(CollectorRegistry())
