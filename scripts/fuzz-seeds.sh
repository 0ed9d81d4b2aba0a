#!/usr/bin/env bash
# Fuzz seeds from real captures of the lab's traffic: fuzz/seeds/<target>/.
#
# Regenerate (as root, from the repository root or anywhere):
#
#   sudo ./scripts/fuzz-seeds.sh          # then review and commit fuzz/seeds/
#
# What it does: builds target/release/melange if it is missing; brings the namespace lab up
# (`melange lab up`) unless it is already up; installs tshark with apt-get if neither tshark
# nor tcpdump is there; captures on both veth ends (mlg-vb in mlg-b, as the server sees it,
# and mlg-va in mlg-a, because frames that XDP redirects to the AF_XDP echo never reach a
# packet socket on mlg-vb); and runs real traffic through it:
#   - `melange echo --backend af_xdp --interface mlg-vb` in mlg-b (port 7777, plain echo),
#   - `melange loadgen` (kernel backend) from mlg-a at 24, 64, 1400 and 1472 bytes,
#   - `ping` from mlg-a after flushing its neighbour table (ARP request and reply, ICMP echo,
#     and a 3000-byte ping in fragments),
#   - single datagrams of 1, 24, 100, 1472, 1473 and 4000 bytes (the last two in fragments,
#     which the XDP filter leaves to the kernel) from python3, and one to a closed port,
#   - then, with the echo restarted as `--protocol sockperf --port 11111`, sockperf
#     ping-pong and a short throughput run, if sockperf is installed (scripts/setup.sh);
# then stops everything it started (by process id), takes the lab down only if it brought it
# up, and hands the captures to fuzz/seeds.py, which splits them into frames and writes each
# target's seeds (deduplicated, at most 64 per target, spread over protocol, fragment, port
# and size classes; the frame-level stack targets get the frames moved into their fuzz
# world). `sys_link_reply` gets the kernel's own RTM_GETLINK replies for mlg-vb and lo.
# Seeds of other targets (`contract_records`) are not frames and are not touched.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "fuzz-seeds: needs root (network namespaces, XDP, packet capture): run it with sudo" >&2
  exit 1
fi

melange=target/release/melange
if [ ! -x "$melange" ]; then
  echo "fuzz-seeds: building $melange"
  cargo build --release -p melange
fi
for tool in python3 ping ip; do
  command -v "$tool" >/dev/null || {
    echo "fuzz-seeds: $tool is missing (scripts/setup.sh installs the lab's tools)" >&2
    exit 1
  }
done
if ! command -v tshark >/dev/null && ! command -v tcpdump >/dev/null; then
  echo "fuzz-seeds: installing tshark"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tshark >/dev/null
fi

work=$(mktemp -d)
pids=()
brought_up=0
cleanup() {
  # Only what this script started, by process id.
  for pid in "${pids[@]}"; do
    kill -INT "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  pids=()
  if [ "$brought_up" -eq 1 ]; then
    "$melange" lab down >/dev/null || echo "fuzz-seeds: lab down failed; run: $melange lab down" >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT

lab_ready() {
  "$melange" lab status --json | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["ready"] else 1)'
}
if lab_ready; then
  echo "fuzz-seeds: the lab is already up; leaving it up afterwards"
  if ip -n mlg-b link show mlg-vb | grep -q 'xdp'; then
    echo "fuzz-seeds: an XDP program is attached to mlg-vb: someone is using the lab; try later" >&2
    exit 1
  fi
else
  "$melange" lab up >/dev/null
  brought_up=1
fi

capture() { # NS DEV FILE
  if command -v tshark >/dev/null; then
    ip netns exec "$1" tshark -q -i "$2" -s 0 -F pcap -w "$3" 2>/dev/null &
  else
    ip netns exec "$1" tcpdump -i "$2" -s 0 -U -w "$3" 2>/dev/null &
  fi
  pids+=($!)
}
capture mlg-b mlg-vb "$work/vb.pcap"
capture mlg-a mlg-va "$work/va.pcap"
# A capture writes its file header once it is running.
for _ in $(seq 50); do
  [ -s "$work/vb.pcap" ] && [ -s "$work/va.pcap" ] && break
  sleep 0.1
done
sleep 1

start_echo() { # extra arguments
  ip netns exec mlg-b "$melange" echo --backend af_xdp --interface mlg-vb --idle sleep "$@" \
    >"$work/echo.log" 2>&1 &
  echo_pid=$!
  pids+=("$echo_pid")
  sleep 2
  if ! kill -0 "$echo_pid" 2>/dev/null; then
    cat "$work/echo.log" >&2
    echo "fuzz-seeds: the AF_XDP echo did not start" >&2
    exit 1
  fi
}
stop_echo() {
  kill -INT "$echo_pid" 2>/dev/null || true
  wait "$echo_pid" 2>/dev/null || true
}

start_echo --port 7777
ip -n mlg-a neigh flush dev mlg-va
ip netns exec mlg-a ping -c 3 -i 0.2 10.77.0.2 >/dev/null
ip netns exec mlg-a ping -c 2 -i 0.2 -s 3000 10.77.0.2 >/dev/null || true
# Open loop at a low rate: a few hundred requests are plenty of seeds, and a capture of a
# closed loop at full speed runs to hundreds of megabytes.
# (Payloads above one pool frame, e.g. 3000 bytes, are refused by the kernel backend today:
# every send fails, so the fragments come from ping and python3 below.)
for payload in 24 64 1400 1472; do
  ip netns exec mlg-a "$melange" loadgen --backend kernel --bind 10.77.0.1 \
    --target 10.77.0.2:7777 --payload "$payload" --rate 200 --inflight 4 --warmup 0s \
    --duration 0.5s --timeout 0.2s --idle sleep >/dev/null 2>&1 ||
    echo "fuzz-seeds: loadgen at $payload bytes failed (its frames are captured anyway)"
done
ip netns exec mlg-a python3 fuzz/seeds.py send 10.77.0.2 7777 1 24 100 1472 1473 4000
ip netns exec mlg-a python3 fuzz/seeds.py send 10.77.0.2 9999 32
sleep 0.5
stop_echo

if command -v sockperf >/dev/null; then
  start_echo --port 11111 --protocol sockperf
  for size in 14 64 1400; do
    ip netns exec mlg-a sockperf ping-pong -i 10.77.0.2 -p 11111 -t 1 -m "$size" --mps=100 \
      >/dev/null 2>&1 || echo "fuzz-seeds: sockperf ping-pong at $size bytes failed"
  done
  ip netns exec mlg-a sockperf throughput -i 10.77.0.2 -p 11111 -t 1 -m 200 --mps=100 \
    >/dev/null 2>&1 || echo "fuzz-seeds: sockperf throughput failed"
  stop_echo
else
  echo "fuzz-seeds: sockperf not installed (scripts/setup.sh): no sockperf seeds from this run"
fi
sleep 0.5

# Stop the captures (they flush on SIGINT), then write the seeds.
for pid in "${pids[@]}"; do
  kill -INT "$pid" 2>/dev/null || true
done
for pid in "${pids[@]}"; do
  wait "$pid" 2>/dev/null || true
done
pids=()
python3 fuzz/seeds.py split fuzz/seeds "$work/vb.pcap" "$work/va.pcap"
ip netns exec mlg-b python3 fuzz/seeds.py netlink fuzz/seeds mlg-vb lo
echo "fuzz-seeds: done; review and commit fuzz/seeds/"
