"""The names the wiring modules used to share one file under, re-exported.

The wiring is split by what it wires — :mod:`touchpoint.config` (settings, rules, the
ClickHouse client), :mod:`touchpoint.embedded` (file runs), :mod:`touchpoint.identity`,
:mod:`touchpoint.replay`, :mod:`touchpoint.demo`, :mod:`touchpoint.kafka` (topics,
producing, worker, sink), :mod:`touchpoint.webhooks`, :mod:`touchpoint.collector`,
:mod:`touchpoint.imports`, :mod:`touchpoint.report`, :mod:`touchpoint.sql`,
:mod:`touchpoint.serve` — and new code imports from those. This module keeps
``touchpoint.wiring.X`` working for the scripts (bench/) that use it."""

from __future__ import annotations

from touchpoint.collector import run_collector
from touchpoint.config import (
    build_processor,
    clickhouse,
    load_settings,
    rules_for,
    target_description,
)
from touchpoint.demo import DemoData, demo_data
from touchpoint.embedded import InputFile, inspect_inputs, run_files
from touchpoint.identity import split_identity
from touchpoint.imports import import_ads_csv, import_crm_csv
from touchpoint.kafka import (
    ensure_pipeline_topics,
    file_payloads,
    generated_payloads,
    produce,
    run_sink,
    run_worker,
    wait_for_topics,
)
from touchpoint.replay import ReplayResult, replay_dead_letters
from touchpoint.report import brief_report, full_report, load_report_config
from touchpoint.webhooks import load_webhooks, run_webhooks

__all__ = [
    "DemoData",
    "InputFile",
    "ReplayResult",
    "brief_report",
    "build_processor",
    "clickhouse",
    "demo_data",
    "ensure_pipeline_topics",
    "file_payloads",
    "full_report",
    "generated_payloads",
    "import_ads_csv",
    "import_crm_csv",
    "inspect_inputs",
    "load_report_config",
    "load_settings",
    "load_webhooks",
    "produce",
    "replay_dead_letters",
    "rules_for",
    "run_collector",
    "run_files",
    "run_sink",
    "run_webhooks",
    "run_worker",
    "split_identity",
    "target_description",
    "wait_for_topics",
]
