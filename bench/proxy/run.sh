#!/usr/bin/env bash
# Proxy benchmark: direct loopback vs faultline proxy vs HAProxy, one run, side
# by side. Installs haproxy (the peer) from Debian if it is missing.
# Prints markdown; bench/RESULTS.md records a run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ulimit -n 20000 2>/dev/null || true
if ! command -v haproxy >/dev/null 2>&1; then
  sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq haproxy
fi
# FAULTLINE_BENCH_SOCKMAP=1 adds the kernel-side forwarder to the echo
# section (an experiment; needs root for bpf(2)).
if [ "${FAULTLINE_BENCH_SOCKMAP:-0}" = 1 ]; then
  cargo build --release --manifest-path bench/proxy/sockmap/Cargo.toml
  export FAULTLINE_BENCH_SOCKMAP_BIN="$PWD/bench/proxy/sockmap/target/release/faultline-bench-sockmap"
fi
exec cargo bench -p faultline-proxy --bench proxy "$@"
