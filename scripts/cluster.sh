#!/usr/bin/env bash
# A local cluster without Docker: one redis-server and three llm-scheduler replicas on loopback ports, sharing it.
#
#   scripts/cluster.sh up       # build (if needed) and start; prints the replicas' URLs
#   scripts/cluster.sh up --redis-cluster
#                               # the same on a Redis Cluster: 3 primaries + 3 replicas (redis-cli --cluster create)
#   scripts/cluster.sh status   # which processes run, and whether each replica answers /health/liveliness
#   scripts/cluster.sh down     # stop everything and remove the cluster directory
#
# Settings (environment):
#   CLUSTER_DIR        pid files and logs (default: ${TMPDIR:-/tmp}/llm-scheduler-cluster)
#   CLUSTER_PORTS      replica ports (default: "4000 4001 4002")
#   CLUSTER_REDIS_PORT redis-server port (default: 6390); with --redis-cluster the six nodes take this port and
#                      the five after it
#   CLUSTER_CONFIG     config file (default: examples/compose-config.yaml, which reads REDIS_HOST/REDIS_PORT; with
#                      --redis-cluster examples/redis-cluster-config.yaml, which reads REDIS_CLUSTER_URL)
#   CLUSTER_MASTER_KEY master key exported as LITELLM_MASTER_KEY (default: sk-local-dev-key)
#   LLM_SCHEDULER_BIN  the binary (default: target/release/llm-scheduler, built when missing)
#   REDIS_SERVER_BIN   redis-server (default: redis-server from PATH)
#   REDIS_CLI_BIN      redis-cli, for --redis-cluster (default: redis-cli from PATH)
#   CLUSTER_WAIT_SECS  how long to wait for each process to come up (default: 20)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${CLUSTER_DIR:-${TMPDIR:-/tmp}/llm-scheduler-cluster}"
PORTS="${CLUSTER_PORTS:-4000 4001 4002}"
REDIS_PORT="${CLUSTER_REDIS_PORT:-6390}"
MODE="single"
if [[ "${2:-}" == "--redis-cluster" ]]; then
    MODE="redis-cluster"
elif [[ -n "${2:-}" ]]; then
    echo "usage: $0 up [--redis-cluster] | down | status" >&2
    exit 2
fi
if [[ "$MODE" == redis-cluster ]]; then
    CONFIG="${CLUSTER_CONFIG:-$ROOT/examples/redis-cluster-config.yaml}"
else
    CONFIG="${CLUSTER_CONFIG:-$ROOT/examples/compose-config.yaml}"
fi
CLI_BIN="${REDIS_CLI_BIN:-redis-cli}"
MASTER_KEY="${CLUSTER_MASTER_KEY:-sk-local-dev-key}"
BIN="${LLM_SCHEDULER_BIN:-$ROOT/target/release/llm-scheduler}"
REDIS_BIN="${REDIS_SERVER_BIN:-redis-server}"
WAIT_SECS="${CLUSTER_WAIT_SECS:-20}"

log() { echo "cluster: $*" >&2; }

# Sends one line to 127.0.0.1:$1 and prints the first reply line (bash's /dev/tcp: no redis-cli or curl needed).
tcp_ask() {
    local port="$1" request="$2" reply=""
    exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
    printf '%b' "$request" >&3
    IFS= read -r -t 2 reply <&3 || true
    exec 3<&- 3>&-
    printf '%s' "$reply"
}

redis_up() { [[ "$(tcp_ask "${1:-$REDIS_PORT}" 'PING\r\n' 2>/dev/null)" == +PONG* ]]; }

# The ports of the six Redis Cluster nodes.
node_ports() {
    local i
    for i in 0 1 2 3 4 5; do
        echo $((REDIS_PORT + i))
    done
}

# Whether every node of the Redis Cluster reports cluster_state:ok.
redis_cluster_ok() {
    local port
    for port in $(node_ports); do
        "$CLI_BIN" -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
    done
}

replica_up() {
    local reply
    reply="$(tcp_ask "$1" 'GET /health/liveliness HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' 2>/dev/null)"
    [[ "$reply" == "HTTP/1.1 200"* ]]
}

# Whether process $1 runs (an exited process not reaped yet, a zombie, does not count).
running() {
    kill -0 "$1" 2>/dev/null || return 1
    local state=""
    if [[ -r "/proc/$1/stat" ]]; then
        state="$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null || true)"
    fi
    [[ "$state" != Z ]]
}

alive() { [[ -f "$1" ]] && running "$(cat "$1")"; }

# Waits until "$@" succeeds or the process in pid file $1 dies or WAIT_SECS pass.
wait_for() {
    local pidfile="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + WAIT_SECS))
    until "$@"; do
        if ! alive "$pidfile"; then
            log "$what exited; log: ${pidfile%.pid}.log"
            tail -n 20 "${pidfile%.pid}.log" >&2 || true
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "$what did not come up within ${WAIT_SECS}s; log: ${pidfile%.pid}.log"
            return 1
        fi
        sleep 0.1
    done
}

# Stops the processes of the given pid files: SIGTERM to all, then up to 10 s for all, then SIGKILL.
stop_pidfiles() {
    local f pids=()
    for f in "$@"; do
        [[ -f "$f" ]] || continue
        pids+=("$(cat "$f")")
        kill -TERM "${pids[-1]}" 2>/dev/null || true
    done
    local deadline=$((SECONDS + 10)) pid left
    while ((SECONDS < deadline)); do
        left=0
        for pid in "${pids[@]}"; do
            running "$pid" && left=1
        done
        ((left)) || break
        sleep 0.05
    done
    for pid in "${pids[@]}"; do
        running "$pid" && kill -KILL "$pid" 2>/dev/null || true
    done
    rm -f "$@"
}

cmd_down() {
    # Replicas first (they finish in-flight requests against Redis), then Redis.
    stop_pidfiles "$DIR"/replica-*.pid
    stop_pidfiles "$DIR"/redis*.pid
    if [[ -d "$DIR" && "${CLUSTER_KEEP_LOGS:-0}" != 1 ]]; then
        rm -rf "$DIR"
    fi
    log "down"
}

start_failed() {
    log "start failed; stopping what started (logs kept in $DIR)"
    CLUSTER_KEEP_LOGS=1 cmd_down
    exit 1
}

cmd_up() {
    if alive "$DIR/redis.pid" || alive "$DIR/redis-0.pid"; then
        log "already up (see: $0 status); run '$0 down' first"
        exit 1
    fi
    if [[ ! -x "$BIN" ]]; then
        log "building $BIN"
        (cd "$ROOT" && cargo build --release -p proxy --bin llm-scheduler)
    fi
    command -v "$REDIS_BIN" >/dev/null || { log "redis-server not found (scripts/setup.sh installs it)"; exit 1; }
    mkdir -p "$DIR"

    echo "$MODE" >"$DIR/mode"
    local redis_env=(REDIS_HOST=127.0.0.1 REDIS_PORT="$REDIS_PORT")
    if [[ "$MODE" == redis-cluster ]]; then
        command -v "$CLI_BIN" >/dev/null || { log "redis-cli not found"; exit 1; }
        local n=0 node nodes=() urls=()
        for node in $(node_ports); do
            mkdir -p "$DIR/node-$node"
            # cluster-require-full-coverage no: the other shards serve while one fails over.
            nohup "$REDIS_BIN" --port "$node" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync everysec \
                --dir "$DIR/node-$node" --cluster-enabled yes --cluster-config-file nodes.conf \
                --cluster-node-timeout 2000 --cluster-require-full-coverage no \
                >"$DIR/redis-$n.log" 2>&1 </dev/null &
            echo $! >"$DIR/redis-$n.pid"
            nodes+=("127.0.0.1:$node")
            urls+=("127.0.0.1:$node")
            n=$((n + 1))
        done
        n=0
        for node in $(node_ports); do
            wait_for "$DIR/redis-$n.pid" "redis-server $node" redis_up "$node" || start_failed
            n=$((n + 1))
        done
        "$CLI_BIN" --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$DIR/cluster-create.log" 2>&1 \
            || { log "redis-cli --cluster create failed; log: $DIR/cluster-create.log"; start_failed; }
        wait_for "$DIR/redis-0.pid" "the Redis Cluster" redis_cluster_ok || start_failed
        local joined
        joined="$(IFS=,; echo "${urls[*]}")"
        redis_env=(REDIS_CLUSTER_URL="redis+cluster://$joined")
    else
        nohup "$REDIS_BIN" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync everysec --dir "$DIR" \
            >"$DIR/redis.log" 2>&1 </dev/null &
        echo $! >"$DIR/redis.pid"
        wait_for "$DIR/redis.pid" "redis-server" redis_up || start_failed
    fi

    local i=0 port
    for port in $PORTS; do
        i=$((i + 1))
        env "${redis_env[@]}" LITELLM_MASTER_KEY="$MASTER_KEY" \
            nohup "$BIN" --config "$CONFIG" --host 127.0.0.1 --port "$port" \
            >"$DIR/replica-$i.log" 2>&1 </dev/null &
        echo $! >"$DIR/replica-$i.pid"
        echo "$port" >"$DIR/replica-$i.port"
    done
    i=0
    for port in $PORTS; do
        i=$((i + 1))
        wait_for "$DIR/replica-$i.pid" "replica $i (port $port)" replica_up "$port" || start_failed
    done

    if [[ "$MODE" == redis-cluster ]]; then
        log "up: redis cluster 127.0.0.1:$REDIS_PORT-$((REDIS_PORT + 5)), logs and pids in $DIR"
    else
        log "up: redis 127.0.0.1:$REDIS_PORT, logs and pids in $DIR"
    fi
    for port in $PORTS; do
        echo "http://127.0.0.1:$port"
    done
}

cmd_status() {
    local ok=0 f n port
    if [[ "$(cat "$DIR/mode" 2>/dev/null)" == redis-cluster ]]; then
        n=0
        for port in $(node_ports); do
            if alive "$DIR/redis-$n.pid" && redis_up "$port"; then
                echo "redis$n   127.0.0.1:$port  up (pid $(cat "$DIR/redis-$n.pid"))"
            else
                echo "redis$n   127.0.0.1:$port  down"
                ok=1
            fi
            n=$((n + 1))
        done
    elif alive "$DIR/redis.pid" && redis_up; then
        echo "redis    127.0.0.1:$REDIS_PORT  up (pid $(cat "$DIR/redis.pid"))"
    else
        echo "redis    127.0.0.1:$REDIS_PORT  down"
        ok=1
    fi
    for f in "$DIR"/replica-*.pid; do
        [[ -e "$f" ]] || continue
        n="${f##*/replica-}"
        n="${n%.pid}"
        port="$(cat "$DIR/replica-$n.port")"
        if alive "$f" && replica_up "$port"; then
            echo "replica$n http://127.0.0.1:$port  up (pid $(cat "$f"))"
        else
            echo "replica$n http://127.0.0.1:$port  down"
            ok=1
        fi
    done
    return "$ok"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 up [--redis-cluster] | down | status" >&2
        exit 2
        ;;
esac
