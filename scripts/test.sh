#!/usr/bin/env bash
# The whole test suite: installs the brokers the tests need, then checks
# formatting and runs every test, linted by clippy as it builds. README's second command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-test-deps.sh
cargo fmt --all -- --check
# Clippy lints while the tests build, instead of a separate `cargo clippy
# --all-targets --all-features -- -D warnings`, which checked all ~270
# dependencies a second time (6.4 of a 20-minute run here; NOTES.md, "CI
# time"). clippy-driver compiles like rustc and lints the workspace's own
# crates on the way (cargo gives it only workspace members; dependencies are
# built with --cap-lints allow), and -D warnings makes every lint an error.
# Every target the tests build is linted: lib, bin, unit and integration
# tests, the bench example. The same environment is kept for the benchmark's
# smoke build below, so it reuses this build.
RUSTC_WORKSPACE_WRAPPER=$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver) || {
  echo "test.sh: clippy-driver not found (rustup component add clippy)" >&2
  exit 1
}
export RUSTC_WORKSPACE_WRAPPER
export RUSTFLAGS="${RUSTFLAGS:-} -D warnings"
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
