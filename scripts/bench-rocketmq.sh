#!/usr/bin/env bash
# Runs examples/bench_rocketmq.rs against a rocketmq-rust name server and
# broker started here on free loopback ports (installed by
# scripts/install-test-deps.sh), then stops them.  Usage: bench-rocketmq.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CARGO_HOME:-$HOME/.cargo}/bin"
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ns_port=$(free_port)
ha_port=$(free_port)
while :; do broker_port=$(free_port); [ "$broker_port" -gt 1026 ] && break; done
cleanup() { kill -9 ${broker_pid:-} ${ns_pid:-} 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release --example bench_rocketmq

# Waits up to 60 s for a line in a log, failing if the process died first.
wait_for() { # pid log text
  for _ in $(seq 600); do
    grep -q "$3" "$2" && return 0
    kill -0 "$1" 2>/dev/null || { cat "$2"; echo "bench-rocketmq: process exited before \"$3\"" >&2; exit 1; }
    sleep 0.1
  done
  cat "$2"; echo "bench-rocketmq: no \"$3\" within 60 s" >&2; exit 1
}

HOME="$work" "$bin/rocketmq-namesrv-rust" --bindAddress 127.0.0.1 --listenPort "$ns_port" \
  --rocketmqHome "$work" --kvConfigPath "$work/kv.json" >/dev/null 2>"$work/namesrv.log" &
ns_pid=$!
wait_for "$ns_pid" "$work/namesrv.log" "accepting requests"
cat >"$work/broker.toml" <<TOML
[broker]
listenPort = $broker_port
brokerIp1 = "127.0.0.1"
storePathRootDir = "$work/store"
authConfigPath = "$work/auth"
[broker.brokerIdentity]
brokerName = "bench"
brokerClusterName = "DefaultCluster"
brokerId = 0
[broker.brokerServerConfig]
bindAddress = "127.0.0.1"
[store]
haListenAddress = "127.0.0.1"
haListenPort = $ha_port
storePathRootDir = "$work/store"
TOML
HOME="$work" ROCKETMQ_HOME="$work" "$bin/rocketmq-broker-rust" -c "$work/broker.toml" \
  -n "127.0.0.1:$ns_port" >/dev/null 2>"$work/broker.log" &
broker_pid=$!
wait_for "$broker_pid" "$work/broker.log" "started successfully"

"${CARGO_TARGET_DIR:-target}/release/examples/bench_rocketmq" "127.0.0.1:$ns_port" "${1:-20000}"
