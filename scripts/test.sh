#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this): installs what the
# tests need, checks formatting and lints, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
