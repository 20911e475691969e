-- Ad-platform spend per day and campaign (`touchpoint import ads-csv`).
-- Re-importing an export replaces its rows (same day, platform and campaign).

CREATE TABLE IF NOT EXISTS {database}.ad_spend
(
    day Date,
    platform LowCardinality(String),
    campaign LowCardinality(String),
    impressions UInt64,
    clicks UInt64,
    cost Decimal(18, 6),
    currency LowCardinality(String),
    source String,
    position String,
    imported_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(imported_at)
ORDER BY (day, platform, campaign)
SETTINGS non_replicated_deduplication_window = 10000;
