#!/usr/bin/env bash
# Test dependencies of crates/proxy (package faultline-proxy). Idempotent.
#  - nftables: transparent mode tests (nft) ; haproxy: the benchmark's peer.
#  - toxiproxy-python (PyPI) in a venv under target/: the published-client test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${CARGO_TARGET_DIR:-$root/target}/proxy-test-venv"

if ! command -v nft >/dev/null 2>&1 || ! command -v haproxy >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables haproxy
    else
        echo "proxy.sh: need root for: apt-get install -y nftables haproxy" >&2
        exit 1
    fi
fi

if ! "$venv/bin/python" -c 'import toxiproxy' >/dev/null 2>&1; then
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        # Debian's system python3 ships venv separately.
        if [ "$(id -u)" = 0 ]; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
        fi
        rm -rf "$venv"
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install -q 'toxiproxy-python==0.1.1'
fi
echo "proxy test deps ready: nft, haproxy, $venv/bin/python (toxiproxy-python)"
