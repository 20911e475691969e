"""Worker metrics, created by a factory that takes a registry (never module globals).

Label children are bound once per label value and reused; the hot path only calls
``inc`` on cached children.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from processors.journey_processor import HELD_BACK_REASONS, BatchOutput, ProcessorCounters
from schemas.enums import DeadLetterReason

__all__ = ["WorkerMetrics"]


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "touchpoint_worker_events_total",
            "Touchpoints processed (duplicates excluded), by channel and stage ('' = none).",
            ["channel", "stage"],
            registry=registry,
        )
        self.transitions = Counter(
            "touchpoint_worker_stage_transitions_total",
            "Moves of a buyer's furthest stage, by from (entry = first stage) and to.",
            ["from_stage", "to_stage"],
            registry=registry,
        )
        self.duplicates = Counter(
            "touchpoint_worker_duplicates_total",
            "Events dropped as duplicates (same event id).",
            registry=registry,
        )
        self.replayed = Counter(
            "touchpoint_worker_replayed_records_total",
            "Input records delivered again after a rebalance or restart and skipped: "
            "their partition's state already includes them.",
            registry=registry,
        )
        self.late = Counter(
            "touchpoint_worker_late_events_total",
            "Events older than their partition's watermark when they arrived.",
            registry=registry,
        )
        self.held_back = Counter(
            "touchpoint_worker_watermark_held_back_total",
            "Events newer than their partition's event time that did not move its watermark, "
            "by reason: receive_time (stamped when received), ahead_of_receipt, future "
            "(more than TOUCHPOINT_MAX_FUTURE_SKEW ahead of their receipt or the clock).",
            ["reason"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "touchpoint_worker_dead_letters_total",
            "Records dead-lettered by the worker, by reason.",
            ["reason"],
            registry=registry,
        )
        self.dropoffs = Counter(
            "touchpoint_worker_dropoffs_total",
            "Drop-offs judged, by stage.",
            ["stage"],
            registry=registry,
        )
        self.triggers_fired = Counter(
            "touchpoint_worker_triggers_fired_total",
            "Real-time triggers fired (journey.triggers rows that are not retractions), "
            "by trigger id.",
            ["trigger"],
            registry=registry,
        )
        self.triggers_retracted = Counter(
            "touchpoint_worker_triggers_retracted_total",
            "Fired drop-off triggers retracted because a late event showed progress in time, "
            "by trigger id.",
            ["trigger"],
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "touchpoint_worker_batch_seconds",
            "Time a worker spends on one batch, by step: process (decode, classify, fold, "
            "rows) and send (queueing the batch's records in its partitions' transactions).",
            ["step"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.batch_process_seconds = self.batch_seconds.labels("process")
        self.batch_send_seconds = self.batch_seconds.labels("send")
        self.journeys = Gauge(
            "touchpoint_worker_journeys",
            "Journeys held in memory (the partitions this worker owns).",
            registry=registry,
        )
        self.watermark = Gauge(
            "touchpoint_worker_watermark_seconds",
            "Newest event time seen, per partition (Unix seconds).",
            ["partition"],
            registry=registry,
        )
        self._children: dict[tuple[Any, ...], Any] = {}
        for reason in DeadLetterReason:  # exposed at 0 from the start, so rate() has a baseline
            self._child(self.dead_letters, reason.value)
        self._duplicates_seen = 0
        self._late_seen = 0
        self._held_back_seen: dict[str, int] = {}
        for held in HELD_BACK_REASONS:
            self._child(self.held_back, held)

    def bind_triggers(self, trigger_ids: Iterable[str]) -> None:
        """Bind the trigger counters' children once (exposed at 0 from the start)."""
        for trigger in trigger_ids:
            self._child(self.triggers_fired, trigger)
            self._child(self.triggers_retracted, trigger)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, output: BatchOutput, counters: ProcessorCounters, journeys: int) -> None:
        """Count one handled batch (rows it produced, and the processor's running totals)."""
        stats = output.stats
        for (channel, stage), count in stats.events.items():
            self._child(self.events, channel, stage).inc(count)
        for (source, target), count in stats.moves.items():
            self._child(self.transitions, source, target).inc(count)
        for reason, count in stats.dead_letters.items():
            self._child(self.dead_letters, reason).inc(count)
        for stage, count in stats.dropoffs.items():
            self._child(self.dropoffs, stage).inc(count)
        for trigger, count in stats.triggers.items():
            self._child(self.triggers_fired, trigger).inc(count)
        for trigger, count in stats.retractions.items():
            self._child(self.triggers_retracted, trigger).inc(count)
        self.duplicates.inc(counters.duplicates - self._duplicates_seen)
        self.late.inc(counters.late - self._late_seen)
        self._duplicates_seen, self._late_seen = counters.duplicates, counters.late
        for reason, count in counters.held_back.items():
            seen = self._held_back_seen.get(reason, 0)
            if count > seen:
                self._child(self.held_back, reason).inc(count - seen)
                self._held_back_seen[reason] = count
        self.journeys.set(journeys)

    def observe_watermarks(self, newest: dict[int, Any]) -> None:
        for partition, at in newest.items():
            self._child(self.watermark, str(partition)).set(at.timestamp())
