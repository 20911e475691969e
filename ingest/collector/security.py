"""Who may send: API keys (constant-time) and each vendor's documented signature scheme.

Every check returns None when the request is authentic, or a short reason for
the 401 answer. Secrets never appear in reasons or logs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime, timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key
from pydantic import SecretStr

__all__ = [
    "check_api_key",
    "check_mailgun",
    "check_sendgrid",
    "check_twilio",
    "check_zendesk",
    "fresh",
    "twilio_signature",
    "zendesk_signature",
]


def check_api_key(presented: str | None, keys: Mapping[str, SecretStr], source: str) -> str | None:
    """The key for ``source`` must match ``presented`` (compared in constant time)."""
    expected = keys.get(source)
    if expected is None:
        return f"no API key is configured for source {source!r}"
    if not presented:
        return "missing API key"
    if not hmac.compare_digest(presented.encode(), expected.get_secret_value().encode()):
        return "invalid API key"
    return None


def fresh(timestamp: str | None, now: datetime, tolerance: timedelta) -> str | None:
    """A signed Unix timestamp must be within ``tolerance`` of ``now`` (replay protection)."""
    if not timestamp:
        return "missing signature timestamp"
    try:
        signed = float(timestamp)
    except ValueError:
        return "unreadable signature timestamp"
    if abs(now.timestamp() - signed) > tolerance.total_seconds():
        return "stale signature timestamp"
    return None


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """X-Twilio-Signature: base64 HMAC-SHA1 of the full URL + sorted POST params (key+value)."""
    payload = url + "".join(f"{key}{params[key]}" for key in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def check_twilio(
    token: SecretStr | None, signature: str | None, url: str, params: Mapping[str, str]
) -> str | None:
    if token is None:
        return "no Twilio auth token is configured"
    if not signature:
        return "missing X-Twilio-Signature header"
    expected = twilio_signature(token.get_secret_value(), url, params)
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        return "invalid X-Twilio-Signature"
    return None


def zendesk_signature(secret: str, timestamp: str, body: bytes) -> str:
    """X-Zendesk-Webhook-Signature: base64 HMAC-SHA256 of timestamp + raw body."""
    digest = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def check_zendesk(
    secret: SecretStr | None,
    signature: str | None,
    timestamp: str | None,
    body: bytes,
    now: datetime,
    tolerance: timedelta,
) -> str | None:
    if secret is None:
        return "no Zendesk signing secret is configured"
    if not signature or not timestamp:
        return "missing X-Zendesk-Webhook-Signature or -Timestamp header"
    try:
        signed_at = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "unreadable X-Zendesk-Webhook-Signature-Timestamp"
    if signed_at.tzinfo is None or abs(now - signed_at) > tolerance:
        return "stale signature timestamp"
    expected = zendesk_signature(secret.get_secret_value(), timestamp, body)
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        return "invalid X-Zendesk-Webhook-Signature"
    return None


def check_mailgun(
    signing_key: SecretStr | None,
    fields: tuple[str, str, str] | None,
    now: datetime,
    tolerance: timedelta,
) -> str | None:
    """Mailgun signs ``timestamp + token`` with HMAC-SHA256 (hex) using the webhook signing key."""
    if signing_key is None:
        return "no Mailgun signing key is configured"
    if fields is None:
        return "missing signature object"
    timestamp, token, signature = fields
    stale = fresh(timestamp, now, tolerance)
    if stale:
        return stale
    expected = hmac.new(
        signing_key.get_secret_value().encode(), (timestamp + token).encode(), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        return "invalid Mailgun signature"
    return None


def check_sendgrid(
    public_key: SecretStr | None,
    signature: str | None,
    timestamp: str | None,
    body: bytes,
    now: datetime,
    tolerance: timedelta,
) -> str | None:
    """SendGrid signs ``timestamp + body`` with ECDSA P-256/SHA-256; the key is base64 DER."""
    if public_key is None:
        return "no SendGrid verification key is configured"
    if not signature:
        return "missing X-Twilio-Email-Event-Webhook-Signature header"
    stale = fresh(timestamp, now, tolerance)
    if stale:
        return stale
    try:
        key = load_der_public_key(base64.b64decode(public_key.get_secret_value()))
        decoded = base64.b64decode(signature, validate=True)
    except (ValueError, binascii.Error):
        return "invalid X-Twilio-Email-Event-Webhook-Signature"
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return "the configured SendGrid key is not an elliptic-curve key"
    try:
        key.verify(decoded, (timestamp or "").encode() + body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return "invalid X-Twilio-Email-Event-Webhook-Signature"
    return None
