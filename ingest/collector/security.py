"""Who may send: API keys bound to their source, and each vendor's documented signature.

Every check returns None when the request is authentic, or a short reason for
the 401 answer. Secrets never appear in reasons or logs. Signatures are checked
on the bytes as received, before anything reads them as text or JSON (Mailgun's
signature travels inside its JSON body, which is size- and depth-bounded first).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key
from pydantic import SecretStr

__all__ = [
    "KeyRing",
    "KeyScope",
    "ReplayCache",
    "TrustedProxies",
    "check_mailgun",
    "check_sendgrid",
    "check_twilio",
    "check_zendesk",
    "fresh",
    "scope_of",
    "signed_url",
    "twilio_signature",
    "twilio_url_variants",
    "zendesk_signature",
]

KeyScope = Literal["api", "segment", "ads"]
"""What a key may call: ``/v1/touchpoints``, the Segment calls, or ``/v1/webhooks/ads``."""


def scope_of(source: str) -> KeyScope:
    """A key's scope from its source name: ``segment[:*]``, ``ads[:*]``, else ``api``."""
    kind = source.partition(":")[0]
    if kind == "segment":
        return "segment"
    if kind == "ads":
        return "ads"
    return "api"


class KeyRing:
    """The configured API keys, each bound to its source and that source's endpoints.

    A presented key is compared with every configured key in constant time, so the
    answer's timing tells nothing about which keys exist; it opens an endpoint only
    if the key it matches belongs to that endpoint's scope.
    """

    def __init__(self, keys: Mapping[str, SecretStr]) -> None:
        self._keys = [
            (source, secret.get_secret_value().encode(), scope_of(source))
            for source, secret in keys.items()
        ]

    def source_for(self, presented: str | None, scope: KeyScope) -> str | None:
        """The source whose key is ``presented``, if that source may call ``scope``."""
        if not presented:
            return None
        given = presented.encode()
        matched: str | None = None
        for source, key, key_scope in self._keys:
            if hmac.compare_digest(given, key) and key_scope == scope:
                matched = source
        return matched


def fresh(timestamp: str | None, now: datetime, tolerance: timedelta) -> str | None:
    """A signed Unix timestamp must be a finite number within ``tolerance`` of ``now``."""
    if not timestamp:
        return "missing signature timestamp"
    try:
        signed = float(timestamp)
    except ValueError:
        return "unreadable signature timestamp"
    if not math.isfinite(signed):
        return "unreadable signature timestamp"
    if abs(now.timestamp() - signed) > tolerance.total_seconds():
        return "stale signature timestamp"
    return None


# -- Twilio ----------------------------------------------------------------------------------


def twilio_signature(auth_token: str, url: str, fields: Iterable[tuple[bytes, bytes]]) -> str:
    """X-Twilio-Signature: base64 HMAC-SHA1 of the URL + each field name (sorted) followed by
    its values (sorted), over the decoded field bytes (Twilio's RequestValidator rules)."""
    grouped: dict[bytes, list[bytes]] = {}
    for key, value in fields:
        grouped.setdefault(key, []).append(value)
    payload = url.encode() + b"".join(
        key + value for key in sorted(grouped) for value in sorted(grouped[key])
    )
    digest = hmac.new(auth_token.encode(), payload, hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def twilio_url_variants(url: str) -> list[str]:
    """``url`` as given, then with its port removed, or with the default port added.

    What Twilio signs is inconsistent about the port (an explicit ``:443`` may be kept
    or dropped), so Twilio's own validators accept both; so does the collector.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        return [url]
    if port is not None:
        other = host
    else:
        other = f"{host}:{443 if parts.scheme == 'https' else 80}"
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{other}" if userinfo else other
    return [url, urlunsplit(parts._replace(netloc=netloc))]


def check_twilio(
    token: SecretStr | None,
    signature: str | None,
    urls: Sequence[str],
    fields: Iterable[tuple[bytes, bytes]],
) -> str | None:
    """The signature must match one of ``urls`` (see :func:`twilio_url_variants`)."""
    if token is None:
        return "no Twilio auth token is configured"
    if not signature:
        return "missing X-Twilio-Signature header"
    pairs = list(fields)
    given = signature.encode()
    secret = token.get_secret_value()
    matches = [
        hmac.compare_digest(given, twilio_signature(secret, url, pairs).encode()) for url in urls
    ]
    if not any(matches):
        return "invalid X-Twilio-Signature"
    return None


class TrustedProxies:
    """The reverse proxies whose X-Forwarded-* headers describe the URL a vendor called."""

    def __init__(self, networks: Iterable[str]) -> None:
        self._networks: list[IPv4Network | IPv6Network] = [
            ip_network(network, strict=False) for network in networks
        ]

    def trusts(self, peer: str | None) -> bool:
        if not peer or not self._networks:
            return False
        try:
            address = ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self._networks)


def _first(value: str | None) -> str:
    """The first (client-facing) entry of a comma-separated X-Forwarded-* header."""
    return (value or "").split(",")[0].strip()


def signed_url(
    scheme: str,
    host: str,
    path_qs: str,
    peer: str | None,
    headers: Mapping[str, str],
    public_url: str | None,
    proxies: TrustedProxies,
) -> str:
    """The URL a vendor called, for signatures that cover it (Twilio's).

    From a trusted proxy: X-Forwarded-Proto, -Host and -Prefix (each falling back to
    what the collector saw) + the raw path and query. Otherwise the configured public
    URL + the path; otherwise the URL as the collector saw it.
    """
    if proxies.trusts(peer) and any(
        headers.get(name) for name in ("X-Forwarded-Proto", "X-Forwarded-Host")
    ):
        scheme = _first(headers.get("X-Forwarded-Proto")) or scheme
        host = _first(headers.get("X-Forwarded-Host")) or host
        prefix = _first(headers.get("X-Forwarded-Prefix")).rstrip("/")
        if prefix and not prefix.startswith("/"):
            prefix = "/" + prefix
        return f"{scheme}://{host}{prefix}{path_qs}"
    if public_url:
        return public_url.rstrip("/") + path_qs
    return f"{scheme}://{host}{path_qs}"


# -- Zendesk, Mailgun, SendGrid ----------------------------------------------------------------


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
        if signed_at.tzinfo is None:
            return "unreadable X-Zendesk-Webhook-Signature-Timestamp"
        age = abs(now - signed_at)
    except (ValueError, OverflowError):
        return "unreadable X-Zendesk-Webhook-Signature-Timestamp"
    if age > tolerance:
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


class ReplayCache:
    """Recently accepted signature tokens (Mailgun's guidance: refuse a token seen before).

    A token is *claimed* once its signature checked out and released again if the
    delivery is not accepted (a 4xx or 503), so the vendor's retry of a delivery that
    failed is not mistaken for a replay. Tokens older than the signature tolerance are
    forgotten (their timestamp is refused as stale anyway); at ``capacity`` the oldest
    go first. Per process: behind a load balancer, each collector keeps its own.
    """

    def __init__(self, capacity: int, ttl: timedelta) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self._seen: OrderedDict[str, datetime] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def claim(self, token: str, now: datetime) -> bool:
        """False if ``token`` was claimed within the tolerance (a replay); else remember it."""
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at <= self.ttl and len(self._seen) < self.capacity:
                break
            del self._seen[oldest]
        claimed_at = self._seen.get(token)
        if claimed_at is not None and now - claimed_at <= self.ttl:
            return False
        self._seen.pop(token, None)
        self._seen[token] = now
        return True

    def release(self, token: str) -> None:
        self._seen.pop(token, None)


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
