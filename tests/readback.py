"""Reading every reported number back from ClickHouse, for comparisons with ground truth."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ingest.generator import GroundTruth
from sinks import analysis, queries


def read_back(client: Any, database: str) -> dict[str, Any]:
    funnel = {
        step.stage.value: {
            "reached": step.reached,
            "moved_on": step.moved_on,
            "dropped": step.dropped,
        }
        for step in analysis.funnel(client, database)
    }
    dropoffs = {
        (d.stage.value, d.channel): d.buyers
        for d in queries.dropoffs_by_stage_channel(client, database)
    }
    exits = {
        (e.kind, e.stage, e.channel): e.exits
        for e in queries.exits_by_stage_channel(client, database)
    }
    purchases, revenue, buyers = client.query(
        f"SELECT sum(purchases), sum(revenue), count() FROM {database}.journey_state FINAL"
    ).result_rows[0]
    return {
        "funnel": funnel,
        "dropoffs": dropoffs,
        "exits": exits,
        "dead_letters": queries.dead_letter_counts(client, database),
        "tables": queries.table_counts(client, database),
        "purchases": int(purchases),
        "revenue": Decimal(revenue),
        "buyers": int(buyers),
        "unclassified": client.query(
            f"SELECT count() FROM {database}.touchpoints FINAL WHERE rule_id IS NULL"
        ).result_rows[0][0],
    }


def expected_from_truth(truth: GroundTruth) -> dict[str, Any]:
    """The same shape as :func:`read_back`, from the generator's ground truth."""
    return {
        "funnel": {stage.value: counts for stage, counts in truth.funnel().items()},
        "dropoffs": dict(truth.dropoffs()),
        "exits": dict(truth.exits()),
        "dead_letters": dict(truth.malformed),
        "purchases": sum(buyer.purchases for buyer in truth.buyers),
        "revenue": sum((buyer.revenue for buyer in truth.buyers), Decimal(0)),
        "buyers": len(truth.buyers),
        "unclassified": truth.unclassified,
    }
