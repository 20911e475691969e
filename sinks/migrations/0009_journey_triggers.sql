-- Real-time triggers (journey rules [[trigger]]): one row per (trigger, buyer, occurrence).
-- A retraction (a late event disproved a drop-off that had fired) carries the same
-- trigger_event_id and a higher version, so under FINAL it replaces the firing.
CREATE TABLE IF NOT EXISTS {database}.journey_triggers
(
    trigger_event_id String COMMENT 'hash of trigger id, buyer and occurrence',
    trigger_id LowCardinality(String),
    kind LowCardinality(String) COMMENT 'dropoff | stage_move | high_intent | exit',
    buyer_id String,
    fired_at DateTime64(3, 'UTC') COMMENT 'event time of the cause (a drop-off: its deadline)',
    stage LowCardinality(Nullable(String)),
    event_id Nullable(String) COMMENT 'the event that caused it',
    channel LowCardinality(Nullable(String)),
    campaign LowCardinality(Nullable(String)),
    persona LowCardinality(Nullable(String)),
    payload String COMMENT 'JSON object',
    is_retraction UInt8 COMMENT '1: a late event showed the drop-off did not happen',
    version UInt64,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (trigger_id, buyer_id, trigger_event_id)
SETTINGS non_replicated_deduplication_window = 10000;
