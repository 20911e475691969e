-- The buyer's account tier (latest properties.tier), for funnels by tier.
ALTER TABLE {database}.journey_state ADD COLUMN IF NOT EXISTS tier LowCardinality(Nullable(String)) AFTER persona;
