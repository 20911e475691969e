"""The `touchpoint` command as a new user runs it: in a fresh directory, no servers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from tests.factories import event

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
STAGE_NAMES = ("pre_awareness", "awareness", "consideration", "purchase", "retention", "advocacy")


def touchpoint(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("TOUCHPOINT_")
    }
    environment["PYTHONPATH"] = str(REPO)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "touchpoint", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def funnel_lines(output: str) -> list[str]:
    return [
        line
        for line in output.splitlines()
        if line.split(" ")[0] in STAGE_NAMES and re.search(r"\d", line) and "  " in line
    ][:6]


def test_the_demo_prints_the_six_stage_funnel_and_a_rerun_changes_no_number(tmp_path: Path) -> None:
    first = touchpoint(tmp_path, "demo", "--buyers", "400", "--seed", "3")
    assert first.returncode == 0, first.stderr
    funnel = funnel_lines(first.stdout)
    assert [line.split()[0] for line in funnel] == list(STAGE_NAMES)
    assert "chDB (embedded ClickHouse) in" in first.stdout
    assert (tmp_path / "touchpoint-data" / "clickhouse").is_dir()
    truth = json.loads((tmp_path / "touchpoint-data/demo/truth-seed3-buyers400.json").read_text())
    reached = [int(line.split()[1]) for line in funnel]
    assert reached == [truth["funnel"][name]["reached"] for name in STAGE_NAMES]

    second = touchpoint(tmp_path, "demo", "--buyers", "400", "--seed", "3")
    assert second.returncode == 0, second.stderr
    assert funnel_lines(second.stdout) == funnel

    report = touchpoint(tmp_path, "report", "--by", "persona")
    assert report.returncode == 0, report.stderr
    assert "Funnel by persona" in report.stdout and "smb_owner" in report.stdout
    assert "Attribution of revenue by channel, five models" in report.stdout
    brief = touchpoint(tmp_path, "report", "--brief", "--by", "persona")
    assert brief.returncode == 0, brief.stderr
    assert "Funnel by persona" in brief.stdout and "smb_owner" in brief.stdout


def test_bad_input_is_dead_lettered_and_counted_and_the_run_continues(tmp_path: Path) -> None:
    good = event("page_view", at=timedelta(hours=1))
    naive = dict(good, event_id="naive", occurred_at="2026-03-02T10:00:00")
    no_buyer = {key: value for key, value in good.items() if key != "buyer_id"}
    lines = [
        json.dumps(good),
        "{broken json",
        "[1, 2, 3]",
        json.dumps(no_buyer),
        json.dumps(dict(good, event_id="fax", channel="fax")),
        json.dumps(naive),
        json.dumps(dict(good, event_id="big", properties={"blob": "x" * 1_100_000})),
    ]
    (tmp_path / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    result = touchpoint(tmp_path, "run", "--input", "mixed.jsonl")
    assert result.returncode == 0, result.stderr
    assert "1 touchpoints" in result.stdout
    assert "6 dead-lettered" in result.stdout
    for reason in (
        "invalid_json",
        "not_an_object",
        "missing_field",
        "unknown_channel",
        "naive_timestamp",
        "record_too_large",
    ):
        assert f"{reason} 1" in result.stdout


def count_rows(cwd: Path, *tables: str) -> dict[str, int]:
    """Rows as readers see them (FINAL), read by another process (chDB: one per process)."""
    script = (
        "import json, sys, clickhouse_connect\n"
        "client = clickhouse_connect.get_client(interface='chdb', path=sys.argv[1])\n"
        "print(json.dumps({t: client.command(f'SELECT count() FROM touchpoint.{t} FINAL')"
        " for t in sys.argv[2:]}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(cwd / "touchpoint-data" / "clickhouse"), *tables],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    counts: dict[str, int] = json.loads(result.stdout.strip().splitlines()[-1])
    return counts


def test_imports_load_their_rows_dead_letter_the_rest_and_a_reimport_adds_nothing(
    tmp_path: Path,
) -> None:
    (tmp_path / "spend.csv").write_text(
        "Day,Campaign,Impressions,Clicks,Cost\n"
        "2026-03-01,spring,1000,40,12.50\n"
        "2026-03-02,spring,900,31,11.00\n"
        "not a day,spring,1,1,1\n",
        encoding="utf-8",
    )
    (tmp_path / "crm.csv").write_text(
        "Client ID,Client name,Client type,Region\n"
        "buyer-1,Acme,enterprise,EMEA\n"
        ",Nameless,smb,US\n",
        encoding="utf-8",
    )
    for _ in range(2):
        ads = touchpoint(tmp_path, "import", "ads-csv", "spend.csv", "--platform", "google")
        assert ads.returncode == 0, ads.stderr
        assert "Loaded 2 ad-spend rows" in ads.stdout
        assert "1 unreadable rows dead-lettered" in ads.stdout
        crm = touchpoint(tmp_path, "import", "crm", "crm.csv")
        assert crm.returncode == 0, crm.stderr
        assert "Loaded 1 clients" in crm.stdout
        assert "1 rows without a key dead-lettered" in crm.stdout
    assert count_rows(tmp_path, "ad_spend", "crm_clients", "dead_letters") == {
        "ad_spend": 2,
        "crm_clients": 1,
        "dead_letters": 2,
    }


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("run", "--input", "absent.jsonl"), {}, "no such input file: absent.jsonl"),
        (("run", "--input", "x.jsonl", "--batch-size", "0"), {}, "--batch-size"),
        (("report", "--by", "mood"), {}, "'mood' is not one of"),
        (("run", "--input", "x.jsonl", "--rules", "nope.toml"), {}, "cannot read rules file"),
        (("report",), {"TOUCHPOINT_CLICKHOUSE_URL": "ftp://example"}, "unsupported ClickHouse URL"),
        (("report",), {"TOUCHPOINT_CLICKHOUSE_DATABASE": "drop table;"}, "invalid setting"),
        (("frobnicate",), {}, "No such command"),
    ],
)
def test_bad_flags_and_files_are_one_line_errors_with_exit_code_1(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    (tmp_path / "x.jsonl").write_text(json.dumps(event("page_view", at=timedelta(0))) + "\n")
    result = touchpoint(tmp_path, *args, env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_shows_every_env_var_twin(tmp_path: Path) -> None:
    result = touchpoint(tmp_path, "run", "--help")
    assert result.returncode == 0
    for variable in (
        "TOUCHPOINT_RULES_FILE",
        "TOUCHPOINT_BATCH_SIZE",
        "TOUCHPOINT_ALLOWED_LATENESS",
        "TOUCHPOINT_DEDUP_WINDOW",
    ):
        assert variable in result.stdout
    top = touchpoint(tmp_path, "--help")
    for variable in (
        "TOUCHPOINT_DATA_DIR",
        "TOUCHPOINT_CLICKHOUSE_URL",
        "TOUCHPOINT_CLICKHOUSE_DATABASE",
    ):
        assert variable in top.stdout


def test_schema_export_writes_json_schema_files(tmp_path: Path) -> None:
    result = touchpoint(tmp_path, "schema", "export", "schemas-out")
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "schemas-out" / "touchpoint.v1.schema.json").read_text())
    assert {"event_id", "buyer_id", "channel", "occurred_at"} <= set(document["required"])
    assert document["$schema"].startswith("https://json-schema.org/")


def test_a_bad_report_config_stops_a_run_before_it_writes_anything(tmp_path: Path) -> None:
    """The summary after a run reads TOUCHPOINT_REPORT_CONFIG: checked first, so a wrong
    path is a clear error up front, not a failure after the data went in."""
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps(event("page_view", at=timedelta(0))) + "\n", encoding="utf-8")
    missing = tmp_path / "no-such-report.toml"
    result = touchpoint(
        tmp_path, "run", "--input", str(events), env={"TOUCHPOINT_REPORT_CONFIG": str(missing)}
    )
    assert result.returncode == 1
    assert f"cannot read report config {missing}" in result.stderr
    assert not (tmp_path / "touchpoint-data" / "clickhouse").exists()
