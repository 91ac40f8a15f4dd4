#!/usr/bin/env bash
# End-to-end check of ragctl with real processes: an API, a parse worker and
# an ingest worker as separate OS processes on a throwaway database, driven
# by `ragctl upload`, `ragctl emit` and `ragctl ws-client`, once on each bus
# (issue #21): PostgreSQL's NOTIFY, then NATS with the relay inside the API.
#
#   bash tests/e2e.sh              (or: just e2e)
#   E2E_BUS=postgres|nats|both bash tests/e2e.sh    (default both)
#
# DATABASE_URL names the server to use (any database on it; default
# postgres://postgres@127.0.0.1:5432/postgres); a fresh ragctl_e2e_<random>_<bus>
# database is created there for each bus and dropped on exit. Needs psql
# and curl; the NATS bus needs `nats-server` (Debian's package
# nats-server), started here on a free port and killed on exit.
# Set E2E_KEEP=1 to keep the logs folder even when everything passed.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=tests/e2e/lib.sh
source tests/e2e/lib.sh
# shellcheck source=tests/e2e/checks.sh
source tests/e2e/checks.sh

ADMIN_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DB_STEM="ragctl_e2e_$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"

# What the run needs, checked before it leaves anything behind.
case ${E2E_BUS:-both} in
    postgres | nats) BUSES=("$E2E_BUS") ;;
    both) BUSES=(postgres nats) ;;
    *) log "E2E_BUS must be postgres, nats or both, not '$E2E_BUS'"; exit 2 ;;
esac

for tool in psql curl; do
    command -v "$tool" >/dev/null || { log "$tool is required"; exit 2; }
done
if [[ " ${BUSES[*]} " == *" nats "* ]] && ! command -v nats-server >/dev/null; then
    log "nats-server is required for the NATS bus (Debian: apt-get install nats-server), or run with E2E_BUS=postgres"
    exit 2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ragctl-e2e.XXXXXX")
WORK_TOP=$WORK
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/ragctl"
HANDBOOK=fixtures/documents/handbook.md
HANDBOOK_TXT=fixtures/documents/handbook.txt
CORRUPT=fixtures/documents/corrupt.pdf

PASSED=0
FAILED=0
PIDS=()        # every process this script started, killed on exit
DBS=()         # every database this script created, dropped on exit
BUS=setup
# /metrics on the API port wants a bearer token (--metrics-token).
METRICS_TOKEN=e2e-metrics-$$

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for f in "$HANDBOOK" "$HANDBOOK_TXT" "$CORRUPT"; do
    [[ -f $f ]] || { log "missing fixture $f"; exit 2; }
done

SECRET="e2e-$(new_uuid)"
log "building ragctl"
cargo build --quiet
[[ -x $BIN ]] || { log "no binary at $BIN after cargo build"; exit 2; }

# new_database: a fresh database for this bus, in E2E_URL; same server,
# other database (ragctl swaps the name, keeps ?sslmode...).
new_database() {
    local db="${DB_STEM}_$BUS"
    E2E_URL=$(DATABASE_URL=$ADMIN_URL "$BIN" db url --name "$db")
    log "creating database $db"
    psql "$ADMIN_URL" -qAt -v ON_ERROR_STOP=1 -c "CREATE DATABASE $db" >/dev/null
    DBS+=("$db")
}

# start_workers: a parse and an ingest worker as processes of their own.
# Short backoff so the corrupt PDF's three retries take seconds, not
# minutes. A corrupt PDF is a failure no retry can change, so the default
# policy (`transient`) fails it at once (docs/api.md); `--retry-policy all`
# retries every failure, so criterion 1's retry path (retry_count 1..3,
# then failed) runs for real.
start_workers() {
    RAG_RETRY_BACKOFF_MS=200 RAG_LOG=info start "worker-parse" worker parse --retry-policy all
    PARSE_PID=$LAST_PID
    RAG_RETRY_BACKOFF_MS=200 RAG_LOG=info start "worker-ingest" worker ingest
    INGEST_PID=$LAST_PID
    wait_for "the workers to listen" 30 \
        bash -c "grep -q listening '$WORK/worker-parse.err' && grep -q listening '$WORK/worker-ingest.err'"
}

# run_bus BUS: every check on a fresh database, the API on that bus; each
# process it started is stopped before the next bus. Logs in $WORK/BUS/.
run_bus() {
    BUS=$1
    WORK=$WORK_TOP/$BUS
    mkdir -p "$WORK"
    log "--- the $BUS bus ---"
    new_database
    if [[ $BUS == nats ]]; then start_nats; fi
    start_api api1
    API1_PID=$API_PID
    start_workers
    check_pipeline
    check_processes
    if [[ $BUS == nats ]]; then check_nats_mode; fi
    check_no_realtime
    check_cut
    if [[ $C4 == pass ]]; then
        pass "criterion 4: API pid $API1_PID (--no-workers), parse worker pid $PARSE_PID, ingest worker pid $INGEST_PID are separate processes; criterion 1's job and document events were published by the workers and reached the client through the API's bridge"
    else
        fail "criterion 4: $C4"
    fi
    check_two_instances
    # Emitted scenarios, on the API whose realtime path was cut and came back.
    check_scenarios
    check_malformed
    stop_api
    stop_pid "$PARSE_PID"
    stop_pid "$INGEST_PID"
    if [[ $BUS == nats ]]; then stop_nats; fi
    WORK=$WORK_TOP
}

for bus in "${BUSES[@]}"; do run_bus "$bus"; done

echo "e2e: $PASSED passed, $FAILED failed (buses: ${BUSES[*]})"
[[ $FAILED == 0 ]]
