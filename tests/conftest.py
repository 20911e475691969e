"""Shared fixtures.

chDB hosts one engine directory per process, so the whole test session shares
one directory and every test gets a fresh *database* in it.
"""

from __future__ import annotations

import os
import subprocess
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


REPO = Path(__file__).resolve().parents[1]
KAFKA_SCRIPT = REPO / "deploy" / "kafka" / "kafka.sh"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A genuine Apache Kafka broker (KRaft), started fresh by deploy/kafka/kafka.sh."""
    port = os.environ.get("TOUCHPOINT_TEST_KAFKA_PORT", "39092")
    env = {**os.environ, "TOUCHPOINT_KAFKA_PORT": port}
    started = subprocess.run(
        ["bash", str(KAFKA_SCRIPT), "start", "--fresh"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if started.returncode != 0:
        pytest.fail(f"Kafka did not start:\n{started.stdout}\n{started.stderr}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run(
            ["bash", str(KAFKA_SCRIPT), "stop"],
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )


@pytest.fixture
def pipeline(kafka_bootstrap: str, tmp_path: Path) -> Any:
    """A fresh pipeline (topic prefix, app id) on the test broker; see tests/kafka_pipeline.py."""
    from tests.kafka_pipeline import new_pipeline

    return new_pipeline(kafka_bootstrap, tmp_path)
