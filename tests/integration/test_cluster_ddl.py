"""The cluster schema (`touchpoint migrate --cluster`) is the migrations, rewritten.

No ClickHouse cluster runs here, so the cluster DDL is checked by chDB's own parser
(`formatQuery`) statement by statement, and its structure against the migration files it
comes from. Then the very same rewrite, without a cluster (plain engines, an `Alias` table
where the cluster has a `Distributed` one), is applied to a chDB database: a generated
export is loaded into it with `touchpoint run` and `touchpoint report` must print what it
prints for the normal schema.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest.generator import GeneratorConfig, generate
from processors.classify import default_rules
from schemas.errors import MigrationError
from sinks.cluster import cluster_schema
from sinks.migrate import Migration, apply_migrations, load_migrations, migration_script
from touchpoint.cli import main

pytestmark = pytest.mark.integration

CLUSTER = "two_shards"
DB = "touchpoint"


def formatted(client: Any, sql: str) -> str:
    """chDB's canonical rendering of one statement (it raises on a syntax error)."""
    return str(
        client.query("SELECT formatQuery(%(sql)s)", parameters={"sql": sql}).result_rows[0][0]
    )


def one_line(client: Any, sql: str) -> str:
    rows = client.query(
        "SELECT formatQuerySingleLine(%(sql)s)", parameters={"sql": sql}
    ).result_rows
    return str(rows[0][0])


_CREATE = re.compile(r"^CREATE TABLE (?:IF NOT EXISTS )?(\w+)\.(\w+)")
_ENGINE = re.compile(r"ENGINE = (\w+)(?:\((.*?)\))?(?= PARTITION BY| ORDER BY| SETTINGS|$)")


def _original_tables(client: Any) -> dict[str, str]:
    """Each MergeTree-family CREATE TABLE of the migration files, one line, by table."""
    tables = {}
    for migration in load_migrations():
        for sql in migration.statements(DB):
            text = one_line(client, sql)
            match = _CREATE.match(text)
            if match and "MergeTree" in text:
                tables[match.group(2)] = text
    return tables


def _cluster_statements(client: Any) -> list[str]:
    return [one_line(client, sql) for sql in cluster_schema(DB, CLUSTER).statements()]


def test_every_statement_of_the_two_shard_cluster_ddl_parses(clickhouse_client: Any) -> None:
    statements = cluster_schema(DB, CLUSTER).statements()
    assert len(statements) > 40
    for sql in statements:
        text = formatted(clickhouse_client, sql)
        if not text.startswith("INSERT"):
            assert f"ON CLUSTER {CLUSTER}" in text, text


def test_each_replicated_engine_keeps_the_original_engine_and_the_rest_of_the_table(
    clickhouse_client: Any,
) -> None:
    originals = _original_tables(clickhouse_client)
    locals_seen = set()
    for text in _cluster_statements(clickhouse_client):
        match = _CREATE.match(text)
        if not match or "ENGINE = Replicated" not in text:
            continue
        table = match.group(2).removesuffix("_local")
        locals_seen.add(table)
        original = originals[table]
        engine, args = _ENGINE.search(text).groups()  # type: ignore[union-attr]
        first, second, *rest = [part.strip() for part in (args or "").split(",")]
        assert (first, second) == ("'/clickhouse/tables/{shard}/{database}/{table}'", "'{replica}'")
        original_engine, original_args = _ENGINE.search(original).groups()  # type: ignore[union-attr]
        assert engine == f"Replicated{original_engine}", text
        assert rest == (
            [part.strip() for part in original_args.split(",")] if original_args else []
        )
        # Everything else — columns, partitioning, sorting, settings — is the original's.
        replicated_clause = _ENGINE.search(text).group(0)  # type: ignore[union-attr]
        original_clause = _ENGINE.search(original).group(0)  # type: ignore[union-attr]
        back = (
            text.replace(replicated_clause, original_clause)
            .replace(f"{table}_local ON CLUSTER {CLUSTER}", table)
            .replace("replicated_deduplication_window", "non_replicated_deduplication_window")
        )
        assert back == original
    assert locals_seen == set(originals)


def test_distributed_tables_shard_by_buyer_and_by_a_sorting_key_column(
    clickhouse_client: Any,
) -> None:
    originals = _original_tables(clickhouse_client)
    distributed = {}
    for text in _cluster_statements(clickhouse_client):
        match = re.search(
            rf"^CREATE TABLE (?:IF NOT EXISTS )?{DB}\.(\w+) ON CLUSTER {CLUSTER} AS {DB}\.(\w+) "
            rf"ENGINE = Distributed\({CLUSTER}, {DB}, (\w+), (.*)\)$",
            text,
        )
        if match:
            table, source, local, key = match.groups()
            assert source == local == f"{table}_local", text
            distributed[table] = key
    assert set(distributed) == set(originals)
    for table, key in distributed.items():
        columns = originals[table].split(") ENGINE")[0]
        if re.search(r"[(,] ?`?buyer_id`? String", columns):
            assert key == "cityHash64(buyer_id)", table
        # Rows that replace each other meet on one shard: the key is made of sorting columns.
        order_by = re.search(r"ORDER BY (\([^)]*\)|\w+)", originals[table]).group(1)  # type: ignore[union-attr]
        assert key.startswith("cityHash64("), table
        key_columns = {part.strip() for part in key[len("cityHash64(") : -1].split(",")}
        assert key_columns <= {part.strip() for part in order_by.strip("()").split(",")}, table
    assert distributed["touchpoints"] == "cityHash64(buyer_id)"
    assert distributed["dead_letters"] == "cityHash64(dead_letter_id)"


def test_every_materialized_view_reads_and_writes_local_tables(clickhouse_client: Any) -> None:
    views = 0
    for text in _cluster_statements(clickhouse_client):
        if not text.startswith("CREATE MATERIALIZED VIEW"):
            continue
        views += 1
        target = re.search(r" TO (\w+)\.(\w+) ", text).group(2)  # type: ignore[union-attr]
        assert target.endswith("_local"), text
        select = text.split(" AS ", 1)[1]
        read = re.findall(rf"\bFROM {DB}\.(\w+)", select)
        assert read and all(name.endswith("_local") for name in read), text
    # 0002's two, 0008's re-created funnel_daily_mv, 0011's five report summaries (0012
    # drops buyer_paths_mv again)
    assert views == 8


def test_a_statement_without_a_translation_is_refused() -> None:
    extra = Migration(99, "rename", "RENAME TABLE {database}.touchpoints TO {database}.x;")
    with pytest.raises(MigrationError, match="no cluster translation"):
        cluster_schema(DB, CLUSTER, migrations=[*load_migrations(), extra])


def test_migrate_prints_the_cluster_ddl(capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["--database", DB, "migrate", "--cluster", CLUSTER, "--print"]) == 0
    out = capsys.readouterr().out
    assert out == migration_script(DB, cluster_schema(DB, CLUSTER))
    for sql in cluster_schema(DB, CLUSTER).statements():
        assert f"{sql};" in out
    for migration in load_migrations():
        assert f"({migration.version}, '{migration.name}', '{migration.checksum}')" in out
    assert out.startswith(f"CREATE DATABASE IF NOT EXISTS {DB} ON CLUSTER {CLUSTER};")
    assert (
        "ENGINE = Distributed(two_shards, touchpoint, touchpoints_local, cityHash64(buyer_id))"
        in out
    )


def test_migrate_prints_the_plain_schema_without_a_cluster(
    capsys: pytest.CaptureFixture[str],
) -> None:
    capsys.readouterr()
    assert main(["--database", DB, "migrate", "--print"]) == 0
    out = capsys.readouterr().out
    for migration in load_migrations():
        for sql in migration.statements(DB):
            assert f"{sql};" in out
    assert "ON CLUSTER" not in out and "_local" not in out


def test_the_printed_script_is_what_migrate_applies(
    capsys: pytest.CaptureFixture[str], clickhouse_client: Any
) -> None:
    database = f"printed_{uuid.uuid4().hex[:8]}"
    capsys.readouterr()
    assert main(["--database", database, "migrate", "--print"]) == 0
    script = Migration(0, "printed", capsys.readouterr().out)
    try:
        for sql in script.statements(database):
            clickhouse_client.command(sql)
        assert apply_migrations(clickhouse_client, database) == []  # nothing left to apply
    finally:
        clickhouse_client.command(f"DROP DATABASE IF EXISTS {database} SYNC")


def test_migrating_for_a_cluster_the_server_does_not_know_is_one_line_and_exit_code_1(
    capsys: pytest.CaptureFixture[str], chdb_url: str
) -> None:
    capsys.readouterr()
    database = f"nocluster_{uuid.uuid4().hex[:8]}"
    args = ["--clickhouse-url", chdb_url, "--database", database, "migrate"]
    assert main([*args, "--cluster", CLUSTER]) == 1
    err = capsys.readouterr().err
    assert f"ON CLUSTER {CLUSTER} failed" in err and "CLUSTER_DOESNT_EXIST" in err
    assert len(err.strip().splitlines()) == 1
    assert main([*args, "--cluster", "two-shards"]) == 1
    assert "not a valid cluster name" in capsys.readouterr().err


def test_a_database_migrated_without_a_cluster_is_not_migrated_for_one(
    clickhouse_client: Any, database: str
) -> None:
    with pytest.raises(MigrationError, match="was migrated without a cluster"):
        apply_migrations(clickhouse_client, database, schema=cluster_schema(database, CLUSTER))


# --- the single-node twin: the same rewrite runs every report query unchanged ---------------


@pytest.fixture
def databases(clickhouse_client: Any) -> Iterator[tuple[str, str]]:
    """A database with the normal schema and one with the rewritten (single-node) schema."""
    suffix = uuid.uuid4().hex[:10]
    normal, twin = f"normal_{suffix}", f"twin_{suffix}"
    apply_migrations(clickhouse_client, normal)
    apply_migrations(
        clickhouse_client, twin, schema=cluster_schema(twin, None, layout="single_node")
    )
    yield normal, twin
    for name in (normal, twin):
        clickhouse_client.command(f"DROP DATABASE IF EXISTS {name} SYNC")


def _cli(capsys: pytest.CaptureFixture[str], chdb_url: str, database: str, *args: str) -> str:
    capsys.readouterr()
    code = main(["--clickhouse-url", chdb_url, "--database", database, *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.mark.slow
def test_the_single_node_twin_gives_every_report_number_of_the_normal_schema(
    databases: tuple[str, str],
    clickhouse_client: Any,
    chdb_url: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    normal, twin = databases
    tables = clickhouse_client.query(
        "SELECT name, engine FROM system.tables WHERE database = %(db)s", parameters={"db": twin}
    ).result_rows
    engines = dict(tables)
    assert (
        engines["touchpoints"] == "Alias" and engines["touchpoints_local"] == "ReplacingMergeTree"
    )
    lines, _ = generate(
        GeneratorConfig(
            buyers=300,
            seed=1313,
            duplicate_rate=0.03,
            out_of_order_rate=0.1,
            malformed_rate=0.003,
            timeouts=dict(default_rules().timeouts),
        )
    )
    export = tmp_path / "export.jsonl"
    export.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for database in (normal, twin):
        _cli(capsys, chdb_url, database, "run", "--input", str(export), "--batch-size=400")
    # The rows went into the _local tables, the aggregates through the views on them.
    for table in ("touchpoints_local", "funnel_daily_local", "interactions_hour_of_week_local"):
        assert clickhouse_client.command(f"SELECT count() FROM {twin}.{table}") > 0, table
    reports = [_cli(capsys, chdb_url, database, "report") for database in (normal, twin)]
    assert reports[0].replace(normal, "DB") == reports[1].replace(twin, "DB")

    # The rebuilds (copy, EXCHANGE, the Alias tables and the view made again) keep every
    # row: a rebuild may run twice, so the rewritten statements of the latest one run again,
    # now over the data. (0008's no longer can once 0010 gave dropoffs another column; 0010
    # rebuilds dropoffs and journey_state, 0008 the funnel and transitions — so 0008's
    # funnel_daily part runs again too.)
    schema = cluster_schema(twin, None, layout="single_node")
    by_version = {migration.version: statements for migration, statements in schema.migrations}
    funnel_part = [sql for sql in by_version[8] if "funnel_daily" in sql]
    for sql in [*by_version[10], *funnel_part]:
        clickhouse_client.command(sql)
    assert _cli(capsys, chdb_url, twin, "report") == reports[1]
    # ... and the re-created view fills the rebuilt funnel_daily_local from the next load on.
    more, _ = generate(
        GeneratorConfig(buyers=100, seed=1314, timeouts=dict(default_rules().timeouts))
    )
    later = tmp_path / "later.jsonl"
    later.write_text("\n".join(more) + "\n", encoding="utf-8")
    for database in (normal, twin):
        _cli(capsys, chdb_url, database, "run", "--input", str(later), "--batch-size=400")
    reports = [_cli(capsys, chdb_url, database, "report") for database in (normal, twin)]
    assert reports[0].replace(normal, "DB") == reports[1].replace(twin, "DB")
    # The report does not read funnel_daily (it recomputes the funnel from touchpoints).
    funnel = "SELECT sum(touches), uniqExactMerge(buyers) FROM {}.funnel_daily"
    assert clickhouse_client.query(funnel.format(twin)).result_rows == (
        clickhouse_client.query(funnel.format(normal)).result_rows
    )
    assert "Funnel" in reports[0] or "funnel" in reports[0]
