"""ClickHouse, and only here: schema, writing, reading. What lives where:

- ``base.py``          the sink interface (``write(batch)``, ``flush()``, ``close()``);
  ``testing.py`` its in-memory double; ``background.py`` a sink that writes in a thread
- ``clickhouse.py``    connecting (chDB in-process or HTTP) and translating its errors
- ``migrations/``, ``migrate.py``  versioned SQL, applied once each; ``cluster.py`` the
  cluster (Replicated/Distributed) form of the same schema
- ``writer.py``        the batched, idempotent writer (deduplication tokens)
- ``consumer.py``      the Kafka → ClickHouse sink of the distributed path; ``batches.py``
  its batches, pure (what goes into which, intents, a batch's rows)
- ``journey_store.py`` journey state kept between embedded runs; ``identity.py``
  touchpoints read per person, and who is whom
- ``queries.py``, ``analysis.py``  the analysts' questions as SQL; ``answers.py`` gathers
  them for the report, rendered by ``report.py`` (terminal) and ``html_report.py``
- ``sql.py``           ad-hoc SQL for ``touchpoint sql`` (read-only: ClickHouse's ``readonly``);
  ``http_front.py`` ClickHouse's HTTP interface in front of chDB, ``touchpoint serve``
- ``dead_letters.py``, ``triggers.py``  reading dead letters and fired triggers back;
  ``webhooks.py`` delivers fired triggers to outbound webhooks
- ``metrics.py``       sink metrics (a factory taking a registry)

The names exported here import no ClickHouse driver; import ``sinks.clickhouse``,
``sinks.writer``, ``sinks.migrate`` or ``sinks.queries`` for the real thing.
"""

from sinks.base import RowBatch, Sink
from sinks.testing import MemorySink

__all__ = ["MemorySink", "RowBatch", "Sink"]
