"""Each vendor's signature scheme: a valid signature passes; tampering, a wrong secret,
a stale timestamp or a missing header is refused with a reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from ingest.collector import security
from tests.signing import SendGridKeys, mailgun_signature, twilio_signature, zendesk_signature

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
FIVE_MINUTES = timedelta(minutes=5)
BODY = b'[{"email": "ana@example.com", "event": "open", "timestamp": 1772445600}]'


def test_api_keys_are_per_source() -> None:
    keys = {"web": SecretStr("k-web"), "crm": SecretStr("k-crm")}
    assert security.check_api_key("k-web", keys, "web") is None
    assert security.check_api_key("k-crm", keys, "web") == "invalid API key"
    assert security.check_api_key(None, keys, "web") == "missing API key"
    assert "no API key" in (security.check_api_key("k-web", keys, "shop") or "")


def test_sendgrid_ecdsa() -> None:
    keys = SendGridKeys()
    public = SecretStr(keys.public_key)
    stamp = str(int(NOW.timestamp()))
    good = keys.sign(stamp, BODY)
    assert security.check_sendgrid(public, good, stamp, BODY, NOW, FIVE_MINUTES) is None
    assert security.check_sendgrid(public, good, stamp, BODY + b" ", NOW, FIVE_MINUTES)
    assert security.check_sendgrid(
        SecretStr(SendGridKeys().public_key), good, stamp, BODY, NOW, FIVE_MINUTES
    )
    old = str(int((NOW - timedelta(hours=1)).timestamp()))
    assert (
        security.check_sendgrid(public, keys.sign(old, BODY), old, BODY, NOW, FIVE_MINUTES)
        == "stale signature timestamp"
    )
    assert "missing" in (
        security.check_sendgrid(public, None, stamp, BODY, NOW, FIVE_MINUTES) or ""
    )
    assert security.check_sendgrid(public, "not base64!", stamp, BODY, NOW, FIVE_MINUTES)
    assert "configured" in (
        security.check_sendgrid(None, good, stamp, BODY, NOW, FIVE_MINUTES) or ""
    )


def test_twilio_hmac_sha1_over_url_and_sorted_params() -> None:
    token = SecretStr("twilio-auth-token")
    url = "https://collect.example.com/v1/webhooks/twilio"
    params = {"MessageSid": "SM1", "MessageStatus": "delivered", "To": "+15558675310"}
    good = twilio_signature("twilio-auth-token", url, params)
    assert security.check_twilio(token, good, url, params) is None
    assert security.check_twilio(token, good, url, {**params, "MessageStatus": "failed"})
    assert security.check_twilio(SecretStr("other"), good, url, params)
    assert security.check_twilio(token, good, url + "?x=1", params)
    assert "missing" in (security.check_twilio(token, None, url, params) or "")


def test_zendesk_hmac_sha256_over_timestamp_and_body() -> None:
    secret = SecretStr("dGhpc19zZWNyZXQ=")
    stamp = NOW.isoformat().replace("+00:00", "Z")
    good = zendesk_signature("dGhpc19zZWNyZXQ=", stamp, BODY)
    assert security.check_zendesk(secret, good, stamp, BODY, NOW, FIVE_MINUTES) is None
    assert security.check_zendesk(secret, good, stamp, b"{}", NOW, FIVE_MINUTES)
    assert security.check_zendesk(SecretStr("x"), good, stamp, BODY, NOW, FIVE_MINUTES)
    old = (NOW - timedelta(minutes=10)).isoformat()
    assert (
        security.check_zendesk(
            secret, zendesk_signature("dGhpc19zZWNyZXQ=", old, BODY), old, BODY, NOW, FIVE_MINUTES
        )
        == "stale signature timestamp"
    )
    assert security.check_zendesk(secret, None, stamp, BODY, NOW, FIVE_MINUTES)


@pytest.mark.parametrize("tamper", ["token", "signature", "timestamp", "key"])
def test_mailgun_hmac(tamper: str) -> None:
    key = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
    stamp = str(int(NOW.timestamp()))
    token = "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0"
    fields = (stamp, token, mailgun_signature(key, stamp, token))
    assert security.check_mailgun(SecretStr(key), fields, NOW, FIVE_MINUTES) is None
    changed = {
        "token": (stamp, token + "x", fields[2]),
        "signature": (stamp, token, "0" * 64),
        "timestamp": (
            str(int(NOW.timestamp()) - 3600),
            token,
            mailgun_signature(key, str(int(NOW.timestamp()) - 3600), token),
        ),
        "key": fields,
    }[tamper]
    signing_key = SecretStr("wrong") if tamper == "key" else SecretStr(key)
    assert security.check_mailgun(signing_key, changed, NOW, FIVE_MINUTES) is not None
