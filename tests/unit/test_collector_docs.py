"""What the collector tells people stays true to the code: --help, docs/collector.md, the
OpenAPI document."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from ingest.collector import Collector, create_app, new_metrics
from ingest.collector.openapi import openapi_document
from ingest.collector.testing import MemoryPublisher
from schemas.enums import DeadLetterReason
from schemas.settings import CollectorSettings
from touchpoint.cli import cli

DOCS = Path(__file__).resolve().parents[2] / "docs" / "collector.md"
SETTINGS = [f"TOUCHPOINT_COLLECTOR_{name.upper()}" for name in CollectorSettings.model_fields]


def test_collector_help_names_every_setting_by_its_env_var() -> None:
    result = CliRunner().invoke(cli, ["collector", "--help"])
    assert result.exit_code == 0, result.output
    for variable in SETTINGS:
        assert variable in result.output


def test_docs_describe_every_setting_and_no_other() -> None:
    text = DOCS.read_text()
    documented = set(re.findall(r"TOUCHPOINT_COLLECTOR_[A-Z_]+[A-Z]", text))
    pairs = {
        f"TOUCHPOINT_COLLECTOR_{a}"
        for a in re.findall(r"`TOUCHPOINT_COLLECTOR_[A-Z_]+` / `_([A-Z_]+)`", text)
    }
    assert set(SETTINGS) <= documented | pairs
    assert documented <= set(SETTINGS), documented - set(SETTINGS)


def test_the_openapi_document_lists_exactly_the_routes_served() -> None:
    app = create_app(Collector(CollectorSettings(), MemoryPublisher(), new_metrics()))
    served = {
        route.resource.canonical
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    document = openapi_document()
    assert set(document["paths"]) | {"/openapi.json"} == served
    reasons = document["components"]["schemas"]["Result"]["properties"]["rejected"]["items"]
    assert reasons["properties"]["reason"]["enum"] == [reason.value for reason in DeadLetterReason]
