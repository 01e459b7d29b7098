#!/usr/bin/env bash
# The llm probe's TTFT error against a local streaming server with a known
# first-token delay (issue 12 target: <= 0.5 ms at p99 at 200 streams/s on 2
# cores). Prints a Markdown table for bench/RESULTS.md (## llm probe).
#
#   [BENCH_NICE=-10] bench/llm/run.sh [--seconds N] [--rate R] [--first-ms D] [--tokens N] [--pace-ms P]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo bench -p faultline-probe --bench llm_ttft --no-run
nice_cmd=()
[ -n "${BENCH_NICE:-}" ] && nice_cmd=(nice -n "$BENCH_NICE")
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg), nice ${BENCH_NICE:-0}" >&2
"${nice_cmd[@]}" cargo bench -p faultline-probe --bench llm_ttft -- "$@"
