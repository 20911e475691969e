"""The report's configuration: personas to describe and the KPI targets to measure against."""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field

from schemas.duration import Duration
from schemas.rules import StageName

__all__ = ["KpiTargets", "PersonaConfig", "ReportConfig"]


class PersonaConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    """The value of ``properties.persona`` (or the CRM persona) this card describes."""
    label: str
    description: str = ""


class KpiTargets(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    revenue: float | None = None
    purchases: int | None = None
    buyers_reached: int | None = None
    conversion_pct: dict[StageName, float] = Field(default_factory=dict)
    """Target share (%) of buyers who move on from each stage; each must be one of the
    stages of the journey rules the report is built with (checked then)."""
    csat: float | None = None
    nps: float | None = None


class ReportConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = 1
    personas: list[PersonaConfig] = Field(default_factory=list, alias="persona")
    targets: KpiTargets = Field(default_factory=KpiTargets)
    conversion_window: Duration = timedelta(days=30)
    attribution_lookback: Duration = timedelta(days=30)
    attribution_half_life: Duration = timedelta(days=7)
    lapsed_after: Duration = timedelta(days=90)
    """A buyer whose last purchase is older than this is ``lapsed``."""

    def for_stages(self, stages: Collection[str]) -> ReportConfig:
        """This config without the conversion targets of stages not in ``stages`` (for the
        shipped config, whose targets name the shipped stages, under rules of one's own)."""
        kept = {k: v for k, v in self.targets.conversion_pct.items() if k in stages}
        if kept == self.targets.conversion_pct:
            return self
        targets = self.targets.model_copy(update={"conversion_pct": kept})
        return self.model_copy(update={"targets": targets})
