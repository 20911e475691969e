-- Core tables. `{database}` is replaced by the configured database name.
-- Every table that receives retried batches keeps insert-deduplication hashes
-- (non_replicated_deduplication_window) and is a ReplacingMergeTree on its
-- natural key, so a replayed batch never double-counts.

CREATE TABLE IF NOT EXISTS {database}.touchpoints
(
    event_id String,
    buyer_id String,
    anonymous_id Nullable(String),
    account_id Nullable(String),
    channel LowCardinality(String),
    event_type LowCardinality(String),
    occurred_at DateTime64(3, 'UTC'),
    received_at Nullable(DateTime64(3, 'UTC')),
    campaign LowCardinality(Nullable(String)),
    promo LowCardinality(Nullable(String)),
    revenue Nullable(Decimal(18, 4)),
    currency LowCardinality(Nullable(String)),
    properties String COMMENT 'JSON object of source properties',
    persona LowCardinality(Nullable(String)),
    stage Nullable(Enum8('pre_awareness' = 1, 'awareness' = 2, 'consideration' = 3, 'purchase' = 4, 'retention' = 5, 'advocacy' = 6)),
    exit_kind LowCardinality(Nullable(String)),
    is_purchase Bool,
    rule_id LowCardinality(Nullable(String)) COMMENT 'NULL: no rule matched (unclassified)',
    source String,
    source_position String,
    schema_version UInt8,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (buyer_id, occurred_at, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS {database}.stage_transitions
(
    buyer_id String,
    to_stage Enum8('pre_awareness' = 1, 'awareness' = 2, 'consideration' = 3, 'purchase' = 4, 'retention' = 5, 'advocacy' = 6),
    from_stage Nullable(Enum8('pre_awareness' = 1, 'awareness' = 2, 'consideration' = 3, 'purchase' = 4, 'retention' = 5, 'advocacy' = 6)),
    transitioned_at DateTime64(3, 'UTC'),
    event_id String,
    channel LowCardinality(String),
    event_type LowCardinality(String),
    campaign LowCardinality(Nullable(String)),
    persona LowCardinality(Nullable(String)),
    version UInt64,
    is_deleted UInt8 COMMENT '1: a late event showed this was not a move after all'
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY (buyer_id, to_stage)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS {database}.journey_state
(
    buyer_id String,
    persona LowCardinality(Nullable(String)),
    account_id Nullable(String),
    anonymous_id Nullable(String),
    furthest_stage Nullable(Enum8('pre_awareness' = 1, 'awareness' = 2, 'consideration' = 3, 'purchase' = 4, 'retention' = 5, 'advocacy' = 6)),
    current_stage Nullable(Enum8('pre_awareness' = 1, 'awareness' = 2, 'consideration' = 3, 'purchase' = 4, 'retention' = 5, 'advocacy' = 6)),
    stage_entered_at Map(LowCardinality(String), DateTime64(3, 'UTC')),
    touches_by_stage Map(LowCardinality(String), UInt32),
    touches_by_channel Map(LowCardinality(String), UInt32),
    preferred_channel LowCardinality(Nullable(String)),
    first_touch_at Nullable(DateTime64(3, 'UTC')),
    first_touch_channel LowCardinality(Nullable(String)),
    first_touch_campaign LowCardinality(Nullable(String)),
    last_touch_at Nullable(DateTime64(3, 'UTC')),
    last_touch_channel LowCardinality(Nullable(String)),
    last_touch_campaign LowCardinality(Nullable(String)),
    exits Array(Tuple(kind LowCardinality(String), stage LowCardinality(String), channel LowCardinality(String), at DateTime64(3, 'UTC'))),
    purchases UInt32,
    revenue Decimal(18, 4),
    first_purchase_at Nullable(DateTime64(3, 'UTC')),
    last_purchase_at Nullable(DateTime64(3, 'UTC')),
    dropoff_stage Nullable(Enum8('pre_awareness' = 1, 'awareness' = 2, 'consideration' = 3, 'purchase' = 4, 'retention' = 5, 'advocacy' = 6)) COMMENT 'stalled here and not recovered',
    dropoff_at Nullable(DateTime64(3, 'UTC')),
    events UInt32,
    unclassified UInt32,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY buyer_id
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS {database}.dropoffs
(
    buyer_id String,
    stage Enum8('pre_awareness' = 1, 'awareness' = 2, 'consideration' = 3, 'purchase' = 4, 'retention' = 5, 'advocacy' = 6),
    entered_at DateTime64(3, 'UTC'),
    deadline DateTime64(3, 'UTC'),
    last_touch_at Nullable(DateTime64(3, 'UTC')),
    last_touch_channel LowCardinality(Nullable(String)),
    last_touch_event_type LowCardinality(Nullable(String)),
    last_touch_campaign LowCardinality(Nullable(String)),
    recovered_at Nullable(DateTime64(3, 'UTC')),
    persona LowCardinality(Nullable(String)),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (buyer_id, stage)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS {database}.dead_letters
(
    dead_letter_id String,
    reason LowCardinality(String),
    detail String,
    raw String,
    raw_bytes UInt64,
    raw_sha256 String,
    raw_truncated Bool,
    source String,
    position String,
    recorded_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY dead_letter_id
SETTINGS non_replicated_deduplication_window = 10000;
