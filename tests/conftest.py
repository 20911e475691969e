"""Shared fixtures.

chDB hosts one engine directory per process, so the whole test session shares
one directory and every test gets a fresh *database* in it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.settings import ClickHouseSettings


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture(scope="session")
def chdb_url(chdb_dir: Path) -> str:
    return f"chdb:{chdb_dir}"


@pytest.fixture(scope="session")
def clickhouse_client(chdb_url: str) -> Iterator[Any]:
    from sinks.clickhouse import connect

    client = connect(chdb_url, ClickHouseSettings())
    yield client
    client.close()


@pytest.fixture
def database(clickhouse_client: Any) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    from sinks.migrate import apply_migrations

    name = f"t_{uuid.uuid4().hex[:12]}"
    apply_migrations(clickhouse_client, name)
    yield name
    clickhouse_client.command(f"DROP DATABASE IF EXISTS {name} SYNC")
