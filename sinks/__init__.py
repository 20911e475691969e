"""ClickHouse: migrations, the batched idempotent writer, analysis queries.

Only this package talks to ClickHouse. The names exported here import no
ClickHouse driver; import ``sinks.clickhouse``, ``sinks.writer``,
``sinks.migrate`` or ``sinks.queries`` for the real thing.
"""

from sinks.base import RowBatch, Sink
from sinks.testing import MemorySink

__all__ = ["MemorySink", "RowBatch", "Sink"]
