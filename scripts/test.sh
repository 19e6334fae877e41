#!/usr/bin/env bash
# The whole test suite: installs the brokers the tests need, then checks
# formatting and lints and runs every test. README's second command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --all-features -- -D warnings
# Includes tests/fuzz_corpus.rs: the fuzz targets' entry points on their
# committed corpus. libFuzzer itself runs in scripts/fuzz.sh (its sanitizer
# build of the whole tree does not fit CI's time; see NOTES.md).
# cargo-nextest (on the machine image) runs the test binaries side by side,
# each test in its own process (.config/nextest.toml); `cargo test` where it
# is missing. There are no doctests (nextest does not run them).
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --all-features --no-fail-fast
else
  echo "test.sh: cargo-nextest not found; running the tests with cargo test (slower)" >&2
  cargo test --all-features --no-fail-fast
fi
# The benchmark's smoke run (scripts/bench.sh, N = 200, on the dev build the
# tests just made): every message must be counted; no time is asserted.
./scripts/bench.sh --smoke
