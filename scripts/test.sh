#!/usr/bin/env bash
# Runs every check the project has: formatting, clippy, and all tests (unit, integration, doc).
#
#   scripts/test.sh                    tests start their own redis-server processes (installed when missing)
#   scripts/test.sh --redis-url URL    tests share the single-node Redis at URL, each under a key prefix of
#                                      its own (deleted when the test ends); tests that need a server of
#                                      their own (kill, restart, pause, MONITOR, ...) are skipped and listed
#
# TEST_REDIS_URL set in the environment works as --redis-url.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '4,9p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --redis-url)
            if [ $# -lt 2 ] || [ -z "$2" ]; then usage >&2; exit 2; fi
            export TEST_REDIS_URL="$2"
            shift 2
            ;;
        --redis-url=*)
            export TEST_REDIS_URL="${1#*=}"
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "test.sh: unknown argument: $1" >&2
            usage >&2
            exit 2
            ;;
    esac
done

if [ -n "${TEST_REDIS_URL:-}" ]; then
    # The URL may carry a password: show it masked.
    echo "== tests share the Redis at $(printf '%s' "$TEST_REDIS_URL" | sed -E 's#//([^:@/]*):[^@/]*@#//\1:***@#')"
else
    scripts/setup.sh --redis-only
fi

# The official Anthropic and OpenAI Python SDKs for the test that drives /v1/messages and /v1/chat/completions
# with them: a virtualenv under target/ (made once, reused), unless SDK_PYTHON names an interpreter that has
# them. Without python3 or PyPI the test is skipped and listed.
ensure_sdks() {
    if [ -n "${SDK_PYTHON:-}" ]; then return; fi
    local venv="$PWD/target/sdk-venv"
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import anthropic, openai' 2>/dev/null; then
        export SDK_PYTHON="$venv/bin/python"
        return
    fi
    if ! command -v python3 >/dev/null 2>&1; then
        echo "== python3 not found: the Python SDK test will be skipped"
        return
    fi
    echo "== installing the anthropic and openai Python SDKs into target/sdk-venv"
    mkdir -p target
    if python3 -m venv "$venv" >/dev/null 2>&1 &&
        timeout 600 "$venv/bin/pip" install -q --disable-pip-version-check anthropic openai >/dev/null 2>&1 &&
        "$venv/bin/python" -c 'import anthropic, openai' 2>/dev/null; then
        export SDK_PYTHON="$venv/bin/python"
    else
        echo "== the Python SDKs could not be installed: the Python SDK test will be skipped"
    fi
}
ensure_sdks

# The operator's page is tested in headless Chromium (Debian's `chromium`); install it when missing, quietly
# and bounded in time. The browser test prints why it skipped when it still cannot find one.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "== installing chromium (the /ui browser test)"
    if ! DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends chromium \
        >/dev/null 2>&1; then
        timeout 300 apt-get update -qq >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends chromium \
            >/dev/null 2>&1 || echo "   chromium could not be installed: the browser test will skip"
    fi
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== doc tests"
cargo test --workspace --doc

# Every test skipped for want of its own redis-server appends a line here (nextest hides the output of
# passing tests).
skip_log="$(mktemp)"
trap 'rm -f "$skip_log"' EXIT
export TESTKIT_SKIP_LOG="$skip_log"

echo "== tests"
status=0
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast || status=$?
else
    cargo test --workspace --no-fail-fast || status=$?
fi

if [ -s "$skip_log" ]; then
    echo "== skipped on the shared Redis ($(sort -u "$skip_log" | wc -l)):"
    sort -u "$skip_log" | sed 's/^/  /'
fi
exit "$status"
