"""The synthetic journey generator: deterministic, noisy as configured, with consistent truth."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ingest.generator import DEFAULT_HISTORY, DEFAULT_TIMEOUTS, GeneratorConfig, generate
from schemas.enums import STAGES, DeadLetterReason, Stage


def test_the_same_seed_gives_the_same_dataset() -> None:
    first, truth_a = generate(GeneratorConfig(buyers=50, seed=11))
    second, truth_b = generate(GeneratorConfig(buyers=50, seed=11))
    other, _ = generate(GeneratorConfig(buyers=50, seed=12))
    assert first == second
    assert truth_a.to_json() == truth_b.to_json()
    assert first != other


def test_noise_is_injected_as_configured() -> None:
    lines, truth = generate(
        GeneratorConfig(buyers=400, seed=5, duplicate_rate=0.05, malformed_rate=0.01)
    )
    assert set(truth.malformed) == {
        reason.value
        for reason in (
            DeadLetterReason.INVALID_JSON,
            DeadLetterReason.NOT_AN_OBJECT,
            DeadLetterReason.MISSING_FIELD,
            DeadLetterReason.UNKNOWN_CHANNEL,
            DeadLetterReason.NAIVE_TIMESTAMP,
            DeadLetterReason.RECORD_TOO_LARGE,
            DeadLetterReason.INVALID_FIELD,
        )
    }
    assert len(lines) == truth.events_unique + truth.duplicates + sum(truth.malformed.values())
    assert 0.03 < truth.duplicates / truth.events_unique < 0.07
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            continue
    ids = Counter(record["event_id"] for record in parsed if isinstance(record, dict))
    assert sum(count - 1 for count in ids.values()) == truth.duplicates
    assert truth.unclassified > 0


def test_delivery_is_out_of_order_only_within_the_lateness_bound() -> None:
    config = GeneratorConfig(buyers=300, seed=9, malformed_rate=0.0, out_of_order_rate=0.2)
    lines, _ = generate(config)
    newest = None
    out_of_order = 0
    for line in lines:
        at = datetime.fromisoformat(json.loads(line)["occurred_at"])
        if newest is not None and at < newest:
            out_of_order += 1
            assert newest - at < config.allowed_lateness
        newest = at if newest is None or at > newest else newest
    assert out_of_order > 0


def test_the_funnel_truth_is_consistent() -> None:
    _, truth = generate(GeneratorConfig(buyers=500, seed=3))
    funnel = truth.funnel()
    reached = [funnel[stage]["reached"] for stage in STAGES]
    assert reached[0] == 500
    assert reached == sorted(reached, reverse=True)
    for stage in STAGES:
        counts = funnel[stage]
        assert counts["moved_on"] + counts["dropped"] <= counts["reached"]
    assert sum(truth.dropoffs().values()) == sum(c["dropped"] for c in funnel.values())
    assert sum(buyer.purchases for buyer in truth.buyers) > 0


NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def valid_records(lines: list[str]) -> list[dict[str, Any]]:
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and not str(record.get("event_id", "")).startswith("malf"):
            records.append(record)
    return records


def test_a_timeline_ending_now_stops_there_with_buyers_mid_journey() -> None:
    config = GeneratorConfig.ending_at(NOW, buyers=800, seed=8, timeouts=dict(DEFAULT_TIMEOUTS))
    lines, truth = generate(config)
    records = valid_records(lines)
    occurred = [datetime.fromisoformat(record["occurred_at"]) for record in records]
    received = [datetime.fromisoformat(record["received_at"]) for record in records]
    assert max(occurred) <= NOW and max(received) <= NOW  # nothing from the future
    assert NOW - max(occurred) < timedelta(hours=6)  # buyers are active up to now
    assert min(occurred) >= NOW - DEFAULT_HISTORY
    assert truth.final_watermark == max(occurred) - config.allowed_lateness
    assert truth.to_json()["totals"]["timeline_end"] == NOW.isoformat()

    live = truth.live()
    assert 0.15 < len(live) / len(truth.buyers) < 0.45  # mid-journey, as in a live system
    for buyer in live:
        assert buyer.dropoff_stage is None and buyer.furthest_stage is not Stage.ADVOCACY
        assert buyer.deadline is not None and buyer.deadline > truth.final_watermark
    considering = [buyer for buyer in live if buyer.furthest_stage is Stage.CONSIDERATION]
    assert len(considering) > 40
    # ... and the history is long enough for whole journeys and drop-offs
    assert sum(1 for buyer in truth.buyers if buyer.furthest_stage is Stage.ADVOCACY) > 10
    assert sum(1 for buyer in truth.buyers if buyer.dropoff_stage is not None) > 300

    again, truth_again = generate(config)
    assert again == lines and truth_again.to_json() == truth.to_json()


def test_the_timeline_ending_now_is_the_full_one_cut_at_now() -> None:
    """Cutting changes no journey: the same buyers do the same things up to now."""
    cut = GeneratorConfig.ending_at(NOW, buyers=300, seed=13, timeouts=dict(DEFAULT_TIMEOUTS))
    full = dataclasses.replace(cut, end=None)
    cut_lines, cut_truth = generate(cut)
    full_lines, full_truth = generate(full)

    def touches(lines: list[str], until: datetime) -> set[tuple[str, str]]:
        return {
            (record["event_id"], record["occurred_at"])
            for record in valid_records(lines)
            if datetime.fromisoformat(record["occurred_at"]) <= until
        }

    assert touches(cut_lines, NOW) == touches(full_lines, NOW)
    assert touches(full_lines, NOW + timedelta(days=3650)) > touches(cut_lines, NOW)
    full_by_id = {buyer.buyer_id: buyer for buyer in full_truth.buyers}
    done_before_now = 0
    for buyer in cut_truth.buyers:
        whole = full_by_id[buyer.buyer_id]
        assert buyer.furthest_stage.rank <= whole.furthest_stage.rank
        assert buyer.purchases <= whole.purchases
        if (buyer.furthest_stage, buyer.purchases, buyer.exits) == (
            whole.furthest_stage,
            whole.purchases,
            whole.exits,
        ):
            done_before_now += 1
    assert done_before_now > 150


def test_a_timeline_needs_aware_times_and_every_arrival_before_its_end() -> None:
    with pytest.raises(ValueError, match="aware"):
        GeneratorConfig.ending_at(NOW.replace(tzinfo=None))
    with pytest.raises(ValueError, match="arrival"):
        GeneratorConfig(start=NOW - timedelta(days=10), start_span=timedelta(days=11), end=NOW)
