#!/usr/bin/env bash
# Fleet benchmark: inject+revert fan-out of one run on 50 and 200 agents (real
# `faultline agent` processes in network namespaces, registered with a real
# `faultline serve`), and the registry's heartbeat cost per 1,000 agents.
# Needs root (namespaces, nftables): ./scripts/setup.sh installs what it uses.
# Prints markdown; bench/RESULTS.md records a run.
#   FAULTLINE_BENCH_AGENTS=50,200 (default) bash bench/fleet/run.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ulimit -n 20000 2>/dev/null || true
exec cargo bench -p faultline --bench fleet "$@"
