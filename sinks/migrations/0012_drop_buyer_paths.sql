-- buyer_paths (0011) goes: measured side by side, the attribution read from it was no
-- faster than gathering the purchasers' touches from touchpoints (640 vs 563 ms, raw
-- 958 ms, ~1M touchpoints), and its view cost a third more on every touchpoints insert
-- (docs/benchmarks.md, issue 14's second slice). The attribution now reads purchases and
-- the touchpoints of the buyers with a purchase. The view goes first, so no insert writes
-- into a table that is gone; both statements can run again.

DROP VIEW IF EXISTS {database}.buyer_paths_mv;

DROP TABLE IF EXISTS {database}.buyer_paths
