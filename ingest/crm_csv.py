"""CRM exports (CSV): who the clients are, for the buyer tracker.

Columns (names matched loosely, case-insensitive): ``buyer_id`` or ``account_id`` (the
key joined onto journeys), ``client name``, ``client type``, ``region``, ``persona``,
``key decision maker``, ``payment terms``, ``contract on file`` (yes/no/true/false/1/0),
``sla``. A row without a key becomes a dead letter with its line number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from ingest.csv_export import read_csv_export
from schemas.dead_letter import DeadLetter
from schemas.enums import DeadLetterReason
from schemas.errors import InputError
from schemas.rows import CrmClientRow

__all__ = ["CrmImport", "read_crm_csv"]

_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "key": ("buyer_id", "buyer id", "account_id", "account id", "client id", "client_id"),
    "client_name": ("client name", "client_name", "name", "company"),
    "client_type": ("client type", "client_type", "type"),
    "region": ("region",),
    "persona": ("persona",),
    "key_decision_maker": ("key decision maker", "key_decision_maker", "decision maker"),
    "payment_terms": ("payment terms", "payment_terms"),
    "contract_on_file": ("contract on file", "contract_on_file", "contract"),
    "sla": ("sla",),
}
_TRUE: Final = frozenset({"yes", "y", "true", "1", "on file"})


@dataclass
class CrmImport:
    rows: list[CrmClientRow] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


def read_crm_csv(path: Path) -> CrmImport:
    raw_header, rows = read_csv_export(path)
    header = [name.strip().lower() for name in raw_header]
    columns = {
        name: next((header.index(alias) for alias in aliases if alias in header), None)
        for name, aliases in _FIELDS.items()
    }
    if columns["key"] is None:
        raise InputError(f"the CRM export needs a buyer_id or account_id column ({path})")
    result = CrmImport()
    for line, cells in rows:

        def value(name: str, cells: list[str] = cells) -> str:
            index = columns[name]
            return cells[index].strip() if index is not None and index < len(cells) else ""

        key = value("key")
        if not key:
            result.dead_letters.append(
                DeadLetter.build(
                    reason=DeadLetterReason.MISSING_FIELD,
                    detail="the row has no buyer_id/account_id",
                    raw=",".join(cells),
                    source=path.name,
                    position=f"line {line}",
                    recorded_at=datetime.now(UTC),
                )
            )
            continue
        result.rows.append(
            CrmClientRow(
                client_key=key,
                client_name=value("client_name"),
                client_type=value("client_type"),
                region=value("region"),
                persona=value("persona"),
                key_decision_maker=value("key_decision_maker"),
                payment_terms=value("payment_terms"),
                contract_on_file=value("contract_on_file").lower() in _TRUE,
                sla=value("sla"),
                source=path.name,
            )
        )
    return result
