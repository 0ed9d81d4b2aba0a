#!/usr/bin/env bash
# The one gate: formatting, lints, the whole test suite (unit, property, simulation and
# end-to-end), and a short bounded fuzz run. CI runs exactly this (.ci/run); so can you.
#
#   ./scripts/test.sh            # everything
#   FUZZ_SECONDS=0 ./scripts/test.sh   # skip the libFuzzer run (property tests still run)
#   MIRI=0 ./scripts/test.sh           # skip the Miri run over the unsafe crate's memory code
#
# Run it as root (sudo): the AF_XDP, bpf(2) and lab tests need it, and under CI (CI=true,
# which .ci/run sets) a test that lacks a privilege fails instead of skipping.
# Miri runs here over the unsafe crate's shared-memory ring and frame region (a few minutes);
# Miri over every pure crate as well is a separate, slower command: ./scripts/miri.sh.
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
cargo test --workspace --profile ci-test --exclude melange --features melange-tcp/testkit
echo "== tests under release (unit, property, simulation and end-to-end)"
cargo test --workspace --release
echo "== loom: the shared-memory ring's producer/consumer model-checked"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
  cargo test -p melange-sys --release --lib ring::loom

echo "== miri: the shared-memory ring and the UMEM frame region of melange-sys"
# The two pieces of melange-sys whose unsafe code is pure memory (no system call Miri cannot
# emulate): the ring a later service mode shares with app processes, and the ledger that
# hands out UMEM frames. Miri checks their tests for out-of-bounds, misaligned and
# use-after-free accesses, aliasing violations and data races. `uring::` matches `ring::`
# and makes system calls, so it is skipped.
if [ "${MIRI:-1}" != 0 ]; then
  if rustup toolchain list 2>/dev/null | grep -q '^nightly' &&
    { cargo +nightly miri --version >/dev/null 2>&1 ||
      rustup component add miri --toolchain nightly >/dev/null 2>&1; }; then
    miri_started=$SECONDS
    MIRIFLAGS=-Zmiri-disable-isolation PROPTEST_CASES=8 CARGO_TARGET_DIR=target/miri \
      cargo +nightly miri test -p melange-sys --lib -- ring:: frames:: --skip uring::
    echo "miri: passed in $((SECONDS - miri_started)) s"
  else
    echo "miri: no nightly toolchain with the miri component here (rustup component add miri" \
      "--toolchain nightly), so no Miri run"
  fi
fi

echo "== fuzz (bounded: ${fuzz_seconds}s per target)"
# One libFuzzer run per target (fuzz/fuzz_targets, one per parser of outside input), each on
# its own corpus (fuzz/corpus/<target>, kept between local runs, not committed) plus the seeds
# captured from the lab (fuzz/seeds/<target>, scripts/fuzz-seeds.sh). Built once, without
# ASan (the fuzzed code is safe Rust, where ASan finds nothing and halves the speed) but with
# debug assertions and overflow checks; FUZZ_JOBS targets run at a time (default: the number
# of CPUs). A crash, a leak assertion, an input slower than 10 s (a hang) or a run that does
# not end fails the gate, with the target's report and its reproducer in fuzz/artifacts/.
if [ "$fuzz_seconds" -gt 0 ]; then
  if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
      cargo install --locked cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz
    fi
    fuzz_started=$SECONDS
    fuzz_triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
    cargo +nightly fuzz build --fuzz-dir fuzz --sanitizer none --debug-assertions \
      --target "$fuzz_triple"
    fuzz_bin=fuzz/target/$fuzz_triple/release
    fuzz_logs=$(mktemp -d)
    fuzz_jobs=${FUZZ_JOBS:-$(nproc)}
    fuzz_one() { # TARGET: runs it, leaves its exit status in $fuzz_logs/TARGET.rc
      local target=$1 seeds=()
      mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
      if [ -d "fuzz/seeds/$target" ]; then seeds=("fuzz/seeds/$target"); fi
      local rc=0
      timeout $((fuzz_seconds + 120)) "$fuzz_bin/$target" \
        -max_total_time="$fuzz_seconds" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$target/" \
        "fuzz/corpus/$target" "${seeds[@]}" >"$fuzz_logs/$target.log" 2>&1 || rc=$?
      echo "$rc" >"$fuzz_logs/$target.rc"
    }
    fuzz_targets=$(cargo +nightly fuzz list --fuzz-dir fuzz)
    running=0
    for target in $fuzz_targets; do
      fuzz_one "$target" &
      running=$((running + 1))
      if [ "$running" -ge "$fuzz_jobs" ]; then
        wait -n || true
        running=$((running - 1))
      fi
    done
    wait
    fuzz_failed=()
    for target in $fuzz_targets; do
      rc=$(cat "$fuzz_logs/$target.rc" 2>/dev/null || echo missing)
      runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$fuzz_logs/$target.log")
      cov=$(grep -o 'cov: [0-9]*' "$fuzz_logs/$target.log" | tail -n 1 || true)
      seeds=0
      if [ -d "fuzz/seeds/$target" ]; then
        seeds=$(find "fuzz/seeds/$target" -type f | wc -l)
      fi
      if [ "$rc" = 0 ]; then
        echo "fuzz: $target: ok, ${runs:-?} runs, ${cov:-cov: ?}, $seeds seeds"
      else
        fuzz_failed+=("$target")
        echo "fuzz: $target: FAILED (exit $rc); its report:"
        grep -v '^#[0-9]' "$fuzz_logs/$target.log" | tail -n 60
      fi
    done
    rm -rf "$fuzz_logs"
    echo "fuzz: $(echo "$fuzz_targets" | wc -w) targets in $((SECONDS - fuzz_started)) s (build included)"
    if [ "${#fuzz_failed[@]}" -gt 0 ]; then
      echo "fuzz: failed: ${fuzz_failed[*]}; reproduce with" \
        "cargo +nightly fuzz run --fuzz-dir fuzz -s none -a TARGET fuzz/artifacts/TARGET/<file>"
      exit 1
    fi
  else
    echo "fuzz: no nightly toolchain here, so no libFuzzer run; the same fuzz bodies ran as property tests above"
  fi
fi
echo "== all gates passed"
