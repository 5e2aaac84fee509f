#!/usr/bin/env bash
# Catch attacks on a real stack: a storefront of two Node.js and three Python services on real
# PostgreSQL and Redis servers and a Kafka topic, instrumented by the official OpenTelemetry SDKs, behind the
# rotel collector, watched by stormwatch. An attack driver runs labelled phases (warm-up,
# attacks, a legitimate flash crowd, calm phases between) and scores the engine's alerts.
#
#   examples/stack/run.sh            # the full run, about 25 minutes
#   examples/stack/run.sh --short    # the CI run (scripts/test.sh), 6 minutes
#   examples/stack/run.sh --kafka    # rotel exports to a Kafka topic of 3 partitions instead,
#                                    # read by serve --kafka-input; alerts to a Kafka topic
#
# Installs what is missing: Debian's postgresql and redis-server (as root; otherwise it says
# what to install), the npm packages into examples/stack/node/node_modules and the PyPI
# packages into examples/stack/.venv and examples/stack/.rotel, and the tansu Kafka broker
# (cargo install) unless KAFKA_BOOTSTRAP names a broker. Everything runs on loopback
# from a temporary directory and is stopped on exit. Ports (all below 32768) can be moved with
# STACK_PORT_BASE (default 20000: PostgreSQL +5432, Redis +6379, tansu +9092, ...).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
mode=full
collector=otlp
for arg in "$@"; do
  case "$arg" in
    --short) mode=short ;;
    --kafka) collector=kafka ;;
    *) echo "usage: $0 [--short] [--kafka]" >&2; exit 2 ;;
  esac
done

base=${STACK_PORT_BASE:-20000}
pg_port=$((base + 5432))
redis_port=$((base + 6379))
rotel_grpc=$((base + 4317 - 10000))
rotel_http=$((base + 4318 - 10000))
engine_grpc=$((base + 4317))
engine_http=$((base + 4318))
admin_port=$((base + 9464))
web_port=$((base + 8080 - 10000))
inventory_port=$((base + 8081 - 10000))
catalog_port=$((base + 8082 - 10000))
reviews_port=$((base + 8083 - 10000))
kafka_port=$((base + 9092))

say() { echo "stack: $*" >&2; }

# --- what is missing -------------------------------------------------------------------------
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$pg_bin" ] || ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    say "installing Debian's postgresql and redis-server ..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server >/dev/null
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  else
    say "needs PostgreSQL and Redis: sudo apt-get install postgresql redis-server"
    exit 1
  fi
fi
if [ ! -x "$here/.venv/bin/python" ] || ! cmp -s "$here/python/requirements.txt" "$here/.venv/requirements.txt"; then
  say "installing the Python services' packages into examples/stack/.venv ..."
  python3 -m venv "$here/.venv"
  "$here/.venv/bin/pip" install -q -r "$here/python/requirements.txt"
  cp "$here/python/requirements.txt" "$here/.venv/requirements.txt"
fi
if ! ls "$here"/.rotel/lib/python3*/site-packages/rotel/rotel-agent >/dev/null 2>&1; then
  say "installing the rotel collector into examples/stack/.rotel ..."
  python3 -m venv "$here/.rotel"
  "$here/.rotel/bin/pip" install -q "rotel==0.0.1a15"
fi
rotel=$(ls "$here"/.rotel/lib/python3*/site-packages/rotel/rotel-agent)
if [ ! -d "$here/node/node_modules" ] || [ "$here/node/package-lock.json" -nt "$here/node/node_modules" ]; then
  say "installing the Node.js services' packages into examples/stack/node/node_modules ..."
  (cd "$here/node" && npm ci --no-audit --no-fund --loglevel=error >/dev/null && touch node_modules)
fi
engine=${STORMWATCH_BIN:-}
if [ -z "$engine" ]; then
  say "building the engine (cargo build --release) ..."
  (cd "$repo" && cargo build --release --locked --quiet)
  engine="${CARGO_TARGET_DIR:-$repo/target}/release/stormwatch"
fi

# --- start it all ----------------------------------------------------------------------------
state=$(mktemp -d /tmp/stormwatch-stack.XXXXXX)
chmod 755 "$state"
pids=()
pg_user=$(id -un)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && pg_user=postgres
cleanup() {
  status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  as_pg "$pg_bin/pg_ctl" -D "$state/pg" -m fast stop >/dev/null 2>&1 || true
  # What has not stopped 15 s after being asked is killed: the run always ends.
  for _ in $(seq 1 150); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      say "process $pid did not stop; killing it"
      kill -9 "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  if [ "$status" = 0 ] && [ -z "${STACK_KEEP:-}" ]; then
    rm -rf "$state"
  else
    say "logs, alerts and the ground truth are in $state"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {
  for _ in $(seq 1 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  say "$2 did not listen on port $1; its log: $state/$2.log"
  tail -20 "$state/$2.log" >&2 || true
  exit 1
}

say "PostgreSQL on $pg_port, Redis on $redis_port ..."
mkdir -p "$state/pg"
touch "$state/postgres.log"
[ "$(id -u)" = 0 ] && chown postgres "$state/pg" "$state/postgres.log"
as_pg "$pg_bin/initdb" -D "$state/pg" -U stack --auth=trust >"$state/initdb.log" 2>&1
as_pg "$pg_bin/pg_ctl" -D "$state/pg" -l "$state/postgres.log" -w start \
  -o "-p $pg_port -k $state/pg -c listen_addresses=127.0.0.1" >/dev/null
"$pg_bin/psql" -q -h 127.0.0.1 -p "$pg_port" -U stack -d postgres -c "CREATE DATABASE shop" >/dev/null
"$pg_bin/psql" -q -h 127.0.0.1 -p "$pg_port" -U stack -d shop -v ON_ERROR_STOP=1 -f "$here/schema.sql" >/dev/null
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$state/redis.log" 2>&1 &
pids+=($!)
wait_port "$redis_port" redis

# The queue between catalog and mailer: the broker of KAFKA_BOOTSTRAP (scripts/test.sh's), or
# a tansu broker of the run's own (installed once with cargo, about 10 minutes).
kafka=${KAFKA_BOOTSTRAP:-}
if [ -z "$kafka" ]; then
  if ! command -v tansu >/dev/null 2>&1; then
    say "installing the tansu Kafka broker (cargo install tansu@0.6.0, once; about 10 minutes) ..."
    cargo install tansu@0.6.0 --locked --no-default-features --features libsql --quiet
  fi
  kafka="127.0.0.1:$kafka_port"
  mkdir -p "$state/tansu"
  (cd "$state/tansu" && exec tansu broker --listener-url "tcp://$kafka" --advertised-listener-url "tcp://$kafka" \
    --storage-engine sqlite://tansu.db) >"$state/tansu.log" 2>&1 &
  pids+=($!)
  wait_port "$kafka_port" tansu
fi
run_id="$(date +%s)-$$"
topic="stack-shares-$run_id"
say "Kafka at $kafka, topic $topic ..."
create_topic() {
  "$here/.venv/bin/python" - "$kafka" "$1" "$2" <<'PY'
import sys
from confluent_kafka.admin import AdminClient, NewTopic
admin = AdminClient({"bootstrap.servers": sys.argv[1]})
for future in admin.create_topics([NewTopic(sys.argv[2], num_partitions=int(sys.argv[3]), replication_factor=1)]).values():
    future.result(30)
PY
}
create_topic "$topic" 1
# The collector's second mode: rotel writes the spans to a topic of several partitions (its
# messages are batches of any traces, not keyed by trace id), serve --kafka-input reads them.
spans_topic="stack-spans-$run_id"
alert_topic="stack-alerts-$run_id"
if [ "$collector" = kafka ]; then
  create_topic "$spans_topic" "${STACK_SPANS_PARTITIONS:-3}"
fi

say "stormwatch (OTLP on $engine_grpc, console on http://127.0.0.1:$admin_port/) ..."
cat >"$state/engine.toml" <<EOF
[output]
stdout = false
alerts_file = "$state/alerts.jsonl"

[baseline]
models_dir = "$state/models"
EOF
if [ "$mode" = short ]; then
  cat "$here/engine-short.toml" >>"$state/engine.toml"
fi
engine_args=()
exporter=(--exporter otlp --otlp-exporter-endpoint "http://127.0.0.1:$engine_grpc" --otlp-exporter-protocol grpc)
if [ "$collector" = kafka ]; then
  # The alert topic is created by the engine; alerts are scored from it.
  cat >>"$state/engine.toml" <<EOF

[kafka]
brokers = "$kafka"
alert_topic = "$alert_topic"
input_topic = "$spans_topic"
input_encoding = "otlp_proto"
group_id = "stack-$run_id"
EOF
  engine_args=(--kafka-input)
  # rotel's batches (at most --traces-batch-max-size spans, 8192 by default) must fit in one
  # message (--kafka-exporter-max-message-bytes, 1 MB by default): 2,000 of the stack's spans
  # leave room for its largest (long statements and URLs).
  exporter=(--exporter kafka --kafka-exporter-brokers "$kafka" --kafka-exporter-traces-topic "$spans_topic"
    --kafka-exporter-format protobuf --traces-batch-max-size 2000)
fi
"$engine" serve --config "$state/engine.toml" --otlp-grpc "127.0.0.1:$engine_grpc" \
  --otlp-http "127.0.0.1:$engine_http" --admin "127.0.0.1:$admin_port" "${engine_args[@]}" \
  >"$state/engine.log" 2>&1 &
pids+=($!)
wait_port "$admin_port" engine

say "rotel collector (OTLP on $rotel_grpc and $rotel_http, exporting to ${collector/otlp/stormwatch}) ..."
"$rotel" start --otlp-grpc-endpoint "127.0.0.1:$rotel_grpc" --otlp-http-endpoint "127.0.0.1:$rotel_http" \
  "${exporter[@]}" >"$state/rotel.log" 2>&1 &
pids+=($!)
wait_port "$rotel_http" rotel

export STACK_DATABASE_URL="postgresql://stack@127.0.0.1:$pg_port/shop"
export STACK_REDIS_URL="redis://127.0.0.1:$redis_port/0"
export STACK_CATALOG_URL="http://127.0.0.1:$catalog_port"
export STACK_REVIEWS_URL="http://127.0.0.1:$reviews_port"
export STACK_INVENTORY_URL="http://127.0.0.1:$inventory_port"
export STACK_KAFKA_BOOTSTRAP="$kafka"
export STACK_SHARES_TOPIC="$topic"
export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$rotel_http"
export OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf
# Export every second, as a collector-fronted deployment would tune it for detection.
export OTEL_BSP_SCHEDULE_DELAY=1000
export OTEL_SEMCONV_STABILITY_OPT_IN=http,database

say "services: web (Node.js) on $web_port, inventory (Node.js), catalog, reviews and mailer (Python) ..."
start_python() {
  (cd "$here/python" && STACK_PORT=$2 exec "$here/.venv/bin/python" "$1.py") >"$state/$1.log" 2>&1 &
  pids+=($!)
}
start_node() {
  (cd "$here/node" && STACK_PORT=$2 OTEL_SERVICE_NAME=$1 exec node --require ./telemetry.js "$1.js") \
    >"$state/$1.log" 2>&1 &
  pids+=($!)
}
start_python catalog "$catalog_port"
start_python reviews "$reviews_port"
start_python mailer ""
start_node inventory "$inventory_port"
start_node web "$web_port"
for service in catalog:$catalog_port reviews:$reviews_port inventory:$inventory_port web:$web_port; do
  wait_port "${service#*:}" "${service%%:*}"
done

# --- drive and score -------------------------------------------------------------------------
driver_args=()
[ "$collector" = kafka ] && driver_args=(--alert-topic "$alert_topic" --kafka "$kafka")
"$here/.venv/bin/python" "$here/driver.py" --mode "$mode" --web "http://127.0.0.1:$web_port" \
  --inventory "http://127.0.0.1:$inventory_port" --admin "http://127.0.0.1:$admin_port" \
  --alerts "$state/alerts.jsonl" --truth "$state/truth.json" --screenshot "$state/console.png" \
  "${driver_args[@]}"
