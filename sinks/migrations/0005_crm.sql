-- CRM accounts (`touchpoint import crm FILE.csv`), joined onto the buyer tracker by
-- buyer id or account id. A re-import replaces a client's row.

CREATE TABLE IF NOT EXISTS {database}.crm_clients
(
    client_key String COMMENT 'the buyer_id or account_id the row describes',
    client_name String,
    client_type LowCardinality(String),
    region LowCardinality(String),
    persona LowCardinality(String),
    key_decision_maker String,
    payment_terms LowCardinality(String),
    contract_on_file Bool,
    sla LowCardinality(String),
    source String,
    imported_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(imported_at)
ORDER BY client_key;
