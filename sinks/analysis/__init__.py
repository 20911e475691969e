"""The analyst's questions of the journey map, as parameterized SQL over ClickHouse.

One module per question, each owning its SQL and its row type:

=======================  ==========================================================
module                   question
=======================  ==========================================================
``funnel``               where do customers drop off (stage funnel)
``dropoff_diagnosis``    the last touch before a drop, and what came next
``hour_of_week``         when they interact, click and book
``channels``             which channels work
``promos``               which promos work
``attribution``          credit of purchases to touches, five models
``spend``                cost per acquisition, return on ad spend
``high_intent``          who is one step from buying now
``why_not``              why new customers do not buy, or do not stay
``cohorts``              retention by first-purchase week
``tracker``              the buyer tracker (reward over effort, CRM joined)
``weekly_sales``         sales per week (peaks and dips)
``personas``             KPIs, exits, tickets and advocates per persona
``flow``                 moves between stages
=======================  ==========================================================

Each answer's columns are in :mod:`sinks.columns`, shared by the terminal and HTML renderers.

Every function takes the client, the database and typed parameters; values travel
as bound query parameters, never spliced into SQL text. Each query reads the
deduplicated tables (``FINAL``) or an aggregate the sink maintains with them.
``docs/analysis.md`` shows each question's SQL with an example. A :class:`Period`
restricts a question to event time ``[start, end)``: the funnel and cohort questions to
buyers whose first touch (or first purchase) falls in it, the others to the touchpoints
in it.

Stages are the rules' own (:class:`schemas.rules.StageOrder`, default the shipped six):
the stage columns hold names, which sort alphabetically, so every query that ranks or
orders stages does it by ``indexOf(<the stages in order>, stage)``.
"""

from sinks.analysis._common import DEFAULT_PURCHASE_STAGE, Period, Source, period_condition
from sinks.analysis.attribution import _WEIGHTS as _WEIGHTS  # the tests' raw twin reads it
from sinks.analysis.attribution import (
    ATTRIBUTION_MODELS,
    AttributionKey,
    AttributionModel,
    AttributionShare,
    attribution,
    attribution_all,
)
from sinks.analysis.channels import ChannelEffect, channel_effectiveness
from sinks.analysis.cohorts import CohortCell, retention_cohorts
from sinks.analysis.dropoff_diagnosis import DropoffDiagnosis, dropoff_diagnosis
from sinks.analysis.flow import Flow, transition_flow
from sinks.analysis.funnel import FunnelGroup, FunnelRow, funnel, funnels
from sinks.analysis.high_intent import HighIntentBuyer, high_intent, intent_stage
from sinks.analysis.hour_of_week import ACTION_KINDS, HeatCell, hour_of_week
from sinks.analysis.personas import PersonaStats, persona_stats
from sinks.analysis.promos import PromoEffect, promo_effectiveness
from sinks.analysis.spend import AD_SPEND_CHANNEL, SpendReturn, spend_returns, spend_total
from sinks.analysis.tracker import TrackedBuyer, buyer_tracker
from sinks.analysis.weekly_sales import WeekSales, weekly_sales
from sinks.analysis.why_not import WhyNot, why_not_buy_or_stay

__all__ = [
    "ACTION_KINDS",
    "AD_SPEND_CHANNEL",
    "ATTRIBUTION_MODELS",
    "DEFAULT_PURCHASE_STAGE",
    "AttributionKey",
    "AttributionModel",
    "AttributionShare",
    "ChannelEffect",
    "CohortCell",
    "DropoffDiagnosis",
    "Flow",
    "FunnelGroup",
    "FunnelRow",
    "HeatCell",
    "HighIntentBuyer",
    "Period",
    "PersonaStats",
    "PromoEffect",
    "Source",
    "SpendReturn",
    "TrackedBuyer",
    "WeekSales",
    "WhyNot",
    "attribution",
    "attribution_all",
    "buyer_tracker",
    "channel_effectiveness",
    "dropoff_diagnosis",
    "funnel",
    "funnels",
    "high_intent",
    "hour_of_week",
    "intent_stage",
    "period_condition",
    "persona_stats",
    "promo_effectiveness",
    "retention_cohorts",
    "spend_returns",
    "spend_total",
    "transition_flow",
    "weekly_sales",
    "why_not_buy_or_stay",
]
