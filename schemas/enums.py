"""Closed vocabularies shared by every room: channels, stages, exits, dead-letter reasons."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

__all__ = [
    "EVENT_TYPES",
    "STAGES",
    "Channel",
    "DeadLetterReason",
    "ExitKind",
    "Stage",
]


class Channel(StrEnum):
    """Where a touchpoint happened. Extend here (and in the rules file) to add one."""

    ADS = "ads"
    EMAIL = "email"
    SMS = "sms"
    WEB = "web"
    SUPPORT = "support"


class Stage(StrEnum):
    """Journey stages, declared in journey order; compare with :attr:`rank`."""

    PRE_AWARENESS = "pre_awareness"
    AWARENESS = "awareness"
    CONSIDERATION = "consideration"
    PURCHASE = "purchase"
    RETENTION = "retention"
    ADVOCACY = "advocacy"

    @property
    def rank(self) -> int:
        return _STAGE_RANK[self]


STAGES: Final[tuple[Stage, ...]] = tuple(Stage)
_STAGE_RANK: Final[dict[Stage, int]] = {stage: index for index, stage in enumerate(STAGES)}


class ExitKind(StrEnum):
    """Ways a buyer leaves. Exits are recorded as events beside the stage, never as a stage."""

    UNSUBSCRIBE = "unsubscribe"
    SPAM_COMPLAINT = "spam_complaint"
    OPT_OUT = "opt_out"
    CANCELLATION = "cancellation"
    REFUND = "refund"


class DeadLetterReason(StrEnum):
    """Why a record became a dead letter instead of a touchpoint."""

    INVALID_ENCODING = "invalid_encoding"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    RECORD_TOO_LARGE = "record_too_large"
    MISSING_FIELD = "missing_field"
    UNKNOWN_CHANNEL = "unknown_channel"
    NAIVE_TIMESTAMP = "naive_timestamp"
    INVALID_FIELD = "invalid_field"
    INVALID_PAYLOAD = "invalid_payload"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    TOO_LATE = "too_late"
    MALFORMED_ROW = "malformed_row"
    INVALID_OUTPUT_ROW = "invalid_output_row"
    """A message on an output topic that is not a valid row (seen by the sink)."""
    TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
    """An event time the pipeline cannot store (before 1970, after 2299, not finite)."""
    IDENTITY_CAP = "identity_cap"
    """An identity link refused: the person would have more ids than the cap (the event
    itself was processed; only the link is in the dead letter)."""


# The event types the shipped payload models and default rules know, per channel.
# Other snake_case event types are accepted and counted as `unclassified` until a
# rule covers them.
EVENT_TYPES: Final[dict[Channel, tuple[str, ...]]] = {
    Channel.ADS: ("ad_impression", "ad_click", "ad_conversion"),
    Channel.EMAIL: (
        "email_sent",
        "email_delivered",
        "email_open",
        "email_click",
        "email_bounce",
        "email_unsubscribe",
        "email_spam_report",
    ),
    Channel.SMS: ("sms_sent", "sms_delivered", "sms_click", "sms_reply", "sms_opt_out"),
    Channel.WEB: (
        "page_view",
        "product_view",
        "add_to_cart",
        "checkout_started",
        "purchase",
        "signup",
        "booking",
        "refund",
        "subscription_cancelled",
        "review",
        "referral",
    ),
    Channel.SUPPORT: ("ticket_opened", "ticket_solved", "csat", "nps"),
}
