"""Data contracts (pydantic v2 and slotted dataclasses); no I/O. What lives where:

- ``touchpoint.py``   the Touchpoint v1 envelope, per-channel payloads, ``parse_touchpoint``
- ``events.py``       its hot-path form (``Event``) and the fast validator ``decode_event``
- ``enums.py``        channels, stages, exit kinds, dead-letter reasons
- ``rules.py``        the journey rules file: stages, classification rules, timeouts, triggers
- ``journey.py``      per-buyer journey state, as the fold keeps it
- ``rows.py``         one row type per ClickHouse table, and their (de)serializers
- ``dead_letter.py``  a record that could not become a touchpoint, with its reason
- ``errors.py``       the one exception tree (its docstring draws it)
- ``settings.py``     ``TOUCHPOINT_*`` settings, parsed once; ``webhooks.py``, ``report_config.py``:
  the outbound-webhook and report configuration files
- ``topics.py``       the Kafka topics of the distributed path; ``raw.py``: a record unvalidated
- ``duration.py``     ``90s``/``2h``/``14d`` durations; ``export.py``: JSON Schema for producers
"""

from schemas.dead_letter import DeadLetter
from schemas.duration import Duration, format_duration, parse_duration
from schemas.enums import EVENT_TYPES, STAGES, Channel, DeadLetterReason, ExitKind, Stage
from schemas.errors import (
    BrokerError,
    BrokerUnavailableError,
    ConfigError,
    DeliveryError,
    InputError,
    MigrationError,
    PayloadError,
    RulesError,
    SchemaValidationError,
    SinkError,
    SinkFatalError,
    SinkRetryableError,
    TouchpointError,
)
from schemas.journey import (
    DropoffRecord,
    ExitRecord,
    FiredTrigger,
    JourneyState,
    Latest,
    TouchRef,
)
from schemas.raw import RawRecord
from schemas.rows import (
    ROW_TYPES,
    DeadLetterRow,
    DropoffRow,
    JourneyStateRow,
    Row,
    StageTransitionRow,
    TouchpointRow,
    TriggerRow,
)
from schemas.rules import Condition, JourneyRules, Rule, Trigger
from schemas.settings import ClickHouseSettings, ProcessingSettings, Settings
from schemas.touchpoint import (
    MAX_RECORD_BYTES,
    Touchpoint,
    deterministic_event_id,
    parse_touchpoint,
)

__all__ = [
    "EVENT_TYPES",
    "MAX_RECORD_BYTES",
    "ROW_TYPES",
    "STAGES",
    "BrokerError",
    "BrokerUnavailableError",
    "Channel",
    "ClickHouseSettings",
    "Condition",
    "ConfigError",
    "DeadLetter",
    "DeadLetterReason",
    "DeadLetterRow",
    "DeliveryError",
    "DropoffRecord",
    "DropoffRow",
    "Duration",
    "ExitKind",
    "ExitRecord",
    "FiredTrigger",
    "InputError",
    "JourneyRules",
    "JourneyState",
    "JourneyStateRow",
    "Latest",
    "MigrationError",
    "PayloadError",
    "ProcessingSettings",
    "RawRecord",
    "Row",
    "Rule",
    "RulesError",
    "SchemaValidationError",
    "Settings",
    "SinkError",
    "SinkFatalError",
    "SinkRetryableError",
    "Stage",
    "StageTransitionRow",
    "TouchRef",
    "Touchpoint",
    "TouchpointError",
    "TouchpointRow",
    "Trigger",
    "TriggerRow",
    "deterministic_event_id",
    "format_duration",
    "parse_duration",
    "parse_touchpoint",
]
