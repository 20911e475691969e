"""Data contracts: the Touchpoint envelope, stages, journey state, rows, dead letters, settings."""

from schemas.dead_letter import DeadLetter
from schemas.duration import Duration, format_duration, parse_duration
from schemas.enums import EVENT_TYPES, STAGES, Channel, DeadLetterReason, ExitKind, Stage
from schemas.errors import (
    ConfigError,
    InputError,
    MigrationError,
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
    "Channel",
    "ClickHouseSettings",
    "Condition",
    "ConfigError",
    "DeadLetter",
    "DeadLetterReason",
    "DeadLetterRow",
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
