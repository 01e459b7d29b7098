#!/usr/bin/env bash
# The http probe's maximum open-loop rate against a trivial local server, side by
# side with oha against the same server in the same run, then both at one equal
# rate (p50/p99). Prints a Markdown table for bench/RESULTS.md (## probe).
#
#   [BENCH_NICE=-10] bench/probe/run.sh [--seconds N] [--equal-rate R]
#
# Installs oha from crates.io (pinned) if it is missing; needs libssl-dev for it.
set -euo pipefail
cd "$(dirname "$0")/../.."

OHA_VERSION=1.16.0
if ! command -v oha >/dev/null 2>&1 || [ "$(oha --version 2>/dev/null)" != "oha $OHA_VERSION" ]; then
  echo "bench/probe: installing oha $OHA_VERSION (cargo install)" >&2
  # oha does not build without a TLS backend; native-tls links the system OpenSSL
  # (libssl-dev, pkg-config) instead of compiling aws-lc from source.
  cargo install oha --version "$OHA_VERSION" --locked --no-default-features --features native-tls
fi

cargo bench -p faultline-probe --bench max_rate --no-run

# On a shared machine other builds take the cores in bursts; BENCH_NICE=-10 (root)
# raises the bench and oha (its child) alike, so both see the same machine.
nice_cmd=()
[ -n "${BENCH_NICE:-}" ] && nice_cmd=(nice -n "$BENCH_NICE")
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg), nice ${BENCH_NICE:-0}" >&2
"${nice_cmd[@]}" cargo bench -p faultline-probe --bench max_rate -- --oha "$(command -v oha)" "$@"
