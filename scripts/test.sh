#!/usr/bin/env bash
# The whole test suite: installs the brokers the tests need, then checks
# formatting and lints and runs every test. README's second command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-test-deps.sh
cargo fmt --all -- --check

# The fuzz targets (their own build, fuzz/target) compile at the lowest
# priority alongside the rest, on the CPU time the lints and tests leave idle.
mkdir -p target
fuzz_log=target/fuzz-build.log
# Its own process group (job control on), so a failing step below stops it
# too; not its own session (setsid), where the kernel's autogroups would give
# it a fair share of the CPU whatever its nice value.
set -m
nice -n 19 ./scripts/fuzz.sh build >"$fuzz_log" 2>&1 &
fuzz_build=$!
set +m
trap 'kill -- -"$fuzz_build" 2>/dev/null || true' EXIT

cargo clippy --all-targets --all-features -- -D warnings
cargo test --all-features --no-fail-fast

if ! wait "$fuzz_build"; then
  tail -n 40 "$fuzz_log" >&2
  echo "test: building the fuzz targets failed (log: $fuzz_log)" >&2
  exit 1
fi
# Every fuzz target briefly (libFuzzer, fuzz/), so the targets cannot rot;
# the long runs and their figures are in NOTES.md.
./scripts/fuzz.sh "${AMQP_BRIDGE_FUZZ_SECONDS:-10}"
