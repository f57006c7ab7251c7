# shellcheck shell=bash
# barman on the proxy: server main_backup reaches the primary only through the proxy's NAT.

barman_as() { as barman proxy /usr/bin/barman "$@"; }

barman_configure() {
    claim_path "$BARMAN_CONF"
    if [[ -e $BARMAN_SERVER_HOME && ! -e $BARMAN_SERVER_HOME/.repmgr-nat-lab ]]; then
        die "$BARMAN_SERVER_HOME exists and was not made by the lab (no .repmgr-nat-lab inside): it holds somebody's barman data for '$BARMAN_SERVER'; move it away and run up again"
    fi
    [[ -d /etc/barman.d ]] || die "/etc/barman.d is missing: is barman installed? run: lab.sh deps"
    write_marked "$BARMAN_CONF" 0644 root:root ';' <<EOF
[$BARMAN_SERVER]
description = "repmgr-nat lab: the primary, reached through the proxy's NAT"
conninfo = host=$PROXY_IP port=$BARMAN_PORT user=barman dbname=postgres connect_timeout=2
streaming_conninfo = host=$PROXY_IP port=$BARMAN_PORT user=streaming_barman connect_timeout=2
backup_method = postgres
streaming_archiver = on
slot_name = $BARMAN_SLOT
path_prefix = $PG_BIN
EOF
    # A fresh home for the server (WAL of an older lab would break 'systemid coherence').
    rm -rf "$BARMAN_SERVER_HOME"
    install -d -o barman -g barman -m 0750 "$BARMAN_SERVER_HOME" || die "cannot create $BARMAN_SERVER_HOME"
    echo "$MARKER" >"$BARMAN_SERVER_HOME/.repmgr-nat-lab"
}

# barman check, bounded wait until every line is OK.
barman_wait_ok() {
    local timeout=${1:-60} t0 out rc=1
    t0=$(now_ms)
    while :; do
        out=$(barman_as check "$BARMAN_SERVER" 2>&1) && rc=0 || rc=$?
        ((rc == 0)) && return 0
        (( $(now_ms) - t0 > timeout * 1000 )) && break
        sleep 0.5
    done
    printf '%s\n' "$out" | sed 's/^/    /' >&2
    die "barman check $BARMAN_SERVER still not all OK after ${timeout}s (output above); look at /var/log/barman/barman.log, $EVENTS_LOG, $CRON_LOG"
}

# ---- the cron stand-in -------------------------------------------------------------------
cron_start() {
    [[ -s $CRON_PID ]] && kill -0 "$(cat "$CRON_PID")" 2>/dev/null && { say "cron loop already running (pid $(cat "$CRON_PID"))"; return 0; }
    rm -f "$CRON_PID"
    ip netns exec proxy setsid "$LAB_DIR/bin/lab-cron" </dev/null >>"$CRON_LOG" 2>&1 &
    local i
    for i in $(seq 50); do
        [[ -s $CRON_PID ]] && return 0
        sleep 0.05
    done
    die "the barman cron loop did not start; look at $CRON_LOG"
}

cron_stop() {
    local pid i
    [[ -s $CRON_PID ]] || return 0
    pid=$(cat "$CRON_PID")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$CRON_PID"
}
