"""The synthetic journey generator: deterministic, noisy as configured, with consistent truth."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime

from ingest.generator import GeneratorConfig, generate
from schemas.enums import STAGES, DeadLetterReason


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
