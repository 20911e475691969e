#!/bin/sh
# HEALTHCHECK of the touchpoint image, for whichever subcommand the container runs.
#
# - worker, sink (TOUCHPOINT_METRICS_PORT set, not 0): GET /metrics on that port — the only
#   endpoint they serve; it starts before anything talks to Kafka.
# - collector (no metrics port): GET /healthz on TOUCHPOINT_COLLECTOR_PORT (8080). Its
#   /readyz (Kafka reachable) is for readiness, not for health: a Kafka outage must not
#   get every collector restarted.
# Exit 0 healthy, 1 not (what Docker expects).
set -eu
port="${TOUCHPOINT_METRICS_PORT:-0}"
if [ "$port" != "0" ]; then
    url="http://127.0.0.1:${port}/metrics"
else
    url="http://127.0.0.1:${TOUCHPOINT_COLLECTOR_PORT:-8080}/healthz"
fi
exec python - "$url" <<'PY'
import sys
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=4) as answer:
        sys.exit(0 if answer.status == 200 else 1)
except OSError as exc:
    print(f"unhealthy: {sys.argv[1]}: {exc}", file=sys.stderr)
    sys.exit(1)
PY
