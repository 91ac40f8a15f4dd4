#!/usr/bin/env bash
# End-to-end check of ragctl with real processes: an API, a parse worker and
# an ingest worker as separate OS processes on a throwaway database, driven
# by `ragctl upload`, `ragctl emit` and `ragctl ws-client`.
#
#   bash tests/e2e.sh              (or: just e2e)
#
# DATABASE_URL names the server to use (any database on it; default
# postgres://postgres@127.0.0.1:5432/postgres); a fresh ragctl_e2e_<random>
# database is created there and dropped on exit. Needs psql and curl.
# Set E2E_KEEP=1 to keep the logs folder even when everything passed.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

ADMIN_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DB="ragctl_e2e_$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ragctl-e2e.XXXXXX")
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/ragctl"
HANDBOOK=fixtures/documents/handbook.md
CORRUPT=fixtures/documents/corrupt.pdf

PASSED=0
FAILED=0
PIDS=()        # every process this script started, killed on exit
DB_CREATED=0

log() { printf '%s\n' "e2e: $*" >&2; }
pass() { PASSED=$((PASSED + 1)); printf 'PASS %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL %s\n' "$*"; }

cleanup() {
    local rc=$?
    set +e
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        # Give each a few seconds to drain, then insist.
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [[ $DB_CREATED == 1 ]]; then
        psql "$ADMIN_URL" -qAt -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 \
            || log "could not drop database $DB; drop it by hand"
    fi
    if [[ $rc != 0 || $FAILED != 0 || -n ${E2E_KEEP:-} ]]; then
        log "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

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
ragctl_env() {
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

# /metrics on the API port wants a bearer token (--metrics-token).
METRICS_TOKEN=e2e-metrics-$$

# start_api NAME ARGS...: starts `ragctl serve --no-workers` on a free port
# (the kernel picks it) and sets API_PID and API_URL once it is ready.
start_api() {
    local name=$1
    shift
    local ready=$WORK/$name.ready
    RAG_LOG=info RAG_METRICS_TOKEN=$METRICS_TOKEN start "$name" serve --no-workers --host 127.0.0.1 --port 0 --ready-file "$ready" "$@"
    API_PID=$LAST_PID
    wait_for "the API to bind ($name)" 60 test -s "$ready" || return 1
    # One JSON line {"url","port","pid"}, written whole (rename) by serve.
    API_URL=$(json_field url <"$ready")
    wait_for "$API_URL/readyz" 30 curl -fsS "$API_URL/readyz" || return 1
    log "API ($name) pid $API_PID on $API_URL"
}

stop_api() {
    kill -TERM "$API_PID" 2>/dev/null || true
    finish "$API_PID"
}

# ws_client NAME USER ARGS...: a background ws-client; waits for `connected`.
ws_client() {
    local name=$1 user=$2
    shift 2
    start "$name" ws-client --user "$user" --format json "$@"
    WS_PID=$LAST_PID
    wait_for "ws-client $name to connect" 20 grep -qx connected "$WORK/$name.err"
}

# The sum of ragctl_events_dropped_total{reason="$1"} in the API's metrics.
dropped() {
    curl -fsS -H "Authorization: Bearer $METRICS_TOKEN" "$API_URL/metrics" | awk -v r="reason=\"$1\"" \
        '/^ragctl_events_dropped_total\{/ && index($0, r) { s += $NF } END { print s + 0 }'
}

# Field of a one-line JSON object (string values only), without jq.
json_field() {
    sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" | head -1
}

# --- setup -----------------------------------------------------------------

for tool in psql curl; do
    command -v "$tool" >/dev/null || { log "$tool is required"; exit 2; }
done
for f in "$HANDBOOK" "$CORRUPT"; do
    [[ -f $f ]] || { log "missing fixture $f"; exit 2; }
done

SECRET="e2e-$(new_uuid)"
log "building ragctl"
cargo build --quiet
[[ -x $BIN ]] || { log "no binary at $BIN after cargo build"; exit 2; }
# Same server, other database (ragctl swaps the name, keeps ?sslmode...).
E2E_URL=$(DATABASE_URL=$ADMIN_URL "$BIN" db url --name "$DB")

log "creating database $DB"
psql "$ADMIN_URL" -qAt -v ON_ERROR_STOP=1 -c "CREATE DATABASE $DB" >/dev/null
DB_CREATED=1

start_api api1
API1_PID=$API_PID
# Short backoff so the corrupt PDF's three retries take seconds, not minutes.
# A corrupt PDF is a failure no retry can change, so the default policy
# (`transient`) fails it at once (docs/api.md); `--retry-policy all` retries
# every failure, so criterion 1's retry path (retry_count 1..3, then failed)
# runs for real.
RAG_RETRY_BACKOFF_MS=200 RAG_LOG=info start worker-parse worker parse --retry-policy all
PARSE_PID=$LAST_PID
RAG_RETRY_BACKOFF_MS=200 RAG_LOG=info start worker-ingest worker ingest
INGEST_PID=$LAST_PID
wait_for "the workers to listen" 30 \
    bash -c "grep -q listening '$WORK/worker-parse.err' && grep -q listening '$WORK/worker-ingest.err'"

# --- criteria 1 and 2: upload → parse → ingest, and the failure path -------

U=$(new_uuid)
OTHER=$(new_uuid)
ws_client c1-success "$U" --timeout 90s \
    --expect 'job.status_updated kind=parse status=success' \
    --expect 'document.status_updated status=parsed' \
    --expect 'document.status_updated status=ingested'
C1_SUCCESS=$WS_PID
ws_client c1-failure "$U" --timeout 90s \
    --expect 'job.status_updated kind=parse status=failed retry_count=3' \
    --expect 'document.status_updated status=error'
C1_FAILURE=$WS_PID
# Another user's socket, to show events go only to their own user.
ws_client c1-other "$OTHER"
C1_OTHER=$WS_PID

# An upload that fails leaves the clients to time out, and criterion 1 to fail.
ragctl upload "$HANDBOOK" --user "$U" >"$WORK/upload-handbook.json" || log "upload of $HANDBOOK failed"
DOC1=$(json_field id <"$WORK/upload-handbook.json")
ragctl upload "$CORRUPT" --user "$U" >"$WORK/upload-corrupt.json" || log "upload of $CORRUPT failed"
DOC2=$(json_field id <"$WORK/upload-corrupt.json")
log "uploaded handbook $DOC1 and corrupt PDF $DOC2 for user $U"

finish "$C1_SUCCESS"
SUCCESS_RC=$RC
finish "$C1_FAILURE"
FAILURE_RC=$RC
# Both documents have reached their end; nothing should have reached OTHER.
kill -TERM "$C1_OTHER" 2>/dev/null || true
finish "$C1_OTHER"
OTHER_FRAMES=$(wc -l <"$WORK/c1-other.out" | tr -d ' ')

if [[ $SUCCESS_RC == 0 && $FAILURE_RC == 0 && $OTHER_FRAMES == 0 ]]; then
    pass "criterion 1: upload → job.status_updated parse success → document parsed arrived over /ws; corrupt.pdf → job failed retry_count=3 → document error; another user's socket got 0 frames"
else
    fail "criterion 1: success path ws-client exit $SUCCESS_RC, failure path exit $FAILURE_RC, frames leaked to another user: $OTHER_FRAMES (see $WORK/c1-*.err)"
fi

ragctl docs --user "$U" --id "$DOC1" --jobs --format json >"$WORK/docs-jobs.json" || true
if [[ $SUCCESS_RC == 0 ]] && grep -q '"status":"ingested"' <(ragctl docs --user "$U" --id "$DOC1" --format json) \
    && grep '"kind":"ingest"' "$WORK/docs-jobs.json" | grep -q '"status":"success"'; then
    pass "criterion 2: ingest: document.status_updated status=ingested arrived over /ws, REST shows $DOC1 ingested with its ingest job success"
else
    fail "criterion 2: ingest: ws-client exit $SUCCESS_RC; REST: $(ragctl docs --user "$U" --id "$DOC1" --format json 2>&1 | head -c 300)"
fi

# --- criterion 4: separate processes ---------------------------------------
# The API runs with --no-workers, so every job event above was published by
# the worker processes and crossed process boundaries through NOTIFY. Checked
# now, while the first API still runs; reported in order below.

distinct=$(printf '%s\n' "$API1_PID" "$PARSE_PID" "$INGEST_PID" | sort -u | wc -l | tr -d ' ')
alive=1
for pid in "$API1_PID" "$PARSE_PID" "$INGEST_PID"; do kill -0 "$pid" 2>/dev/null || alive=0; done
if [[ $distinct == 3 && $alive == 1 && $SUCCESS_RC == 0 && $FAILURE_RC == 0 ]] \
    && ! grep -q '\[worker' "$WORK/api1.err"; then
    C4_OK=1
else
    C4_OK=0
fi

# --- criterion 3: the realtime path down, business flows unaffected --------

# (a) An API with --no-realtime: /ws refuses, REST still completes.
stop_api
start_api api-norealtime --no-realtime
ragctl ws-client --user "$U" --count 1 --timeout 10s >/dev/null 2>"$WORK/ws-norealtime.err" && NR_RC=0 || NR_RC=$?
if ragctl upload fixtures/documents/handbook.md --user "$U" --wait ingested --timeout 60s \
    >"$WORK/upload-norealtime.json" 2>"$WORK/upload-norealtime.err"; then UP_RC=0; else UP_RC=$?; fi
if [[ $NR_RC == 2 && $UP_RC == 0 ]] && grep -q realtime_disabled "$WORK/ws-norealtime.err"; then
    pass "criterion 3: --no-realtime: ws-client exits 2 ($(grep -o '503 realtime_disabled' "$WORK/ws-norealtime.err" | head -1)) and an upload still reaches ingested over REST"
else
    fail "criterion 3: --no-realtime: ws-client exit $NR_RC ($(tail -1 "$WORK/ws-norealtime.err")), upload --wait ingested exit $UP_RC"
fi

# (b) A realtime API whose LISTEN backend is killed: REST still completes,
# the listener reconnects, the bridge heals the gap (a change no event
# announced reaches the socket, with no realtime.resync), events flow again.
stop_api
start_api api2
UR=$(new_uuid)
ragctl upload fixtures/documents/handbook.md --user "$UR" --wait ingested --timeout 60s \
    >"$WORK/upload-heal.json" 2>"$WORK/upload-heal.err" || true
HEAL_DOC=$(json_field id <"$WORK/upload-heal.json")
ws_client heal "$UR" --resync --timeout 60s \
    --expect "document.status_updated status=error document_id=$HEAL_DOC" \
    --expect 'document.status_updated status=ingested'
HEAL_WS=$WS_PID
# As if its NOTIFY had been lost: a state change with plain SQL, no event.
psql "$E2E_URL" -qAt -v ON_ERROR_STOP=1 -c "UPDATE documents SET status = 'error',
    error_message = 'changed by e2e without an event', updated_at = clock_timestamp()
    WHERE id = '$HEAL_DOC'" >/dev/null
psql "$E2E_URL" -qAt -c "SELECT pid, application_name, backend_start, state FROM pg_stat_activity WHERE datname = current_database()" \
    >"$WORK/backends-before-kill.txt" 2>&1 || true
killed=$(psql "$E2E_URL" -qAt -v ON_ERROR_STOP=1 \
    -c "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name='ragctl-listener' AND datname = current_database()")
if ragctl upload fixtures/documents/handbook.txt --user "$UR" --wait ingested --timeout 60s \
    >"$WORK/upload-killed.json" 2>"$WORK/upload-killed.err"; then KUP_RC=0; else KUP_RC=$?; fi
reconnected() {
    local body
    body=$(curl -fsS "$API_URL/readyz") || return 1
    grep -q '"listener_connected":true' <<<"$body" && grep -q '"reconnects":[1-9]' <<<"$body"
}
if wait_for "the listener to reconnect" 30 reconnected; then RECONNECTED=1; else RECONNECTED=0; fi
finish "$HEAL_WS"
HEAL_RC=$RC
if grep -q 'realtime.resync' "$WORK/heal.out"; then RESYNCED=1; else RESYNCED=0; fi
UA=$(new_uuid)
AFTER_DOC=$(new_uuid)
ws_client after-kill "$UA" --timeout 30s --expect "document.status_updated status=parsed document_id=$AFTER_DOC"
AFTER_WS=$WS_PID
ragctl emit document.status_updated --user "$UA" --set status=parsed --set document_id="$AFTER_DOC" 2>/dev/null
finish "$AFTER_WS"
AFTER_RC=$RC
if [[ -n $HEAL_DOC && $killed -ge 1 && $KUP_RC == 0 && $RECONNECTED == 1 && $HEAL_RC == 0 && $RESYNCED == 0 && $AFTER_RC == 0 ]]; then
    pass "criterion 3: listener killed: terminated $killed ragctl-listener backend(s); REST upload still reached ingested; the listener reconnected and healed the gap (a change made without an event reached the socket, no realtime.resync), and a fresh ws-client received an emitted event"
else
    fail "criterion 3: listener killed: doc '$HEAL_DOC', backends killed $killed, upload exit $KUP_RC, reconnected $RECONNECTED, healing ws-client exit $HEAL_RC, resync seen $RESYNCED, fresh ws-client exit $AFTER_RC"
fi

if [[ $C4_OK == 1 ]]; then
    pass "criterion 4: API pid $API1_PID (--no-workers), parse worker pid $PARSE_PID, ingest worker pid $INGEST_PID are separate processes; criterion 1's job and document events were published by the workers and reached the client through the API's bridge"
else
    fail "criterion 4: pids api=$API1_PID parse=$PARSE_PID ingest=$INGEST_PID distinct=$distinct alive=$alive, criterion-1 clients exit $SUCCESS_RC/$FAILURE_RC"
fi

# --- emit scenarios through the bridge (on the API whose listener was killed
# and came back) ----------------------------------------------------------

replay() {
    local name=$1
    shift
    local user
    user=$(new_uuid)
    ws_client "replay-$name" "$user" --timeout 30s "$@"
    local ws=$WS_PID
    local emit_rc=0
    ragctl emit --file "fixtures/events/$name.jsonl" --user "$user" 2>"$WORK/emit-$name.err" || emit_rc=$?
    finish "$ws"
    if [[ $emit_rc == 0 && $RC == 0 ]]; then
        pass "scenario $name: every expected event of fixtures/events/$name.jsonl arrived over /ws"
    else
        fail "scenario $name: emit exit $emit_rc, ws-client exit $RC (see $WORK/replay-$name.err)"
    fi
}
replay parse-success \
    --expect 'job.status_updated kind=parse status=running' \
    --expect 'job.status_updated kind=parse status=success retry_count=0' \
    --expect 'document.status_updated status=parsed' \
    --expect 'job.status_updated kind=ingest status=queued'
replay parse-failure \
    --expect 'job.status_updated status=queued retry_count=1' \
    --expect 'job.status_updated status=queued retry_count=3' \
    --expect 'job.status_updated status=failed retry_count=3' \
    --expect 'document.status_updated status=error'
replay ingest-success \
    --expect 'job.status_updated kind=ingest status=running' \
    --expect 'job.status_updated kind=ingest status=success' \
    --expect 'document.status_updated status=ingested'

# Malformed payloads are dropped (and counted by reason); the bridge keeps
# delivering good events after them.
REASONS=(not_json unknown_version bad_user_id unknown_type bad_payload bad_envelope bad_fragment)
declare -A BEFORE
for r in "${REASONS[@]}"; do BEFORE[$r]=$(dropped "$r"); done
UM=$(new_uuid)
GOOD_DOC=$(new_uuid)
ws_client malformed "$UM" --timeout 30s --expect "document.status_updated status=parsed document_id=$GOOD_DOC"
MAL_WS=$WS_PID
ragctl emit --file fixtures/events/malformed.jsonl --user "$UM" 2>"$WORK/emit-malformed.err"
ragctl emit document.status_updated --user "$UM" --set status=parsed --set document_id="$GOOD_DOC" 2>>"$WORK/emit-malformed.err"
finish "$MAL_WS"
MAL_RC=$RC
risen() {
    for r in "${REASONS[@]}"; do
        (($(dropped "$r") > ${BEFORE[$r]})) || return 1
    done
}
if wait_for "every drop counter to rise" 15 risen; then counters_ok=1; else counters_ok=0; fi
summary=""
for r in "${REASONS[@]}"; do summary+="$r ${BEFORE[$r]}→$(dropped "$r") "; done
frames=$(wc -l <"$WORK/malformed.out" | tr -d ' ')
if [[ $counters_ok == 1 && $MAL_RC == 0 && $frames == 1 ]]; then
    pass "scenario malformed: all dropped and counted (${summary% }); the good event after them was delivered, and nothing else"
else
    fail "scenario malformed: counters ${summary% }; ws-client exit $MAL_RC with $frames frames"
fi

echo "e2e: $PASSED passed, $FAILED failed"
[[ $FAILED == 0 ]]
