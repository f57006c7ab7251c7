# shellcheck shell=bash
# barman on the proxy: server main_backup reaches the primary only through the proxy's NAT,
# at the proxy's own address (with two proxies not the shared one: README "Which address
# the nodes see").

barman_as() { as barman proxy /usr/bin/barman "$@"; }

barman_configure() {
    if [[ -e $BARMAN_SERVER_HOME && ! -e $BARMAN_SERVER_HOME/.repmgr-nat-lab ]]; then
        die "$BARMAN_SERVER_HOME exists and was not made by the lab (no .repmgr-nat-lab inside): it holds somebody's barman data for '$BARMAN_SERVER'; move it away and run up again"
    fi
    [[ -d /etc/barman.d ]] || die "/etc/barman.d is missing: is barman installed? run: lab.sh deps"
    barman_server_conf "$BARMAN_SERVER" "$BARMAN_PORT" "the primary" | write_marked "$BARMAN_CONF" 0644 root:root ';'
    barman_server_home "$BARMAN_SERVER_HOME"
    if two_clusters; then two_barman_configure; fi
}

# barman_server_conf NAME PORT WHAT: a server streaming from WHAT through the proxy's PORT
barman_server_conf() {
    cat <<EOF
[$1]
description = "repmgr-nat lab: $3, reached through the proxy's NAT"
conninfo = host=$(ns_ip proxy) port=$2 user=barman dbname=postgres connect_timeout=2
streaming_conninfo = host=$(ns_ip proxy) port=$2 user=streaming_barman connect_timeout=2
backup_method = postgres
streaming_archiver = on
slot_name = $BARMAN_SLOT
path_prefix = $PG_BIN
EOF
}

# barman_server_home HOME: a fresh one (WAL of an older lab would break 'systemid coherence')
barman_server_home() {
    rm -rf "$1"
    install -d -o barman -g barman -m 0750 "$1" || die "cannot create $1"
    echo "$MARKER" >"$1/.repmgr-nat-lab"
}

# barman_server_remove HOME NAME: at down, a home the lab made, and barman's lock files for
# the server (next to it); the problems, one a line
barman_server_remove() {
    [[ -e $1/.repmgr-nat-lab ]] || return 0
    rm -rf -- "$1" || echo "$1"
    rm -f -- /var/lib/barman/."$2"-*.lock || echo "barman lock files of $2"
}

# barman check exits non-zero when any check FAILED (lab-kit's barman::Check reads the lines)
barman_ok() { barman_as check "$BARMAN_SERVER" >/dev/null 2>&1; }

# barman check, bounded wait until every line is OK.
barman_wait_ok() {
    wait_until "$1" barman_ok && return 0
    barman_as check "$BARMAN_SERVER" 2>&1 | sed 's/^/    /' >&2
    die "barman check $BARMAN_SERVER still not all OK after ${1}s (output above); look at /var/log/barman/barman.log, $EVENTS_LOG, $CRON_LOG"
}

# ---- the cron stand-in -------------------------------------------------------------------
cron_start() {
    pid_alive "$CRON_PID" && { say "cron loop already running (pid $(cat "$CRON_PID"))"; return 0; }
    rm -f "$CRON_PID"
    ip netns exec proxy setsid "$LAB_DIR/bin/lab-cron" </dev/null >>"$CRON_LOG" 2>&1 &
    wait_until 5 pid_alive "$CRON_PID" || die "the barman cron loop did not start; look at $CRON_LOG"
}

# ---- barman's own proof: a backup, and a restore of it into a scratch instance -----------
RECOVERED_DIR=$LAB_DIR/recovered          # barman recover writes the data directory here
RECOVERED_RUN=$LAB_DIR/recovered-run      # its socket directory and log
RECOVERED_PORT=5499

# A base backup, waiting until barman has its last WAL file; prints the backup id.
barman_backup() {
    HINT=/var/log/barman/barman.log
    barman_as backup --wait --wait-timeout 60 "$BARMAN_SERVER" >>"$LAB_LOG" 2>&1 || die "barman backup failed; look at $LAB_LOG"
    barman_as list-backups --minimal "$BARMAN_SERVER" | head -n 1
}

# recover BACKUP_ID: the WAL switched and archived first (what barman has is what it can
# restore), then `barman recover` to the newest timeline barman knows, into a fresh
# directory; started as postgres in the proxy namespace on a spare port and a private
# socket, until its recovery has ended.
barman_recover() {
    local backup=$1
    recovered_stop
    barman_as switch-wal --force --archive --archive-timeout=30 "$BARMAN_SERVER" >>"$LAB_LOG" 2>&1 ||
        die "barman switch-wal --archive failed before the recovery; look at $LAB_LOG"
    rm -rf -- "$RECOVERED_DIR" "$RECOVERED_RUN"
    install -d -o barman -g barman -m 0700 "$RECOVERED_DIR"
    install -d -o postgres -g postgres -m 0700 "$RECOVERED_RUN"
    barman_as recover --target-tli latest "$BARMAN_SERVER" "$backup" "$RECOVERED_DIR" >>"$LAB_LOG" 2>&1 ||
        die "barman recover $backup failed; look at $LAB_LOG"
    chown -R postgres:postgres "$RECOVERED_DIR"
    as postgres proxy "$PG_BIN/pg_ctl" -D "$RECOVERED_DIR" -l "$RECOVERED_RUN/postgresql.log" -w -t 120 \
        -o "-c port=$RECOVERED_PORT -c listen_addresses='' -c unix_socket_directories=$RECOVERED_RUN -c shared_preload_libraries='' -c synchronous_standby_names='' -c archive_mode=off" \
        start >>"$LAB_LOG" 2>&1 || die "the recovered instance did not start; look at $RECOVERED_RUN/postgresql.log"
    wait_until 120 recovered_done || die "the recovered instance did not end its recovery within 120 s; look at $RECOVERED_RUN/postgresql.log"
}

recovered_psql() { # DB SQL
    as postgres proxy "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$RECOVERED_RUN" -p "$RECOVERED_PORT" \
        -U postgres -d "$1" -c "$2"
}

recovered_done() { [[ $(recovered_psql postgres 'select pg_is_in_recovery()' 2>/dev/null) == f ]]; }

recovered_stop() {
    [[ -f $RECOVERED_DIR/postmaster.pid ]] || return 0
    as postgres proxy "$PG_BIN/pg_ctl" -D "$RECOVERED_DIR" -m immediate -w -t 20 stop >>"$LAB_LOG" 2>&1 || true
}
