#!/usr/bin/env bash
# Runs every check the project has: formatting, clippy, and all tests (unit, integration, doc),
# against real redis-server processes started by the tests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --redis-only

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== doc tests"
cargo test --workspace --doc

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
else
    cargo test --workspace --no-fail-fast
fi
