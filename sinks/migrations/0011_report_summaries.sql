-- Summaries of touchpoints for the report (issue 14), kept by materialized views on every
-- insert into touchpoints, so that the per-buyer questions read a few rows per buyer
-- instead of every touch:
--
--   purchases        the purchase touches (is_purchase), the columns the questions read
--   support_touches  the support channel's touches and every ticket_opened, with the score
--   buyer_last_touch per buyer, the event type of the latest touch (argMax state)
--   buyer_channels   each (buyer, channel) with a touch that is not a purchase
--   buyer_paths      per buyer, the set of touches that are not purchases (time, event id,
--                    channel, campaign): the attribution's paths
--
-- Exact on replays, whatever the blocks: purchases and support_touches are filtered copies
-- with touchpoints' own engine and sorting key (a ReplacingMergeTree on (buyer_id,
-- occurred_at, event_id)), so under FINAL they hold exactly the rows of `touchpoints FINAL`
-- that pass the filter; buyer_last_touch keeps an argMax, buyer_channels a set of keys
-- (a ReplacingMergeTree) and buyer_paths a set per buyer (groupUniqArray, with the event
-- id in each element), none of which a duplicate row can change. Touchpoints are facts that are never retracted (a late event retracts a
-- transition or a drop-off, which the questions still read from stage_transitions,
-- dropoffs and journey_state FINAL), so these need no version of their own.
--
-- Existing data is copied in after each view is created (a touch inserted meanwhile is
-- then in both, which the engines absorb), so the migration can run on a database with
-- data, and again from the top if it failed half-way.

CREATE TABLE IF NOT EXISTS {database}.purchases
(
    event_id String,
    buyer_id String,
    occurred_at DateTime64(3, 'UTC'),
    channel LowCardinality(String),
    campaign LowCardinality(Nullable(String)),
    promo LowCardinality(Nullable(String)),
    revenue Nullable(Decimal(18, 4)),
    persona LowCardinality(Nullable(String))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (buyer_id, occurred_at, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.purchases_mv TO {database}.purchases AS
SELECT event_id, buyer_id, occurred_at, channel, campaign, promo, revenue, persona
FROM {database}.touchpoints
WHERE is_purchase;

INSERT INTO {database}.purchases
SELECT event_id, buyer_id, occurred_at, channel, campaign, promo, revenue, persona
FROM {database}.touchpoints
WHERE is_purchase
SETTINGS insert_deduplicate = 0;

CREATE TABLE IF NOT EXISTS {database}.support_touches
(
    event_id String,
    buyer_id String,
    occurred_at DateTime64(3, 'UTC'),
    channel LowCardinality(String),
    event_type LowCardinality(String),
    score Int64 COMMENT 'JSONExtractInt(properties, ''score''): CSAT and NPS answers'
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (buyer_id, occurred_at, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.support_touches_mv
TO {database}.support_touches AS
SELECT event_id, buyer_id, occurred_at, channel, event_type,
       JSONExtractInt(properties, 'score') AS score
FROM {database}.touchpoints
WHERE channel = 'support' OR event_type = 'ticket_opened';

INSERT INTO {database}.support_touches
SELECT event_id, buyer_id, occurred_at, channel, event_type,
       JSONExtractInt(properties, 'score') AS score
FROM {database}.touchpoints
WHERE channel = 'support' OR event_type = 'ticket_opened'
SETTINGS insert_deduplicate = 0;

CREATE TABLE IF NOT EXISTS {database}.buyer_last_touch
(
    buyer_id String,
    last_action AggregateFunction(argMax, String, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY buyer_id
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.buyer_last_touch_mv
TO {database}.buyer_last_touch AS
SELECT buyer_id, argMaxState(toString(event_type), occurred_at) AS last_action
FROM {database}.touchpoints
GROUP BY buyer_id;

INSERT INTO {database}.buyer_last_touch
SELECT buyer_id, argMaxState(toString(event_type), occurred_at) AS last_action
FROM {database}.touchpoints
GROUP BY buyer_id
SETTINGS insert_deduplicate = 0;

CREATE TABLE IF NOT EXISTS {database}.buyer_channels
(
    buyer_id String,
    channel LowCardinality(String)
)
ENGINE = ReplacingMergeTree
ORDER BY (buyer_id, channel)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.buyer_channels_mv
TO {database}.buyer_channels AS
SELECT DISTINCT buyer_id, channel
FROM {database}.touchpoints
WHERE NOT is_purchase;

INSERT INTO {database}.buyer_channels
SELECT DISTINCT buyer_id, channel
FROM {database}.touchpoints
WHERE NOT is_purchase
SETTINGS insert_deduplicate = 0;

CREATE TABLE IF NOT EXISTS {database}.buyer_paths
(
    buyer_id String,
    touches AggregateFunction(groupUniqArray, Tuple(DateTime64(3, 'UTC'), String, String, String))
        COMMENT '(occurred_at, event_id, channel, ifNull(campaign, ''(none)''))'
)
ENGINE = AggregatingMergeTree
ORDER BY buyer_id
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.buyer_paths_mv
TO {database}.buyer_paths AS
SELECT buyer_id,
       groupUniqArrayState((occurred_at, event_id, toString(channel),
                            toString(ifNull(campaign, '(none)')))) AS touches
FROM {database}.touchpoints
WHERE NOT is_purchase
GROUP BY buyer_id;

INSERT INTO {database}.buyer_paths
SELECT buyer_id,
       groupUniqArrayState((occurred_at, event_id, toString(channel),
                            toString(ifNull(campaign, '(none)')))) AS touches
FROM {database}.touchpoints
WHERE NOT is_purchase
GROUP BY buyer_id
SETTINGS insert_deduplicate = 0
