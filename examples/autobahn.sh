#!/usr/bin/env bash
# Runs Autobahn|Testsuite 0.8.2 (fuzzingclient) against `ragctl serve
# --no-workers` on a scratch database, then prints the results by case group.
# Usage: examples/autobahn.sh [RAGCTL_BINARY] [OUT_DIR]
# Needs wstest installed as in the testing notes (Python 2.7 via pyenv):
#   PYTHONUSERBASE=/tmp/ab/py2user $(pyenv root)/versions/2.7.18/bin/python2.7 \
#     -m pip install --user autobahntestsuite==0.8.2
set -euo pipefail
BIN=${1:-target/debug/ragctl}
OUT=${2:-$(mktemp -d)}
PYTHONUSERBASE=${PYTHONUSERBASE:-/tmp/ab/py2user}
PY2=$(pyenv root)/versions/2.7.18/bin/python2.7
ADMIN=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DB=ragctl_autobahn_$$
SECRET=autobahn-secret
mkdir -p "$OUT"
psql "$ADMIN" -qc "CREATE DATABASE $DB"
DBURL=$(DATABASE_URL=$ADMIN "$BIN" db url --name "$DB")
cleanup() {
    [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
}
trap cleanup EXIT
DATABASE_URL=$DBURL RAG_JWT_SECRET=$SECRET "$BIN" serve --port 0 --no-workers \
    --ready-file "$OUT/ready.json" 2>"$OUT/serve.log" &
PID=$!
for _ in $(seq 100); do [ -s "$OUT/ready.json" ] && break; sleep 0.2; done
PORT=$(sed -n 's/.*"port":\([0-9]*\).*/\1/p' "$OUT/ready.json")
JWT=$(DATABASE_URL=$DBURL RAG_JWT_SECRET=$SECRET "$BIN" token --user 00000000-0000-4000-8000-00000000ab00 --ttl 3h)
cat >"$OUT/fuzzingclient.json" <<JSON
{"outdir": "$OUT/report", "servers": [{"agent": "ragctl", "url": "ws://127.0.0.1:$PORT/ws?token=$JWT"}],
 "cases": ["*"],
 "exclude-cases": ["12.*", "13.*", "9.7.2", "9.7.3", "9.7.4", "9.7.5", "9.7.6",
                   "9.8.2", "9.8.3", "9.8.4", "9.8.5", "9.8.6"],
 "exclude-agent-cases": {}}
JSON
(cd "$OUT" && PYTHONUSERBASE=$PYTHONUSERBASE "$PY2" "$PYTHONUSERBASE/bin/wstest" -m fuzzingclient -s fuzzingclient.json >wstest.log 2>&1)
# Per group: behaviour, close behaviour, and closes that were not clean;
# then whether every case that needs 1002/1007/1009 got it.
python3 - "$OUT/report" <<'PY'
import json, sys, os, collections
rep = sys.argv[1]
idx = json.load(open(os.path.join(rep, 'index.json')))['ragctl']
groups = collections.defaultdict(collections.Counter)
proto = []  # cases that expect the server to fail the connection with a code
for cid, r in idx.items():
    d = json.load(open(os.path.join(rep, r['reportfile'])))
    g = cid.split('.')[0]
    groups[g][r['behavior']] += 1
    groups[g]['close:' + r['behaviorClose']] += 1
    if not d['wasClean']:
        groups[g]['unclean-tcp'] += 1
    exp = d['expectedClose']
    codes = exp['closeCode']
    if not exp['closedByMe'] and any(c in (1002, 1007, 1009) for c in codes):
        proto.append((cid, codes, d['remoteCloseCode'], d['wasClean']))
for g in sorted(groups, key=int):
    print(g, dict(sorted(groups[g].items())))
got = [p for p in proto if p[2] in p[1]]
print('protocol-error cases (server must fail the connection):', len(proto),
      '| got an expected close code:', len(got), '| clean close handshake:', sum(1 for p in proto if p[3]))
miss = [p for p in proto if p[2] not in p[1]]
print('without the code:', ' '.join('%s(%s)' % (p[0], p[2]) for p in sorted(miss)))
PY
echo "report: $OUT/report/index.html"
