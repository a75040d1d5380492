#!/usr/bin/env bash
# End-to-end benchmarks of llm-scheduler on this machine, all scenarios in one run so ratios are fair.
# Writes bench/RESULTS.md (machine, date, commit, tables) and the raw figures under bench/results/:
#
#   bench/results/latest/    this run: one load-generator report per run (s1-<target>-<load>.json,
#                            s2-priorities.json, s3-depth-<n>.json), summary.json, and rounds/ (every round of
#                            scenario 1: s1-<target>-<load>-round<n>.json)
#   bench/results/previous/  the run before, as it was in latest/; RESULTS.md compares the two
#
# Every load-generator run must answer all its requests with 2xx (the scenarios are sized so nothing is
# refused: scenario 2 saturates the deployment but its requests wait in the queue), else the script stops
# and names the run; LiteLLM's runs alone may fail requests (`--max-error-rate 1`): its errors are figures of
# the comparison, in the tables.
#
#   scripts/bench.sh                 # about 8 minutes on 2 cores (LiteLLM included when installed)
#
# Scenarios:
#   1. overhead: the same load straight to the mock upstream and through llm-scheduler (in memory; Redis;
#      3 replicas + Redis, load spread round robin), fixed rates of 50, 1,000 and 2,000 req/s (open loop)
#      and maximum throughput at concurrency 64 (closed loop); LiteLLM's proxy too when `litellm` is installed.
#   2. saturation with priorities: one deployment (max_parallel_requests 4, 300 requests per 1 s window)
#      behind 3 replicas, 400 req/s offered with priorities 0/64/128: queue wait by priority, inversions,
#      admissions per window and peak concurrency at the upstream against the limits.
#   3. queue depth: 10, 1,000 and 100,000 entries waiting in one group's Redis queue (written with queue-core's
#      RedisQueue by examples/queue_fill.rs, owner lease kept alive) while one replica's poller runs and short
#      requests flow: Redis commands/s, script time, admission latency, Redis memory per waiting entry.
#   4. durable jobs: jobs/s through one replica (submitted with `loadtest --queue` at concurrency 64, each
#      polled to its answer), Redis script calls and Redis CPU per job; Redis bytes per queued job (1,000
#      jobs submitted to a replica with `job_workers: 0`, so they stay queued).
#   5. rolling vs fixed windows: one replica at 167 req/s (10,000 rpm) against a deployment with a 60 s window,
#      once per `usage_window_mode`: Redis µs per step call (commandstats) and the usage hash's bytes per
#      deployment after a full window of traffic (rolling) or 10 s (fixed: its size does not grow).
#   6. the operator's page: one Redis replica's closed-loop throughput without and with a client reading
#      /queue/status every second (as an open /ui does), 3 rounds each, medians.
#
# Settings (environment):
#   BENCH_OUT        where RESULTS.md and results/ go (default: bench/ in the repository)
#   BENCH_QUICK=1    shorter runs (to try the script; figures are not comparable)
#   BENCH_ROUNDS=N   rounds of scenario 1 (default 3; 1 with BENCH_QUICK): each round runs every target of a
#                    load once, back to back; the reported run of a target is its median round (by p50
#                    latency, or by throughput for the closed loop), every round is kept in results/latest/rounds/
#   BENCH_LITELLM=0  skip LiteLLM even when it is installed
#   LITELLM_BIN      the litellm command (default: litellm from PATH)
#   BENCH_KEEP_TMP=1 keep the temp dir (configs, logs) after the run
#
# Needs redis-server and redis-cli, curl and jq. Every process listens on 127.0.0.1 and is stopped on exit.
# Not part of scripts/test.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${BENCH_OUT:-$ROOT/bench}"
RUN="$OUT/results/latest"
PREVIOUS="$OUT/results/previous"
BIN="$ROOT/target/release/llm-scheduler"
MOCK_BIN="$ROOT/target/release/mock-upstream"
FILL_BIN="$ROOT/target/release/examples/queue_fill"
LITELLM="${LITELLM_BIN:-litellm}"
KEY="sk-bench-master-key-0123456789"

if [[ "${BENCH_QUICK:-0}" == 1 ]]; then
    RATE_SECS=1 THROUGHPUT_SECS=1 WARMUP=100 LITELLM_SECS=0.5 S2_SECS=3 S3_IDLE_SECS=2 S3_LOAD_SECS=2
    DEPTHS="10 1000 10000" ROUNDS="${BENCH_ROUNDS:-1}" S5_SECS=3 S5_FIXED_SECS=2 S6_ROUNDS=1
else
    RATE_SECS=5 THROUGHPUT_SECS=5 WARMUP=500 LITELLM_SECS=1 S2_SECS=8 S3_IDLE_SECS=5 S3_LOAD_SECS=6
    DEPTHS="10 1000 100000" ROUNDS="${BENCH_ROUNDS:-3}" S5_SECS=62 S5_FIXED_SECS=10 S6_ROUNDS=3
fi
RATES="50 1000 2000"
S2_RATE=400 S2_MIX="0:10,64:30,128:60" S2_PARALLEL=4 S2_RPM=300 S2_TOLERANCE_MS=5
S3_RATE=500

log() { echo "bench: $*" >&2; }
die() {
    log "$*"
    exit 1
}

for tool in redis-server redis-cli curl jq; do
    command -v "$tool" >/dev/null || die "$tool is required (scripts/setup.sh installs redis-server; apt-get install curl jq)"
done

TMP="$(mktemp -d "${TMPDIR:-/tmp}/llm-scheduler-bench.XXXXXX")"
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

# Waits up to $2 seconds for process $1 to exit, then kills it.
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

# start NAME CMD...: runs CMD in the background, output to $TMP/NAME.log.
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
        # Below Linux's default ephemeral range (32768-60999), where a client connection's local port could
        # make the bind fail although nothing listens.
        port=$((20000 + RANDOM % 12000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    die "no free port found"
}

# lt NAME ARGS...: one load-generator run; JSON to $RUN/NAME.json, summary to $TMP/NAME.txt. A run that fails
# (too many requests without a 2xx answer for its --max-error-rate, or one that could not start) stops the
# script with its summary.
lt() {
    local name="$1" status=0
    shift
    log "run $name"
    "$BIN" loadtest --label "$name" --json "$RUN/$name.json" "$@" >"$TMP/$name.txt" || status=$?
    if ((status != 0)); then
        sed 's/^/bench:     /' "$TMP/$name.txt" >&2
        die "run $name failed (exit status $status)"
    fi
    grep -E '^(throughput|latency)' "$TMP/$name.txt" | sed 's/^/bench:     /' >&2
}

rcli() { redis-cli -p "$REDIS_PORT" "$@"; }

# "total steps steps_usec": commands Redis executed (those run by scripts included) and step calls (FCALL, or
# EVALSHA where the server has no Functions), without the commands this script sends itself.
redis_calls() {
    rcli info commandstats | tr -d '\r' | awk -F'[:,=]' '
        /^cmdstat_/ {
            name = substr($1, 9)
            if (name ~ /^(info|config\||memory\||flushall|dbsize|del|unlink|ping)$/ || name ~ /^(config|memory)\|/) next
            total += $3
            if (name == "fcall" || name == "evalsha" || name == "eval") { ev += $3; evus += $5 }
        }
        END { printf "%d %d %d\n", total, ev, evus }'
}

# Percentage of CPU time idle over the next 2 seconds (other work on the machine skews every figure).
cpu_idle_pct() {
    local a b
    a="$(head -n 1 /proc/stat)"
    sleep 2
    b="$(head -n 1 /proc/stat)"
    awk -v a="$a" -v b="$b" 'BEGIN {
        n = split(a, x, " "); split(b, y, " "); total = 0
        for (i = 2; i <= n; i++) total += y[i] - x[i]
        idle = (y[5] - x[5]) + (y[6] - x[6])
        printf "%.0f", (total > 0) ? 100 * idle / total : 0 }'
}

# Redis's own CPU time so far (user + system, µs): I/O included, unlike commandstats' per-command times.
redis_cpu_us() {
    rcli info cpu | tr -d '\r' | awk -F: '$1 == "used_cpu_user" || $1 == "used_cpu_sys" { t += $2 }
        END { printf "%d\n", t * 1000000 }'
}

used_memory() { rcli info memory | tr -d '\r' | awk -F: '$1 == "used_memory" { print $2 }'; }

# ---------------------------------------------------------------------------------------------------------
log "building release binaries"
(cd "$ROOT" && cargo build --release -q -p proxy -p testkit \
    --bin llm-scheduler --bin mock-upstream --example queue_fill)
IDLE_BEFORE="$(cpu_idle_pct)"
log "CPU idle before the run: $IDLE_BEFORE%"
((IDLE_BEFORE >= 90)) || log "warning: the machine is busy with other work; figures will be skewed"
# The previous complete run moves to previous/: RESULTS.md compares the two (before/after a change). A run
# that stopped half way (no summary.json) is dropped.
if [[ -f "$RUN/summary.json" ]]; then
    rm -rf "$PREVIOUS"
    mkdir -p "$(dirname "$PREVIOUS")"
    mv "$RUN" "$PREVIOUS"
fi
rm -rf "$RUN"
mkdir -p "$RUN/rounds" "$TMP/rounds"

start mock-fast "$MOCK_BIN" --port 0 --no-record
MOCK_FAST="$(address mock-fast 'listening on')"
start mock-slow "$MOCK_BIN" --port 0 --latency-ms 10
MOCK_SLOW="$(address mock-slow 'listening on')"
start mock-hold "$MOCK_BIN" --port 0 --latency-ms 900000 --no-record
MOCK_HOLD="$(address mock-hold 'listening on')"

mkdir -p "$TMP/redis"
# A port taken between the check and the bind: another port, up to three times.
for attempt in 1 2 3; do
    REDIS_PORT="$(free_port)"
    start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$TMP/redis"
    for _ in $(seq 100); do
        [[ "$(rcli ping 2>/dev/null)" == PONG ]] && break
        kill -0 "$(cat "$TMP/redis.pid")" 2>/dev/null || break
        sleep 0.05
    done
    [[ "$(rcli ping 2>/dev/null)" == PONG ]] && break
    log "redis-server did not start on port $REDIS_PORT (attempt $attempt): $(tail -n 2 "$TMP/redis.log")"
    kill "$(cat "$TMP/redis.pid")" 2>/dev/null || true
done
[[ "$(rcli ping 2>/dev/null)" == PONG ]] || die "redis-server did not start (log: $TMP/redis.log)"

# The deployment every scenario-1 request goes to: the fast mock, limits far above the load (they are checked
# and counted on every request all the same).
bench_group() {
    cat <<EOF
  - model_name: bench
    litellm_params:
      model: openai/gpt-4o
      api_base: $MOCK_FAST/v1
      api_key: sk-mock
      rpm: 1000000000
      tpm: 1000000000000
    model_info: { id: bench-a }
EOF
}

{
    echo "model_list:"
    bench_group
    echo "general_settings: { master_key: $KEY }"
} >"$TMP/memory.yaml"

{
    echo "model_list:"
    bench_group
    cat <<EOF
  - model_name: sat
    litellm_params:
      model: openai/gpt-4o
      api_base: $MOCK_SLOW/v1
      api_key: sk-mock
      max_parallel_requests: $S2_PARALLEL
      rpm: $S2_RPM
    model_info: { id: sat-a }
router_settings:
  redis_host: 127.0.0.1
  redis_port: $REDIS_PORT
  usage_window: 1
  max_queue_depth: 100000
litellm_settings: { request_timeout: 120 }
general_settings: { master_key: $KEY }
EOF
} >"$TMP/redis.yaml"

# Scenario 3: short prompts fit deployment x; the long prompts waiting in the queue fit only y, whose one
# in-flight slot is held by a request its upstream never answers, so they stay queued while short requests flow.
cat >"$TMP/deep.yaml" <<EOF
model_list:
  - model_name: deep
    litellm_params:
      model: openai/gpt-4o
      api_base: $MOCK_FAST/v1
      api_key: sk-mock
      rpm: 1000000000
      tpm: 1000000000000
    model_info: { id: deep-x, max_input_tokens: 1000 }
  - model_name: deep
    litellm_params:
      model: openai/gpt-4o
      api_base: $MOCK_HOLD/v1
      api_key: sk-mock
      max_parallel_requests: 1
    model_info: { id: deep-y }
router_settings:
  redis_host: 127.0.0.1
  redis_port: $REDIS_PORT
  enable_pre_call_checks: true
  max_queue_depth: 1000000
litellm_settings: { request_timeout: 600 }
general_settings: { master_key: $KEY }
EOF

# s1_run NAME TARGET LOAD URL...: one scenario-1 run (LOAD: rN = open loop at N req/s, c64 = closed loop)
# against one target, its report written to NAME.json. LiteLLM serves about 100 req/s here: its fixed-rate runs are shorter (so the
# backlog drains in time) and its warm-up smaller.
s1_run() {
    local name="$1" target="$2" load="$3"
    shift 3
    local urls=() secs="$RATE_SECS" warmup="$WARMUP" allow=() n
    for u in "$@"; do urls+=(--url "$u"); done
    if [[ "$target" == litellm ]]; then
        # LiteLLM is the comparison, loaded past its capacity at the higher rates: requests it fails are
        # figures (the tables' ok and errors columns), not a broken bench.
        secs="$LITELLM_SECS" warmup=50 allow=(--max-error-rate 1)
    fi
    if [[ "$load" == c64 ]]; then
        lt "$name" "${urls[@]}" "${allow[@]}" --key "$KEY" --model bench --concurrency 64 \
            --num-requests 100000000 --duration "$THROUGHPUT_SECS" --warmup "$warmup" --timeout 60
    else
        n="$(awk -v r="${load#r}" -v s="$secs" 'BEGIN { n = int(r * s); if (n < 50) n = 50; print n }')"
        lt "$name" "${urls[@]}" "${allow[@]}" --key "$KEY" --model bench --rate "${load#r}" \
            --num-requests "$n" --warmup "$warmup" --timeout 60
    fi
}

# ---------------------------------------------------------------------------------------------------------
log "scenario 1: overhead"
start proxy-memory "$BIN" --config "$TMP/memory.yaml" --host 127.0.0.1 --port 0
start proxy-1 "$BIN" --config "$TMP/redis.yaml" --host 127.0.0.1 --port 0
start proxy-2 "$BIN" --config "$TMP/redis.yaml" --host 127.0.0.1 --port 0
start proxy-3 "$BIN" --config "$TMP/redis.yaml" --host 127.0.0.1 --port 0
# The same replica on the work-stealing runtime with two threads (the default on machines with more than
# 2 cores; here the default is one thread): the cost of cross-thread wake-ups, shown side by side.
start proxy-pool "$BIN" --config "$TMP/redis.yaml" --host 127.0.0.1 --port 0 --workers 2
MEMORY="$(address proxy-memory 'listening on')"
R1="$(address proxy-1 'listening on')"
R2="$(address proxy-2 'listening on')"
R3="$(address proxy-3 'listening on')"
RPOOL="$(address proxy-pool 'listening on')"

LITELLM_STATUS="not installed (pip install 'litellm[proxy]' to compare)"
LITELLM_URL=""
if [[ "${BENCH_LITELLM:-1}" == 0 ]]; then
    LITELLM_STATUS="skipped (BENCH_LITELLM=0)"
    log "LiteLLM: $LITELLM_STATUS"
elif command -v "$LITELLM" >/dev/null 2>&1; then
    LITELLM_PORT="$(free_port)"
    cat >"$TMP/litellm.yaml" <<YAML
model_list:
  - model_name: bench
    litellm_params:
      model: openai/gpt-4o
      api_base: $MOCK_FAST/v1
      api_key: sk-mock
general_settings: { master_key: $KEY }
YAML
    # The local model cost map: LiteLLM would otherwise fetch it from the internet at startup.
    LITELLM_LOCAL_MODEL_COST_MAP=True start litellm "$LITELLM" --config "$TMP/litellm.yaml" \
        --host 127.0.0.1 --port "$LITELLM_PORT"
    deadline=$((SECONDS + 120))
    until curl -sf -o /dev/null "http://127.0.0.1:$LITELLM_PORT/health/liveliness"; do
        kill -0 "$(cat "$TMP/litellm.pid")" 2>/dev/null || die "litellm exited (log: $TMP/litellm.log)"
        ((SECONDS < deadline)) || die "litellm did not come up"
        sleep 0.2
    done
    LITELLM_URL="http://127.0.0.1:$LITELLM_PORT"
    LITELLM_STATUS="$("$LITELLM" --version 2>/dev/null | grep -o '[0-9][0-9.]*' | head -n 1 || true)"
    LITELLM_STATUS="LiteLLM ${LITELLM_STATUS:-?} proxy (1 worker, default settings)"
    log "LiteLLM: $LITELLM_STATUS"
else
    log "LiteLLM: $LITELLM_STATUS; scenario 1 runs without it"
fi

# Every target of one load runs back to back, so slow drift of the machine touches them alike, in ROUNDS rounds:
# the reported run of each target is its median round (p50 latency; throughput for the closed loop), so one
# noisy stretch of this shared machine does not decide a figure. LiteLLM runs once (it is far from every
# target and slow to run). Redis commands per request: counted around the single-replica runs (their
# warm-ups included).
S1_TARGETS="direct memory redis redis3 redispool"
redis_delta_total=0 redis_delta_ev=0 redis_delta_evus=0 redis_delta_cpu=0 redis_requests=0
for load in $(for rate in $RATES; do echo "r$rate"; done) c64; do
    for round in $(seq "$ROUNDS"); do
        for target in $S1_TARGETS; do
            name="rounds/s1-$target-$load-round$round"
            case "$target" in
                direct) s1_run "$name" direct "$load" "$MOCK_FAST" ;;
                memory) s1_run "$name" memory "$load" "$MEMORY" ;;
                redis)
                    read -r before_total before_ev before_evus < <(redis_calls)
                    before_cpu="$(redis_cpu_us)"
                    s1_run "$name" redis "$load" "$R1"
                    after_cpu="$(redis_cpu_us)"
                    read -r after_total after_ev after_evus < <(redis_calls)
                    redis_delta_total=$((redis_delta_total + after_total - before_total))
                    redis_delta_ev=$((redis_delta_ev + after_ev - before_ev))
                    redis_delta_evus=$((redis_delta_evus + after_evus - before_evus))
                    redis_delta_cpu=$((redis_delta_cpu + after_cpu - before_cpu))
                    redis_requests=$((redis_requests + WARMUP + $(jq .sent "$RUN/$name.json")))
                    ;;
                redis3) s1_run "$name" redis3 "$load" "$R1" "$R2" "$R3" ;;
                redispool) s1_run "$name" redispool "$load" "$RPOOL" ;;
            esac
        done
    done
    for target in $S1_TARGETS; do
        key='.latency_ms.p50'
        [[ "$load" == c64 ]] && key='.ok_rps'
        median="$(for f in "$RUN"/rounds/s1-"$target-$load"-round*.json; do
            echo "$(jq "$key" "$f") $f"
        done | sort -g | awk '{ runs[NR] = $2 } END { print runs[int((NR + 1) / 2)] }')"
        cp "$median" "$RUN/s1-$target-$load.json"
    done
    if [[ -n "$LITELLM_URL" ]]; then
        s1_run "s1-litellm-$load" litellm "$load" "$LITELLM_URL"
    fi
done
[[ -z "$LITELLM_URL" ]] || stop litellm
stop proxy-memory
stop proxy-pool
S1_EVALSHA_PER_REQ="$(awk -v a="$redis_delta_ev" -v n="$redis_requests" 'BEGIN { printf "%.3f", a / n }')"
S1_CMDS_PER_REQ="$(awk -v a="$redis_delta_total" -v n="$redis_requests" 'BEGIN { printf "%.1f", a / n }')"
S1_SCRIPT_US_PER_CALL="$(awk -v a="$redis_delta_evus" -v n="$redis_delta_ev" 'BEGIN { printf "%.1f", a / n }')"
S1_SCRIPT_US_PER_REQ="$(awk -v a="$redis_delta_evus" -v n="$redis_requests" 'BEGIN { printf "%.1f", a / n }')"
S1_REDIS_CPU_US_PER_REQ="$(awk -v a="$redis_delta_cpu" -v n="$redis_requests" 'BEGIN { printf "%.1f", a / n }')"
log "Redis: $S1_EVALSHA_PER_REQ script calls and $S1_CMDS_PER_REQ commands (inside scripts included) per request"
log "Redis: $S1_SCRIPT_US_PER_CALL µs per script call, $S1_SCRIPT_US_PER_REQ µs of scripts and $S1_REDIS_CPU_US_PER_REQ µs of CPU (I/O included) per request"

# ---------------------------------------------------------------------------------------------------------
log "scenario 2: saturation with priorities (3 replicas, max_parallel_requests $S2_PARALLEL, $S2_RPM per 1 s window)"
curl -sf -X DELETE "$MOCK_SLOW/__mock/requests" >/dev/null
lt s2-priorities --url "$R1" --url "$R2" --url "$R3" --key "$KEY" --model sat --rate "$S2_RATE" \
    --num-requests "$((S2_RATE * S2_SECS))" --priority-mix "$S2_MIX" --timeout 120 \
    --inversion-tolerance-ms "$S2_TOLERANCE_MS" --upstream-log "$MOCK_SLOW/__mock/requests"
curl -sf "$MOCK_SLOW/__mock/requests" >"$TMP/s2-mock.json"
S2_UPSTREAM="$(jq -c --argjson limit "$S2_RPM" '
    ([.requests[].epoch_ms] | map(. / 1000 | floor)) as $w
    | ($w | group_by(.) | map(length)) as $per
    | {arrivals: .count, peak_in_flight, windows: ($per | length), max_per_window: ($per | max),
       windows_over_limit: ($per | map(select(. > $limit)) | length),
       full_windows_mean: (($per | .[1:-1]) as $m | if ($m | length) > 0 then (($m | add) / ($m | length)) else null end)}' \
    "$TMP/s2-mock.json")"
log "upstream: $S2_UPSTREAM"
stop proxy-1
stop proxy-2
stop proxy-3

# ---------------------------------------------------------------------------------------------------------
log "scenario 3: queue depth"
rcli flushall >/dev/null
start proxy-deep "$BIN" --config "$TMP/deep.yaml" --host 127.0.0.1 --port 0
DEEP="$(address proxy-deep 'listening on')"
LONG_PROMPT="$(printf 'lorem ipsum %.0s' $(seq 3000))"
QUEUE_KEY='llms:{deep}:q'
# The request that holds y's only slot for the whole scenario.
start holder "$BIN" loadtest --url "$DEEP" --key "$KEY" --model deep --num-requests 1 --concurrency 1 \
    --priority-mix 0:1 --message "$LONG_PROMPT" --timeout 900
deadline=$((SECONDS + 30))
until [[ "$(curl -sf "$MOCK_HOLD/__mock/requests" | jq .in_flight)" == 1 ]]; do
    ((SECONDS < deadline)) || die "the request holding deployment y did not reach its upstream"
    sleep 0.05
done
S3_ROWS="[]"
for depth in $DEPTHS; do
    mem_before="$(used_memory)"
    start "fill-$depth" "$FILL_BIN" --redis-url "redis://127.0.0.1:$REDIS_PORT" --group deep --count "$depth" \
        --priority 1000 --prompt-tokens 5000 --est-tokens 5256 --hold-secs 600
    deadline=$((SECONDS + 120))
    until grep -q "^filled" "$TMP/fill-$depth.log" 2>/dev/null; do
        kill -0 "$(cat "$TMP/fill-$depth.pid")" 2>/dev/null || die "queue_fill exited: $(cat "$TMP/fill-$depth.log")"
        ((SECONDS < deadline)) || die "queue_fill did not finish"
        sleep 0.1
    done
    mem_after="$(used_memory)"
    key_bytes="$(rcli memory usage "$QUEUE_KEY" samples 0)"
    log "depth $depth: $(cat "$TMP/fill-$depth.log"); used_memory +$((mem_after - mem_before)) B, queue key $key_bytes B"

    # One request of this replica waits behind them (its poller runs from now on).
    start "waiter-$depth" "$BIN" loadtest --url "$DEEP" --key "$KEY" --model deep --num-requests 1 \
        --concurrency 1 --priority-mix 1000:1 --message "$LONG_PROMPT" --timeout 600
    # queue_fill's entry ids start with 62656e63685f6669; the replica's request is the newest entry of priority 1000.
    deadline=$((SECONDS + 30))
    until [[ "$(rcli zrange "$QUEUE_KEY" -1 -1)" =~ ^[0-9a-f]{32}\| && ! "$(rcli zrange "$QUEUE_KEY" -1 -1)" =~ ^62656e63685f6669 ]]; do
        ((SECONDS < deadline)) || die "the replica's request did not queue"
        sleep 0.05
    done

    sleep 1
    read -r t0 e0 _ < <(redis_calls)
    sleep "$S3_IDLE_SECS"
    read -r t1 e1 u1 < <(redis_calls)
    lt "s3-depth-$depth" --url "$DEEP" --key "$KEY" --model deep --rate "$S3_RATE" \
        --num-requests "$((S3_RATE * S3_LOAD_SECS))" --priority-mix 0:1 --warmup 200 --timeout 60
    read -r t2 e2 u2 < <(redis_calls)
    # The load window is the run itself (its warm-up included in the counts, so divide by sent + warm-up).
    lt_secs="$(jq .elapsed_s "$RUN/s3-depth-$depth.json")"
    sent="$(jq .sent "$RUN/s3-depth-$depth.json")"
    depth_now="$(rcli zcard "$QUEUE_KEY")"
    row="$(jq -n --argjson depth "$depth" --argjson depth_end "$depth_now" \
        --argjson mem_delta "$((mem_after - mem_before))" --argjson key_bytes "$key_bytes" \
        --argjson idle_calls "$((t1 - t0))" --argjson idle_ev "$((e1 - e0))" --argjson idle_secs "$S3_IDLE_SECS" \
        --argjson load_calls "$((t2 - t1))" --argjson load_ev "$((e2 - e1))" --argjson requests "$((sent + 200))" \
        --argjson load_secs "$lt_secs" --argjson ev_usec "$((u2 - u1))" \
        '{depth: $depth, depth_at_end: $depth_end, used_memory_per_entry: ($mem_delta / $depth),
          queue_key_bytes_per_entry: ($key_bytes / $depth),
          idle_commands_per_s: ($idle_calls / $idle_secs), idle_scripts_per_s: ($idle_ev / $idle_secs),
          load_commands_per_s: ($load_calls / $load_secs), load_scripts_per_s: ($load_ev / $load_secs),
          scripts_per_request: ($load_ev / $requests), commands_per_request: ($load_calls / $requests),
          script_usec_per_call: ($ev_usec / $load_ev)}')"
    S3_ROWS="$(jq -c --argjson row "$row" '. + [$row]' <<<"$S3_ROWS")"
    log "depth $depth: $(jq -c . <<<"$row")"

    stop "waiter-$depth"
    stop "fill-$depth"
    rcli del "$QUEUE_KEY" 'llms:{deep}:grants' >/dev/null
done
stop holder
stop proxy-deep

# ---------------------------------------------------------------------------------------------------------
log "scenario 4: durable jobs"
rcli flushall >/dev/null
# jobs_config WORKERS: one group on the fast mock, jobs run by WORKERS job workers of the replica.
jobs_config() {
    cat <<EOF
model_list:
  - model_name: jobs
    litellm_params:
      model: openai/gpt-4o
      api_base: $MOCK_FAST/v1
      api_key: sk-mock
      rpm: 1000000000
      tpm: 1000000000000
    model_info: { id: jobs-a }
router_settings:
  redis_host: 127.0.0.1
  redis_port: $REDIS_PORT
  job_workers: $1
  max_queue_depth: 1000000
general_settings: { master_key: $KEY }
EOF
}
jobs_config 64 >"$TMP/jobs.yaml"
jobs_config 0 >"$TMP/jobs-idle.yaml"
start proxy-jobs "$BIN" --config "$TMP/jobs.yaml" --host 127.0.0.1 --port 0
JOBS="$(address proxy-jobs 'listening on')"
read -r j_t0 j_e0 _ < <(redis_calls)
j_cpu0="$(redis_cpu_us)"
lt s4-jobs --url "$JOBS" --queue --key "$KEY" --model jobs --concurrency 64 --num-requests 100000000 \
    --duration "$THROUGHPUT_SECS" --timeout 60
j_cpu1="$(redis_cpu_us)"
read -r j_t1 j_e1 _ < <(redis_calls)
j_done="$(jq .ok "$RUN/s4-jobs.json")"
stop proxy-jobs
rcli flushall >/dev/null
start proxy-jobs-idle "$BIN" --config "$TMP/jobs-idle.yaml" --host 127.0.0.1 --port 0
JOBS_IDLE="$(address proxy-jobs-idle 'listening on')"
S4_QUEUED=1000
j_mem0="$(used_memory)"
# Submissions only (no worker runs them), 8 at a time.
seq "$S4_QUEUED" | xargs -P 8 -I{} curl -sf -o /dev/null "$JOBS_IDLE/queue/request" \
    -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    -d '{"model": "jobs", "messages": [{"role": "user", "content": "job {}: say hello"}]}' ||
    die "a job submission failed"
j_mem1="$(used_memory)"
j_depth="$(rcli zcard 'llms:{jobs}:q')"
[[ "$j_depth" == "$S4_QUEUED" ]] || die "expected $S4_QUEUED queued jobs, found $j_depth"
S4="$(jq -n --argjson done "$j_done" --argjson calls "$((j_t1 - j_t0))" --argjson ev "$((j_e1 - j_e0))" \
    --argjson cpu "$((j_cpu1 - j_cpu0))" --argjson queued "$S4_QUEUED" --argjson mem "$((j_mem1 - j_mem0))" \
    --argjson rps "$(jq .ok_rps "$RUN/s4-jobs.json")" \
    '{jobs_per_s: $rps, jobs_done: $done, scripts_per_job: ($ev / $done), commands_per_job: ($calls / $done),
      redis_cpu_us_per_job: ($cpu / $done), queued: $queued, redis_bytes_per_queued_job: ($mem / $queued)}')"
log "jobs: $(jq -c . <<<"$S4")"
stop proxy-jobs-idle

# ---------------------------------------------------------------------------------------------------------
log "scenario 5: rolling vs fixed windows (10,000 rpm, 60 s window)"
S5_ROWS="[]"
for mode in fixed rolling; do
    rcli flushall >/dev/null
    cat >"$TMP/window-$mode.yaml" <<EOF
model_list:
  - model_name: win
    litellm_params:
      model: openai/gpt-4o
      api_base: $MOCK_FAST/v1
      api_key: sk-mock
      rpm: 1000000
      tpm: 1000000000
    model_info: { id: win-a }
router_settings:
  redis_host: 127.0.0.1
  redis_port: $REDIS_PORT
  usage_window: 60
  usage_window_mode: $mode
general_settings: { master_key: $KEY }
EOF
    start "proxy-window-$mode" "$BIN" --config "$TMP/window-$mode.yaml" --host 127.0.0.1 --port 0
    WIN="$(address "proxy-window-$mode" 'listening on')"
    secs="$S5_SECS"
    [[ "$mode" == fixed ]] && secs="$S5_FIXED_SECS"
    read -r w_t0 w_e0 w_u0 < <(redis_calls)
    lt "s5-window-$mode" --url "$WIN" --key "$KEY" --model win --rate 167 --num-requests "$((167 * secs))" \
        --timeout 60
    read -r w_t1 w_e1 w_u1 < <(redis_calls)
    hash_bytes="$(rcli memory usage 'llms:{win}:d:win-a' samples 0)"
    fields="$(rcli hlen 'llms:{win}:d:win-a')"
    row="$(jq -n --arg mode "$mode" --argjson ev "$((w_e1 - w_e0))" --argjson us "$((w_u1 - w_u0))" \
        --argjson calls "$((w_t1 - w_t0))" --argjson bytes "${hash_bytes:-0}" --argjson fields "${fields:-0}" \
        --argjson secs "$secs" \
        '{mode: $mode, secs: $secs, script_usec_per_call: ($us / $ev), commands_per_call: ($calls / $ev),
          usage_hash_bytes: $bytes, usage_hash_fields: $fields}')"
    S5_ROWS="$(jq -c --argjson row "$row" '. + [$row]' <<<"$S5_ROWS")"
    log "window $mode: $(jq -c . <<<"$row")"
    stop "proxy-window-$mode"
done

# ---------------------------------------------------------------------------------------------------------
log "scenario 6: the operator's page open during load"
# One replica with Redis at its closed-loop maximum, S6_ROUNDS rounds each without and with a client that
# reads /queue/status every second (what /ui does while it is open); the reported figure per side is its
# median round. Skipped when the binary has no /queue/status.
rcli flushall >/dev/null
start proxy-ui "$BIN" --config "$TMP/redis.yaml" --host 127.0.0.1 --port 0
UI="$(address proxy-ui 'listening on')"
S6="null"
if [[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $KEY" "$UI/queue/status")" == 200 ]]; then
    for round in $(seq "$S6_ROUNDS"); do
        for side in closed open; do
            poller=""
            if [[ "$side" == open ]]; then
                (
                    while true; do
                        curl -s -o /dev/null -H "Authorization: Bearer $KEY" "$UI/queue/status" || true
                        sleep 1
                    done
                ) &
                poller=$!
            fi
            lt "rounds/s6-$side-round$round" --url "$UI" --key "$KEY" --model bench --concurrency 64 \
                --num-requests 100000000 --duration "$THROUGHPUT_SECS" --warmup "$WARMUP" --timeout 60
            [[ -z "$poller" ]] || { kill "$poller" 2>/dev/null || true; wait "$poller" 2>/dev/null || true; }
        done
    done
    median_rps() {
        for f in "$RUN"/rounds/s6-"$1"-round*.json; do jq .ok_rps "$f"; done | sort -g |
            awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
    }
    S6="$(jq -n --argjson closed "$(median_rps closed)" --argjson open "$(median_rps open)" \
        --argjson rounds "$S6_ROUNDS" \
        '{rounds: $rounds, closed_rps: $closed, open_rps: $open, drop_pct: (100 * (1 - $open / $closed))}')"
    log "operator page: $(jq -c . <<<"$S6")"
else
    log "operator page: /queue/status not served by this binary; skipped"
fi
stop proxy-ui

# ---------------------------------------------------------------------------------------------------------
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$ROOT" status --porcelain -- . ':!bench' 2>/dev/null || true)" ]]; then
    # Tells apart runs of different uncommitted states of the same commit.
    COMMIT="$COMMIT + uncommitted changes $(cd "$ROOT" && { git diff HEAD -- . ':!bench'
        git ls-files -z --others --exclude-standard -- . ':!bench' | xargs -0 -r cat; } 2>/dev/null |
        sha1sum | cut -c1-8)"
fi
jq -n --argjson s3 "$S3_ROWS" --argjson s2 "$S2_UPSTREAM" \
    --arg date "$(date -u '+%Y-%m-%d %H:%M UTC')" --arg commit "$COMMIT" \
    --arg cores "$(nproc)" --arg cpu "$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
    --arg mem "$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)" \
    --arg kernel "$(uname -sr)" --arg redis "$(redis-server --version | grep -o 'v=[0-9.]*' | cut -c3-)" \
    --arg rustc "$(rustc --version 2>/dev/null || echo unknown)" --arg quick "${BENCH_QUICK:-0}" --arg idle "$IDLE_BEFORE" \
    --arg evalsha "$S1_EVALSHA_PER_REQ" --arg cmds "$S1_CMDS_PER_REQ" --arg litellm "$LITELLM_STATUS" \
    --argjson rpm "$S2_RPM" --argjson parallel "$S2_PARALLEL" --argjson s4 "$S4" --argjson s5 "$S5_ROWS" --argjson s6 "$S6" \
    --arg s1usc "$S1_SCRIPT_US_PER_CALL" --arg s1usr "$S1_SCRIPT_US_PER_REQ" --arg s1cpu "$S1_REDIS_CPU_US_PER_REQ" \
    '{date: $date, commit: $commit, machine: {cores: $cores, cpu: $cpu, memory: $mem, kernel: $kernel,
      redis: $redis, rustc: $rustc, cpu_idle_before_pct: ($idle | tonumber)}, quick: ($quick == "1"),
      s1_redis_scripts_per_request: ($evalsha | tonumber), s1_redis_commands_per_request: ($cmds | tonumber),
      s1_redis_script_usec_per_call: ($s1usc | tonumber), s1_redis_script_usec_per_request: ($s1usr | tonumber),
      s1_redis_cpu_usec_per_request: ($s1cpu | tonumber), s4: $s4, s5: $s5, s6: $s6,
      litellm: $litellm, s2_upstream: ($s2 + {rpm_limit: $rpm, max_parallel_requests: $parallel}), s3: $s3}' \
    >"$RUN/summary.json"

"$ROOT/scripts/bench-report.sh" "$RUN" "$PREVIOUS" >"$OUT/RESULTS.md"
log "wrote $OUT/RESULTS.md"
