#!/usr/bin/env bash
# The whole test suite: installs the brokers the tests need, then checks
# formatting and lints and runs every test. README's second command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --all-features -- -D warnings
cargo test --all-features --no-fail-fast
# Every fuzz target briefly (libFuzzer, fuzz/), so the targets cannot rot;
# the long runs and their figures are in NOTES.md.
./scripts/fuzz.sh "${AMQP_BRIDGE_FUZZ_SECONDS:-10}"
