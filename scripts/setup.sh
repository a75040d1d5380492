#!/usr/bin/env bash
# Prepares a machine to build, run and test llm-scheduler. Safe to run again.
#   - installs redis-server (Debian/Ubuntu apt-get) when it is missing
#   - builds the workspace in release mode
set -euo pipefail
cd "$(dirname "$0")/.."

ensure_redis() {
    if command -v redis-server >/dev/null 2>&1 || [ -n "${REDIS_SERVER_BIN:-}" ]; then
        return
    fi
    echo "setup: installing redis-server"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    if command -v apt-get >/dev/null 2>&1; then
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
    else
        echo "setup: redis-server is missing and apt-get is not available; install Redis 7 and retry" >&2
        exit 1
    fi
}

ensure_redis
if [ "${1:-}" != "--redis-only" ]; then
    cargo build --workspace --release
fi
