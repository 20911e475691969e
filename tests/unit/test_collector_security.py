"""Each vendor's signature scheme: a valid signature passes; tampering, a wrong secret,
a stale timestamp or a missing header is refused with a reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from ingest.collector import security
from tests.signing import (
    SendGridKeys,
    mailgun_signature,
    twilio_signature,
    twilio_signature_of_pairs,
    zendesk_signature,
)

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
FIVE_MINUTES = timedelta(minutes=5)
BODY = b'[{"email": "ana@example.com", "event": "open", "timestamp": 1772445600}]'


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
    fields = [(key.encode(), value.encode()) for key, value in params.items()]
    good = twilio_signature("twilio-auth-token", url, params)
    assert security.check_twilio(token, good, [url], fields) is None
    assert security.check_twilio(token, good, [url], [*fields[:1], (b"MessageStatus", b"failed")])
    assert security.check_twilio(SecretStr("other"), good, [url], fields)
    assert security.check_twilio(token, good, [url + "?x=1"], fields)
    assert "missing" in (security.check_twilio(token, None, [url], fields) or "")


def test_zendesk_hmac_sha256_over_timestamp_and_body() -> None:
    """(Including timestamps whose UTC time a datetime cannot hold: refused, never a 500.)"""
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
    for odd in ("9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "2026-03-02", "x"):
        signed = zendesk_signature("dGhpc19zZWNyZXQ=", odd, BODY)
        assert security.check_zendesk(secret, signed, odd, BODY, NOW, FIVE_MINUTES)


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


# -- issue 11 --------------------------------------------------------------------------------


def test_each_key_is_bound_to_its_source_and_that_sources_endpoints() -> None:
    keys = security.KeyRing(
        {
            "web": SecretStr("k-web"),
            "crm": SecretStr("k-crm"),
            "segment": SecretStr("k-write"),
            "segment:shop": SecretStr("k-write-2"),
            "ads": SecretStr("k-ads"),
        }
    )
    assert keys.source_for("k-web", "api") == "web"
    assert keys.source_for("k-crm", "api") == "crm"
    assert keys.source_for("k-write", "segment") == "segment"
    assert keys.source_for("k-write-2", "segment") == "segment:shop"
    assert keys.source_for("k-ads", "ads") == "ads"
    # the public write key opens nothing but the Segment calls, and no key another scope's
    assert keys.source_for("k-write", "api") is None
    assert keys.source_for("k-write", "ads") is None
    assert keys.source_for("k-ads", "segment") is None
    assert keys.source_for("k-ads", "api") is None
    assert keys.source_for("k-web", "segment") is None
    assert keys.source_for("k-web", "ads") is None
    assert keys.source_for(None, "api") is None
    assert keys.source_for("", "api") is None


def test_one_key_for_two_sources_is_a_configuration_error() -> None:
    from schemas.settings import CollectorSettings

    with pytest.raises(ValueError, match="same key"):
        CollectorSettings(api_keys={"web": SecretStr("same"), "ads": SecretStr("same")})
    with pytest.raises(ValueError, match="empty"):
        CollectorSettings(api_keys={"web": SecretStr("")})


@pytest.mark.parametrize("stamp", ["NaN", "nan", "Infinity", "-Infinity", "1e20", "1e400", ""])
def test_a_signed_timestamp_must_be_a_finite_recent_number(stamp: str) -> None:
    assert security.fresh(stamp, NOW, FIVE_MINUTES) is not None


def test_twilio_signs_the_decoded_form_fields_as_bytes_sorted_by_name_then_value() -> None:
    token = SecretStr("twilio-auth-token")
    url = "https://collect.example.com/v1/webhooks/twilio"
    pairs = [(b"To", b"+1555"), (b"MessageSid", b"SM1"), (b"Tag", b"b"), (b"Tag", b"a")]
    good = twilio_signature_of_pairs("twilio-auth-token", url, pairs)
    assert security.check_twilio(token, good, [url], pairs) is None
    assert security.check_twilio(token, good, [url], [*pairs[:3], (b"Tag", b"c")])
    assert security.check_twilio(token, good, [url + "?x=1"], pairs)
    assert security.check_twilio(token, None, [url], pairs) == "missing X-Twilio-Signature header"
    assert security.check_twilio(None, good, [url], pairs)
    # invalid UTF-8 is signed (or not) like any other bytes: no decoding before the check
    odd = [(b"Body", b"\xff")]
    assert (
        security.check_twilio(
            token, twilio_signature_of_pairs("twilio-auth-token", url, odd), [url], odd
        )
        is None
    )


def test_twilio_url_variants_with_and_without_the_port() -> None:
    """Twilio's own validator accepts the URL with the default port added or any port
    removed, because what Twilio's back end signs is inconsistent."""
    assert security.twilio_url_variants("https://a.example.com/v1/x?y=1") == [
        "https://a.example.com/v1/x?y=1",
        "https://a.example.com:443/v1/x?y=1",
    ]
    assert security.twilio_url_variants("https://a.example.com:443/v1/x") == [
        "https://a.example.com:443/v1/x",
        "https://a.example.com/v1/x",
    ]
    assert security.twilio_url_variants("http://127.0.0.1:8080/v1/x") == [
        "http://127.0.0.1:8080/v1/x",
        "http://127.0.0.1/v1/x",
    ]


def test_the_signed_url_comes_from_a_trusted_proxys_headers_else_the_public_url() -> None:
    proxies = security.TrustedProxies(["10.0.0.0/8", "127.0.0.1"])
    forwarded = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "collect.example.com, inner.local",
        "X-Forwarded-Prefix": "/tp/",
    }
    assert (
        security.signed_url(
            "http", "10.1.2.3:8080", "/v1/webhooks/twilio?a=1", "10.1.2.3", forwarded, None, proxies
        )
        == "https://collect.example.com/tp/v1/webhooks/twilio?a=1"
    )
    # the same headers from anyone else are ignored
    assert (
        security.signed_url(
            "http", "10.1.2.3:8080", "/v1/webhooks/twilio", "192.0.2.7", forwarded, None, proxies
        )
        == "http://10.1.2.3:8080/v1/webhooks/twilio"
    )
    assert (
        security.signed_url(
            "http",
            "10.1.2.3:8080",
            "/v1/webhooks/twilio",
            "192.0.2.7",
            forwarded,
            "https://collect.example.com/tp/",
            proxies,
        )
        == "https://collect.example.com/tp/v1/webhooks/twilio"
    )
    assert not security.TrustedProxies([]).trusts("127.0.0.1")
    assert not proxies.trusts(None)
    assert not proxies.trusts("not an address")
    with pytest.raises(ValueError):
        security.TrustedProxies(["10.0.0.0/33"])


def test_a_replay_cache_refuses_a_token_it_holds_and_forgets_released_and_old_ones() -> None:
    cache = security.ReplayCache(capacity=3, ttl=FIVE_MINUTES)
    assert cache.claim("t1", NOW)
    assert not cache.claim("t1", NOW + timedelta(seconds=1))  # replayed
    cache.release("t1")  # the first delivery failed (503): the vendor's retry may come
    assert cache.claim("t1", NOW + timedelta(seconds=2))
    assert not cache.claim("t1", NOW + timedelta(minutes=4))
    assert cache.claim("t1", NOW + timedelta(minutes=6))  # older than the tolerance: stale anyway
    for token in ("t2", "t3", "t4"):
        assert cache.claim(token, NOW + timedelta(minutes=6))
    assert len(cache) == 3  # bounded: the oldest went first
