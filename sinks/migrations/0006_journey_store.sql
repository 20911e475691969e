-- The journeys `touchpoint run` leaves behind, so that the next run into the same
-- database resumes from them (day 1 then day 2 == both at once). Embedded runs only:
-- Kafka workers keep theirs in the compacted journey.store topic.

CREATE TABLE IF NOT EXISTS {database}.journey_store
(
    buyer_id String,
    partition UInt16,
    state String COMMENT 'schemas.journey.encode_state (MessagePack), including the dedup memory',
    run_seq UInt64 COMMENT 'the journey_runs.seq that wrote this version'
)
ENGINE = ReplacingMergeTree(run_seq)
ORDER BY buyer_id;

-- One row when a run starts and one when its journeys are stored: a run with no
-- "committed" row did not finish, and its journey_store rows are not read.
CREATE TABLE IF NOT EXISTS {database}.journey_runs
(
    seq UInt64,
    status Enum8('started' = 1, 'committed' = 2),
    run_id String COMMENT 'hash of the inputs, rules, settings and the run resumed from',
    inputs String COMMENT 'the input files, for messages',
    input_sha256 Array(String) COMMENT 'SHA-256 of each input file',
    rules_sha256 String,
    newest_event_time Nullable(DateTime64(6, 'UTC')) COMMENT 'event time reached (committed rows)',
    records UInt64,
    journeys UInt64 COMMENT 'journeys the run changed (committed rows)',
    recorded_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY (seq, status);
