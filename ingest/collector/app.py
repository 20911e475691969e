"""The HTTP collector (aiohttp): our API, Segment-compatible tracking, vendor webhooks.

aiohttp is the framework: asyncio-native, fast enough to be limited by Kafka
round trips rather than by HTTP parsing, and already installed (Faust depends
on it), so the collector adds no web stack of its own.

Every request follows the same path: authenticate (an API key bound to its
source and that source's endpoints, or the vendor's signature over the bytes as
received) → adapt the body into validated touchpoints and rejections
(``ingest.webhooks``, pure, depth- and size-bounded; our own API on its fast path,
one ``decode_event`` per item) → encode each accepted touchpoint once as canonical
JSON and publish them to ``touchpoints.raw``, one record per partition, and the
rejections to ``touchpoints.dlq``, waiting for ``acks=all`` of this request's
records only → answer 2xx with the accepted count and each rejection's reason.
A malformed body is a 4xx with a reason; Kafka unreachable → 503, nothing
acknowledged; anything unforeseen → 500, counted like every other answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from ingest.collector import security
from ingest.collector.metrics import CollectorMetrics
from ingest.collector.openapi import openapi_document
from ingest.collector.publisher import Publisher
from ingest.collector.records import encode_event
from ingest.webhooks import (
    IdentityMap,
    Parsed,
    Pii,
    Rejection,
    decode_form,
    decode_json,
    form_fields,
    mailgun_signature_fields,
    parse_ads,
    parse_mailgun_event,
    parse_native,
    parse_segment,
    parse_sendgrid,
    parse_twilio,
    parse_zendesk,
)
from ingest.webhooks.segment import SegmentCall
from schemas.dead_letter import DeadLetter
from schemas.errors import BrokerError, PayloadError
from schemas.events import event_from_touchpoint
from schemas.rows import DeadLetterRow, row_adapter
from schemas.settings import CollectorSettings

__all__ = ["Collector", "create_app"]

logger = logging.getLogger(__name__)

_EMPTY_TWIML: Final = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
_FORM: Final = "application/x-www-form-urlencoded"


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
    keys: security.KeyRing = field(init=False)
    proxies: security.TrustedProxies = field(init=False)
    mailgun_tokens: security.ReplayCache = field(init=False)
    _by_source: dict[str, _SourceMetrics] = field(init=False, default_factory=dict)
    _answers: dict[tuple[str, int], Counter] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.keys = security.KeyRing(self.settings.api_keys)
        self.proxies = security.TrustedProxies(self.settings.trusted_proxies)
        self.mailgun_tokens = security.ReplayCache(
            self.settings.replay_cache_size, self.settings.signature_tolerance
        )

    @property
    def pii(self) -> Pii:
        return Pii(self.settings.hash_pii, self.settings.pii_salt.get_secret_value())

    # -- authentication ------------------------------------------------------------

    def bearer_source(self, request: web.Request, scope: security.KeyScope) -> str | None:
        """The source of ``Authorization: Bearer KEY`` (or ``X-Touchpoint-Key``), in ``scope``."""
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        return self.keys.source_for(token or request.headers.get("X-Touchpoint-Key"), scope)

    def write_key_source(self, request: web.Request) -> str | None:
        """The source of a Segment write key, sent as the HTTP Basic user (Segment's way)."""
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith("basic "):
            return None
        try:
            user = base64.b64decode(header[6:].strip(), validate=True).decode().split(":", 1)[0]
        except (binascii.Error, UnicodeDecodeError):
            return None
        return self.keys.source_for(user, "segment")

    def unauthorized(self, source: str, reason: str) -> web.Response:
        self.metrics.unauthorized.labels(source).inc()
        logger.info("refused a %s request: %s", source, reason)
        return web.json_response({"error": "unauthorized", "detail": reason}, status=401)

    # -- the common path -------------------------------------------------------------

    def source_metrics(self, source: str) -> _SourceMetrics:
        """The per-source counters, bound once per source."""
        bound = self._by_source.get(source)
        if bound is None:
            metrics = self.metrics
            bound = self._by_source[source] = _SourceMetrics(
                metrics.received.labels(source), metrics.accepted.labels(source)
            )
        return bound

    def count_answer(self, endpoint: str, status: int) -> None:
        child = self._answers.get((endpoint, status))
        if child is None:
            child = self._answers[(endpoint, status)] = self.metrics.requests.labels(
                endpoint, str(status)
            )
        child.inc()

    def dead_letter_rows(self, endpoint: str, rejected: Sequence[Rejection]) -> list[bytes]:
        request_id = uuid.uuid4().hex[:16]
        now = self.clock()
        return [
            _DEAD_LETTER.dump_json(
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
            )
            for rejection in rejected
        ]

    async def accept(self, source: str, endpoint: str, parsed: Parsed) -> dict[str, object]:
        """Publish a parsed request; raises BrokerError (→ 503) if Kafka does not ack."""
        counters = self.source_metrics(source)
        accepted = parsed.accepted
        rejected = parsed.rejected
        counters.received.inc(accepted + len(rejected))
        records = [(event.buyer_id.encode(), encode_event(event)) for event in parsed.events]
        records.extend(
            (touchpoint.buyer_id.encode(), encode_event(event_from_touchpoint(touchpoint)))
            for touchpoint in parsed.touchpoints
        )
        letters = self.dead_letter_rows(endpoint, rejected) if rejected else []
        try:
            result = await self.publisher.publish(records, letters)
        except BrokerError:
            self.metrics.produce_errors.inc()
            raise
        if result.records:
            self.metrics.produce_seconds.observe(result.seconds)
        if accepted:
            counters.accepted.inc(accepted)
        for rejection in rejected:
            self.metrics.rejected.labels(source, rejection.reason.value).inc()
        return {
            "accepted": accepted,
            "rejected": [rejection.to_json() for rejection in rejected],
        }


@dataclass(frozen=True, slots=True)
class _SourceMetrics:
    received: Counter
    accepted: Counter


_ANSWER: Final = msgspec.json.Encoder()
_DEAD_LETTER: Final = row_adapter(DeadLetterRow)


def _json(payload: Mapping[str, object], status: int = 200) -> web.Response:
    try:
        body = _ANSWER.encode(payload)
    except UnicodeEncodeError:  # a lone surrogate in some detail: the stdlib escapes it
        body = json.dumps(payload).encode()
    return web.Response(
        body=body,
        status=status,
        content_type="application/json",
        charset="utf-8",
    )


def create_app(collector: Collector) -> web.Application:
    """The aiohttp application for ``collector`` (its routes, middleware and metrics)."""
    settings = collector.settings
    read_timeout = settings.read_timeout.total_seconds()

    @web.middleware
    async def errors(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        resource = request.match_info.route.resource
        endpoint = resource.canonical if resource else "unknown"
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = _json(
                {"error": exc.reason.lower().replace(" ", "_"), "detail": exc.text or ""},
                exc.status,
            )
            if exc.status == 408:
                response.force_close()
        except PayloadError as exc:
            response = _json({"error": exc.reason.value, "detail": exc.detail}, 400)
        except BrokerError as exc:
            logger.warning("answering 503: %s", exc)
            response = _json(
                {"error": "kafka_unavailable", "detail": "events were not accepted; retry later"},
                503,
            )
        except Exception:
            # A bug, not bad input: logged with its traceback (never the payload), counted.
            logger.exception("answering 500 on %s", endpoint)
            response = _json(
                {
                    "error": "internal_error",
                    "detail": "the collector failed on this request; retry later",
                },
                500,
            )
        collector.count_answer(endpoint, response.status)
        return response

    async def read_body(request: web.Request) -> bytes:
        """The whole body, within ``read_timeout`` of the headers (else 408)."""
        try:
            if request.content.is_eof():  # all of it arrived with the headers: no wait
                return await request.read()
            async with asyncio.timeout(read_timeout):
                return await request.read()
        except TimeoutError:
            collector.metrics.body_timeouts.inc()
            raise web.HTTPRequestTimeout(
                text=f"the body did not arrive within {read_timeout:g} s"
            ) from None
        except web.HTTPRequestEntityTooLarge:
            raise web.HTTPRequestEntityTooLarge(
                max_size=settings.max_body_bytes,
                actual_size=request.content_length or 0,
                text=f"the body limit is {settings.max_body_bytes} bytes",
            ) from None

    async def touchpoints(request: web.Request) -> web.Response:
        source = collector.bearer_source(request, "api")
        if source is None:
            return collector.unauthorized("api", "missing or invalid API key")
        body = await read_body(request)
        parsed = parse_native(body, request.content_type, collector.clock())
        return _json(await collector.accept(source, "touchpoints", parsed))

    def segment_handler(kind: SegmentCall) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            source = collector.write_key_source(request)
            if source is None:
                return collector.unauthorized("segment", "missing or invalid write key")
            body = await read_body(request)
            parsed = parse_segment(
                kind,
                body,
                collector.clock(),
                collector.identities,
                trust_revenue=settings.segment_trust_revenue,
            )
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
        decoded = decode_json(body)  # the signature is in the body: bounded decoding first
        fields = mailgun_signature_fields(decoded)
        now = collector.clock()
        reason = security.check_mailgun(
            settings.mailgun_signing_key, fields, now, settings.signature_tolerance
        )
        if reason or fields is None:  # no fields always comes with a reason
            return collector.unauthorized("mailgun", reason or "missing signature object")
        token = fields[1]
        if not collector.mailgun_tokens.claim(token, now):
            return collector.unauthorized("mailgun", "replayed token: this delivery was seen")
        try:
            parsed = parse_mailgun_event(decoded, now, collector.pii)
            return _json(await collector.accept("mailgun", "webhooks.mailgun", parsed))
        except BaseException:
            collector.mailgun_tokens.release(token)  # not accepted: Mailgun's retry may come
            raise

    async def twilio(request: web.Request) -> web.Response:
        if request.content_type != _FORM:
            raise web.HTTPUnsupportedMediaType(text=f"Twilio posts {_FORM}")
        body = await read_body(request)
        fields = form_fields(body)
        url = security.signed_url(
            request.scheme,
            request.host,
            request.raw_path,
            request.remote,
            request.headers,
            settings.public_url,
            collector.proxies,
        )
        reason = security.check_twilio(
            settings.twilio_auth_token,
            request.headers.get("X-Twilio-Signature"),
            security.twilio_url_variants(url),
            fields,
        )
        if reason:
            return collector.unauthorized("twilio", reason)
        parsed = parse_twilio(decode_form(fields), collector.clock(), collector.pii)
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
        source = collector.bearer_source(request, "ads")
        if source is None:
            return collector.unauthorized("ads", "missing or invalid ads key")
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

    app = web.Application(middlewares=[errors], client_max_size=settings.max_body_bytes)
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
