-- Materialized-view aggregates, fed by every insert into touchpoints.
-- Inserts run with deduplicate_blocks_in_dependent_materialized_views = 1 and
-- these targets keep dedup hashes too, so a replayed batch is dropped here as
-- well as in the source table.

CREATE TABLE IF NOT EXISTS {database}.funnel_daily
(
    day Date,
    stage Enum8('pre_awareness' = 1, 'awareness' = 2, 'consideration' = 3, 'purchase' = 4, 'retention' = 5, 'advocacy' = 6),
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

CREATE TABLE IF NOT EXISTS {database}.interactions_hour_of_week
(
    channel LowCardinality(String),
    event_type LowCardinality(String),
    day_of_week UInt8 COMMENT '1 = Monday … 7 = Sunday, UTC',
    hour UInt8 COMMENT '0–23, UTC',
    touches SimpleAggregateFunction(sum, UInt64),
    buyers AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
ORDER BY (channel, event_type, day_of_week, hour)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.interactions_hour_of_week_mv
TO {database}.interactions_hour_of_week AS
SELECT
    channel,
    event_type,
    toUInt8(toDayOfWeek(occurred_at)) AS day_of_week,
    toUInt8(toHour(occurred_at)) AS hour,
    toUInt64(count()) AS touches,
    uniqExactState(buyer_id) AS buyers
FROM {database}.touchpoints
GROUP BY channel, event_type, day_of_week, hour;
