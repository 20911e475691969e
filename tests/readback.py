"""Reading every reported number back from ClickHouse, for comparisons with ground truth."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ingest.generator import GroundTruth
from sinks import analysis, queries


def read_back(client: Any, database: str) -> dict[str, Any]:
    funnel = {
        step.stage: {
            "reached": step.reached,
            "moved_on": step.moved_on,
            "dropped": step.dropped,
        }
        for step in analysis.funnel(client, database)
    }
    dropoffs = {
        (d.stage, d.channel): d.buyers for d in queries.dropoffs_by_stage_channel(client, database)
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


def everything_written(client: Any, database: str) -> dict[str, Any]:
    """Everything the runs wrote but the names of the input files and lines (they differ)."""

    def rows(sql: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in client.query(sql.format(db=database)).result_rows]

    return {
        **read_back(client, database),
        "journey_state_rows": rows(
            "SELECT * EXCEPT (version) FROM {db}.journey_state FINAL ORDER BY buyer_id"
        ),
        "transition_rows": rows(
            "SELECT * EXCEPT (version) FROM {db}.stage_transitions FINAL "
            "ORDER BY buyer_id, to_stage"
        ),
        "dropoff_rows": rows(
            "SELECT * EXCEPT (version) FROM {db}.dropoffs FINAL ORDER BY buyer_id, stage"
        ),
        "touchpoint_rows": rows(
            "SELECT * EXCEPT (source, source_position, inserted_at) FROM {db}.touchpoints FINAL "
            "ORDER BY buyer_id, occurred_at, event_id"
        ),
        "dead_letter_rows": rows(
            "SELECT reason, detail, raw_sha256, count() FROM {db}.dead_letters FINAL "
            "GROUP BY ALL ORDER BY ALL"
        ),
    }
