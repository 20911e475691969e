"""Versioned SQL migrations, applied in order, each exactly once (``touchpoint migrate``)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

from clickhouse_connect.driver.exceptions import ClickHouseError

from schemas.errors import MigrationError
from sinks.clickhouse import Client, identifier, translate_error

__all__ = ["Migration", "apply_migrations", "load_migrations"]

_NAME: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LEDGER: Final = "schema_migrations"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self, database: str) -> list[str]:
        body = "\n".join(
            line for line in self.sql.splitlines() if not line.lstrip().startswith("--")
        )
        return [
            statement.strip().replace("{database}", database)
            for statement in body.split(";")
            if statement.strip()
        ]


def load_migrations() -> list[Migration]:
    found: list[Migration] = []
    for entry in resources.files("sinks").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version number: {versions}")
    return found


def apply_migrations(client: Client, database: str, *, upto: int | None = None) -> list[Migration]:
    """Create the database and apply pending migrations (those up to version ``upto``, when
    given); returns the ones applied now."""
    database = identifier(database)
    try:
        client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
        client.command(
            f"CREATE TABLE IF NOT EXISTS {database}.{_LEDGER} "
            "(version UInt32, name String, checksum String, applied_at DateTime DEFAULT now()) "
            "ENGINE = MergeTree ORDER BY version"
        )
        applied = {
            int(version): checksum
            for version, checksum in client.query(
                f"SELECT version, checksum FROM {database}.{_LEDGER}"
            ).result_rows
        }
    except ClickHouseError as exc:
        raise translate_error(exc, "reading the migration ledger") from exc

    done: list[Migration] = []
    for migration in load_migrations():
        if upto is not None and migration.version > upto:
            break
        previous = applied.get(migration.version)
        if previous is not None:
            if previous != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} was changed after it "
                    "was applied; add a new migration instead of editing an old one"
                )
            continue
        try:
            for statement in migration.statements(database):
                client.command(statement)
            client.insert(
                f"{database}.{_LEDGER}",
                [[migration.version, migration.name, migration.checksum]],
                column_names=["version", "name", "checksum"],
            )
        except ClickHouseError as exc:
            raise MigrationError(
                f"migration {migration.version:04d}_{migration.name} failed: "
                f"{str(exc).strip().splitlines()[0]}"
            ) from exc
        done.append(migration)
    return done
