#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, combined broker+controller) for Touchpoint.
# Needs only Java 17+ and Maven (jars come from Maven Central). See README.md here.
#
#   kafka.sh fetch                   download the broker jars into the cache (idempotent)
#   kafka.sh start [--fresh]         start (or report already running); prints bootstrap=HOST:PORT
#   kafka.sh stop                    SIGTERM, wait up to 30 s, then SIGKILL; ok if not running
#   kafka.sh status                  exit 0 + bootstrap if running, exit 1 otherwise
#   kafka.sh restart [--fresh]       stop + start
#   kafka.sh topics                  list topics
#   kafka.sh create-topic NAME [PARTITIONS]   create a topic (ok if it exists)
#   kafka.sh delete-topic NAME       delete a topic (ok if absent)
#   kafka.sh logs [N]                tail the broker log
#   kafka.sh wipe                    stop and delete this port's data dir
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"

KAFKA_VERSION="${TOUCHPOINT_KAFKA_VERSION:-4.4.0}"
KAFKA_HOME="${TOUCHPOINT_KAFKA_HOME:-$REPO_ROOT/.cache/kafka}"
HOST="127.0.0.1"
PORT="${TOUCHPOINT_KAFKA_PORT:-9092}"
CPORT="${TOUCHPOINT_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
START_TIMEOUT="${TOUCHPOINT_KAFKA_START_TIMEOUT:-60}"
STOP_TIMEOUT="${TOUCHPOINT_KAFKA_STOP_TIMEOUT:-30}"
HEAP_OPTS="${TOUCHPOINT_KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
AUTO_CREATE="${TOUCHPOINT_KAFKA_AUTO_CREATE_TOPICS:-true}"

LIB_DIR="$KAFKA_HOME/lib-$KAFKA_VERSION"
TOOLS_DIR="$KAFKA_HOME/tools-$KAFKA_VERSION"
RUN_DIR="$KAFKA_HOME/run-$PORT"
DATA_DIR="$RUN_DIR/data"
CONFIG="$RUN_DIR/server.properties"
PID_FILE="$RUN_DIR/kafka.pid"
LOG_FILE="$RUN_DIR/kafka.log"   # log4j2 output (rolled at 50 MB)
OUT_FILE="$RUN_DIR/kafka.out"   # JVM stdout/stderr (crashes, early errors)
BOOTSTRAP="$HOST:$PORT"

die() { echo "kafka.sh: error: $*" >&2; exit 1; }
say() { echo "kafka.sh: $*" >&2; }

[[ "$PORT" =~ ^[0-9]+$ ]] || die "TOUCHPOINT_KAFKA_PORT must be a number, got '$PORT'"
[[ "$CPORT" =~ ^[0-9]+$ ]] || die "TOUCHPOINT_KAFKA_CONTROLLER_PORT must be a number, got '$CPORT'"
[[ "$PORT" != "$CPORT" ]] || die "broker port and controller port are both $PORT"

need_java() {
  command -v java >/dev/null 2>&1 || die "java not found on PATH (need Java 17+, e.g. apt-get install openjdk-17-jre-headless)"
  local v major
  v="$(java -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')"
  major="${v%%.*}"; [[ "$major" == 1 ]] && major="$(echo "$v" | cut -d. -f2)"
  [[ "$major" =~ ^[0-9]+$ && "$major" -ge 17 ]] || die "Java 17+ required for Kafka $KAFKA_VERSION, found java '$v'"
}

# ---- jars -------------------------------------------------------------------
fetch() {
  if [[ -f "$LIB_DIR/.complete" ]]; then return 0; fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found on PATH (needed once to download Kafka jars; e.g. apt-get install maven)"
  mkdir -p "$KAFKA_HOME"
  local tmp="$KAFKA_HOME/.lib-$KAFKA_VERSION.tmp.$$"
  rm -rf "$tmp"
  say "downloading Kafka $KAFKA_VERSION jars with Maven into $LIB_DIR ..."
  local mlog="$KAFKA_HOME/mvn-fetch-$KAFKA_VERSION.log"
  if ! mvn -B -Dstyle.color=never -f "$SCRIPT_DIR/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" >"$mlog" 2>&1; then
    tail -n 25 "$mlog" | sed 's/\x1b\[[0-9;]*m//g' >&2
    rm -rf "$tmp"; die "mvn could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION (full log: $mlog)"
  fi
  ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || { rm -rf "$tmp"; die "mvn finished but no kafka_2.13 jar in $tmp"; }
  touch "$tmp/.complete"
  rm -rf "$LIB_DIR"; mv "$tmp" "$LIB_DIR"
  local jars=("$LIB_DIR"/*.jar)
  say "jars ready: $LIB_DIR (${#jars[@]} jars)"
}

CP() { echo "$LIB_DIR/*"; }

# Compile the small Admin helper once per version (needs javac; optional).
ctl_ready() {
  [[ -f "$TOOLS_DIR/KafkaCtl.class" && "$TOOLS_DIR/KafkaCtl.class" -nt "$SCRIPT_DIR/KafkaCtl.java" ]] && return 0
  command -v javac >/dev/null 2>&1 || return 1
  mkdir -p "$TOOLS_DIR"
  javac -nowarn -d "$TOOLS_DIR" -cp "$(CP)" "$SCRIPT_DIR/KafkaCtl.java" >&2 || return 1
}
ctl() {
  ctl_ready || die "javac not found: '$1' needs a JDK (the broker itself only needs a JRE)"
  java -Xmx256m -XX:TieredStopAtLevel=1 -Dorg.apache.logging.log4j.level=OFF -Dlog4j2.statusLoggerLevel=OFF \
    -cp "$TOOLS_DIR:$(CP)" KafkaCtl "$@"
}

# ---- process helpers --------------------------------------------------------
running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid; pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  alive "$pid" || return 1
  # Guard against PID reuse: must be *our* broker for this run dir.
  if [[ -r "/proc/$pid/cmdline" ]]; then
    local cmdline; cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    [[ "$cmdline" == *"kafka.Kafka $CONFIG"* ]] || return 1
  fi
  echo "$pid"
}

# kill -0 also succeeds on a zombie; treat state Z as gone.
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  local st; st="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)"
  [[ "$st" != Z ]]
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# Tail of what this start wrote to kafka.log (from byte offset $1), stack frames dropped.
show_log_tail() {
  local off="${1:-0}"
  if [[ -f "$LOG_FILE" ]]; then
    if (( $(stat -c %s "$LOG_FILE") < off )); then off=0; fi
    echo "---- tail of $LOG_FILE (this start) ----" >&2
    tail -c +"$((off + 1))" "$LOG_FILE" | grep -v $'^\tat ' | tail -n 40 >&2 || true
  fi
  if [[ -s "$OUT_FILE" ]]; then echo "---- tail of $OUT_FILE ----" >&2; tail -n 20 "$OUT_FILE" >&2 || true; fi
}

# "Kafka Server started" logged after byte offset $1 of kafka.log (whole file if it rolled)?
started_since() {
  [[ -f "$LOG_FILE" ]] || return 1
  local off="$1"
  if (( $(stat -c %s "$LOG_FILE") < off )); then off=0; fi
  # process substitution, not a pipe: with pipefail, grep -q exiting early would SIGPIPE tail
  grep -q "Kafka Server started" < <(tail -c +"$((off + 1))" "$LOG_FILE")
}

write_config() {
  mkdir -p "$RUN_DIR" "$DATA_DIR"
  cat >"$CONFIG" <<EOF
# Generated by deploy/kafka/kafka.sh -- do not edit (rewritten on every start).
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CPORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CPORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA_DIR

# single node: every internal topic has RF 1
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1

# fast group joins for tests; auto topic creation kept at Kafka's default (true)
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=$AUTO_CREATE
delete.topic.enable=true

# small machine (2 cores)
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=168
log.segment.bytes=268435456
EOF
  if [[ -n "${TOUCHPOINT_KAFKA_EXTRA_CONFIG:-}" ]]; then
    printf '\n# from TOUCHPOINT_KAFKA_EXTRA_CONFIG\n%s\n' "$TOUCHPOINT_KAFKA_EXTRA_CONFIG" >>"$CONFIG"
  fi
}

format_storage() {
  [[ -f "$DATA_DIR/meta.properties" ]] && return 0
  local cid
  if [[ -s "$RUN_DIR/cluster.id" ]]; then
    cid="$(cat "$RUN_DIR/cluster.id")"
  else
    cid="$(java -Dorg.apache.logging.log4j.level=OFF -cp "$(CP)" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
    [[ -n "$cid" ]] || die "could not generate a cluster id with kafka.tools.StorageTool"
    echo "$cid" >"$RUN_DIR/cluster.id"
  fi
  say "formatting $DATA_DIR (cluster id $cid)"
  java -Dorg.apache.logging.log4j.level=OFF -cp "$(CP)" kafka.tools.StorageTool format \
      -t "$cid" -c "$CONFIG" --ignore-formatted >"$RUN_DIR/format.out" 2>&1 \
    || { grep -v '^[[:space:]]*at ' "$RUN_DIR/format.out" | head -n 15 >&2 || true
         die "kafka-storage format failed (full output: $RUN_DIR/format.out)"; }
}

wipe_data() {
  say "wiping $DATA_DIR"
  rm -rf "$DATA_DIR" "$RUN_DIR/cluster.id"
}

# ---- commands -----------------------------------------------------------------
cmd_start() {
  local fresh="${TOUCHPOINT_KAFKA_FRESH:-0}"
  for a in "$@"; do
    case "$a" in
      --fresh) fresh=1 ;;
      *) die "unknown option for start: $a" ;;
    esac
  done
  need_java
  local pid
  if pid="$(running_pid)"; then
    if [[ "$fresh" == 1 ]]; then
      say "--fresh: stopping running broker (pid $pid) first"; cmd_stop
    else
      say "already running (pid $pid)"; echo "bootstrap=$BOOTSTRAP"; return 0
    fi
  fi
  fetch
  port_open "$PORT" && die "port $PORT is already in use by another process (set TOUCHPOINT_KAFKA_PORT)"
  port_open "$CPORT" && die "controller port $CPORT is already in use (set TOUCHPOINT_KAFKA_CONTROLLER_PORT)"
  [[ "$fresh" == 1 ]] && wipe_data
  write_config
  format_storage
  rm -f "$PID_FILE"
  : >"$OUT_FILE"
  # kafka.log is appended to across runs: only look at what this start writes.
  local log_off=0; [[ -f "$LOG_FILE" ]] && log_off="$(stat -c %s "$LOG_FILE")"

  local t0=$SECONDS
  # setsid: own session, survives the calling shell; the inner bash writes its own
  # PID and then exec's java, so the PID file names the JVM itself.
  # shellcheck disable=SC2086,SC2016
  KAFKA_PID_FILE="$PID_FILE" nohup setsid bash -c 'echo $$ >"$KAFKA_PID_FILE"; exec "$@"' kafka-launch \
    java $HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true ${TOUCHPOINT_KAFKA_JVM_OPTS:-} \
    -Dkafka.logs.dir="$RUN_DIR" -Dlog4j2.configurationFile="$SCRIPT_DIR/log4j2.properties" \
    -cp "$(CP)" kafka.Kafka "$CONFIG" \
    </dev/null >>"$OUT_FILE" 2>&1 9>&- &
  local launch_pid=$!
  disown 2>/dev/null || true
  # The PID file appears within milliseconds; fall back to $! (same process: nohup,
  # setsid and bash all exec) so a timed-out start can never leave an orphan.
  for _ in $(seq 1 50); do [[ -s "$PID_FILE" ]] && break; sleep 0.1; done
  [[ -s "$PID_FILE" ]] || echo "$launch_pid" >"$PID_FILE"

  # Wait: process alive -> "Kafka Server started" in the log -> port open -> Admin API answers.
  local deadline=$((SECONDS + START_TIMEOUT)) ready=0
  while ((SECONDS < deadline)); do
    pid="$(cat "$PID_FILE")"
    if ! alive "$pid"; then
      say "broker process exited during startup"; show_log_tail "$log_off"; exit 1
    fi
    if started_since "$log_off" && port_open "$PORT"; then
      ready=1; break
    fi
    sleep 0.5
  done
  if ((ready)) && ctl_ready 2>/dev/null; then
    ready=0
    while ((SECONDS < deadline)); do
      if ctl probe "$BOOTSTRAP" >/dev/null 2>&1; then ready=1; break; fi
      sleep 1
    done
  fi
  if ((!ready)); then
    say "broker did not become ready within ${START_TIMEOUT}s (pid $pid); stopping it"
    show_log_tail "$log_off"
    cmd_stop >/dev/null 2>&1 || true
    exit 1
  fi
  say "Kafka $KAFKA_VERSION up in $((SECONDS - t0))s (pid $pid, data $DATA_DIR, log $LOG_FILE)"
  echo "bootstrap=$BOOTSTRAP"
}

cmd_stop() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PID_FILE"; say "not running (port $PORT)"; return 0
  fi
  say "stopping broker pid $pid (SIGTERM, up to ${STOP_TIMEOUT}s)"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while alive "$pid" && ((SECONDS < deadline)); do sleep 0.5; done
  if alive "$pid"; then
    say "still alive after ${STOP_TIMEOUT}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while alive "$pid"; do sleep 0.2; done
  fi
  rm -f "$PID_FILE"
  say "stopped"
}

cmd_status() {
  local pid
  if pid="$(running_pid)"; then
    if port_open "$PORT"; then
      local ver; ver="$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | sed -n 's#.*/lib-\([^/]*\)/\*$#\1#p' | head -n1 || true)"
      echo "running pid=$pid version=${ver:-?}"; echo "bootstrap=$BOOTSTRAP"; return 0
    fi
    echo "starting pid=$pid (port $PORT not open yet)"; return 1
  fi
  echo "not running (port $PORT)"; return 1
}

need_reachable() {
  need_java; fetch
  port_open "$PORT" || die "no broker listening on $BOOTSTRAP (run: kafka.sh start)"
}

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

# Serialise start/stop/wipe per port (concurrent test runners calling start at once).
lock() {
  mkdir -p "$RUN_DIR"
  if command -v flock >/dev/null 2>&1; then exec 9>"$RUN_DIR/.lock"; flock -w 120 9 || die "could not lock $RUN_DIR/.lock"; fi
}

main() {
  local cmd="${1:-}"; [[ $# -gt 0 ]] && shift
  case "$cmd" in start|stop|restart|wipe) lock ;; esac
  case "$cmd" in
    fetch) need_java; fetch; echo "lib=$LIB_DIR" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop ;;
    restart) cmd_stop; cmd_start "$@" ;;
    status) cmd_status ;;
    topics) need_reachable; ctl topics "$BOOTSTRAP" ;;
    create-topic) [[ $# -ge 1 ]] || die "usage: kafka.sh create-topic NAME [PARTITIONS]"
                  need_reachable; ctl create-topic "$BOOTSTRAP" "$1" "${2:-1}" 1 ;;
    delete-topic) [[ $# -ge 1 ]] || die "usage: kafka.sh delete-topic NAME"
                  need_reachable; ctl delete-topic "$BOOTSTRAP" "$1" ;;
    logs) tail -n "${1:-100}" "$LOG_FILE" ;;
    wipe) cmd_stop; wipe_data ;;
    -h|--help|help|"") usage; [[ -n "$cmd" ]] ;;
    *) usage >&2; die "unknown command '$cmd'" ;;
  esac
}

main "$@"
