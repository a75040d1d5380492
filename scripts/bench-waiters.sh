#!/usr/bin/env bash
# Memory per waiting request: holds 1,000 and 10,000 chat requests waiting in one group's queue on one replica
# (Redis backend, then the in-memory one) and reports what they cost while they wait:
#
#   - proxy RSS per waiter: (VmRSS with N waiting - VmRSS with one request in flight) / N, /proc/<pid>/status
#   - Redis bytes per waiter: INFO memory used_memory delta / N (Redis backend)
#   - the replica's CPU while they wait (and Redis's): /proc/<pid>/stat over WAITERS_CPU_SECS seconds
#   - the drain: time from the clients' disconnect until the replica holds no waiter (they leave the queue at once)
#   - the proxy's idle RSS (after startup, before any request)
#
# The group has one deployment with max_parallel_requests 1 whose upstream answers after 15 minutes; one
# request takes the slot, the N waiters queue behind it. The clients are `hold-waiters` processes (raw
# keep-alive connections, 5,000 each), so 10,000 waiters need an open-file limit above 10,000: the script
# raises the soft limit to the hard one and stops when that is too low. Each (backend, N) runs on a fresh
# replica so memory freed by a previous run does not hide the next one's growth.
#
# Prints a Markdown table, then one line `WAITERS_JSON {...}` for bench/results/latest/summary.json, and
# writes the JSON to $BENCH_OUT/results/latest/waiters.json when BENCH_OUT is set.
#
#   scripts/bench-waiters.sh                  # about a minute
#
# Settings (environment):
#   WAITERS_COUNTS     waiter counts (default "1000 10000")
#   WAITERS_BACKENDS   backends (default "redis memory")
#   WAITERS_CPU_SECS   seconds over which CPU is measured while the waiters wait (default 5)
#   CARGO_TARGET_DIR   where the release binaries are built (default target/ in the repository)
#   WAITERS_PROXY_BIN  the llm-scheduler binary to measure (default: the one built; e.g. a build of the
#                      commit before a change, for an A/B)
#   WAITERS_NO_BUILD=1 use the binaries as they are in CARGO_TARGET_DIR
#   BENCH_OUT          where results/latest/waiters.json goes (unset: not written)
#   BENCH_KEEP_TMP=1   keep the temp dir (configs, logs)
#
# Needs redis-server, redis-cli and curl. Every process listens on 127.0.0.1 and is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="${WAITERS_PROXY_BIN:-$TARGET/release/llm-scheduler}"
MOCK_BIN="$TARGET/release/mock-upstream"
HOLD_BIN="$TARGET/release/hold-waiters"
KEY="sk-bench-master-key-0123456789"
COUNTS="${WAITERS_COUNTS:-1000 10000}"
BACKENDS="${WAITERS_BACKENDS:-redis memory}"
CPU_SECS="${WAITERS_CPU_SECS:-5}"
PER_CLIENT=5000

log() { echo "bench-waiters: $*" >&2; }
die() {
    log "$*"
    exit 1
}

for tool in redis-server redis-cli curl; do
    command -v "$tool" >/dev/null || die "$tool is required"
done

max_count=0
for n in $COUNTS; do ((n > max_count)) && max_count=$n; done
# The replica holds one connection per waiter (plus upstream, Redis and the listener); a client process 5,000.
want=$((max_count + 1000))
hard="$(ulimit -Hn)"
if [[ "$hard" != unlimited ]] && ((hard < want)); then
    die "open-file hard limit $hard is below $want (needed for $max_count waiters): raise it (ulimit -Hn, limits.conf)"
fi
ulimit -Sn "$([[ "$hard" == unlimited ]] && echo "$want" || echo "$hard")"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/llm-scheduler-waiters.XXXXXX")"
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait_exit "$pid" 10
    done
    if [[ "${BENCH_KEEP_TMP:-0}" == 1 ]]; then
        log "temp dir kept: $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_exit() {
    local pid="$1" deadline=$((SECONDS + $2))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.05
    done
    wait "$pid" 2>/dev/null || true
}

# start NAME CMD...: runs CMD in the background, output to $TMP/NAME.log, pid in $TMP/NAME.pid.
start() {
    local name="$1"
    shift
    "$@" >"$TMP/$name.log" 2>&1 </dev/null &
    PIDS+=("$!")
    echo "$!" >"$TMP/$name.pid"
}

stop() {
    local pid
    pid="$(cat "$TMP/$1.pid")"
    kill -TERM "$pid" 2>/dev/null || true
    wait_exit "$pid" 15
}

# address NAME PATTERN: waits for "PATTERN http://ADDR" in NAME's log and prints http://ADDR.
address() {
    local name="$1" pattern="$2" deadline=$((SECONDS + 60)) found
    while true; do
        found="$(grep -o "$pattern http://[0-9.:]*" "$TMP/$name.log" 2>/dev/null | head -n 1 | grep -o 'http://.*' || true)"
        if [[ -n "$found" ]]; then
            echo "$found"
            return
        fi
        kill -0 "$(cat "$TMP/$name.pid")" 2>/dev/null || {
            tail -n 20 "$TMP/$name.log" >&2
            die "$name exited"
        }
        ((SECONDS < deadline)) || die "$name did not come up (log: $TMP/$name.log)"
        sleep 0.05
    done
}

free_port() {
    local port
    for _ in $(seq 200); do
        port=$((20000 + RANDOM % 12000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    die "no free port found"
}

rcli() { redis-cli -p "$REDIS_PORT" "$@"; }
used_memory() { rcli info memory | tr -d '\r' | awk -F: '$1 == "used_memory" { print $2 }'; }
rss_kb() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"; }
# utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
now_ms() { date +%s%3N; }

# The replica's gauge of requests it serves (queued or upstream).
in_flight() {
    curl -sf -H "Authorization: Bearer $KEY" "$1/metrics" |
        awk '$1 == "llm_scheduler_in_flight_requests" { print $2; found = 1 } END { if (!found) print -1 }'
}

# wait_in_flight URL N SECS: polls until the replica serves N requests; prints the milliseconds it took.
wait_in_flight() {
    local url="$1" want="$2" deadline=$((SECONDS + $3)) got start
    start="$(now_ms)"
    while true; do
        got="$(in_flight "$url")"
        if [[ "$got" == "$want" ]]; then
            echo $(($(now_ms) - start))
            return
        fi
        ((SECONDS < deadline)) || die "the replica serves $got requests, not $want, after $3 s"
        sleep 0.02
    done
}

# settled_rss PID: VmRSS once two reads half a second apart differ by less than 0.5% (at most 10 s).
settled_rss() {
    local pid="$1" last now
    last="$(rss_kb "$pid")"
    for _ in $(seq 20); do
        sleep 0.5
        now="$(rss_kb "$pid")"
        if ((now - last < last / 200 && last - now < last / 200)); then
            break
        fi
        last="$now"
    done
    echo "$now"
}

# ---------------------------------------------------------------------------------------------------------
if [[ "${WAITERS_NO_BUILD:-0}" != 1 ]]; then
    log "building release binaries"
    (cd "$ROOT" && cargo build --release -q -p proxy -p testkit -p loadtest \
        --bin llm-scheduler --bin mock-upstream --bin hold-waiters)
fi
for bin in "$BIN" "$MOCK_BIN" "$HOLD_BIN"; do
    [[ -x "$bin" ]] || die "$bin is missing (build it, or unset WAITERS_NO_BUILD)"
done

start mock-hold "$MOCK_BIN" --port 0 --latency-ms 900000 --no-record
MOCK_HOLD="$(address mock-hold 'listening on')"

mkdir -p "$TMP/redis"
for attempt in 1 2 3; do
    REDIS_PORT="$(free_port)"
    start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$TMP/redis"
    for _ in $(seq 100); do
        [[ "$(rcli ping 2>/dev/null)" == PONG ]] && break
        kill -0 "$(cat "$TMP/redis.pid")" 2>/dev/null || break
        sleep 0.05
    done
    [[ "$(rcli ping 2>/dev/null)" == PONG ]] && break
    log "redis-server did not start on port $REDIS_PORT (attempt $attempt)"
    kill "$(cat "$TMP/redis.pid")" 2>/dev/null || true
done
[[ "$(rcli ping 2>/dev/null)" == PONG ]] || die "redis-server did not start (log: $TMP/redis.log)"
REDIS_PID="$(cat "$TMP/redis.pid")"

config() {
    cat <<EOF
model_list:
  - model_name: hold
    litellm_params:
      model: openai/gpt-4o
      api_base: $MOCK_HOLD/v1
      api_key: sk-mock
      max_parallel_requests: 1
    model_info: { id: hold-a }
router_settings:
  max_queue_depth: $((max_count + 100))
EOF
    if [[ "$1" == redis ]]; then
        cat <<EOF
  redis_host: 127.0.0.1
  redis_port: $REDIS_PORT
EOF
    fi
    cat <<EOF
litellm_settings: { request_timeout: 900 }
general_settings: { master_key: $KEY, max_connections: $((max_count + 500)) }
EOF
}

TICKS="$(getconf CLK_TCK)"
ROWS=()
JSON_RUNS=()
for backend in $BACKENDS; do
    config "$backend" >"$TMP/$backend.yaml"
    for n in $COUNTS; do
        name="$backend-$n"
        log "run $name"
        [[ "$backend" == redis ]] && rcli flushall >/dev/null
        start "proxy-$name" "$BIN" --config "$TMP/$backend.yaml" --host 127.0.0.1 --port 0 --log-format json
        url="$(address "proxy-$name" 'listening on')"
        pid="$(cat "$TMP/proxy-$name.pid")"
        addr="${url#http://}"
        wait_in_flight "$url" 0 30 >/dev/null
        idle_kb="$(settled_rss "$pid")"

        # One request holds the deployment's only slot (its upstream answers in 15 minutes).
        start "block-$name" env LLM_SCHEDULER_KEY="$KEY" "$HOLD_BIN" --addr "$addr" --count 1 --model hold
        wait_in_flight "$url" 1 30 >/dev/null
        base_kb="$(settled_rss "$pid")"
        redis_before=0
        [[ "$backend" == redis ]] && redis_before="$(used_memory)"

        clients=()
        left="$n" i=0
        while ((left > 0)); do
            take=$((left < PER_CLIENT ? left : PER_CLIENT))
            start "clients-$name-$i" env LLM_SCHEDULER_KEY="$KEY" "$HOLD_BIN" --addr "$addr" --count "$take" --model hold
            clients+=("clients-$name-$i")
            left=$((left - take)) i=$((i + 1))
        done
        fill_ms="$(wait_in_flight "$url" $((n + 1)) 180)"
        if grep -h '^answered' "${clients[@]/#/$TMP/}".log 2>/dev/null | grep -q .; then
            grep -h 'answer' "${clients[@]/#/$TMP/}".log >&2 || true
            die "$name: some waiting requests were answered early"
        fi
        rss_kb_now="$(settled_rss "$pid")"
        redis_bytes=0 queue_len=0
        if [[ "$backend" == redis ]]; then
            redis_bytes=$(($(used_memory) - redis_before))
            queue_len="$(rcli zcard 'llms:{hold}:q')"
        fi

        # CPU while they wait.
        p0="$(cpu_ticks "$pid")" r0="$(cpu_ticks "$REDIS_PID")" t0="$(now_ms)"
        sleep "$CPU_SECS"
        p1="$(cpu_ticks "$pid")" r1="$(cpu_ticks "$REDIS_PID")" t1="$(now_ms)"
        cpu_pct="$(awk -v d=$((p1 - p0)) -v ms=$((t1 - t0)) -v hz="$TICKS" 'BEGIN { printf "%.2f", 100 * d / hz / (ms / 1000) }')"
        redis_cpu_pct="$(awk -v d=$((r1 - r0)) -v ms=$((t1 - t0)) -v hz="$TICKS" 'BEGIN { printf "%.2f", 100 * d / hz / (ms / 1000) }')"
        [[ "$backend" == redis ]] || redis_cpu_pct=null

        # The clients go away: every waiter leaves the queue.
        for c in "${clients[@]}"; do stop "$c"; done
        drain_ms="$(wait_in_flight "$url" 1 60)"
        stop "block-$name"
        stop "proxy-$name"

        per_waiter_b=$(((rss_kb_now - base_kb) * 1024 / n))
        redis_per_waiter_b=$((redis_bytes / n))
        log "  $name: idle $((idle_kb / 1024)) MB, one in flight $((base_kb / 1024)) MB, $n waiting $((rss_kb_now / 1024)) MB: $per_waiter_b B per waiter; Redis $redis_per_waiter_b B per waiter (queue $queue_len); CPU $cpu_pct% (Redis $redis_cpu_pct%); filled in $fill_ms ms, drained in $drain_ms ms"
        ROWS+=("| $backend | $n | $((idle_kb / 1024)) | $((base_kb / 1024)) | $((rss_kb_now / 1024)) | $(awk -v b="$per_waiter_b" 'BEGIN { printf "%.1f", b / 1024 }') | $([[ "$backend" == redis ]] && echo "$redis_per_waiter_b" || echo "-") | $cpu_pct | $([[ "$backend" == redis ]] && echo "$redis_cpu_pct" || echo "-") | $drain_ms |")
        JSON_RUNS+=("{\"backend\":\"$backend\",\"waiters\":$n,\"idle_rss_kb\":$idle_kb,\"base_rss_kb\":$base_kb,\"rss_kb\":$rss_kb_now,\"proxy_bytes_per_waiter\":$per_waiter_b,\"redis_bytes_per_waiter\":$([[ "$backend" == redis ]] && echo "$redis_per_waiter_b" || echo null),\"proxy_cpu_pct\":$cpu_pct,\"redis_cpu_pct\":$redis_cpu_pct,\"fill_ms\":$fill_ms,\"drain_ms\":$drain_ms}")
    done
done

echo
echo "| backend | waiters | idle RSS (MB) | RSS, 1 in flight (MB) | RSS, waiting (MB) | proxy KB per waiter | Redis B per waiter | replica CPU % | Redis CPU % | drain (ms) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
echo
json="{\"scenario\":\"waiters\",\"commit\":\"$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)\",\"runs\":[$(
    IFS=,
    echo "${JSON_RUNS[*]}"
)]}"
echo "WAITERS_JSON $json"
if [[ -n "${BENCH_OUT:-}" ]]; then
    mkdir -p "$BENCH_OUT/results/latest"
    echo "$json" >"$BENCH_OUT/results/latest/waiters.json"
fi
