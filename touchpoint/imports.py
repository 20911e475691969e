"""Other exports into ClickHouse: ``touchpoint import ads-csv`` and ``import crm``."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

from ingest.ads_csv import read_ads_csv
from ingest.crm_csv import read_crm_csv
from schemas.dead_letter import DeadLetter
from schemas.rows import AdSpendRow, CrmClientRow, DeadLetterRow, Row
from schemas.settings import Settings
from sinks.base import RowBatch
from sinks.writer import ClickHouseWriter
from touchpoint.config import clickhouse

__all__ = ["import_ads_csv", "import_crm_csv"]


def import_ads_csv(settings: Settings, path: Path, platform: str) -> tuple[int, int]:
    """Load an ad-platform spend export into ``ad_spend``; returns (rows, dead letters)."""
    loaded = read_ads_csv(path, platform=platform)
    return _write_import(
        settings,
        path,
        lambda digest: f"ads-csv:{digest}:{platform}",
        AdSpendRow.table,
        loaded.rows,
        loaded.dead_letters,
    )


def _write_import(
    settings: Settings,
    path: Path,
    token: Callable[[str], str],
    table: str,
    rows: Sequence[Row],
    dead_letters: Sequence[DeadLetter],
) -> tuple[int, int]:
    """Write an imported file's rows and dead letters in one batch; (rows, dead letters).

    ``token`` makes the batch's insert-deduplication token from the file's content hash.
    """
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:20]
    with clickhouse(settings) as client:
        ClickHouseWriter(client, settings.clickhouse.database).write(
            RowBatch(
                token=token(digest),
                tables={
                    table: rows,
                    DeadLetterRow.table: [
                        DeadLetterRow.from_dead_letter(letter) for letter in dead_letters
                    ],
                },
            )
        )
    return len(rows), len(dead_letters)


def import_crm_csv(settings: Settings, path: Path) -> tuple[int, int]:
    """Load a CRM export into ``crm_clients``; returns (rows, dead letters)."""
    loaded = read_crm_csv(path)
    return _write_import(
        settings,
        path,
        lambda digest: f"crm-csv:{digest}",
        CrmClientRow.table,
        loaded.rows,
        loaded.dead_letters,
    )
