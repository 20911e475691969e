"""The real broker of the distributed path, started by deploy/kafka/kafka.sh."""

from __future__ import annotations

import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

pytestmark = pytest.mark.integration


def test_the_broker_takes_keyed_compressed_idempotent_writes_and_serves_a_consumer_group(
    kafka_bootstrap: str,
) -> None:
    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)])
    finally:
        admin.close()

    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type="zstd",
    )
    futures = [
        producer.send(topic, key=f"buyer-{i % 13}".encode(), value=f"event-{i}".encode())
        for i in range(300)
    ]
    producer.flush()
    partitions = {future.get(timeout=30).partition for future in futures}
    producer.close()
    assert len(partitions) > 1  # keys spread over the 6 partitions

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"g-{topic}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=30_000,
    )
    values = set()
    for message in consumer:
        values.add(message.value)
        if len(values) == 300:
            break
    consumer.commit()
    consumer.close()
    assert values == {f"event-{i}".encode() for i in range(300)}
