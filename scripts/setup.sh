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
  postgresql      # db.lock tests: a real PostgreSQL server
  mariadb-server  # db.lock tests: a real MariaDB server
  mariadb-client
  nftables        # transparent proxy mode and packet faults: one nft table per fault
  iproute2        # ip netns / veth: the network tests' own namespaces; ss -K
  python3-venv    # the published Toxiproxy client the proxy API is tested with
  openssl         # test certificates for the agent's TLS tests
  chromium        # the dashboard's browser test (tests/e2e/ui.rs): /usr/bin/chromium, headless
  systemd         # systemd-analyze verify: the agent's unit file is checked (tests/e2e/deploy.rs)
)

# Root for package installs and starting services; sudo where we are not root.
as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  "${as_root[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- database servers for the db.lock tests (loopback only) ---
# PostgreSQL: start the Debian cluster, then a password role the tests log in as
# over 127.0.0.1 (pg_hba's default for TCP is scram-sha-256).
pg_cluster=$(pg_lsclusters --no-header 2>/dev/null | awk 'NR==1 {print $1" "$2}')
if [ -z "$pg_cluster" ]; then
  echo "setup: no PostgreSQL cluster found (pg_lsclusters); reinstall the postgresql package" >&2
  exit 1
fi
# shellcheck disable=SC2086
pg_lsclusters --no-header | awk 'NR==1' | grep -q online || "${as_root[@]}" pg_ctlcluster $pg_cluster start
for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 && break; sleep 0.2; done
pg_isready -q -h 127.0.0.1 || { echo "setup: PostgreSQL did not start: see pg_ctlcluster $pg_cluster start" >&2; exit 1; }
"${as_root[@]}" su postgres -c "psql -q -v ON_ERROR_STOP=1 -d postgres" <<'SQL'
DO $$BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'faultline') THEN
    CREATE ROLE faultline LOGIN SUPERUSER PASSWORD 'faultline';
  END IF;
END$$;
SQL

# MariaDB: Debian's init script (no systemd needed), then the test user.
if ! mariadb-admin ping --silent >/dev/null 2>&1; then
  "${as_root[@]}" service mariadb start >/dev/null
fi
for _ in $(seq 1 50); do mariadb-admin ping --silent >/dev/null 2>&1 && break; sleep 0.2; done
mariadb-admin ping --silent >/dev/null 2>&1 || { echo "setup: MariaDB did not start: see service mariadb start" >&2; exit 1; }
"${as_root[@]}" mariadb <<'SQL'
CREATE USER IF NOT EXISTS 'faultline'@'127.0.0.1' IDENTIFIED BY 'faultline';
CREATE USER IF NOT EXISTS 'faultline'@'localhost' IDENTIFIED BY 'faultline';
GRANT ALL PRIVILEGES ON *.* TO 'faultline'@'127.0.0.1';
GRANT ALL PRIVILEGES ON *.* TO 'faultline'@'localhost';
CREATE DATABASE IF NOT EXISTS faultline_test;
SQL

# --- the published Toxiproxy client (PyPI) the proxy's API is tested against ---
venv="${CARGO_TARGET_DIR:-$PWD/target}/proxy-test-venv"
if ! "$venv/bin/python" -c 'import toxiproxy' >/dev/null 2>&1; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'toxiproxy-python==0.1.1'
fi

# --- schemathesis (PyPI): fuzzes the controller's HTTP API from its OpenAPI document ---
# A venv of its own: its dependency tree has nothing to do with the proxy tests'.
st_venv="${CARGO_TARGET_DIR:-$PWD/target}/schemathesis-venv"
if ! "$st_venv/bin/schemathesis" --version 2>/dev/null | grep -q '4.32.5'; then
  rm -rf "$st_venv"
  python3 -m venv "$st_venv"
  "$st_venv/bin/pip" install -q 'schemathesis==4.32.5'
fi

# --- kubernetes-validate (PyPI): the Kubernetes manifests in agents/ are checked
# offline against the API's published schemas (tests/e2e/deploy.rs). Neither
# kubeconform nor a kubectl that validates without a cluster is packaged for Debian.
kv_venv="${CARGO_TARGET_DIR:-$PWD/target}/k8s-validate-venv"
if ! "$kv_venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q '1.34.1'; then
  rm -rf "$kv_venv"
  python3 -m venv "$kv_venv"
  "$kv_venv/bin/pip" install -q 'kubernetes-validate==1.34.1'
fi

# --- playwright-core (npm) for the dashboard's browser test ---
# node and npm: the machine image's (a nodejs package that carries npm) where there
# is one; Debian's only where either command is missing, so an image's newer
# nodejs is never replaced by Debian's older one.
node_missing=()
command -v node >/dev/null 2>&1 || node_missing+=(nodejs)
command -v npm >/dev/null 2>&1 || node_missing+=(npm)
if ((${#node_missing[@]})); then
  echo "setup: installing ${node_missing[*]}" >&2
  "${as_root[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${node_missing[@]}"
fi
# Exactly the locked version, into the gitignored tests/ui/node_modules. It drives
# Debian's Chromium above: no browser is downloaded (`playwright install` is never run).
want_pw=$(node -p "require('./tests/ui/package-lock.json').packages['node_modules/playwright-core'].version")
have_pw=$(node -p "try { require('./tests/ui/node_modules/playwright-core/package.json').version } catch { '' }")
if [ "$want_pw" != "$have_pw" ]; then
  (cd tests/ui && npm ci --no-audit --no-fund --loglevel=error)
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust with rustup (rust-toolchain.toml pins the version)" >&2
  exit 1
fi
