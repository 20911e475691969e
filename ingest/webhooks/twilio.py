"""Twilio SMS: status callbacks and inbound messages (form-encoded).

A status callback (``MessageStatus``) becomes ``sms_sent`` / ``sms_delivered`` /
``sms_failed`` / ``sms_queued`` with event id = MessageSid + status, so Twilio's
retries collapse. An inbound message becomes ``sms_reply`` — or ``sms_opt_out``
when Twilio flags an opt-out keyword (``OptOutType=STOP``) or the body is one.
The buyer is the customer's phone number (``phone:<number>``, hashed if the
collector hashes PII). Twilio sends no event time: the receive time is used.
The message body itself is not kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from ingest.webhooks.base import Parsed, Pii, Rejection, raw_item, validate_all
from schemas.enums import DeadLetterReason
from schemas.touchpoint import deterministic_event_id

__all__ = ["OPT_OUT_WORDS", "TWILIO_STATUSES", "parse_twilio"]

TWILIO_STATUSES: Final[dict[str, str]] = {
    "accepted": "sms_queued",
    "queued": "sms_queued",
    "sending": "sms_queued",
    "sent": "sms_sent",
    "delivered": "sms_delivered",
    "read": "sms_delivered",
    "undelivered": "sms_failed",
    "failed": "sms_failed",
}
OPT_OUT_WORDS: Final = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"}
)


def parse_twilio(form: Mapping[str, str], received_at: datetime, pii: Pii) -> Parsed:
    raw = raw_item({key: value for key, value in form.items() if key != "Body"})
    sid = form.get("MessageSid") or form.get("SmsSid")
    if not sid:
        return Parsed(
            rejected=[
                Rejection(0, DeadLetterReason.MISSING_FIELD, "MessageSid: Field required", raw)
            ]
        )
    status = form.get("MessageStatus") or form.get("SmsStatus")
    properties: dict[str, Any] = {"message_sid": sid, "vendor": "twilio"}
    if status and status != "received":
        number = form.get("To")
        event_type = TWILIO_STATUSES.get(status, "sms_queued")
        event_id = deterministic_event_id("twilio", sid, status)
        if form.get("ErrorCode"):
            properties["error_code"] = form["ErrorCode"]
    else:
        number = form.get("From")
        body = (form.get("Body") or "").strip().upper()
        opted_out = form.get("OptOutType", "").upper() == "STOP" or body in OPT_OUT_WORDS
        event_type = "sms_opt_out" if opted_out else "sms_reply"
        event_id = deterministic_event_id("twilio", sid, "inbound")
        if opted_out:
            properties["keyword"] = body or form.get("OptOutType", "STOP")
    if not number:
        return Parsed(
            rejected=[
                Rejection(
                    0,
                    DeadLetterReason.MISSING_FIELD,
                    "To/From: the customer's number is required",
                    raw,
                )
            ]
        )
    record = {
        "event_id": event_id,
        "buyer_id": f"phone:{pii.phone(number)}",
        "channel": "sms",
        "event_type": event_type,
        "occurred_at": received_at.isoformat(),
        "received_at": received_at.isoformat(),
        "properties": properties,
    }
    return validate_all([(0, record, raw)])
