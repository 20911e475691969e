#!/usr/bin/env bash
# Set up a virtualenv for this checkout and run the demo, the fast loop or the whole test suite.
#
#   bash deploy/dev.sh demo [touchpoint demo options]   embedded pipeline on synthetic data
#   bash deploy/dev.sh unit [pytest options]            lint, types, unit tests (under a minute)
#   bash deploy/dev.sh test [pytest options]            lint, types, every test (starts Apache Kafka)
#   bash deploy/dev.sh shell                            print the venv's bin dir (for PATH)
#
# Environment: PYTHON (default python3, needs >= 3.11), TOUCHPOINT_VENV (default <repo>/.venv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TOUCHPOINT_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

die() { echo "dev.sh: error: $*" >&2; exit 1; }

# ruff (lint + format) and mypy strict: a second or two once mypy's cache is warm.
check() {
  echo "== ruff" >&2
  "$VENV/bin/ruff" check .
  "$VENV/bin/ruff" format --check .
  echo "== mypy" >&2
  "$VENV/bin/mypy"
}

ensure_venv() {
  local extras="$1"
  command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; install Python 3.11+ or set PYTHON"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); Touchpoint needs Python 3.11+"
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "Creating virtualenv $VENV" >&2
    "$PYTHON" -m venv "$VENV"
  fi
  # Reinstall only when pyproject.toml (or the extras asked for) changed.
  local stamp
  stamp="$VENV/.touchpoint-installed-$( (cat "$ROOT/pyproject.toml"; echo "$extras") | sha256sum | cut -c1-16)"
  if [[ ! -f "$stamp" ]]; then
    echo "Installing touchpoint-pipeline${extras:+[$extras]} into $VENV (first run takes a minute)" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT${extras:+[$extras]}"
    rm -f "$VENV"/.touchpoint-installed-*
    touch "$stamp"
  fi
}

command="${1:-}"
[[ $# -gt 0 ]] && shift
case "$command" in
  demo)
    ensure_venv ""
    cd "$ROOT"
    exec "$VENV/bin/touchpoint" demo "$@"
    ;;
  unit)
    ensure_venv "dev"
    cd "$ROOT"
    check
    echo "== pytest tests/unit (pure: no Kafka, no ClickHouse)" >&2
    exec "$VENV/bin/python" -m pytest tests/unit "$@"
    ;;
  test)
    ensure_venv "dev"
    cd "$ROOT"
    check
    echo "== pytest (starts Apache Kafka via deploy/kafka/kafka.sh)" >&2
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  shell)
    ensure_venv "dev"
    echo "$VENV/bin"
    ;;
  *)
    echo "usage: bash deploy/dev.sh demo|unit|test|shell [args]" >&2
    exit 2
    ;;
esac
