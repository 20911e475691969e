"""Seeded synthetic customer journeys, with ground truth.

N buyers across three B2B personas move through the journey stages by
channel-specific touchpoints. Per persona and stage there are progression,
drop-off and exit probabilities; buyers repeat purchases, use promos and leave
reviews or referrals. On top of the clean stream the generator injects exact
duplicates, out-of-order delivery (within the lateness bound) and malformed
records, and writes what a correct pipeline must find: per buyer and in
aggregate, the furthest stage, drop-off stage (and the channel of the last
touch before it), exits, purchases and revenue.

By default every journey runs to its end on a fixed 2026 timeline. A timeline
that ends at a given "now" (:meth:`GeneratorConfig.ending_at`) has buyers
arriving steadily until then and cuts every journey there, as a live system
sees it: the newest buyers are mid-journey, and the ground truth is the state
as of now (what happened after it has not happened yet).

The generator knows stages only as a *description of its own simulation*: it
never calls the classifier, so its ground truth is an independent check of it.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, TypedDict, Unpack

from schemas.enums import STAGES, DeadLetterReason, ExitKind, Stage
from schemas.errors import ConfigError
from schemas.touchpoint import MAX_RECORD_BYTES, PropertyValue, deterministic_event_id

__all__ = [
    "DEFAULT_HISTORY",
    "DEFAULT_PERSONAS",
    "BuyerTruth",
    "GeneratorConfig",
    "GroundTruth",
    "Persona",
    "generate",
    "write_dataset",
]

_MS: Final = timedelta(milliseconds=1)
DEFAULT_HISTORY: Final = timedelta(days=120)
SIGN_IN_AFTER: Final = timedelta(days=1)
"""A buyer known by several ids signs in on their first visit this long after their first touch."""
SIGN_IN_WITHIN: Final = timedelta(days=4)
"""…if that is within this long of it (else the buyer keeps one id): a merge then meets
journeys whose touches are still inside the dedup window (see docs/journeys.md, *Identity*)."""
"""How far back a timeline that ends "now" starts: buyers arrive steadily over it."""


@dataclass(frozen=True)
class Persona:
    """How one kind of buyer behaves."""

    name: str
    tier: str
    weight: float
    progress: Mapping[Stage, float]
    """Probability of moving on from each stage (the rest drop off there)."""
    channels: Mapping[str, float]
    """How likely each outbound channel is to carry a touch."""
    starts_aware: float
    """Share who first show up already aware (an ad or a site visit), skipping pre-awareness."""
    order_value: tuple[int, int]
    promo_rate: float
    refund_rate: float
    cancel_rate: float
    unsubscribe_rate: float
    repeat_orders: tuple[int, int]
    ticket_rate: float
    pace: float
    """Fraction of a stage's timeout a buyer typically takes to move on."""


DEFAULT_PERSONAS: Final[tuple[Persona, ...]] = (
    Persona(
        name="smb_owner",
        tier="smb",
        weight=0.5,
        progress={
            Stage.PRE_AWARENESS: 0.80,
            Stage.AWARENESS: 0.65,
            Stage.CONSIDERATION: 0.45,
            Stage.PURCHASE: 0.55,
            Stage.RETENTION: 0.30,
        },
        channels={"email": 0.45, "sms": 0.30, "ads": 0.25},
        starts_aware=0.35,
        order_value=(49, 420),
        promo_rate=0.45,
        refund_rate=0.06,
        cancel_rate=0.10,
        unsubscribe_rate=0.08,
        repeat_orders=(1, 4),
        ticket_rate=0.15,
        pace=0.25,
    ),
    Persona(
        name="ops_manager",
        tier="mid_market",
        weight=0.35,
        progress={
            Stage.PRE_AWARENESS: 0.75,
            Stage.AWARENESS: 0.60,
            Stage.CONSIDERATION: 0.40,
            Stage.PURCHASE: 0.60,
            Stage.RETENTION: 0.35,
        },
        channels={"email": 0.45, "sms": 0.05, "ads": 0.50},
        starts_aware=0.55,
        order_value=(1500, 6500),
        promo_rate=0.20,
        refund_rate=0.04,
        cancel_rate=0.08,
        unsubscribe_rate=0.06,
        repeat_orders=(1, 3),
        ticket_rate=0.35,
        pace=0.35,
    ),
    Persona(
        name="it_director",
        tier="enterprise",
        weight=0.15,
        progress={
            Stage.PRE_AWARENESS: 0.70,
            Stage.AWARENESS: 0.55,
            Stage.CONSIDERATION: 0.35,
            Stage.PURCHASE: 0.70,
            Stage.RETENTION: 0.40,
        },
        channels={"email": 0.60, "sms": 0.0, "ads": 0.40},
        starts_aware=0.40,
        order_value=(20000, 90000),
        promo_rate=0.05,
        refund_rate=0.02,
        cancel_rate=0.05,
        unsubscribe_rate=0.04,
        repeat_orders=(1, 2),
        ticket_rate=0.70,
        pace=0.45,
    ),
)

_CAMPAIGNS: Final[dict[str, tuple[str, ...]]] = {
    "email": ("welcome_series", "spring_newsletter", "product_launch", "winback"),
    "sms": ("flash_sale_sms", "cart_reminder_sms"),
    "ads": ("search_brand", "social_prospecting", "retargeting", "linkedin_abm"),
}
_PROMOS: Final = ("WELCOME10", "SPRING20", "VIP15")
_UNKNOWN_EVENTS: Final[dict[str, str]] = {
    "web": "wishlist_add",
    "email": "email_forward",
    "ads": "ad_view_through",
    "sms": "sms_link_preview",
    "support": "chat_started",
}
DEFAULT_TIMEOUTS: Final[dict[str, timedelta]] = {
    Stage.PRE_AWARENESS: timedelta(days=14),
    Stage.AWARENESS: timedelta(days=21),
    Stage.CONSIDERATION: timedelta(days=30),
    Stage.PURCHASE: timedelta(days=60),
}


@dataclass(frozen=True)
class GeneratorConfig:
    buyers: int = 1000
    seed: int = 7
    start: datetime = datetime(2026, 1, 5, tzinfo=UTC)
    start_span: timedelta = timedelta(days=60)
    """Buyers' first touches are spread evenly over ``start`` + [0, ``start_span``)."""
    end: datetime | None = None
    """Where the timeline ends ("now"): touches after it are not generated, so journeys
    still under way there are cut mid-way. None: every journey runs to its end."""
    duplicate_rate: float = 0.02
    out_of_order_rate: float = 0.05
    malformed_rate: float = 0.002
    unclassified_rate: float = 0.01
    allowed_lateness: timedelta = timedelta(hours=2)
    timeouts: Mapping[str, timedelta] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    personas: tuple[Persona, ...] = DEFAULT_PERSONAS
    several_ids_rate: float = 0.0
    """Share of buyers known by several ids: their web visits before they sign in are filed
    under a cookie (``anonymous:<anonymous id>``, as the Segment adapter files anonymous
    calls), their email under their address (``mail:<address>``); the sign-in visit carries
    the user id, the anonymous id and the address (``properties.aliases``). Only buyers who
    sign in within :data:`SIGN_IN_WITHIN` of their first touch are split so."""

    def __post_init__(self) -> None:
        if self.buyers < 1:
            raise ValueError("buyers must be at least 1")
        for name in (
            "duplicate_rate",
            "out_of_order_rate",
            "malformed_rate",
            "unclassified_rate",
        ):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 0.5:
                raise ValueError(f"{name} must be between 0 and 0.5")
        if not 0.0 <= self.several_ids_rate <= 1.0:
            raise ValueError("several_ids_rate must be between 0 and 1")
        for stage in (Stage.PRE_AWARENESS, Stage.AWARENESS, Stage.CONSIDERATION, Stage.PURCHASE):
            if stage not in self.timeouts:
                raise ValueError(f"the generator needs a drop-off timeout for {stage.value}")
        if self.start.tzinfo is None or (self.end is not None and self.end.tzinfo is None):
            raise ValueError("start and end must be timezone-aware")
        if self.start_span <= timedelta(0):
            raise ValueError("start_span must be positive")
        if self.end is not None and self.end < self.start + self.start_span:
            raise ValueError("end must not come before the last buyer's arrival")

    @classmethod
    def ending_at(
        cls, now: datetime, *, history: timedelta = DEFAULT_HISTORY, **options: Any
    ) -> GeneratorConfig:
        """A timeline that ends at ``now``: buyers arrive evenly over the ``history``
        before it, and every journey is cut at ``now`` (the newest buyers are
        mid-journey). ``options`` are the other fields (buyers, seed, timeouts...)."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        return cls(start=now - history, start_span=history, end=now, **options)


class _EmitOptions(TypedDict, total=False):
    """The keyword options of :meth:`_Journey.emit`, for the methods that pass them on."""

    campaign: str | None
    properties: dict[str, PropertyValue] | None
    revenue: Decimal | None
    promo: str | None


@dataclass
class _Touch:
    at: datetime
    event_id: str
    channel: str
    record: dict[str, object]
    properties: dict[str, PropertyValue]
    """The record's ``properties`` (the same dict)."""
    enters: Stage | None = None
    """The stage this touch moved the buyer into (by the simulation, not the rules)."""
    exit: tuple[str, str, str] | None = None
    """(kind, stage at the exit, channel) if this touch is an exit."""
    order_value: Decimal | None = None
    """The order's revenue if this touch is an order."""


@dataclass
class BuyerTruth:
    buyer_id: str
    persona: str
    furthest_stage: Stage
    stalled_at: Stage | None
    entered_furthest_at: datetime
    dropoff_stage: Stage | None = None
    dropoff_channel: str | None = None
    exits: list[tuple[str, str, str]] = field(default_factory=list)
    """(kind, stage at the exit, channel)"""
    purchases: int = 0
    revenue: Decimal = Decimal(0)
    deadline: datetime | None = None
    """When no progress past ``stalled_at`` means a drop-off there (None: it cannot drop)."""
    other_ids: list[str] = field(default_factory=list)
    """The buyer's other ids (see ``GeneratorConfig.several_ids_rate``): the pipeline must
    fold their journeys into this buyer's (``buyer_id`` is the person id)."""

    def live_at(self, watermark: datetime) -> bool:
        """Still mid-journey at ``watermark``: in a stage it can drop off from, with the
        drop-off deadline not yet reached (it may still move on)."""
        return self.deadline is not None and self.deadline > watermark


@dataclass
class GroundTruth:
    """What a correct pipeline must report for the generated dataset."""

    buyers: list[BuyerTruth]
    events_unique: int
    duplicates: int
    unclassified: int
    malformed: Counter[str]
    final_watermark: datetime
    end: datetime | None = None
    """Where the timeline was cut ("now"), if it was."""

    def live(self) -> list[BuyerTruth]:
        """Buyers still mid-journey at the final watermark (not dropped off, not done)."""
        return [buyer for buyer in self.buyers if buyer.live_at(self.final_watermark)]

    def funnel(self) -> dict[Stage, dict[str, int]]:
        result: dict[Stage, dict[str, int]] = {}
        for stage in STAGES:
            reached = sum(1 for buyer in self.buyers if buyer.furthest_stage.rank >= stage.rank)
            moved_on = sum(1 for buyer in self.buyers if buyer.furthest_stage.rank > stage.rank)
            dropped = sum(1 for buyer in self.buyers if buyer.dropoff_stage == stage)
            result[stage] = {"reached": reached, "moved_on": moved_on, "dropped": dropped}
        return result

    def dropoffs(self) -> Counter[tuple[str, str]]:
        return Counter(
            (buyer.dropoff_stage.value, buyer.dropoff_channel or "(none)")
            for buyer in self.buyers
            if buyer.dropoff_stage is not None
        )

    def exits(self) -> Counter[tuple[str, str, str]]:
        return Counter(exit_ for buyer in self.buyers for exit_ in buyer.exits)

    def to_json(self) -> dict[str, object]:
        return {
            "totals": {
                "buyers": len(self.buyers),
                "events_unique": self.events_unique,
                "duplicates_injected": self.duplicates,
                "unclassified": self.unclassified,
                "malformed": dict(sorted(self.malformed.items())),
                "purchases": sum(buyer.purchases for buyer in self.buyers),
                "revenue": str(sum((buyer.revenue for buyer in self.buyers), Decimal(0))),
                "final_watermark": self.final_watermark.isoformat(),
                **({"timeline_end": self.end.isoformat()} if self.end is not None else {}),
            },
            "funnel": {stage.value: counts for stage, counts in self.funnel().items()},
            "dropoffs_by_stage_channel": [
                {"stage": stage, "channel": channel, "buyers": count}
                for (stage, channel), count in sorted(self.dropoffs().items())
            ],
            "exits_by_stage_channel": [
                {"stage": stage, "kind": kind, "channel": channel, "exits": count}
                for (kind, stage, channel), count in sorted(self.exits().items())
            ],
            "buyers": [
                {
                    "buyer_id": buyer.buyer_id,
                    "other_ids": buyer.other_ids,
                    "persona": buyer.persona,
                    "furthest_stage": buyer.furthest_stage.value,
                    "dropoff_stage": buyer.dropoff_stage.value if buyer.dropoff_stage else None,
                    "dropoff_channel": buyer.dropoff_channel,
                    "exits": [
                        {"kind": kind, "stage": stage, "channel": channel}
                        for kind, stage, channel in buyer.exits
                    ],
                    "purchases": buyer.purchases,
                    "revenue": str(buyer.revenue),
                }
                for buyer in self.buyers
            ],
        }


class _Journey:
    """Simulates one buyer, emitting touchpoints strictly forward in event time."""

    def __init__(self, index: int, config: GeneratorConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        weights = [persona.weight for persona in config.personas]
        self.persona = rng.choices(config.personas, weights=weights)[0]
        self.buyer_id = f"buyer-{config.seed}-{index:07d}"
        self.account_id = (
            f"acct-{config.seed}-{index // 4:06d}" if self.persona.tier != "smb" else None
        )
        self.anonymous_id = f"anon-{rng.getrandbits(48):012x}"
        self.now = config.start + timedelta(
            milliseconds=rng.randrange(int(config.start_span / _MS))
        )
        self.touches: list[_Touch] = []
        self.stage = Stage.PRE_AWARENESS
        """The furthest stage entered so far; :meth:`run` starts with a touch that enters one."""
        self.entered = False
        self.entered_at = self.now
        self.acquisition_campaign: str | None = None
        self.orders = 0
        self.subscribed_email = False
        self.subscribed_sms = False

    # -- emitting ------------------------------------------------------------

    def _advance(self, low: timedelta, high: timedelta) -> None:
        span = max(1, int((high - low) / _MS))
        self.now += low + self.rng.randrange(span) * _MS + _MS

    def emit(
        self,
        channel: str,
        event_type: str,
        *,
        campaign: str | None = None,
        properties: dict[str, PropertyValue] | None = None,
        revenue: Decimal | None = None,
        promo: str | None = None,
    ) -> _Touch:
        sequence = len(self.touches)
        event_id = deterministic_event_id(
            "synthetic", str(self.config.seed), self.buyer_id, str(sequence)
        )
        props: dict[str, PropertyValue] = {"persona": self.persona.name, "tier": self.persona.tier}
        props.update(properties or {})
        record: dict[str, object] = {
            "schema_version": 1,
            "event_id": event_id,
            "buyer_id": self.buyer_id,
            "channel": channel,
            "event_type": event_type,
            "occurred_at": self.now.isoformat(timespec="milliseconds"),
        }
        if channel == "web":
            record["anonymous_id"] = self.anonymous_id
        if self.account_id is not None:
            record["account_id"] = self.account_id
        if campaign is not None:
            record["campaign"] = campaign
        if promo is not None:
            record["promo"] = promo
        if revenue is not None:
            record["revenue"] = str(revenue)
            record["currency"] = "USD"
        record["properties"] = props
        touch = _Touch(self.now, event_id, channel, record, props)
        self.touches.append(touch)
        return touch

    def _outbound_channel(self) -> str:
        channels = [name for name, weight in self.persona.channels.items() if weight > 0]
        weights = [self.persona.channels[name] for name in channels]
        return self.rng.choices(channels, weights=weights)[0]

    def _campaign(self, channel: str) -> str:
        return self.rng.choice(_CAMPAIGNS[channel])

    def _filler(self) -> None:
        """A touch that moves nobody: at or below the current stage, or neutral."""
        stage = self.stage
        rng = self.rng
        if rng.random() < self.config.unclassified_rate * 4:
            channel = rng.choice(sorted(_UNKNOWN_EVENTS))
            self.emit(channel, _UNKNOWN_EVENTS[channel], campaign=None)
            return
        options: list[tuple[str, str]] = [("email", "email_sent"), ("email", "email_delivered")]
        if self.persona.channels.get("sms", 0) > 0:
            options.append(("sms", "sms_sent"))
        if stage.rank >= Stage.AWARENESS.rank:
            options += [("email", "email_open"), ("web", "page_view"), ("ads", "ad_impression")]
        if stage.rank >= Stage.CONSIDERATION.rank:
            options += [("web", "product_view"), ("email", "email_click"), ("ads", "ad_click")]
        if rng.random() < self.persona.ticket_rate / 3:
            options.append(("support", "ticket_opened"))
        channel, event_type = rng.choice(options)
        if event_type.startswith(("email_sent", "email_delivered", "email_open", "email_click")):
            self.subscribed_email = True
        if event_type == "sms_sent":
            self.subscribed_sms = True
        properties: dict[str, PropertyValue] = {}
        if channel == "web":
            properties["url"] = "/pricing" if event_type == "page_view" else "/product/pro"
        if channel == "support":
            properties["ticket_id"] = f"T{rng.randrange(10**6):06d}"
            properties["priority"] = rng.choice(("low", "normal", "high"))
        campaign = self._campaign(channel) if channel in _CAMPAIGNS else self.acquisition_campaign
        self.emit(channel, event_type, campaign=campaign, properties=properties)

    def _fillers(self, budget: timedelta, most: int) -> None:
        for _ in range(self.rng.randrange(most + 1)):
            self._advance(timedelta(minutes=5), budget / (most + 1))
            self._filler()

    def _enter(
        self, stage: Stage, channel: str, event_type: str, **options: Unpack[_EmitOptions]
    ) -> _Touch:
        touch = self.emit(channel, event_type, **options)
        if not self.entered or stage.rank > self.stage.rank:
            self.entered = True
            self.stage = stage
            self.entered_at = self.now
            touch.enters = stage
        return touch

    # -- the journey ---------------------------------------------------------

    def run(self) -> None:
        rng, persona, timeouts = self.rng, self.persona, self.config.timeouts
        if rng.random() < persona.starts_aware:
            if rng.random() < 0.5:
                self.acquisition_campaign = self._campaign("ads")
                self._enter(
                    Stage.AWARENESS,
                    "ads",
                    "ad_impression",
                    campaign=self.acquisition_campaign,
                    properties={"platform": "google_ads", "ad_id": f"ad-{rng.randrange(90):02d}"},
                )
            else:
                self._enter(Stage.AWARENESS, "web", "page_view", properties={"url": "/"})
        else:
            channel = "sms" if persona.channels.get("sms", 0) > rng.random() else "email"
            self.acquisition_campaign = self._campaign(channel)
            self._enter(
                Stage.PRE_AWARENESS, channel, f"{channel}_sent", campaign=self.acquisition_campaign
            )
            if channel == "email":
                self.subscribed_email = True
            else:
                self.subscribed_sms = True
            self._advance(timedelta(seconds=2), timedelta(minutes=3))
            self.emit(channel, f"{channel}_delivered", campaign=self.acquisition_campaign)

        while self.stage.rank < Stage.ADVOCACY.rank:
            stage = self.stage
            timeout = timeouts.get(stage, timedelta(days=90))
            if rng.random() >= persona.progress[stage]:
                self._stall(stage, timeout)
                return
            pace = timeout * persona.pace
            self._fillers(pace, 3)
            self._advance(timedelta(hours=1), pace)
            if self.now >= self.entered_at + timeout - timedelta(hours=1):
                self.now = self.entered_at + timeout - timedelta(hours=1)
            self._move_on(stage)
        self._after_advocacy()

    def _move_on(self, stage: Stage) -> None:
        rng = self.rng
        if stage is Stage.PRE_AWARENESS:
            channel = "sms" if self.subscribed_sms and not self.subscribed_email else "email"
            if channel == "email":
                self._enter(
                    Stage.AWARENESS, "email", "email_open", campaign=self.acquisition_campaign
                )
            else:
                self._enter(
                    Stage.AWARENESS,
                    "web",
                    "page_view",
                    campaign=self.acquisition_campaign,
                    properties={"url": "/"},
                )
        elif stage is Stage.AWARENESS:
            channel = self._outbound_channel()
            if channel == "email":
                self.subscribed_email = True
                self._enter(
                    Stage.CONSIDERATION,
                    "email",
                    "email_click",
                    campaign=self._campaign("email"),
                    properties={"url": "https://example.com/pricing"},
                )
            elif channel == "sms":
                self._enter(Stage.CONSIDERATION, "sms", "sms_click", campaign=self._campaign("sms"))
            else:
                self._enter(
                    Stage.CONSIDERATION,
                    "ads",
                    "ad_click",
                    campaign=self._campaign("ads"),
                    properties={"platform": "linkedin", "cost": "2.35"},
                )
            if rng.random() < 0.5:
                self._advance(timedelta(seconds=5), timedelta(minutes=10))
                self.emit(
                    "web",
                    "product_view",
                    campaign=self.acquisition_campaign,
                    properties={"product_id": "pro"},
                )
        elif stage is Stage.CONSIDERATION:
            self._order(Stage.PURCHASE)
        elif stage is Stage.PURCHASE:
            self._order(Stage.RETENTION)
        elif stage is Stage.RETENTION:
            if rng.random() < 0.5:
                self._enter(
                    Stage.ADVOCACY, "web", "review", properties={"rating": rng.choice((4, 5))}
                )
            else:
                self._enter(Stage.ADVOCACY, "web", "referral", properties={"referred": "colleague"})

    def _order(self, into: Stage) -> None:
        rng, persona = self.rng, self.persona
        self.orders += 1
        low, high = persona.order_value
        value = Decimal(rng.randrange(low * 100, high * 100)) / 100
        promo = rng.choice(_PROMOS) if rng.random() < persona.promo_rate else None
        if promo is not None:
            value = (value * Decimal("0.85")).quantize(Decimal("0.01"))
        event_type = (
            "booking" if persona.tier == "enterprise" and rng.random() < 0.5 else "purchase"
        )
        if into is Stage.PURCHASE:
            self.emit(
                "web",
                "checkout_started",
                campaign=self.acquisition_campaign,
                properties={"product_id": "pro"},
            )
            self._advance(timedelta(minutes=1), timedelta(minutes=20))
        order = self._enter(
            into,
            "web",
            event_type,
            campaign=self.acquisition_campaign,
            promo=promo,
            revenue=value,
            properties={
                "order_id": f"{self.buyer_id}-o{self.orders}",
                "order_number": self.orders,
                "quantity": 1,
            },
        )
        order.order_value = value
        if into is Stage.PURCHASE and self.acquisition_campaign in _CAMPAIGNS["ads"]:
            self._advance(timedelta(minutes=1), timedelta(hours=6))
            self.emit(
                "ads",
                "ad_conversion",
                campaign=self.acquisition_campaign,
                properties={"platform": "google_ads"},
            )
        if rng.random() < persona.refund_rate:
            self._advance(timedelta(days=1), timedelta(days=5))
            self._exit(
                ExitKind.REFUND, "web", "refund", {"order_id": f"{self.buyer_id}-o{self.orders}"}
            )
        if rng.random() < 0.4:
            self._advance(timedelta(days=1), timedelta(days=4))
            self.emit(
                "support",
                "csat",
                properties={
                    "score": rng.randint(1, 5),
                    "ticket_id": f"T{rng.randrange(10**6):06d}",
                },
            )

    def _exit(
        self, kind: ExitKind, channel: str, event_type: str, properties: dict[str, PropertyValue]
    ) -> None:
        touch = self.emit(channel, event_type, properties=properties)
        touch.exit = (kind.value, self.stage.value, touch.channel)

    def _stall(self, stage: Stage, timeout: timedelta) -> None:
        """No progress past ``stage``: a few touches that move nothing, maybe an exit."""
        rng, persona = self.rng, self.persona
        self._fillers(timeout * 0.8, 2)
        if stage.rank >= Stage.PURCHASE.rank and rng.random() < persona.cancel_rate * 3:
            self._advance(timedelta(days=1), timeout * 0.5)
            self._exit(ExitKind.CANCELLATION, "web", "subscription_cancelled", {"plan": "pro"})
        elif rng.random() < persona.unsubscribe_rate * 3:
            self._advance(timedelta(hours=2), timeout * 0.5)
            if self.subscribed_sms and rng.random() < 0.5:
                self._exit(ExitKind.OPT_OUT, "sms", "sms_opt_out", {})
            elif self.subscribed_email:
                if rng.random() < 0.15:
                    self._exit(ExitKind.SPAM_COMPLAINT, "email", "email_spam_report", {})
                else:
                    self._exit(ExitKind.UNSUBSCRIBE, "email", "email_unsubscribe", {})
        if rng.random() < 0.3:
            # Touches after the deadline that still move nothing (e.g. a newsletter).
            self.now = max(self.now, self.entered_at + timeout) + timedelta(days=rng.randint(1, 10))
            self.emit("email", "email_sent", campaign=self._campaign("email"))

    def _after_advocacy(self) -> None:
        rng = self.rng
        for _ in range(rng.randint(*self.persona.repeat_orders) - 1):
            self._advance(timedelta(days=3), timedelta(days=30))
            self._order(Stage.RETENTION)
        if rng.random() < 0.5:
            self._advance(timedelta(days=1), timedelta(days=20))
            self.emit("support", "nps", properties={"score": rng.randint(6, 10)})
        if rng.random() < self.persona.cancel_rate:
            self._advance(timedelta(days=5), timedelta(days=40))
            self._exit(ExitKind.CANCELLATION, "web", "subscription_cancelled", {"plan": "pro"})

    def split_ids(self) -> list[str]:
        """File the buyer's touches under several ids (see ``several_ids_rate``); returns
        the other ids, or nothing if the buyer does not sign in soon enough."""
        web = [touch for touch in self.touches if touch.channel == "web"]
        if not web:
            return []
        first = self.touches[0].at
        sign_in = next((touch for touch in web if touch.at >= first + SIGN_IN_AFTER), web[-1])
        if sign_in.at > first + SIGN_IN_WITHIN:
            return []
        cookie = f"anonymous:{self.anonymous_id}"
        address = f"mail:{self.buyer_id}@example.com"
        emails = [touch for touch in self.touches if touch.channel == "email"]
        for touch in web:
            if touch.at < sign_in.at:
                touch.record["buyer_id"] = cookie
        for touch in emails:
            touch.record["buyer_id"] = address
        others = [cookie] + ([address] if emails else [])
        if emails:
            sign_in.properties = {**sign_in.properties, "aliases": address}
            sign_in.record["properties"] = sign_in.properties
        return others

    def cut(self, end: datetime | None) -> None:
        """Forget the touches after ``end``: they have not happened yet."""
        if end is not None:
            self.touches = [touch for touch in self.touches if touch.at <= end]

    def truth(self) -> BuyerTruth:
        """What the buyer's touches (those kept) show: stage, exits, orders."""
        furthest: _Touch | None = None
        stage: Stage | None = None
        exits: list[tuple[str, str, str]] = []
        orders = 0
        revenue = Decimal(0)
        for touch in self.touches:
            if touch.enters is not None:
                furthest, stage = touch, touch.enters
            if touch.exit is not None:
                exits.append(touch.exit)
            if touch.order_value is not None:
                orders += 1
                revenue += touch.order_value
        if furthest is None or stage is None:  # the first touch enters, at the buyer's arrival
            raise ConfigError(f"{self.buyer_id} arrives after the end of the timeline")
        stalled = stage if stage is not Stage.ADVOCACY else None
        timeout = self.config.timeouts.get(stage) if stalled is not None else None
        return BuyerTruth(
            buyer_id=self.buyer_id,
            persona=self.persona.name,
            furthest_stage=stage,
            stalled_at=stalled,
            entered_furthest_at=furthest.at,
            exits=exits,
            purchases=orders,
            revenue=revenue,
            deadline=None if timeout is None else furthest.at + timeout,
        )


def _malformed(rng: random.Random, reason: DeadLetterReason, template: dict[str, object]) -> str:
    record = json.loads(json.dumps(template))
    record["event_id"] = f"malformed-{rng.getrandbits(64):016x}"
    record["buyer_id"] = f"buyer-malformed-{rng.getrandbits(32):08x}"
    match reason:
        case DeadLetterReason.INVALID_JSON:
            return json.dumps(record)[:-7]
        case DeadLetterReason.NOT_AN_OBJECT:
            return json.dumps([record])
        case DeadLetterReason.MISSING_FIELD:
            del record["buyer_id"]
        case DeadLetterReason.UNKNOWN_CHANNEL:
            record["channel"] = "fax"
        case DeadLetterReason.NAIVE_TIMESTAMP:
            record["occurred_at"] = record["occurred_at"][:23]
        case DeadLetterReason.RECORD_TOO_LARGE:
            record["properties"]["blob"] = "x" * (MAX_RECORD_BYTES + 16)
        case _:
            record["revenue"] = "-10.00"
            record["currency"] = "USD"
    return json.dumps(record, separators=(",", ":"))


_MALFORMED_KINDS: Final = (
    DeadLetterReason.INVALID_JSON,
    DeadLetterReason.NOT_AN_OBJECT,
    DeadLetterReason.MISSING_FIELD,
    DeadLetterReason.UNKNOWN_CHANNEL,
    DeadLetterReason.NAIVE_TIMESTAMP,
    DeadLetterReason.RECORD_TOO_LARGE,
    DeadLetterReason.INVALID_FIELD,
)


def _until(at: datetime, end: datetime | None) -> datetime:
    """A delivery time, at the latest ``end``: nothing has been received after "now"."""
    return at if end is None or at <= end else end


def generate(
    config: GeneratorConfig, on_buyer: Callable[[int], None] | None = None
) -> tuple[list[str], GroundTruth]:
    """Simulate every buyer; return the JSONL lines in delivery order and the ground truth."""
    master = random.Random(config.seed)
    deliveries: list[tuple[datetime, int, str]] = []
    truths: list[tuple[BuyerTruth, list[_Touch]]] = []
    unclassified = 0
    duplicates = 0
    sequence = 0
    lateness = config.allowed_lateness
    unknown_types = set(_UNKNOWN_EVENTS.values())
    for index in range(config.buyers):
        rng = random.Random(f"{config.seed}:{index}")
        journey = _Journey(index, config, rng)
        journey.run()
        journey.cut(config.end)
        truth = journey.truth()
        if config.several_ids_rate and (
            random.Random(f"{config.seed}:{index}:ids").random() < config.several_ids_rate
        ):
            truth.other_ids = journey.split_ids()
        truths.append((truth, journey.touches))
        for touch in journey.touches:
            if touch.record["event_type"] in unknown_types:
                unclassified += 1
            if rng.random() < config.out_of_order_rate:
                delay = lateness * rng.uniform(0.05, 0.9)
            else:
                # never 0: a touch received the instant it occurred would read as stamped
                # with its receive time, which the watermark does not follow
                delay = timedelta(milliseconds=max(1, rng.randrange(2000)))
            delivered = _until(touch.at + delay, config.end)
            touch.record["received_at"] = delivered.isoformat(timespec="milliseconds")
            line = json.dumps(touch.record, separators=(",", ":"))
            deliveries.append((delivered, sequence, line))
            sequence += 1
            if rng.random() < config.duplicate_rate:
                again = _until(touch.at + lateness * rng.uniform(0.0, 0.9), config.end)
                deliveries.append((again, sequence, line))
                sequence += 1
                duplicates += 1
        if on_buyer is not None:
            on_buyer(1)

    events_unique = sum(len(touches) for _, touches in truths)
    max_time = max(touch.at for _, touches in truths for touch in touches)
    final_watermark = max_time - lateness
    buyers: list[BuyerTruth] = []
    for truth, touches in truths:
        stage, deadline = truth.stalled_at, truth.deadline
        if stage is not None and deadline is not None:
            if deadline <= final_watermark:
                truth.dropoff_stage = stage
                before = [touch for touch in touches if touch.at <= deadline]
                last = max(before, key=lambda touch: (touch.at, touch.event_id))
                truth.dropoff_channel = last.channel
        buyers.append(truth)

    deliveries.sort(key=lambda item: (item[0], item[1]))
    lines = [line for _, _, line in deliveries]

    malformed: Counter[str] = Counter()
    if config.malformed_rate > 0 and lines:
        count = max(len(_MALFORMED_KINDS), round(events_unique * config.malformed_rate))
        template = json.loads(lines[0])
        for number in range(count):
            reason = _MALFORMED_KINDS[number % len(_MALFORMED_KINDS)]
            bad = _malformed(master, reason, template)
            lines.insert(master.randrange(len(lines) + 1), bad)
            malformed[reason.value] += 1

    return lines, GroundTruth(
        buyers=buyers,
        events_unique=events_unique,
        duplicates=duplicates,
        unclassified=unclassified,
        malformed=malformed,
        final_watermark=final_watermark,
        end=config.end,
    )


def write_dataset(
    config: GeneratorConfig,
    events_path: Path,
    truth_path: Path | None = None,
    on_buyer: Callable[[int], None] | None = None,
) -> GroundTruth:
    """Generate and write ``events_path`` (JSONL) and, if given, ``truth_path`` (JSON)."""
    lines, truth = generate(config, on_buyer)
    events_path.parent.mkdir(parents=True, exist_ok=True)
    with events_path.open("w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(line)
            handle.write("\n")
    if truth_path is not None:
        truth_path.parent.mkdir(parents=True, exist_ok=True)
        truth_path.write_text(json.dumps(truth.to_json(), indent=1) + "\n", encoding="utf-8")
    return truth
