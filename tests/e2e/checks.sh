# The checks of tests/e2e.sh (sourced), run once per bus by `run_bus`.
# Each starts from the API the previous one left in API_URL.

# Criteria 1 and 2: upload → parse → ingest, and the failure path.
check_pipeline() {
    U=$(new_uuid)
    local other
    other=$(new_uuid)
    ws_client c1-success "$U" --timeout 90s \
        --expect 'job.status_updated kind=parse status=success' \
        --expect 'document.status_updated status=parsed' \
        --expect 'document.status_updated status=ingested'
    local c1_success=$WS_PID
    ws_client c1-failure "$U" --timeout 90s \
        --expect 'job.status_updated kind=parse status=failed retry_count=3' \
        --expect 'document.status_updated status=error'
    local c1_failure=$WS_PID
    # Another user's socket, to show events go only to their own user.
    ws_client c1-other "$other"
    local c1_other=$WS_PID

    # An upload that fails leaves the clients to time out, and criterion 1 to fail.
    ragctl upload "$HANDBOOK" --user "$U" >"$WORK/upload-handbook.json" || log "upload of $HANDBOOK failed"
    local doc1
    doc1=$(json_field id <"$WORK/upload-handbook.json")
    ragctl upload "$CORRUPT" --user "$U" >"$WORK/upload-corrupt.json" || log "upload of $CORRUPT failed"
    log "uploaded handbook $doc1 and corrupt PDF $(json_field id <"$WORK/upload-corrupt.json") for user $U"

    finish "$c1_success"
    SUCCESS_RC=$RC
    finish "$c1_failure"
    FAILURE_RC=$RC
    # Both documents have reached their end; nothing should have reached OTHER.
    kill -TERM "$c1_other" 2>/dev/null || true
    finish "$c1_other"
    local other_frames
    other_frames=$(wc -l <"$WORK/c1-other.out" | tr -d ' ')

    if [[ $SUCCESS_RC == 0 && $FAILURE_RC == 0 && $other_frames == 0 ]]; then
        pass "criterion 1: upload → job.status_updated parse success → document parsed arrived over /ws; corrupt.pdf → job failed retry_count=3 → document error; another user's socket got 0 frames"
    else
        fail "criterion 1: success path ws-client exit $SUCCESS_RC, failure path exit $FAILURE_RC, frames leaked to another user: $other_frames (see $WORK/c1-*.err)"
    fi

    ragctl docs --user "$U" --id "$doc1" --jobs --format json >"$WORK/docs-jobs.json" || true
    if [[ $SUCCESS_RC == 0 ]] && grep -q '"status":"ingested"' <(ragctl docs --user "$U" --id "$doc1" --format json) \
        && grep '"kind":"ingest"' "$WORK/docs-jobs.json" | grep -q '"status":"success"'; then
        pass "criterion 2: ingest: document.status_updated status=ingested arrived over /ws, REST shows $doc1 ingested with its ingest job success"
    else
        fail "criterion 2: ingest: ws-client exit $SUCCESS_RC; REST: $(ragctl docs --user "$U" --id "$doc1" --format json 2>&1 | head -c 300)"
    fi
}

# Criterion 4: separate processes. The API runs with --no-workers, so every
# job event of criterion 1 was published by the worker processes and
# crossed process boundaries (NOTIFY, and over NATS the relay). Checked
# while the first API still runs; reported after criterion 3.
check_processes() {
    local distinct alive=1
    distinct=$(printf '%s\n' "$API1_PID" "$PARSE_PID" "$INGEST_PID" | sort -u | wc -l | tr -d ' ')
    for pid in "$API1_PID" "$PARSE_PID" "$INGEST_PID"; do kill -0 "$pid" 2>/dev/null || alive=0; done
    if [[ $distinct == 3 && $alive == 1 && $SUCCESS_RC == 0 && $FAILURE_RC == 0 ]] \
        && ! grep -q '\[worker' "$WORK/api1.err"; then
        C4="pass"
    else
        C4="pids api=$API1_PID parse=$PARSE_PID ingest=$INGEST_PID distinct=$distinct alive=$alive, criterion-1 clients exit $SUCCESS_RC/$FAILURE_RC"
    fi
}

# Over NATS, what makes the mode real: the API LISTENs to nothing, one
# relay backend LISTENs for the database, and /readyz names the bus.
check_nats_mode() {
    local listeners relays
    wait_for "one ragctl-relay backend" 30 test "$(backends ragctl-relay)" = 1 || true
    listeners=$(backends ragctl-listener)
    relays=$(backends ragctl-relay)
    if [[ $listeners == 0 && $relays == 1 ]] && readyz_has '"bus":"nats"' '"bus_connected":true' '"role":"leader"'; then
        pass "nats mode: 0 ragctl-listener backends, exactly 1 ragctl-relay backend, /readyz says \"bus\":\"nats\" with bus_connected and this API's relay leading"
    else
        fail "nats mode: ragctl-listener backends $listeners, ragctl-relay backends $relays, readyz: $(curl -sS "$API_URL/readyz" | head -c 400)"
    fi
}

# Criterion 3 (a): an API with --no-realtime: /ws refuses, REST completes.
check_no_realtime() {
    stop_api
    start_api api-norealtime --no-realtime
    local nr_rc up_rc
    ragctl ws-client --user "$U" --count 1 --timeout 10s >/dev/null 2>"$WORK/ws-norealtime.err" && nr_rc=0 || nr_rc=$?
    if ragctl upload "$HANDBOOK" --user "$U" --wait ingested --timeout 60s \
        >"$WORK/upload-norealtime.json" 2>"$WORK/upload-norealtime.err"; then up_rc=0; else up_rc=$?; fi
    if [[ $nr_rc == 2 && $up_rc == 0 ]] && grep -q realtime_disabled "$WORK/ws-norealtime.err"; then
        pass "criterion 3: --no-realtime: ws-client exits 2 ($(grep -o '503 realtime_disabled' "$WORK/ws-norealtime.err" | head -1)) and an upload still reaches ingested over REST"
    else
        fail "criterion 3: --no-realtime: ws-client exit $nr_rc ($(tail -1 "$WORK/ws-norealtime.err")), upload --wait ingested exit $up_rc"
    fi
}

# The realtime path cut (postgres: the API's LISTEN backends terminated;
# nats: the nats-server killed, brought back once the upload is done).
# Sets CUT (what was cut), CUT_OK, and REST_OK (an upload meanwhile
# reached ingested over REST).
cut_realtime() {
    local up_rc killed
    if [[ $BUS == postgres ]]; then
        killed=$(psql "$E2E_URL" -qAt -v ON_ERROR_STOP=1 -c "SELECT count(pg_terminate_backend(pid))
            FROM pg_stat_activity WHERE application_name='ragctl-listener' AND datname = current_database()")
        CUT="terminated $killed ragctl-listener backend(s)"
        CUT_OK=$((killed >= 1))
    else
        stop_nats
        CUT="killed nats-server; /readyz stayed ready with \"bus_connected\":false"
        CUT_OK=1
        wait_for "/readyz to report NATS down" 30 readyz_has '"ready":true' '"bus_connected":false' || CUT_OK=0
    fi
    if ragctl upload "$HANDBOOK_TXT" --user "$UR" --wait ingested --timeout 60s \
        >"$WORK/upload-killed.json" 2>"$WORK/upload-killed.err"; then up_rc=0; else up_rc=$?; fi
    REST_OK=$((up_rc == 0))
    local flag=listener_connected
    if [[ $BUS == nats ]]; then
        start_nats
        flag=bus_connected
    fi
    if wait_for "the realtime path to reconnect" 30 reconnected "$flag"; then RECONNECTED=1; else RECONNECTED=0; fi
}

reconnected() {
    local body
    body=$(curl -fsS "$API_URL/readyz") || return 1
    grep -q "\"$1\":true" <<<"$body" && grep -q '"reconnects":[1-9]' <<<"$body"
}

# expect_emitted NAME: a fresh ws-client on this API receives an emitted event.
expect_emitted() {
    local user doc
    user=$(new_uuid)
    doc=$(new_uuid)
    ws_client "$1" "$user" --timeout 30s --expect "document.status_updated status=parsed document_id=$doc"
    local ws=$WS_PID
    ragctl emit document.status_updated --user "$user" --set status=parsed --set document_id="$doc" 2>/dev/null
    finish "$ws"
}

# Criterion 3 (b): a realtime API whose realtime path is cut: REST still
# completes, the path comes back, the bridge heals the gap (a change no
# event announced reaches the socket, with no realtime.resync), events
# flow again.
check_cut() {
    stop_api
    start_api api2
    UR=$(new_uuid)
    ragctl upload "$HANDBOOK" --user "$UR" --wait ingested --timeout 60s \
        >"$WORK/upload-heal.json" 2>"$WORK/upload-heal.err" || true
    local heal_doc heal_rc resynced
    heal_doc=$(json_field id <"$WORK/upload-heal.json")
    ws_client heal "$UR" --resync --timeout 60s \
        --expect "document.status_updated status=error document_id=$heal_doc" \
        --expect 'document.status_updated status=ingested'
    local heal_ws=$WS_PID
    # As if its event had been lost: a state change with plain SQL, no event.
    psql "$E2E_URL" -qAt -v ON_ERROR_STOP=1 -c "UPDATE documents SET status = 'error',
        error_message = 'changed by e2e without an event', updated_at = clock_timestamp()
        WHERE id = '$heal_doc'" >/dev/null
    cut_realtime
    finish "$heal_ws"
    heal_rc=$RC
    if grep -q 'realtime.resync' "$WORK/heal.out"; then resynced=1; else resynced=0; fi
    expect_emitted after-cut
    local after_rc=$RC
    if [[ -n $heal_doc && $CUT_OK == 1 && $REST_OK == 1 && $RECONNECTED == 1 && $heal_rc == 0 && $resynced == 0 && $after_rc == 0 ]]; then
        pass "criterion 3: realtime path cut: $CUT; REST upload still reached ingested; the path reconnected and healed the gap (a change made without an event reached the socket, no realtime.resync), and a fresh ws-client received an emitted event"
    else
        fail "criterion 3: realtime path cut: doc '$heal_doc', $CUT, upload ok $REST_OK, reconnected $RECONNECTED, healing ws-client exit $heal_rc, resync seen $resynced, fresh ws-client exit $after_rc"
    fi
}

# Two API instances: the user's socket on the second, the emitted event
# delivered there. On the postgres bus each instance LISTENs; over NATS
# none does, one relay backend does, and the first instance receives none
# of the event (it holds no socket of that user).
check_two_instances() {
    local first_url=$API_URL first_pid=$API_PID before=0 after=0 how
    if [[ $BUS == nats ]]; then before=$(metric 'ragctl_bus_received_total '); fi
    start_api api3
    local second_pid=$API_PID second_url=$API_URL
    expect_emitted two-instances
    local rc=$RC listeners relays
    listeners=$(backends ragctl-listener)
    relays=$(backends ragctl-relay)
    API_URL=$first_url
    if [[ $BUS == nats ]]; then after=$(metric 'ragctl_bus_received_total '); fi
    API_PID=$second_pid
    stop_api
    API_PID=$first_pid
    how="$listeners ragctl-listener and $relays ragctl-relay backends"
    local want_listeners=2 want_relays=0
    if [[ $BUS == nats ]]; then
        how+="; the first instance received $((after - before)) bus messages meanwhile"
        want_listeners=0 want_relays=1
    fi
    if [[ $rc == 0 && $after == "$before" && $listeners == "$want_listeners" && $relays == "$want_relays" ]]; then
        pass "two instances: a ws-client on the second ($second_url) received the emitted event; $how"
    else
        fail "two instances: ws-client exit $rc; $how"
    fi
}

# replay NAME EXPECT...: fixtures/events/NAME.jsonl emitted for a fresh
# user, every expected event arriving over /ws.
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

check_scenarios() {
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
}

REASONS=(not_json unknown_version bad_user_id unknown_type bad_payload bad_envelope bad_fragment)

# Whether every drop counter rose above BEFORE.
risen() {
    for r in "${REASONS[@]}"; do
        (($(dropped "$r") > ${BEFORE[$r]})) || return 1
    done
}

# Malformed payloads are dropped (and counted by reason: by the bridge on
# the postgres bus, by the relay on the NATS bus, so that none crosses
# NATS); good events after them are still delivered.
check_malformed() {
    declare -gA BEFORE=()
    for r in "${REASONS[@]}"; do BEFORE[$r]=$(dropped "$r"); done
    local user good counters_ok summary="" frames
    user=$(new_uuid)
    good=$(new_uuid)
    ws_client malformed "$user" --timeout 30s --expect "document.status_updated status=parsed document_id=$good"
    local ws=$WS_PID
    ragctl emit --file fixtures/events/malformed.jsonl --user "$user" 2>"$WORK/emit-malformed.err"
    ragctl emit document.status_updated --user "$user" --set status=parsed --set document_id="$good" 2>>"$WORK/emit-malformed.err"
    finish "$ws"
    local ws_rc=$RC
    if wait_for "every drop counter to rise" 15 risen; then counters_ok=1; else counters_ok=0; fi
    for r in "${REASONS[@]}"; do summary+="$r ${BEFORE[$r]}→$(dropped "$r") "; done
    frames=$(wc -l <"$WORK/malformed.out" | tr -d ' ')
    if [[ $counters_ok == 1 && $ws_rc == 0 && $frames == 1 ]]; then
        pass "scenario malformed: all dropped and counted by the $(drop_counter) (${summary% }); the good event after them was delivered, and nothing else"
    else
        fail "scenario malformed: $(drop_counter) ${summary% }; ws-client exit $ws_rc with $frames frames"
    fi
}
