#!/usr/bin/env bash
# Halt of 100 active faults through the agent's manager (issue 4: under 1 s).
# Needs root (signals, nftables). See README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo run --quiet --release -p faultline-agent --example halt_bench
