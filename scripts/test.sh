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
cargo test --all-features --no-fail-fast
# The benchmark's smoke run (scripts/bench.sh, N = 200, on the dev build the
# tests just made): every message must be counted; no time is asserted.
./scripts/bench.sh --smoke
