"""Topic set-up: create the pipeline's Kafka topics with the partition count they must share.

Every command that touches Kafka — ``produce`` and the collector, the workers, the sink,
the webhook deliverer — creates the topics it needs before it starts, idempotently
(:func:`ensure_topics`). What each topic carries is the contract in :mod:`schemas.topics`;
this module is only the admin call (kafka-python's ``KafkaAdminClient``).

It sits in ``ingest/`` because no other room may hold it: ``schemas/`` does no I/O,
``deploy/`` holds no Python, the ``touchpoint`` entry point only wires settings to rooms,
and the partition count of ``touchpoints.raw`` — the topic events come in on — is the
count every output topic must repeat (a worker writes each output to the partition number
it read). It is a module of its own, apart from the producer, so the set-up of the
workers, the sink and the webhook deliverer does not import the producer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from kafka import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

from schemas.errors import BrokerUnavailableError, ConfigError

__all__ = ["ensure_topics"]

logger = logging.getLogger(__name__)


def _admin(bootstrap: str) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="touchpoint-admin")
    except KafkaError as exc:
        raise BrokerUnavailableError(f"no Kafka broker reachable at {bootstrap}: {exc}") from exc


def ensure_topics(
    bootstrap: str,
    partitions: Mapping[str, int],
    *,
    replication: int = 1,
    compacted: Iterable[str] = (),
) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created.

    An existing topic with a different partition count is a ConfigError: keyed
    co-partitioning of input and outputs depends on equal counts.
    """
    compact = set(compacted)
    admin = _admin(bootstrap)
    try:
        existing = {
            topic["name"]: len(topic["partitions"])
            for topic in admin.describe_topics(list(partitions))
            if topic.get("error_code", 0) == 0 and topic["partitions"]
        }
        for name, count in existing.items():
            if count != partitions[name]:
                raise ConfigError(
                    f"topic {name} has {count} partitions, the pipeline is configured for "
                    f"{partitions[name]} (TOUCHPOINT_KAFKA_PARTITIONS); use a new topic or "
                    "change the setting"
                )
        missing = {
            name: {
                "num_partitions": count,
                "replication_factor": replication,
                "configs": {"cleanup.policy": "compact"} if name in compact else {},
            }
            for name, count in partitions.items()
            if name not in existing
        }
        if not missing:
            return []
        try:
            admin.create_topics(missing, wait_for_metadata=True)
        except TopicAlreadyExistsError:
            pass  # created meanwhile by another process: fine
        logger.info("created topics %s", ", ".join(sorted(missing)))
        return sorted(missing)
    except KafkaError as exc:
        raise BrokerUnavailableError(f"creating topics on {bootstrap} failed: {exc}") from exc
    finally:
        admin.close()
