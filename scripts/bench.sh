#!/usr/bin/env bash
# The side-by-side benchmark (issue 17): starts Mosquitto and tansu on free
# loopback ports, runs examples/bench (release build) and prints markdown
# tables — null sink, MQTT QoS 1 and Kafka, each row with its
# baselines (a direct producer; a hand-written forwarder) measured in the
# same run; the CPU each process used; MQTT latency at
# 1 000 and 10 000 msg/s offered (5 s each); the bridge's memory as its own
# process, steady and with 10 000 messages held by a frozen Mosquitto; the
# bridge binary as its own process with 1 and 2 tokio workers — then stops
# the brokers.
#
#   scripts/bench.sh [N]       N messages per measured run (default 50000)
#   scripts/bench.sh --scaling adds CPU per message at N = 1 000 … 1 000 000
#                              (null sink; about a minute more)
#   scripts/bench.sh --smoke   N = 200, dev build: must complete with every
#                              message counted (exit 1 otherwise); no time is
#                              asserted. scripts/test.sh runs it.
#   scripts/bench.sh N -- FLAGS  FLAGS go to examples/bench (see its --help
#                              in examples/bench/main.rs: --rows, --credit,
#                              --mqtt-window, --kafka-window, --kafka-sink ...)
#
# BENCH_BIN=PATH runs another build of examples/bench (before/after
# comparisons), BENCH_BRIDGE=PATH another bridge binary (or a wrapper such
# as valgrind's, which must exec it) in the memory phase only (the workers
# row always runs this tree's binary), BENCH_WRAP="valgrind ..." prefixes the
# bench process (callgrind of a whole row).
#
# BENCH_ROCKETMQ=1 adds scripts/bench-rocketmq.sh's comparison afterwards as
# one more row (its own broker, a debug build, about 800 msg/s; N =
# BENCH_ROCKETMQ_N, default 20000). Brokers come from
# scripts/install-test-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
n=50000
latency_seconds=5
in_flight=10000
scaling=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1; n=200; latency_seconds=0.2; in_flight=200 ;;
    --scaling) scaling=(--scaling 1000,10000,100000,1000000) ;;
    --) shift; break ;;
    *) n="$1" ;;
  esac
  shift
done
# What follows `--` goes to examples/bench as it is, e.g.
# `scripts/bench.sh 50000 -- --rows kafka --kafka-sink 'linger: 20ms'`.
extra=("$@")

target="${CARGO_TARGET_DIR:-target}"
if [ "$smoke" = 1 ]; then
  # The dev profile with the test suite's features: scripts/test.sh has
  # built all of it already, so only the example is compiled.
  cargo build --quiet --example bench --bin amqp-bridge --all-features
  bin="$target/debug/examples/bench"
  bridge="$target/debug/amqp-bridge"
elif [ -n "${BENCH_BIN:-}" ]; then
  # Another build of the bench (before/after); the bridge binary is still
  # this tree's, for the memory phase.
  cargo build --quiet --release --bin amqp-bridge --features blackhole-sink
  bin="$BENCH_BIN"
  bridge="$target/release/amqp-bridge"
else
  cargo build --quiet --release --example bench --bin amqp-bridge --features blackhole-sink
  bin="$target/release/examples/bench"
  bridge="$target/release/amqp-bridge"
fi

work=$(mktemp -d)
chmod 755 "$work"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cleanup() {
  kill ${mosquitto_pid:-} ${tansu_pid:-} 2>/dev/null || true
  sleep 0.2
  kill -9 ${mosquitto_pid:-} ${tansu_pid:-} 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Waits up to 30 s for a line in a log, failing if the process died first.
wait_for() { # pid log text
  for _ in $(seq 300); do
    grep -q "$3" "$2" && return 0
    kill -0 "$1" 2>/dev/null || { cat "$2" >&2; echo "bench: process exited before \"$3\"" >&2; exit 1; }
    sleep 0.1
  done
  cat "$2" >&2; echo "bench: no \"$3\" within 30 s" >&2; exit 1
}

# Mosquitto as the tests run it (tests/common/mosquitto.rs), without
# persistence: clean sessions only, nothing to save.
mqtt_port=$(free_port)
cat >"$work/mosquitto.conf" <<CONF
listener $mqtt_port 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 1000000
max_inflight_messages 0
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
CONF
mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
"$mosquitto" -c "$work/mosquitto.conf" 2>"$work/mosquitto.log" &
mosquitto_pid=$!
wait_for "$mosquitto_pid" "$work/mosquitto.log" "running"

# tansu with memory storage, as tests/common/tansu.rs starts it.
kafka_port=$(free_port)
tansu broker --listener-url "tcp://127.0.0.1:$kafka_port" \
  --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
  --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
tansu_pid=$!
wait_for "$tansu_pid" "$work/tansu.log" "ready"
for topic in bench.direct.w bench.direct.m bench.forwarder.w bench.forwarder.m bench.bridge.w bench.bridge.m; do
  tansu topic create "$topic" --broker "tcp://127.0.0.1:$kafka_port" --partitions 1 >/dev/null
done

${BENCH_WRAP:-} "$bin" "$n" --mqtt "$mqtt_port" --kafka "127.0.0.1:$kafka_port" --latency-seconds "$latency_seconds" \
  --memory "${BENCH_BRIDGE:-$bridge}" "$in_flight" --bridge "$bridge" ${scaling[@]+"${scaling[@]}"} \
  --pid "mosquitto=$mosquitto_pid" --pid "tansu=$tansu_pid" ${extra[@]+"${extra[@]}"}

if [ "${BENCH_ROCKETMQ:-0}" = 1 ]; then
  # The same table's row from scripts/bench-rocketmq.sh (its own broker).
  rmq_n="${BENCH_ROCKETMQ_N:-20000}"
  ./scripts/bench-rocketmq.sh "$rmq_n" >"$work/rocketmq.out"
  awk -v n="$rmq_n" '
    /^baseline/ { for (i = 1; i <= NF; i++) if ($i == "=") base = $(i + 1) }
    /^bridge \(/ { for (i = 1; i <= NF; i++) if ($i == "=") full = $(i + 1) }
    END {
      if (base == "" || full == "") { print "bench: no RocketMQ figures" > "/dev/stderr"; exit 1 }
      printf "\n| row | N | baseline | hand-written forwarder | bridge | bridge/baseline | bridge/forwarder |\n|---|---|---|---|---|---|---|\n"
      printf "| RocketMQ → rocketmq-rust (debug build), window 128 (baseline: the RocketMQ sink alone) | %d | %d msg/s | – | %d msg/s | %.2f× | – |\n", n, base, full, full / base
    }' "$work/rocketmq.out"
else
  echo
  echo "RocketMQ: BENCH_ROCKETMQ=1 scripts/bench.sh adds its row (scripts/bench-rocketmq.sh, N = 20 000)."
fi
