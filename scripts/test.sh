#!/usr/bin/env bash
# The one gate: formatting, lints, the whole test suite (unit, property, simulation and
# end-to-end), and a short bounded fuzz run. CI runs exactly this (.ci/run); so can you.
#
#   ./scripts/test.sh            # everything
#   FUZZ_SECONDS=0 ./scripts/test.sh   # skip the libFuzzer run (property tests still run)
#
# Run it as root (sudo): the AF_XDP, bpf(2) and lab tests need it, and under CI (CI=true,
# which .ci/run sets) a test that lacks a privilege fails instead of skipping.
# Miri is a separate, slower command: ./scripts/miri.sh (about 8 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

fuzz_seconds=${FUZZ_SECONDS:-10}

if [ "$(id -u)" -eq 0 ]; then
  ./scripts/setup.sh
else
  echo "test: not root, skipping package installation (end-to-end tests say what they miss)"
fi

echo "== fmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets --release -- -D warnings
echo "== build (release: the binaries the end-to-end tests run)"
cargo build --workspace --release
# Unit, property and simulation tests run twice: under `ci-test` (optimised, with
# debug assertions and overflow checks, so every debug_assert! and the pool's ownership
# states are live) and under `release` (the code as it ships). The end-to-end tests of the
# `melange` crate start the release binaries, so they run under `release` only.
echo "== tests under the ci-test profile (debug assertions, overflow checks)"
cargo test --workspace --profile ci-test --exclude melange
echo "== tests under release (unit, property, simulation and end-to-end)"
cargo test --workspace --release
echo "== loom: the shared-memory ring's producer/consumer model-checked"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
  cargo test -p melange-sys --release --lib ring::loom

echo "== fuzz (bounded: ${fuzz_seconds}s per target)"
if [ "$fuzz_seconds" -gt 0 ]; then
  if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
      cargo install --locked cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz
    fi
    for target in $(cargo +nightly fuzz list --fuzz-dir fuzz); do
      mkdir -p "fuzz/corpus/$target"
      cargo +nightly fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" fuzz/seeds -- \
        -max_total_time="$fuzz_seconds" -print_final_stats=0 2>&1 | tail -n 2
    done
  else
    echo "fuzz: no nightly toolchain here, so no libFuzzer run; the same fuzz bodies ran as property tests above"
  fi
fi
echo "== all gates passed"
