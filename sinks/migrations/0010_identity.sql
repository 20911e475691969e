-- Identity stitching: when two ids turn out to be one person, the journey of the id that
-- joins (the alias) is folded into the person's, and the alias's rows are retracted the way
-- a late event retracts a transition: a row with a higher version and is_deleted = 1, which
-- FINAL drops. journey_state and dropoffs gain that column and become
-- ReplacingMergeTree(version, is_deleted), so every query that reads them with FINAL counts
-- each person once without a change. identity_links records who is whom (alias → person,
-- always one hop: a person merged into another takes its aliases along).
--
-- The rebuilds follow 0008 (a copy with the new engine, the two swapped, the old one
-- dropped); the column is added to the old table first so both have the same columns and
-- every step can run twice. Run it with the writers stopped (`touchpoint migrate`).

ALTER TABLE {database}.journey_state
    ADD COLUMN IF NOT EXISTS is_deleted UInt8 DEFAULT 0 COMMENT '1: merged into another person (identity_links)';

DROP TABLE IF EXISTS {database}.journey_state__0010;

CREATE TABLE {database}.journey_state__0010
(
    buyer_id String,
    persona LowCardinality(Nullable(String)),
    tier LowCardinality(Nullable(String)),
    account_id Nullable(String),
    anonymous_id Nullable(String),
    furthest_stage LowCardinality(Nullable(String)),
    current_stage LowCardinality(Nullable(String)),
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
    dropoff_stage LowCardinality(Nullable(String)) COMMENT 'stalled here and not recovered',
    dropoff_at Nullable(DateTime64(3, 'UTC')),
    events UInt32,
    unclassified UInt32,
    version UInt64,
    is_deleted UInt8 DEFAULT 0 COMMENT '1: merged into another person (identity_links)'
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY buyer_id
SETTINGS non_replicated_deduplication_window = 10000;

INSERT INTO {database}.journey_state__0010
SELECT * FROM {database}.journey_state
SETTINGS insert_deduplicate = 0;

EXCHANGE TABLES {database}.journey_state AND {database}.journey_state__0010;

DROP TABLE {database}.journey_state__0010;

ALTER TABLE {database}.dropoffs
    ADD COLUMN IF NOT EXISTS is_deleted UInt8 DEFAULT 0 COMMENT '1: merged into another person, or no drop-off once merged';

DROP TABLE IF EXISTS {database}.dropoffs__0010;

CREATE TABLE {database}.dropoffs__0010
(
    buyer_id String,
    stage LowCardinality(String),
    entered_at DateTime64(3, 'UTC'),
    deadline DateTime64(3, 'UTC'),
    last_touch_at Nullable(DateTime64(3, 'UTC')),
    last_touch_channel LowCardinality(Nullable(String)),
    last_touch_event_type LowCardinality(Nullable(String)),
    last_touch_campaign LowCardinality(Nullable(String)),
    recovered_at Nullable(DateTime64(3, 'UTC')),
    persona LowCardinality(Nullable(String)),
    version UInt64,
    is_deleted UInt8 DEFAULT 0 COMMENT '1: merged into another person, or no drop-off once merged'
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY (buyer_id, stage)
SETTINGS non_replicated_deduplication_window = 10000;

INSERT INTO {database}.dropoffs__0010
SELECT * FROM {database}.dropoffs
SETTINGS insert_deduplicate = 0;

EXCHANGE TABLES {database}.dropoffs AND {database}.dropoffs__0010;

DROP TABLE {database}.dropoffs__0010;

CREATE TABLE IF NOT EXISTS {database}.identity_links
(
    alias_id String COMMENT 'an id whose journey is part of person_id''s',
    person_id String,
    identified UInt8 COMMENT '1: the alias was the buyer id of a linking event',
    version UInt64 COMMENT 'ids of the person when written (a person only grows)',
    is_deleted UInt8 COMMENT '1: the link was taken back'
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY alias_id
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS {database}.identity_blocks
(
    buyer_id String COMMENT 'split off its person (touchpoint identity split): never linked again',
    blocked_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY buyer_id;
