"""Ad-platform spend exports (CSV): impressions, clicks and cost per campaign and day.

Column names are matched loosely, so exports from the common platforms load as
they are: ``day``/``date``/``reporting starts``; ``campaign``/``campaign name``;
``impressions``; ``clicks``/``link clicks``; ``cost``/``spend``/``amount spent (USD)``
(a currency in parentheses is taken as the currency); optional ``platform`` and
``currency`` columns. A row that cannot be read becomes a dead letter with its
line number; the rest still load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Final

from ingest.csv_export import read_csv_export
from schemas.dead_letter import DeadLetter
from schemas.enums import DeadLetterReason
from schemas.errors import InputError
from schemas.rows import AdSpendRow

__all__ = ["AdSpendImport", "read_ads_csv"]

_ALIASES: Final[dict[str, tuple[str, ...]]] = {
    "day": ("day", "date", "reporting starts", "reporting_starts", "segments.date"),
    "campaign": ("campaign", "campaign name", "campaign_name"),
    "impressions": ("impressions", "impr.", "impr"),
    "clicks": ("clicks", "link clicks", "link_clicks"),
    "cost": ("cost", "spend", "amount spent", "amount_spent", "cost (usd)"),
    "platform": ("platform", "network", "source"),
    "currency": ("currency", "currency code", "currency_code"),
}
_CURRENCY_IN_HEADER: Final = re.compile(r"\(([A-Za-z]{3})\)")


@dataclass
class AdSpendImport:
    rows: list[AdSpendRow] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


def _columns(header: list[str]) -> tuple[dict[str, int], str | None]:
    found: dict[str, int] = {}
    currency = None
    for index, name in enumerate(header):
        plain = _CURRENCY_IN_HEADER.sub("", name).strip().lower()
        match = _CURRENCY_IN_HEADER.search(name)
        for field_name, aliases in _ALIASES.items():
            if plain in aliases and field_name not in found:
                found[field_name] = index
                if field_name == "cost" and match:
                    currency = match.group(1).upper()
    missing = [
        name for name in ("day", "campaign", "impressions", "clicks", "cost") if name not in found
    ]
    if missing:
        raise InputError(
            f"the ads export has no {', '.join(missing)} column (header: {', '.join(header)})"
        )
    return found, currency


def _number(text: str) -> Decimal:
    cleaned = text.replace(",", "").replace("$", "").replace("€", "").strip() or "0"
    return Decimal(cleaned)


def read_ads_csv(path: Path, *, platform: str = "ads", source: str | None = None) -> AdSpendImport:
    header, rows = read_csv_export(path)
    columns, header_currency = _columns(header)
    name = source or path.name
    result = AdSpendImport()
    for line, cells in rows:
        try:

            def cell(field_name: str, cells: list[str] = cells) -> str:
                return cells[columns[field_name]].strip()

            day = date.fromisoformat(cell("day")[:10])
            impressions, clicks, cost = (
                _number(cell(n)) for n in ("impressions", "clicks", "cost")
            )
            if impressions < 0 or clicks < 0 or cost < 0:
                raise ValueError("negative numbers")
            row_platform = (
                cell("platform") if "platform" in columns and cell("platform") else platform
            )
            currency = (
                (cell("currency") if "currency" in columns else "") or header_currency or "USD"
            )
            result.rows.append(
                AdSpendRow(
                    day,
                    row_platform,
                    cell("campaign"),
                    int(impressions),
                    int(clicks),
                    cost,
                    currency.upper(),
                    name,
                    f"line {line}",
                )
            )
        except (IndexError, ValueError, InvalidOperation) as exc:
            result.dead_letters.append(
                DeadLetter.build(
                    reason=DeadLetterReason.MALFORMED_ROW,
                    detail=f"cannot read this ads row: {exc}",
                    raw=",".join(cells),
                    source=name,
                    position=f"line {line}",
                    recorded_at=datetime.now(UTC),
                )
            )
    return result
