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

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Final
from urllib.parse import unquote_to_bytes

from ingest.webhooks.base import Parsed, Pii, Rejection, raw_item, validate_all
from schemas.enums import DeadLetterReason
from schemas.errors import PayloadError
from schemas.touchpoint import deterministic_event_id

__all__ = [
    "MAX_FORM_FIELDS",
    "OPT_OUT_WORDS",
    "TWILIO_STATUSES",
    "decode_form",
    "form_fields",
    "parse_twilio",
]

MAX_FORM_FIELDS: Final = 1000
"""More fields than any Twilio callback sends (about 30)."""

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


def _unquote(part: bytes) -> bytes:
    return unquote_to_bytes(part.replace(b"+", b" "))


def form_fields(body: bytes) -> list[tuple[bytes, bytes]]:
    """The ``application/x-www-form-urlencoded`` fields of ``body``, percent-decoded to bytes.

    No text decoding happens here: Twilio signs the fields, so they are checked as the
    bytes they are before anything reads them as text (see :func:`decode_form`).
    """
    fields = [field for field in body.split(b"&") if field]
    if len(fields) > MAX_FORM_FIELDS:
        raise PayloadError(
            DeadLetterReason.INVALID_PAYLOAD,
            f"{len(fields)} form fields; a Twilio callback has at most {MAX_FORM_FIELDS}",
        )
    return [
        (_unquote(key), _unquote(value)) for key, _, value in (f.partition(b"=") for f in fields)
    ]


def decode_form(fields: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    """Form fields as text (UTF-8, as Twilio sends them); the last of repeated names wins."""
    try:
        return {key.decode(): value.decode() for key, value in fields}
    except UnicodeDecodeError as exc:
        raise PayloadError(
            DeadLetterReason.INVALID_ENCODING, f"a form field is not UTF-8: {exc}"
        ) from None


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
    properties: dict[str, object] = {"message_sid": sid, "vendor": "twilio"}
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
