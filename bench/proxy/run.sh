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
exec cargo bench -p faultline-proxy --bench proxy "$@"
