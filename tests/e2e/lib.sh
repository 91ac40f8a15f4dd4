# Helpers of tests/e2e.sh (sourced): processes, waits, the API, the
# ws-client, metrics and the nats-server. Globals: WORK (WORK_TOP), BIN,
# PIDS, DBS, BUS, E2E_URL, API_URL, SECRET, NATS_PORT.

log() { printf '%s\n' "e2e: $*" >&2; }
# Each line names the bus it ran on.
pass() { PASSED=$((PASSED + 1)); printf 'PASS [%s] %s\n' "$BUS" "$*"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL [%s] %s\n' "$BUS" "$*"; }

# stop_pid PID: SIGTERM, a few seconds to drain, then SIGKILL.
stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    # Its exit status (143 after SIGTERM) is not this script's failure.
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    # Only those not yet waited for: a reaped pid may be someone else's now.
    local live=" $(jobs -p | tr '\n' ' ') " pid
    for pid in "${PIDS[@]}"; do
        [[ $live == *" $pid "* ]] && kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        [[ $live == *" $pid "* ]] && stop_pid "$pid"
    done
    for db in "${DBS[@]}"; do
        psql "$ADMIN_URL" -qAt -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 \
            || log "could not drop database $db; drop it by hand"
    done
    if [[ $rc != 0 || $FAILED != 0 || -n ${E2E_KEEP:-} ]]; then
        log "logs kept in $WORK_TOP"
    else
        rm -rf "$WORK_TOP"
    fi
    exit "$rc"
}

new_uuid() {
    if [[ -r /proc/sys/kernel/random/uuid ]]; then cat /proc/sys/kernel/random/uuid
    else uuidgen | tr '[:upper:]' '[:lower:]'; fi
}

# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND until it succeeds.
wait_for() {
    local what=$1 secs=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${secs}s waiting for $what"
            return 1
        fi
        sleep 0.1
    done
}

# The environment of every ragctl: the e2e database and the current API.
# The caller's bus settings are removed: each API gets its bus as flags.
ragctl_env() {
    unset RAG_BUS RAG_NATS_URL RAG_RELAY
    export DATABASE_URL=$E2E_URL RAG_API_URL=${API_URL:-http://127.0.0.1:1} RAG_JWT_SECRET=$SECRET \
        RAG_STATE_DIR=$WORK/state RAG_LOG=${RAG_LOG:-warn}
}

# Runs ragctl in the foreground.
ragctl() {
    (
        ragctl_env
        exec "$BIN" "$@"
    )
}

# start NAME COMMAND...: runs a ragctl subcommand in the background, output
# in $WORK/NAME.out and $WORK/NAME.err; its pid is in $LAST_PID. The
# subshell execs ragctl, so that pid is ragctl's own: a signal sent to it
# reaches the process, not a shell that would die and leave it orphaned.
start() {
    local name=$1
    shift
    (
        ragctl_env
        exec "$BIN" "$@"
    ) >"$WORK/$name.out" 2>"$WORK/$name.err" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# finish PID: waits for a background process; its exit code is in $RC.
finish() {
    RC=0
    wait "$1" || RC=$?
}

# The bus flags of every API. Over NATS a user's subscription outlives
# their last socket for an hour, so that the subscription gauge only grows
# and `ws_client` can wait on it (docs/architecture.md, interest).
bus_args() {
    case $BUS in
        postgres) BUS_ARGS=(--bus postgres) ;;
        nats) BUS_ARGS=(--bus nats --nats-url "nats://127.0.0.1:$NATS_PORT" --nats-unsubscribe-grace-ms 3600000) ;;
    esac
}

# start_api NAME ARGS...: starts `ragctl serve --no-workers` on this bus on
# a free port (the kernel picks it) and sets API_PID and API_URL once it is
# ready; over NATS with realtime on, once it heard the relay (`relay_heard`).
start_api() {
    local name=$1
    shift
    local ready=$WORK/$name.ready
    bus_args
    RAG_LOG=info RAG_METRICS_TOKEN=$METRICS_TOKEN start "$name" serve --no-workers --host 127.0.0.1 --port 0 \
        --ready-file "$ready" "${BUS_ARGS[@]}" "$@"
    API_PID=$LAST_PID
    wait_for "the API to bind ($name)" 60 test -s "$ready" || return 1
    # One JSON line {"url","port","pid"}, written whole (rename) by serve.
    API_URL=$(json_field url <"$ready")
    # A port used before by an API now stopped: its users are not this one's.
    local key
    for key in "${!SUBS[@]}"; do [[ $key == "$API_URL "* ]] && unset "SUBS[$key]"; done
    wait_for "$API_URL/readyz" 30 curl -fsS "$API_URL/readyz" || return 1
    if [[ $BUS == nats && " $* " != *" --no-realtime "* ]]; then
        wait_for "the API ($name) to hear the relay" 60 relay_heard || return 1
    fi
    log "API ($name) pid $API_PID on $API_URL ($BUS bus)"
}

stop_api() {
    kill -TERM "$API_PID" 2>/dev/null || true
    finish "$API_PID"
}

# The sum of the API's metric lines that start with $1 (a name and a space,
# or a name and `{` and labels).
metric() {
    curl -fsS -H "Authorization: Bearer $METRICS_TOKEN" "$API_URL/metrics" \
        | awk -v p="$1" 'index($0, p) == 1 { s += $NF } END { print s + 0 }'
}

# Where malformed events are counted: by the bridge on the postgres bus,
# by the relay (so that none crosses NATS) on the NATS bus.
drop_counter() {
    case $BUS in
        postgres) echo ragctl_events_dropped_total ;;
        nats) echo ragctl_relay_dropped_total ;;
    esac
}

# The sum of the drop counter's lines with reason="$1".
dropped() {
    curl -fsS -H "Authorization: Bearer $METRICS_TOKEN" "$API_URL/metrics" \
        | awk -v p="$(drop_counter){" -v r="reason=\"$1\"" \
            'index($0, p) == 1 && index($0, r) { s += $NF } END { print s + 0 }'
}

# Whether the API heard a relay's heartbeat and healed the silence before
# it, so that what follows is delivered live, not by that heal.
relay_heard() {
    (($(metric 'ragctl_bus_relay_heartbeats_total ') >= 1)) || return 1
    local gaps heals
    gaps=$(metric 'ragctl_bus_gaps_total{cause="relay_silent"}')
    heals=$(metric 'ragctl_bridge_heals_by_cause_total{cause="relay_silent"}')
    ((heals >= gaps))
}

# SUBS["$API_URL $user"]: the users that had a socket on each API.
declare -A SUBS

# subscribed: whether the API holds a subscription per user it had a
# socket for (over NATS; the grace keeps them all).
subscribed() {
    local n=0 key
    for key in "${!SUBS[@]}"; do [[ $key == "$API_URL "* ]] && n=$((n + 1)); done
    (($(metric 'ragctl_bus_subscriptions ') >= n))
}

# ws_client NAME USER ARGS...: a background ws-client; waits for
# `connected` and, over NATS, for its user's subscription.
ws_client() {
    local name=$1 user=$2
    shift 2
    start "$name" ws-client --user "$user" --format json "$@"
    WS_PID=$LAST_PID
    wait_for "ws-client $name to connect" 20 grep -qx connected "$WORK/$name.err" || return 1
    SUBS["$API_URL $user"]=1
    if [[ $BUS == nats ]]; then
        wait_for "the subscription of ws-client $name" 20 subscribed
    fi
}

# Field of a one-line JSON object (string values only), without jq.
json_field() {
    sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" | head -1
}

# The number of backends of the e2e database with application_name $1.
backends() {
    psql "$E2E_URL" -qAt -v ON_ERROR_STOP=1 -c "SELECT count(*) FROM pg_stat_activity
        WHERE application_name = '$1' AND datname = current_database()"
}

# --- nats-server -------------------------------------------------------------

# start_nats: a nats-server on NATS_PORT, or on a free port it picks (-1)
# the first time; waits until it is ready. Each start logs to a file of its
# own (nats-N.err), so that no wait can read an earlier start's lines.
NATS_STARTS=0
start_nats() {
    NATS_STARTS=$((NATS_STARTS + 1))
    local log=$WORK/nats-$NATS_STARTS.err
    nats-server -a 127.0.0.1 -p "${NATS_PORT:--1}" -n ragctl-e2e >"$WORK/nats-$NATS_STARTS.out" 2>"$log" &
    NATS_PID=$!
    PIDS+=("$NATS_PID")
    wait_for "nats-server to be ready" 30 grep -q 'Server is ready' "$log" || return 1
    if [[ -z ${NATS_PORT:-} ]]; then
        NATS_PORT=$(sed -n 's/.*Listening for client connections on [0-9.]*:\([0-9]*\).*/\1/p' "$log" | head -1)
    fi
    [[ -n $NATS_PORT ]] || { log "no port in $log"; return 1; }
    log "nats-server pid $NATS_PID on 127.0.0.1:$NATS_PORT"
}

stop_nats() {
    kill -KILL "$NATS_PID" 2>/dev/null || true
    wait "$NATS_PID" 2>/dev/null || true
}

# readyz_has TEXT...: whether the API's /readyz body contains every TEXT.
readyz_has() {
    local body t
    body=$(curl -sS "$API_URL/readyz") || return 1
    for t in "$@"; do grep -qF "$t" <<<"$body" || return 1; done
}
