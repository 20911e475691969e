-- Stage names come from the rules file (`stages = [...]`, default the six of 0001), so
-- every stage column becomes a string: LowCardinality(String), LowCardinality(Nullable(String))
-- where it was Nullable. Existing values keep their names. Strings sort alphabetically:
-- queries order stages by indexOf(<the rules' stages>, stage), never by the column.
--
-- Columns outside the sorting key change in place (ALTER ... MODIFY COLUMN). Tables whose
-- key holds a stage (stage_transitions, dropoffs, funnel_daily) cannot: each is rebuilt —
-- a copy with the new types, every row inserted into it, the two swapped (EXCHANGE), the
-- old one dropped. funnel_daily_mv writes into funnel_daily, so it is dropped first and
-- created again, with 0002's SELECT, once the new funnel_daily is in place.
--
-- Run it with the writers stopped (`touchpoint migrate`): a touchpoint inserted while the
-- view is gone would be missing from funnel_daily. Each step can run twice, so a migration
-- that failed half-way is applied again from the top. A rebuilt table's insert-dedup memory
-- starts empty; a batch replayed into touchpoints is still refused there, and with it
-- its aggregate rows. The copies run with insert_deduplicate = 0 so that two identical
-- parts (two identical aggregate rows) are both kept.

ALTER TABLE {database}.touchpoints
    MODIFY COLUMN stage LowCardinality(Nullable(String));

ALTER TABLE {database}.journey_state
    MODIFY COLUMN furthest_stage LowCardinality(Nullable(String)),
    MODIFY COLUMN current_stage LowCardinality(Nullable(String)),
    MODIFY COLUMN dropoff_stage LowCardinality(Nullable(String)) COMMENT 'stalled here and not recovered';

-- stage_transitions (key: buyer_id, to_stage)
DROP TABLE IF EXISTS {database}.stage_transitions__0008;

CREATE TABLE {database}.stage_transitions__0008
(
    buyer_id String,
    to_stage LowCardinality(String),
    from_stage LowCardinality(Nullable(String)),
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

INSERT INTO {database}.stage_transitions__0008
SELECT * FROM {database}.stage_transitions
SETTINGS insert_deduplicate = 0;

EXCHANGE TABLES {database}.stage_transitions AND {database}.stage_transitions__0008;

DROP TABLE {database}.stage_transitions__0008;

-- dropoffs (key: buyer_id, stage)
DROP TABLE IF EXISTS {database}.dropoffs__0008;

CREATE TABLE {database}.dropoffs__0008
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
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (buyer_id, stage)
SETTINGS non_replicated_deduplication_window = 10000;

INSERT INTO {database}.dropoffs__0008
SELECT * FROM {database}.dropoffs
SETTINGS insert_deduplicate = 0;

EXCHANGE TABLES {database}.dropoffs AND {database}.dropoffs__0008;

DROP TABLE {database}.dropoffs__0008;

-- funnel_daily (key: day, stage, channel, campaign, persona) and the view that feeds it
DROP VIEW IF EXISTS {database}.funnel_daily_mv;

DROP TABLE IF EXISTS {database}.funnel_daily__0008;

CREATE TABLE {database}.funnel_daily__0008
(
    day Date,
    stage LowCardinality(String),
    channel LowCardinality(String),
    campaign LowCardinality(String),
    persona LowCardinality(String),
    touches SimpleAggregateFunction(sum, UInt64),
    purchases SimpleAggregateFunction(sum, UInt64),
    revenue SimpleAggregateFunction(sum, Decimal(38, 4)),
    buyers AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
ORDER BY (day, stage, channel, campaign, persona)
SETTINGS non_replicated_deduplication_window = 10000;

INSERT INTO {database}.funnel_daily__0008
SELECT * FROM {database}.funnel_daily
SETTINGS insert_deduplicate = 0;

EXCHANGE TABLES {database}.funnel_daily AND {database}.funnel_daily__0008;

DROP TABLE {database}.funnel_daily__0008;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.funnel_daily_mv TO {database}.funnel_daily AS
SELECT
    toDate(occurred_at) AS day,
    assumeNotNull(stage) AS stage,
    channel,
    ifNull(campaign, '') AS campaign,
    ifNull(persona, '') AS persona,
    toUInt64(count()) AS touches,
    toUInt64(countIf(is_purchase)) AS purchases,
    toDecimal128(sumIf(ifNull(revenue, toDecimal64(0, 4)), is_purchase), 4) AS revenue,
    uniqExactState(buyer_id) AS buyers
FROM (SELECT * FROM {database}.touchpoints WHERE stage IS NOT NULL)
GROUP BY day, stage, channel, campaign, persona;
