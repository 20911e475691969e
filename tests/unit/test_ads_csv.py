"""Ad-platform spend exports load as they come from the platforms."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from ingest.ads_csv import read_ads_csv
from schemas.enums import DeadLetterReason
from schemas.errors import InputError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "export.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_meta_style_export_with_currency_in_the_header(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Reporting starts,Campaign name,Impressions,Link clicks,"
        'Amount spent (EUR)\n2026-03-01,spring,"12,000",340,"1,234.50"\n',
    )
    [row] = read_ads_csv(path, platform="meta").rows
    assert (row.day, row.platform, row.campaign) == (date(2026, 3, 1), "meta", "spring")
    assert (row.impressions, row.clicks, row.cost, row.currency) == (
        12000,
        340,
        Decimal("1234.50"),
        "EUR",
    )
    assert row.position == "line 2"


def test_a_google_style_export_with_a_platform_column(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Day,Campaign,Impr.,Clicks,Cost,Currency code,Network\n"
        "2026-03-02,brand,900,40,12.5,usd,google_ads\n",
    )
    [row] = read_ads_csv(path).rows
    assert (row.platform, row.currency, row.impressions) == ("google_ads", "USD", 900)


def test_unreadable_rows_become_dead_letters_and_the_rest_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "day,campaign,impressions,clicks,cost\n2026-03-01,a,1,1,1\n"
        "yesterday,a,1,1,1\n2026-03-02,a,-5,1,1\n2026-03-03,a\n",
    )
    loaded = read_ads_csv(path)
    assert len(loaded.rows) == 1
    assert [(d.reason, d.position) for d in loaded.dead_letters] == [
        (DeadLetterReason.MALFORMED_ROW, "line 3"),
        (DeadLetterReason.MALFORMED_ROW, "line 4"),
        (DeadLetterReason.MALFORMED_ROW, "line 5"),
    ]


def test_an_export_without_the_needed_columns_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no clicks, cost column"):
        read_ads_csv(write(tmp_path, "day,campaign,impressions\n"))
