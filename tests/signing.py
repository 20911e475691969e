"""Sign requests the way each vendor does, for tests.

Written from the vendors' documentation, independently of the verifying side
(``ingest.collector.security``), so a test that signs here and is accepted there
checks the collector against the vendor's rules, not against itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "SendGridKeys",
    "mailgun_signature",
    "mailgun_token",
    "twilio_signature",
    "twilio_signature_of_pairs",
    "zendesk_signature",
]


class SendGridKeys:
    """An ECDSA P-256 key pair like the one SendGrid generates for the signed webhook."""

    def __init__(self) -> None:
        self._private = ec.generate_private_key(ec.SECP256R1())
        der = self._private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key = base64.b64encode(der).decode()

    def sign(self, timestamp: str, body: bytes) -> str:
        signature = self._private.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(signature).decode()


def mailgun_signature(signing_key: str, timestamp: str, token: str) -> str:
    """Mailgun: hex HMAC-SHA256 of ``timestamp + token`` with the webhook signing key."""
    return hmac.new(signing_key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()


def mailgun_token() -> str:
    """A fresh 50-character token, as Mailgun puts in every delivery."""
    return secrets.token_hex(25)


def twilio_signature_of_pairs(
    auth_token: str, url: str, pairs: Iterable[tuple[bytes, bytes]]
) -> str:
    """X-Twilio-Signature over the decoded form fields as bytes (what Twilio hashes, UTF-8).

    Twilio: the full URL, then each parameter name (sorted) followed by its values
    (sorted), no delimiters; HMAC-SHA1 with the auth token; base64.
    """
    fields: dict[bytes, list[bytes]] = {}
    for key, value in pairs:
        fields.setdefault(key, []).append(value)
    payload = url.encode() + b"".join(
        key + value for key in sorted(fields) for value in sorted(fields[key])
    )
    return base64.b64encode(hmac.new(auth_token.encode(), payload, hashlib.sha1).digest()).decode()


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    return twilio_signature_of_pairs(
        auth_token, url, [(key.encode(), value.encode()) for key, value in params.items()]
    )


def zendesk_signature(secret: str, timestamp: str, body: bytes) -> str:
    """X-Zendesk-Webhook-Signature: base64 HMAC-SHA256 of ``timestamp + body``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()
