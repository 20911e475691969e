"""Sign requests the way each vendor does, for tests (the verifying side is ingest.collector)."""

from __future__ import annotations

import base64
import hashlib
import hmac

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ingest.collector.security import twilio_signature, zendesk_signature

__all__ = ["SendGridKeys", "mailgun_signature", "twilio_signature", "zendesk_signature"]


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
    return hmac.new(signing_key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
