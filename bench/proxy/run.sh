#!/usr/bin/env bash
# Proxy benchmark: direct loopback vs faultline proxy vs HAProxy, one run, side
# by side. Needs haproxy (apt-get install -y haproxy; scripts/test-deps/proxy.sh).
# Prints markdown; bench/RESULTS.md records a run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ulimit -n 20000 2>/dev/null || true
exec cargo bench -p faultline-proxy --bench proxy "$@"
