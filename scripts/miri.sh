#!/usr/bin/env bash
# Miri over every test that runs under it: the shared-memory ring of melange-sys (the one piece
# of raw memory a later service mode shares with app processes) and the unit and property tests
# of the pure crates. Miri checks them for undefined behaviour: out-of-bounds or misaligned
# accesses, use after free, invalid values, aliasing violations, and data races between threads.
#
#   ./scripts/miri.sh                       # everything below; prints the time of each part
#   PROPTEST_CASES=64 ./scripts/miri.sh     # more property cases (slower)
#
# Left out, because Miri cannot run them or would take too long: every other melange-sys test
# (sockets, AF_XDP, bpf(2) and netns are system calls Miri does not emulate; it does emulate the
# anonymous mmap under the ring's Region tests), melange-control's tests (they load
# programs into the kernel), melange-sim's end-to-end simulations in tests/ and melange-apps'
# `one_lost_request_does_not_stall_the_closed_loop` (thousands of rounds; under Miri the apps
# test was still running after about 14 minutes, the first simulation after 4), and runtime, cli and baseline (system calls
# throughout). melange-engine has no unit tests of its own; the simulations drive it.
set -euo pipefail
cd "$(dirname "$0")/.."

toolchain=${MIRI_TOOLCHAIN:-nightly}
if ! cargo +"$toolchain" miri --version >/dev/null 2>&1; then
  rustup component add miri --toolchain "$toolchain"
fi

# proptest's failure persistence asks for the working directory and reads source files, which
# Miri's isolation refuses; without isolation Miri also passes PROPTEST_CASES through.
export MIRIFLAGS=${MIRIFLAGS:--Zmiri-disable-isolation}
# Miri runs code hundreds to thousands of times slower than a debug build: 8 cases per property
# keep each crate to minutes. The full case counts run natively in scripts/test.sh.
export PROPTEST_CASES=${PROPTEST_CASES:-8}

total_start=$SECONDS
run() {
  local name=$1
  shift
  local start=$SECONDS
  echo "== miri: $name"
  cargo +"$toolchain" miri test "$@"
  echo "== miri: $name passed in $((SECONDS - start)) s"
}

# `uring::` matches `ring::` and makes system calls Miri does not emulate.
run "melange-sys ring and frame region" -p melange-sys --lib -- ring:: frames:: --skip uring::
run "melange-wire" -p melange-wire
run "melange-core" -p melange-core
run "melange-net" -p melange-net
run "melange-bpf assembler and program builder" -p melange-bpf --lib
run "melange-apps" -p melange-apps --lib -- --skip one_lost_request_does_not_stall_the_closed_loop
run "melange-sim (unit tests)" -p melange-sim --lib
echo "== miri: all passed in $((SECONDS - total_start)) s"
