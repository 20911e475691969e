"""The collector's OpenAPI 3.1 document (served at ``/openapi.json``)."""

from __future__ import annotations

from typing import Any

from ingest.webhooks.ads import AD_EVENTS
from ingest.webhooks.base import MAX_JSON_DEPTH
from ingest.webhooks.sendgrid import SENDGRID_EVENTS
from schemas.enums import DeadLetterReason
from schemas.touchpoint import Touchpoint

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{model}"


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


_STRING = {"type": "string"}
_SEGMENT_COMMON = {
    "userId": _STRING,
    "anonymousId": _STRING,
    "messageId": _STRING,
    "timestamp": {"type": "string", "format": "date-time"},
    "context": {"type": "object"},
    "properties": {"type": "object"},
    "traits": {"type": "object"},
}
_SEGMENT = {
    "SegmentTrack": _object({**_SEGMENT_COMMON, "event": _STRING}, ["event"]),
    "SegmentPage": _object({**_SEGMENT_COMMON, "name": _STRING}),
    "SegmentIdentify": _object(_SEGMENT_COMMON),
    "SegmentBatch": _object(
        {"batch": {"type": "array", "items": _object({**_SEGMENT_COMMON, "type": _STRING})}},
        ["batch"],
    ),
}
_VENDORS = {
    "SendGridEvents": {
        "type": "array",
        "items": _object(
            {
                "email": _STRING,
                "timestamp": {"type": "integer"},
                "event": {"type": "string", "enum": sorted(SENDGRID_EVENTS)},
                "sg_event_id": _STRING,
                "sg_message_id": _STRING,
                "url": _STRING,
                "category": {"oneOf": [_STRING, {"type": "array", "items": _STRING}]},
            },
            ["email", "timestamp", "event"],
        ),
    },
    "MailgunEvent": _object(
        {
            "signature": _object(
                {"timestamp": _STRING, "token": _STRING, "signature": _STRING},
                ["timestamp", "token", "signature"],
            ),
            "event-data": _object(
                {
                    "id": _STRING,
                    "event": _STRING,
                    "timestamp": {"type": "number"},
                    "recipient": _STRING,
                }
            ),
        },
        ["signature", "event-data"],
    ),
    "TwilioCallback": _object(
        {
            "MessageSid": _STRING,
            "MessageStatus": _STRING,
            "To": _STRING,
            "From": _STRING,
            "Body": _STRING,
            "OptOutType": _STRING,
        },
        ["MessageSid"],
    ),
    "ZendeskEvent": _object(
        {
            "type": _STRING,
            "id": _STRING,
            "time": {"type": "string", "format": "date-time"},
            "account_id": {"type": "integer"},
            "detail": _object({"id": _STRING, "requester_id": _STRING, "status": _STRING}),
            "event": {"type": "object"},
        },
        ["type", "detail"],
    ),
    "ZendeskTrigger": {
        **_object(
            {
                "ticket": _object(
                    {
                        "id": _STRING,
                        "status": _STRING,
                        "requester_id": _STRING,
                        "requester_email": _STRING,
                        "updated_at": {"type": "string", "format": "date-time"},
                        "priority": _STRING,
                        "satisfaction": _STRING,
                    },
                    ["id"],
                ),
                "event": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$"},
            },
            ["ticket"],
        ),
        "description": "The JSON body of a webhook connected to a Zendesk trigger or automation, "
        "written with placeholders: ticket.id {{ticket.id}}, ticket.status {{ticket.status}}, "
        "ticket.requester_id {{ticket.requester.id}}, ticket.updated_at "
        "{{ticket.updated_at_with_timestamp}}, ticket.priority {{ticket.priority}}, "
        "ticket.satisfaction {{satisfaction.current_rating}}; event optional.",
    },
    "ZendeskBody": {
        "oneOf": [
            {"$ref": _REF.format(model="ZendeskEvent")},
            {"$ref": _REF.format(model="ZendeskTrigger")},
        ]
    },
    "AdEvents": _object(
        {
            "events": {
                "type": "array",
                "items": _object(
                    {
                        "id": _STRING,
                        "type": {"type": "string", "enum": sorted(AD_EVENTS)},
                        "occurred_at": {"type": "string", "format": "date-time"},
                        "buyer_id": _STRING,
                        "platform": _STRING,
                        "campaign": _STRING,
                        "ad_id": _STRING,
                        "cost": _STRING,
                        "currency": _STRING,
                    },
                    ["id", "type", "occurred_at", "buyer_id"],
                ),
            }
        },
        ["events"],
    ),
}
_REASON = {"type": "string", "enum": [reason.value for reason in DeadLetterReason]}
_RESULT = _object(
    {
        "accepted": {"type": "integer"},
        "rejected": {
            "type": "array",
            "items": _object({"index": {"type": "integer"}, "reason": _REASON, "detail": _STRING}),
        },
    },
    ["accepted", "rejected"],
)
_ERROR = _object({"error": _STRING, "detail": _STRING}, ["error"])


def _responses(ok: dict[str, Any] | None = None) -> dict[str, Any]:
    def error(description: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}},
        }

    return {
        "200": ok
        or {
            "description": "accepted count and every rejected item with its reason",
            "content": {"application/json": {"schema": {"$ref": _REF.format(model="Result")}}},
        },
        "400": error(
            f"the body is not usable: not JSON, not UTF-8, nested deeper than {MAX_JSON_DEPTH}, "
            "or the wrong shape (error = the reason, detail = why)"
        ),
        "401": error(
            "missing or invalid key or signature, a key of another endpoint, or a replayed "
            "delivery; nothing produced"
        ),
        "408": error("the body did not arrive within the read timeout"),
        "413": error("the body is larger than the limit"),
        "500": error("the collector failed on this request; retry"),
        "503": error(
            "Kafka did not acknowledge (nothing was accepted), or the connection limit was "
            "reached: retry"
        ),
    }


def _post(
    summary: str,
    schema_name: str,
    media: str = "application/json",
    security: list[dict[str, list[str]]] | None = None,
    ok: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {media: {"schema": {"$ref": _REF.format(model=schema_name)}}},
            },
            "responses": _responses(ok),
            **({"security": security} if security is not None else {}),
        }
    }


def openapi_document() -> dict[str, Any]:
    touchpoint = Touchpoint.model_json_schema(ref_template=_REF)
    components: dict[str, Any] = dict(touchpoint.pop("$defs", {}))
    components["Touchpoint"] = touchpoint
    components["TouchpointBody"] = {
        "oneOf": [
            {"$ref": _REF.format(model="Touchpoint")},
            {"type": "array", "items": {"$ref": _REF.format(model="Touchpoint")}},
        ]
    }
    components.update(_SEGMENT)
    components.update(_VENDORS)
    components["Result"] = _RESULT
    components["Error"] = _ERROR
    bearer: list[dict[str, list[str]]] = [{"apiKey": []}]
    ads_key: list[dict[str, list[str]]] = [{"adsKey": []}]
    basic: list[dict[str, list[str]]] = [{"segmentWriteKey": []}]
    twiml = {"description": "empty TwiML", "content": {"text/xml": {"schema": _STRING}}}
    twilio = _post(
        "Twilio SMS status callback or inbound message (signed)",
        "TwilioCallback",
        "application/x-www-form-urlencoded",
        security=[],
        ok=twiml,
    )
    twilio["post"]["responses"]["415"] = {
        "description": "not application/x-www-form-urlencoded",
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}},
    }
    simple = {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Touchpoint collector",
            "version": "1.0.0",
            "description": "Marketing touchpoints in: our API, Segment-compatible tracking, "
            "and vendor webhooks. 2xx only after Kafka acknowledged.",
        },
        "paths": {
            "/v1/touchpoints": _post(
                "Touchpoints: one object, a JSON array, or NDJSON",
                "TouchpointBody",
                security=bearer,
            ),
            "/v1/track": _post("Segment track", "SegmentTrack", security=basic),
            "/v1/page": _post("Segment page", "SegmentPage", security=basic),
            "/v1/identify": _post(
                "Segment identify (links anonymousId to userId)", "SegmentIdentify", security=basic
            ),
            "/v1/batch": _post("Segment batch", "SegmentBatch", security=basic),
            "/v1/webhooks/sendgrid": _post(
                "SendGrid Event Webhook (signed)", "SendGridEvents", security=[]
            ),
            "/v1/webhooks/mailgun": _post("Mailgun webhook (signed)", "MailgunEvent", security=[]),
            "/v1/webhooks/twilio": twilio,
            "/v1/webhooks/zendesk": _post(
                "Zendesk ticket event or trigger body (signed); a body that cannot become a "
                "touchpoint is refused with 400, never accepted and dropped",
                "ZendeskBody",
                security=[],
            ),
            "/v1/webhooks/ads": _post(
                "Ad impressions, clicks, conversions", "AdEvents", security=ads_key
            ),
            "/healthz": {"get": {"summary": "alive", "responses": {"200": simple}}},
            "/readyz": {
                "get": {
                    "summary": "Kafka answered a metadata request through the producer just now "
                    "(within 2 s; cached 1 s)",
                    "responses": {"200": simple, "503": simple},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "text exposition",
                            "content": {"text/plain": {"schema": _STRING}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a TOUCHPOINT_COLLECTOR_API_KEYS key whose source is not "
                    "segment[:NAME] or ads[:NAME]; valid on /v1/touchpoints only",
                },
                "adsKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the key of source ads (or ads:NAME); valid on "
                    "/v1/webhooks/ads only",
                },
                "segmentWriteKey": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "the key of source segment (or segment:NAME) as the user; "
                    "valid on the Segment calls only. It is public, so what it sends is "
                    "marked properties.origin=browser and its revenue is a claim unless "
                    "TOUCHPOINT_COLLECTOR_SEGMENT_TRUST_REVENUE is true",
                },
            },
        },
    }
