#!/usr/bin/env bash
# The long form of the fault suite (tests/faults.rs): N messages per scenario
# (default 100000) and a Mosquitto freeze of STALL_SECS (default 60) in the
# memory scenario, release build, one scenario at a time, figures printed.
# RELIABILITY.md's table comes from `scripts/faults.sh 100000`.
# CI runs the same tests with 10 000 messages and a 5 s freeze as part of
# scripts/test.sh.
#   scripts/faults.sh [N] [STALL_SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-100000}"
stall="${2:-60}"
AMQP_BRIDGE_FAULTS_N="$n" AMQP_BRIDGE_FAULTS_STALL_SECS="$stall" \
  cargo test --release --all-features --test faults -- --nocapture --test-threads 1
