-- `touchpoint dead-letters replay`: what became of each dead letter sent back through
-- the pipeline. A dead letter whose latest outcome is "replayed" or "duplicate" is not
-- replayed again; one that "failed" again is, after the next fix.

CREATE TABLE IF NOT EXISTS {database}.dead_letter_replays
(
    dead_letter_id String,
    outcome LowCardinality(String) COMMENT 'replayed | duplicate (its event id was in touchpoints) | failed | sent (to Kafka)',
    detail String COMMENT 'why it failed again',
    target String COMMENT 'embedded (this database) or the Kafka topic',
    run_seq UInt64 COMMENT 'the journey_runs.seq of an embedded replay',
    replayed_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(replayed_at)
ORDER BY dead_letter_id;
