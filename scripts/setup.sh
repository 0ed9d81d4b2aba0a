#!/usr/bin/env bash
# Installs what Melange's tests and benchmarks need from the distribution's packages.
# Idempotent; needs root (apt-get). Nothing else is installed by hand anywhere.
set -euo pipefail

# iproute2: ip netns/link/addr for `melange lab`; nftables: `melange lab impair` (there is no netem);
# iputils-ping and python3: the lab test pings and runs a UDP echo across the veth;
# ethtool: `lab up` and `lab status` record offloads; procps: `lab up` sets a sysctl per namespace; tshark: the TCP lab tests check captures of
# Melange's segments with a packet analyser nobody here wrote; redis-server, redis-tools
# (redis-cli, redis-benchmark), memcached, libmemcached-tools (memcslap, memcstat),
# python3-redis and python3-pymemcache: `melange kv` is tested and benchmarked against the
# real servers with their own clients.
packages=(sockperf iproute2 iputils-ping nftables ethtool python3 tshark procps
  redis-server redis-tools memcached libmemcached-tools python3-redis python3-pymemcache)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: ${packages[*]} already installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup: need root to install: ${missing[*]} (run: sudo $0)" >&2
  exit 1
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
