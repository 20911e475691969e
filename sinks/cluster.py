"""The schema for a ClickHouse cluster, derived from the migrations (``migrate --cluster``).

There is one schema, written once in ``sinks/migrations``. For a cluster each statement is
rewritten, so the two cannot drift:

- ``CREATE TABLE db.t ... ENGINE = XMergeTree(args)`` becomes ``db.t_local ON CLUSTER c``
  with ``ReplicatedXMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}',
  args)`` (``non_replicated_deduplication_window`` becomes ``replicated_deduplication_window``,
  the same insert-dedup memory), plus ``db.t ON CLUSTER c AS db.t_local ENGINE =
  Distributed(c, db, t_local, key)`` under the old name, so writers and queries do not change.
- The sharding key is ``cityHash64(buyer_id)`` for every table with a ``buyer_id``: one
  buyer's rows live on one shard, so funnels and journeys run shard-locally. A table without
  one is sharded by ``cityHash64`` of its sorting key: rows that replace each other
  (ReplacingMergeTree, ``FINAL``) must meet on one shard, which ``rand()`` would not give.
  Every table's key is made of its ``ORDER BY`` columns (the tests check it).
- Materialized views are created on every node over the ``_local`` tables and write into the
  ``_local`` targets: an insert through a Distributed table reaches a shard's local table,
  whose views fill that shard's aggregates; queries read them through the Distributed twin.
- ``ALTER TABLE db.t`` runs on ``db.t_local`` and on ``db.t`` (a Distributed table keeps its
  own column list); ``DROP`` drops both; ``EXCHANGE TABLES a AND b`` (0008's rebuilds) swaps
  the local tables and re-creates both Distributed tables over them; ``INSERT ... SELECT``
  (the rebuilds' copies) runs once, through the Distributed tables, with
  ``distributed_foreground_insert = 1`` so the copy is complete before the swap.
- Every DDL statement carries ``ON CLUSTER c``. A statement of another kind is refused
  (:class:`MigrationError`): a new migration must be taught here before it ships.

Caveats: a Replicated table keeps the ZooKeeper path it was created with, so after 0008's
swap ``stage_transitions_local`` lives under ``.../stage_transitions__0008_local`` (harmless:
the name is not reused). The embedded-only tables ``journey_store``/``journey_runs`` are
created too, but ``touchpoint run`` (which deletes from ``journey_store``) is not meant for a
cluster: a lightweight DELETE does not go through a Distributed table.

``layout="single_node"`` is the same transformation without a cluster — plain engines, no
``ON CLUSTER``, and an ``Alias`` table in place of each Distributed one (chDB has no
clusters) — so the tests can load data into the rewritten schema and check that every
report query gives the same numbers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from schemas.errors import ConfigError, MigrationError
from sinks.clickhouse import identifier
from sinks.migrate import Migration, load_migrations

__all__ = ["ClusterSchema", "Layout", "cluster_schema", "sharding_key"]

Layout = Literal["cluster", "single_node"]

REPLICA_PATH: Final = "/clickhouse/tables/{shard}/{database}/{table}"
REPLICA_NAME: Final = "{replica}"
LOCAL: Final = "_local"

_NAME: Final = r"(\w+)\.(\w+)"
_CREATE_TABLE: Final = re.compile(
    rf"^CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?{_NAME}\s*(\(.*\))\s*"
    r"ENGINE\s*=\s*(\w*MergeTree)\s*(?:\(([^()]*)\))?\s*(.*)$",
    re.DOTALL | re.IGNORECASE,
)
_CREATE_VIEW: Final = re.compile(
    rf"^CREATE\s+MATERIALIZED\s+VIEW\s+(IF\s+NOT\s+EXISTS\s+)?{_NAME}\s+TO\s+{_NAME}\s+AS\s+(.*)$",
    re.DOTALL | re.IGNORECASE,
)
_ALTER: Final = re.compile(rf"^ALTER\s+TABLE\s+{_NAME}\s+(.*)$", re.DOTALL | re.IGNORECASE)
_DROP: Final = re.compile(
    rf"^DROP\s+(TABLE|VIEW)\s+(IF\s+EXISTS\s+)?{_NAME}\s*$", re.DOTALL | re.IGNORECASE
)
_INSERT_SELECT: Final = re.compile(
    rf"^INSERT\s+INTO\s+{_NAME}\s+(SELECT\s.*?)(?:\s+SETTINGS\s+(.*))?$",
    re.DOTALL | re.IGNORECASE,
)
_EXCHANGE: Final = re.compile(
    rf"^EXCHANGE\s+TABLES\s+{_NAME}\s+AND\s+{_NAME}\s*$", re.DOTALL | re.IGNORECASE
)
_ORDER_BY: Final = re.compile(r"\bORDER\s+BY\s+(\([^()]*\)|\w+)", re.IGNORECASE)
_CLUSTER: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BUYER_ID: Final = re.compile(r"^\s*buyer_id\s", re.MULTILINE)


def sharding_key(columns: str, order_by: Sequence[str]) -> str:
    """The Distributed sharding key of a table: see the module docstring."""
    if _BUYER_ID.search(columns):
        return "cityHash64(buyer_id)"
    return f"cityHash64({', '.join(order_by)})"


@dataclass(frozen=True, slots=True)
class ClusterSchema:
    """The rewritten statements of each migration, in order."""

    database: str
    layout: Layout
    cluster: str | None
    migrations: list[tuple[Migration, list[str]]]
    sharding_keys: dict[str, str] = field(default_factory=dict)

    def statements(self) -> list[str]:
        return [statement for _, statements in self.migrations for statement in statements]


class _Rewriter:
    def __init__(self, database: str, cluster: str | None) -> None:
        self.database = database
        self.cluster = cluster
        self.keys: dict[str, str] = {}  # table (without _local) -> sharding key

    @property
    def on_cluster(self) -> str:
        return f" ON CLUSTER {self.cluster}" if self.cluster else ""

    @property
    def sync(self) -> str:
        return " SYNC" if self.cluster else ""

    def front(self, table: str, *, if_not_exists: bool = False) -> str:
        """The table under the original name, over ``table_local``."""
        db = self.database
        create = "CREATE TABLE IF NOT EXISTS" if if_not_exists else "CREATE TABLE"
        if self.cluster is None:
            return f"{create} {db}.{table} ENGINE = Alias({db}, {table}{LOCAL})"
        return (
            f"{create} {db}.{table}{self.on_cluster} AS {db}.{table}{LOCAL} "
            f"ENGINE = Distributed({self.cluster}, {db}, {table}{LOCAL}, {self.keys[table]})"
        )

    def drop(self, table: str, *, if_exists: bool = True) -> str:
        exists = " IF EXISTS" if if_exists else ""
        return f"DROP TABLE{exists} {self.database}.{table}{self.on_cluster}{self.sync}"

    def local_names(self, sql: str) -> str:
        """``sql`` with every ``db.t`` of a sharded table read as ``db.t_local``."""

        def local(match: re.Match[str]) -> str:
            if match.group(1) == self.database and match.group(2) in self.keys:
                return f"{match.group(1)}.{match.group(2)}{LOCAL}"
            return match.group(0)

        return re.sub(rf"\b{_NAME}\b", local, sql)

    def engine(self, engine: str, args: str | None) -> str:
        if self.cluster is None:
            return engine if args is None else f"{engine}({args})"
        replicated = [f"'{REPLICA_PATH}'", f"'{REPLICA_NAME}'"]
        if args and args.strip():
            replicated.append(args.strip())
        return f"Replicated{engine}({', '.join(replicated)})"

    def table_settings(self, rest: str) -> str:
        if self.cluster is None:
            return rest
        return re.sub(
            r"\bnon_replicated_deduplication_window\b", "replicated_deduplication_window", rest
        )

    def rewrite(self, statement: str) -> list[str]:
        db, on = self.database, self.on_cluster
        if match := _CREATE_TABLE.match(statement):
            if_not_exists, schema, table, columns, engine, args, rest = match.groups()
            if schema != db:
                raise MigrationError(f"a table outside {db}: {statement[:80]}")
            order = _ORDER_BY.search(rest)
            if order is None:
                raise MigrationError(f"no ORDER BY in {statement[:80]}")
            order_by = [part.strip() for part in order.group(1).strip("()").split(",")]
            self.keys[table] = sharding_key(columns, order_by)
            exists = "IF NOT EXISTS " if if_not_exists else ""
            front = self.front(table, if_not_exists=bool(if_not_exists))
            return [
                f"CREATE TABLE {exists}{db}.{table}{LOCAL}{on}\n{columns}\n"
                f"ENGINE = {self.engine(engine, args)}\n{self.table_settings(rest)}",
                front,
            ]
        if match := _CREATE_VIEW.match(statement):
            if_not_exists, _, view, _, target, select = match.groups()
            if target not in self.keys:
                raise MigrationError(f"view {view} writes into {target}, not a MergeTree table")
            exists = "IF NOT EXISTS " if if_not_exists else ""
            return [
                f"CREATE MATERIALIZED VIEW {exists}{db}.{view}{on} TO {db}.{target}{LOCAL} AS\n"
                + self.local_names(select)
            ]
        if match := _ALTER.match(statement):
            _, table, commands = match.groups()
            if table not in self.keys:
                raise MigrationError(f"ALTER of {table}, not a table the migrations created")
            altered = [f"ALTER TABLE {db}.{table}{LOCAL}{on} {commands}"]
            if self.cluster is not None:
                altered.append(f"ALTER TABLE {db}.{table}{on} {commands}")
            else:  # an Alias table keeps the columns it was created with: create it again
                altered += [self.drop(table), self.front(table)]
            return altered
        if match := _DROP.match(statement):
            kind, if_exists, _, name = match.groups()
            if kind.upper() == "VIEW":
                exists = " IF EXISTS" if if_exists else ""
                return [f"DROP VIEW{exists} {db}.{name}{on}{self.sync}"]
            dropped = [self.drop(name, if_exists=bool(if_exists))]
            dropped.append(self.drop(f"{name}{LOCAL}", if_exists=bool(if_exists)))
            self.keys.pop(name, None)
            return dropped
        if match := _INSERT_SELECT.match(statement):
            _, table, select, settings = match.groups()
            clauses = [settings.strip()] if settings else []
            if self.cluster is not None:
                clauses.append("distributed_foreground_insert = 1")
            tail = f"\nSETTINGS {', '.join(clauses)}" if clauses else ""
            return [f"INSERT INTO {db}.{table}\n{select.strip()}{tail}"]
        if match := _EXCHANGE.match(statement):
            _, first, _, second = match.groups()
            if first not in self.keys or second not in self.keys:
                raise MigrationError(
                    f"EXCHANGE of tables the migrations did not create: {statement}"
                )
            self.keys[first], self.keys[second] = self.keys[second], self.keys[first]
            return [
                f"EXCHANGE TABLES {db}.{first}{LOCAL} AND {db}.{second}{LOCAL}{on}",
                self.drop(first),
                self.front(first),
                self.drop(second),
                self.front(second),
            ]
        raise MigrationError(
            f"no cluster translation for this statement (teach sinks/cluster.py): {statement[:120]}"
        )


def cluster_schema(
    database: str,
    cluster: str | None,
    *,
    layout: Layout = "cluster",
    migrations: Sequence[Migration] | None = None,
) -> ClusterSchema:
    """Every migration rewritten for ``cluster`` (``layout="cluster"``) or for the single-node
    twin (``layout="single_node"``, ``cluster`` None)."""
    database = identifier(database)
    if layout == "cluster":
        if cluster is None:
            raise MigrationError("a cluster layout needs a cluster name")
        if not _CLUSTER.match(cluster):
            raise ConfigError(f"{cluster!r} is not a valid cluster name (letters, digits, _)")
    elif cluster is not None:
        raise MigrationError("the single-node twin has no cluster")
    rewriter = _Rewriter(database, cluster)
    rewritten = [
        (
            migration,
            [
                out
                for statement in migration.statements(database)
                for out in rewriter.rewrite(statement)
            ],
        )
        for migration in (load_migrations() if migrations is None else migrations)
    ]
    return ClusterSchema(database, layout, cluster, rewritten, dict(rewriter.keys))
