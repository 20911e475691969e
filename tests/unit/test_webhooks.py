"""Webhook signing, backoff, rate limit and destination config (pure parts)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

import pytest
from pydantic import ValidationError

from schemas.errors import ConfigError
from schemas.webhooks import WebhookDestination, WebhooksConfig
from sinks.webhooks import Delivery, TokenBucket, backoff_delays, sign, verify

SECRET = b"s3cret"
BODY = b'{"trigger_id":"t","trigger_event_id":"e1"}'


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET, b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1_700_000_000, BODY) == f"v1={expected}"


@pytest.mark.parametrize(
    ("timestamp", "body", "secret", "now", "ok"),
    [
        ("1700000000", BODY, SECRET, 1_700_000_010, True),
        ("1700000000", BODY + b" ", SECRET, 1_700_000_010, False),  # body changed
        ("1700000000", BODY, b"other", 1_700_000_010, False),  # wrong secret
        ("1700000000", BODY, SECRET, 1_700_000_900, False),  # too old: a replay
        ("1700000001", BODY, SECRET, 1_700_000_010, False),  # timestamp changed
        ("", BODY, SECRET, 1_700_000_010, False),
        ("17e8", BODY, SECRET, 1_700_000_010, False),
    ],
)
def test_a_receiver_verifies_body_secret_and_freshness(
    timestamp: str, body: bytes, secret: bytes, now: int, ok: bool
) -> None:
    signature = sign(SECRET, 1_700_000_000, BODY)
    assert verify(secret, timestamp, signature, body, now=now) is ok


def destination(**fields: object) -> WebhookDestination:
    base: dict[str, object] = {"name": "crm", "url": "http://127.0.0.1:9/x", "secret_env": "S"}
    return WebhookDestination.model_validate({**base, **fields})


def test_backoff_doubles_up_to_its_ceiling() -> None:
    hook = destination(max_attempts=6, backoff="1s", backoff_max="5s")
    assert backoff_delays(hook) == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff_delays(destination(max_attempts=1)) == []


def test_the_token_bucket_spends_its_burst_then_spaces_by_the_rate() -> None:
    now = [100.0]
    bucket = TokenBucket(rate=4.0, burst=2, clock=lambda: now[0])
    assert [bucket.take() for _ in range(2)] == [0.0, 0.0]
    assert bucket.take() == pytest.approx(0.25)
    assert bucket.take() == pytest.approx(0.5)  # queued behind the one before
    now[0] += 10.0  # refilled, but never beyond the burst
    assert [bucket.take() for _ in range(2)] == [0.0, 0.0]
    assert bucket.take() == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"url": "ftp://x/y"}, "not an http"),
        ({"url": "/relative"}, "not an http"),
        ({"name": "Has Space"}, "string_pattern_mismatch|should match"),
        ({"max_attempts": 0}, "greater than or equal to 1"),
        ({"rate_per_second": 0}, "greater than 0"),
    ],
)
def test_a_bad_destination_is_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        destination(**fields)


def test_two_destinations_with_one_name_are_refused() -> None:
    hook = {"name": "crm", "url": "http://h/x", "secret_env": "S"}
    with pytest.raises(ValidationError, match="webhook names used twice: crm"):
        WebhooksConfig.model_validate({"webhook": [hook, hook]})


def test_a_missing_secret_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_SECRET", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_SECRET is not set"):
        destination(secret_env="NO_SUCH_SECRET").secret()


def test_a_destination_takes_only_its_triggers() -> None:
    assert destination().wants("anything")
    only = destination(triggers=["cart"])
    assert only.wants("cart") and not only.wants("other")
    assert only.timeout == timedelta(seconds=10)


@pytest.mark.parametrize("row", [b"[1]", b"{}", b'{"trigger_id": 1, "trigger_event_id": "e"}'])
def test_a_row_that_is_not_a_trigger_is_refused(row: bytes) -> None:
    with pytest.raises(ValueError, match="trigger"):
        Delivery.of_row(row)


def test_a_retraction_is_a_delivery_of_its_own() -> None:
    fired = Delivery.of_row(b'{"trigger_id":"t","trigger_event_id":"e1","is_retraction":0}')
    retracted = Delivery.of_row(b'{"trigger_id":"t","trigger_event_id":"e1","is_retraction":1}')
    assert (fired.event_id, retracted.event_id) == ("e1", "e1:retracted")
