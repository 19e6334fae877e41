#!/usr/bin/env bash
# The long form of the fault suite (tests/faults.rs): N messages per scenario
# (default 100000), release build, one scenario at a time, figures printed.
# CI runs the same tests with 10 000 messages as part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-100000}"
AMQP_BRIDGE_FAULTS_N="$n" cargo test --release --test faults -- --nocapture --test-threads 1
