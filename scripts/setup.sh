#!/usr/bin/env bash
# Installs what faultline and its test suite need on a fresh Debian machine, and
# nothing that is already there. Safe to run again. Needs root (or sudo) only when a
# package is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the build and the tests use. Each issue that brings a real part
# (PostgreSQL, MariaDB, nftables, ...) adds it here, never to a README step.
PACKAGES=(
  ca-certificates # crates.io over TLS
  gcc             # linker, C for -sys crates and the GPU test fixtures
  binutils        # nm, readelf: the interposer tests read exported symbols
  pkg-config
  nftables        # nft: network.loss / network.partition tables and their tests
  iproute2        # ss -K (cutting connections), ip netns for network test fixtures
  openssl         # test certificates for the agent's TLS tests
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust with rustup (rust-toolchain.toml pins the version)" >&2
  exit 1
fi
