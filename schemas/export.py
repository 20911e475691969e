"""JSON Schema documents for producers written in other languages (``touchpoint schema export``)."""

from __future__ import annotations

from typing import Any

import msgspec
from pydantic import BaseModel

from schemas.dead_letter import DeadLetter
from schemas.journey import JourneyState
from schemas.rows import ROW_ADAPTERS
from schemas.rules import JourneyRules
from schemas.touchpoint import (
    AdsProperties,
    EmailProperties,
    SmsProperties,
    SupportProperties,
    Touchpoint,
    WebProperties,
)

__all__ = ["json_schemas"]

_MODELS: dict[str, type[BaseModel]] = {
    "touchpoint.v1.schema.json": Touchpoint,
    "properties.ads.schema.json": AdsProperties,
    "properties.email.schema.json": EmailProperties,
    "properties.sms.schema.json": SmsProperties,
    "properties.support.schema.json": SupportProperties,
    "properties.web.schema.json": WebProperties,
    "dead_letter.schema.json": DeadLetter,
    "journey_rules.schema.json": JourneyRules,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name → JSON Schema (draft 2020-12) for every contract a producer or tool may need."""
    schemas: dict[str, dict[str, Any]] = {
        name: model.model_json_schema(by_alias=True) for name, model in _MODELS.items()
    }
    # The journey.store value is MessagePack of this structure (positional arrays); its
    # schema describes the decoded value, for tools that read the store.
    schemas["journey_state.schema.json"] = msgspec.json.schema(JourneyState)
    for table, adapter in ROW_ADAPTERS.items():
        schemas[f"row.{table}.schema.json"] = adapter.json_schema()
    for name, schema in schemas.items():
        schema.setdefault("$schema", "https://json-schema.org/draft/2020-12/schema")
        schema.setdefault("$id", f"https://touchpoint.dev/schemas/{name}")
    return dict(sorted(schemas.items()))
