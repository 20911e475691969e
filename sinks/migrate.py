"""Versioned SQL migrations, applied in order, each exactly once (``touchpoint migrate``)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Final

from clickhouse_connect.driver.exceptions import ClickHouseError

from schemas.errors import MigrationError
from sinks.clickhouse import Client, identifier, translate_error

if TYPE_CHECKING:
    from sinks.cluster import ClusterSchema

__all__ = ["Migration", "apply_migrations", "load_migrations", "migration_script"]

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


def _ledger_ddl(database: str, cluster: str | None) -> str:
    columns = "(version UInt32, name String, checksum String, applied_at DateTime DEFAULT now())"
    if cluster is None:
        return (
            f"CREATE TABLE IF NOT EXISTS {database}.{_LEDGER} {columns} "
            "ENGINE = MergeTree ORDER BY version"
        )
    # One ledger for the whole cluster: every node is a replica of it (no {shard} in the path),
    # so whichever node `migrate` talks to knows what was applied.
    return (
        f"CREATE TABLE IF NOT EXISTS {database}.{_LEDGER} ON CLUSTER {cluster} {columns} "
        f"ENGINE = ReplicatedMergeTree('/clickhouse/tables/{{database}}/{_LEDGER}', '{{replica}}') "
        "ORDER BY version"
    )


def migration_script(database: str, schema: ClusterSchema | None = None) -> str:
    """What :func:`apply_migrations` runs on an empty database, as one SQL script (each
    migration followed by its ledger row), for ``touchpoint migrate --print``."""
    database = identifier(database)
    cluster = schema.cluster if schema is not None else None
    on_cluster = f" ON CLUSTER {cluster}" if cluster else ""
    rewritten = dict(schema.migrations) if schema is not None else {}
    parts = [
        f"CREATE DATABASE IF NOT EXISTS {database}{on_cluster};\n",
        f"{_ledger_ddl(database, cluster)};\n",
    ]
    for migration in load_migrations():
        statements = rewritten[migration] if schema is not None else migration.statements(database)
        parts.append(f"-- {migration.version:04d}_{migration.name}")
        parts.extend(f"{statement};\n" for statement in statements)
        parts.append(
            f"INSERT INTO {database}.{_LEDGER} (version, name, checksum) VALUES "
            f"({migration.version}, '{migration.name}', '{migration.checksum}');\n"
        )
    return "\n".join(parts)


def apply_migrations(
    client: Client,
    database: str,
    *,
    upto: int | None = None,
    schema: ClusterSchema | None = None,
) -> list[Migration]:
    """Create the database and apply pending migrations (those up to version ``upto``, when
    given); returns the ones applied now.

    With ``schema`` (:func:`sinks.cluster.cluster_schema` for this database), each migration's
    rewritten statements run instead of its own: the cluster DDL, or the single-node twin. A
    database migrated for a cluster is refused a plain migration (it would create tables on
    one node only).
    """
    database = identifier(database)
    if schema is not None and schema.database != database:
        raise MigrationError(f"the schema was rewritten for {schema.database}, not {database}")
    cluster = schema.cluster if schema is not None else None
    on_cluster = f" ON CLUSTER {cluster}" if cluster else ""
    ledger = _ledger_engine(client, database)
    replicated = ledger is not None and ledger.startswith("Replicated")
    if cluster and ledger is not None and not replicated:
        raise MigrationError(
            f"{database} was migrated without a cluster (its tables are on this server only); "
            "migrate a new database for the cluster and copy the data over"
        )
    try:
        client.command(f"CREATE DATABASE IF NOT EXISTS {database}{on_cluster}")
    except ClickHouseError as exc:
        raise translate_error(exc, f"creating database {database}{on_cluster}") from exc
    try:
        client.command(_ledger_ddl(database, cluster))
        applied = {
            int(version): checksum
            for version, checksum in client.query(
                f"SELECT version, checksum FROM {database}.{_LEDGER}"
            ).result_rows
        }
    except ClickHouseError as exc:
        raise translate_error(exc, "reading the migration ledger") from exc

    rewritten: dict[int, list[str]] = {}
    if schema is not None:
        rewritten = {migration.version: statements for migration, statements in schema.migrations}
    pending = [
        migration
        for migration in load_migrations()
        if migration.version not in applied and (upto is None or migration.version <= upto)
    ]
    if pending and schema is None and replicated:
        raise MigrationError(
            f"{database} was migrated for a cluster and has pending migrations: run "
            "`touchpoint migrate --cluster NAME` to apply them on every node"
        )

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
        statements = (
            migration.statements(database) if schema is None else rewritten[migration.version]
        )
        try:
            for statement in statements:
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


def _ledger_engine(client: Client, database: str) -> str | None:
    """The engine of ``database``'s ledger (``Replicated...`` once migrated for a cluster),
    or None before the first migration."""
    try:
        rows = client.query(
            "SELECT engine FROM system.tables WHERE database = %(database)s AND name = %(ledger)s",
            parameters={"database": database, "ledger": _LEDGER},
        ).result_rows
    except ClickHouseError as exc:
        raise translate_error(exc, "reading the migration ledger") from exc
    return str(rows[0][0]) if rows else None
