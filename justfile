# ragctl developer recipes: `just` lists them, `just --show NAME` prints one.
#
# Every recipe reaches the database and the API the way ragctl itself does:
# DATABASE_URL, RAG_JWT_SECRET, RAG_API_URL, or else the .ragctl/state.json
# that `just serve` writes when it starts the embedded PostgreSQL.

# Arguments reach ragctl as "$@", so quoted ones (--expect 'TYPE k=v') survive.
set positional-arguments

ragctl := "cargo run --quiet --"

# List the recipes
default:
    @just --list

# API, realtime bridge and both workers (embedded PostgreSQL unless DATABASE_URL is set)
serve *ARGS:
    {{ragctl}} serve "$@"

# One worker process: `just worker parse` or `just worker ingest`
worker KIND *ARGS:
    {{ragctl}} worker "$@"

# Watch the live NOTIFY traffic on the event channel
tap *ARGS:
    {{ragctl}} tap "$@"

# Publish events: `just emit document.status_updated --user $U --set status=parsed`
emit *ARGS:
    {{ragctl}} emit "$@"

# Connect to /ws: `just ws-client --user $U --expect 'document.status_updated status=ingested'`
ws-client *ARGS:
    {{ragctl}} ws-client "$@"

# Install all-MiniLM-L6-v2 for --embed-model (default .ragctl/model/all-MiniLM-L6-v2)
model *ARGS:
    bash scripts/model.sh "$@"

# Unit and integration tests
test *ARGS:
    cargo test "$@"

# The whole suite RUNS times while stress-ng keeps both cores busy (installs stress-ng)
stress-test RUNS="3" *ARGS:
    bash scripts/stress-test.sh "$@"

# Files within each folder import one way: the cycles, if any (-v lists the arrows)
cycles *ARGS:
    python3 scripts/import_cycles.py "$@"

# Fuzz one target for SECONDS, one process (installs cargo-fuzz; docs/fuzzing.md)
fuzz TARGET SECONDS="60":
    bash scripts/fuzz.sh run "$@"

# Replay every committed fuzz corpus once through its target (CI does this)
fuzz-replay:
    bash scripts/fuzz.sh replay

# End-to-end run with real processes on throwaway databases, on the postgres
# bus then the NATS bus (tests/e2e.sh; E2E_BUS=postgres|nats|both)
e2e:
    bash tests/e2e.sh

# Load test of the bridge (release build)
bench *ARGS:
    cargo run --release -- bench "$@"
