# shellcheck shell=bash
# PostgreSQL 15 + repmgr on the database nodes (with Patroni: lib/patroni.sh).

# Per-node settings go on the command line (pg_ctl -o), never in postgresql.conf: `repmgr
# standby clone` and pg_rewind copy postgresql.conf from the other node. With
# Patroni, Patroni starts PostgreSQL with its own configuration (lib/patroni.sh) and writes
# synchronous_standby_names itself: this is only for `lab.sh pgctl` behind its back.
node_pg_opts() {
    local n=$1
    printf -- "-c listen_addresses=%s -c port=%s -c unix_socket_directories=%s -c cluster_name=%s -c ssl=on -c ssl_cert_file=%s -c ssl_key_file=%s" \
        "$(node_ip "$n")" "$PG_PORT" "$(node_sock "$n")" "$n" "$TLS_DIR/$n.crt" "$TLS_DIR/$n.key"
    if is_repmgr_node "$n"; then
        printf -- " -c synchronous_commit=on -c 'synchronous_standby_names=FIRST 1 (%s, barman_receive_wal)'" "$(node_other "$n")"
    fi
}

# The lab's certificate authority, and a certificate for each node signed by it, naming the
# node's address (outside the data directories, which clones and rewinds replace): the lab's
# repmgr-nat verifies them (sslmode = verify-full), as production should. An impostor's
# certificate (self-signed, naming db1's address) is there for the tests.
write_tls_certs() {
    install -d -o postgres -g postgres -m 0755 "$TLS_DIR" || die "cannot create $TLS_DIR"
    HINT=$LAB_LOG
    local n
    run openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=repmgr-nat-lab CA" \
        -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.crt"
    for n in $(lab_nodes); do
        run openssl req -newkey rsa:2048 -nodes -subj "/CN=$n" -keyout "$TLS_DIR/$n.key" -out "$TLS_DIR/$n.csr"
        printf 'subjectAltName = IP:%s\n' "$(node_ip "$n")" >"$TLS_DIR/$n.ext"
        run openssl x509 -req -days 2 -in "$TLS_DIR/$n.csr" -CA "$TLS_DIR/ca.crt" -CAkey "$TLS_DIR/ca.key" \
            -CAcreateserial -extfile "$TLS_DIR/$n.ext" -out "$TLS_DIR/$n.crt"
    done
    run openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=impostor" -addext "subjectAltName = IP:$DB1_IP" \
        -keyout "$TLS_DIR/impostor.key" -out "$TLS_DIR/impostor.crt"
    chown postgres:postgres "$TLS_DIR"/* && chmod 0600 "$TLS_DIR"/*.key && chmod 0644 "$TLS_DIR"/*.crt ||
        die "cannot set the owner of the lab's TLS files"
}

# The per-node pg_ctl wrapper: used by the lab and by repmgr's service_*_command, so every
# start (also repmgr's, also after a clone or a rewind) passes the node's own options.
write_pgctl() {
    local n=$1 f
    f=$(node_pgctl "$n")
    cat >"$f" <<EOF
#!/bin/sh
# $MARKER
# pg_ctl for lab node $n: starts always pass the node's own address, socket directory and
# synchronous_standby_names (a clone or pg_rewind copies postgresql.conf from the other node).
PGDATA='$(node_data "$n")'
LOG='$(node_pglog "$n")'
OPTS="$(node_pg_opts "$n")"
BIN='$PG_BIN'
case "\$1" in
start)     exec "\$BIN/pg_ctl" -D "\$PGDATA" -l "\$LOG" -w -t 60 -o "\$OPTS" start ;;
stop)      exec "\$BIN/pg_ctl" -D "\$PGDATA" -w -t 60 -m fast stop ;;
immediate) exec "\$BIN/pg_ctl" -D "\$PGDATA" -w -t 60 -m immediate stop ;;
restart)   exec "\$BIN/pg_ctl" -D "\$PGDATA" -l "\$LOG" -w -t 60 -m fast -o "\$OPTS" restart ;;
reload)    exec "\$BIN/pg_ctl" -D "\$PGDATA" reload ;;
promote)   exec "\$BIN/pg_ctl" -D "\$PGDATA" -w -t 60 promote ;;
status)    exec "\$BIN/pg_ctl" -D "\$PGDATA" status ;;
single)    # crash recovery without accepting connections (leaves a clean shutdown)
           eval "exec \"\$BIN/postgres\" --single -D \"\$PGDATA\" \$OPTS postgres" </dev/null ;;
*) echo "usage: \$0 start|stop|immediate|restart|reload|promote|status|single" >&2; exit 2 ;;
esac
EOF
    chmod 0755 "$f"
}

write_repmgr_conf() {
    local n=$1 conf
    conf=$(node_conf "$n")
    cat >"$conf" <<EOF
# $MARKER
node_id=$(node_id "$n")
node_name='$n'
conninfo='host=$(node_ip "$n") port=$PG_PORT user=repmgr dbname=repmgr connect_timeout=2'
data_directory='$(node_data "$n")'
pg_bindir='$PG_BIN'
repmgr_bindir='$PG_BIN'
log_file='$(node_repmgrd_log "$n")'
log_level=INFO
failover=automatic
promote_command='$PG_BIN/repmgr standby promote -f $conf --log-to-file'
follow_command='$PG_BIN/repmgr standby follow -f $conf --log-to-file --upstream-node-id=%n'
# a failover within seconds: two reconnect attempts a second apart
reconnect_attempts=2
reconnect_interval=1
monitor_interval_secs=1
service_start_command='$(node_pgctl "$n") start'
service_stop_command='$(node_pgctl "$n") stop'
service_restart_command='$(node_pgctl "$n") restart'
service_reload_command='$(node_pgctl "$n") reload'
service_promote_command='$(node_pgctl "$n") promote'
$(event_notification "$n")
# repmgr's ssh calls (switchover) go through the lab's ssh stand-in on PATH.
ssh_options='-q -o ConnectTimeout=10'
EOF
    chmod 0644 "$conf"
}

# The event crosses to the proxy as it would over ssh: sudo + ip netns exec stand in for
# ssh. The second cluster has none: its instance's watch is the trigger.
event_notification() {
    is_two_node "$1" && return 0
    echo "event_notification_command='sudo -n $LAB_DIR/bin/lab-event %n %e %s'"
}

pg_as() { local n=$1; shift; as postgres "$n" "$@"; }

node_psql() { # NODE DB SQL [USER]: over the socket, as USER (postgres); unaligned, tuples only
    local n=$1 db=$2 sql=$3 user=${4:-postgres}
    pg_as "$n" "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$(node_sock "$n")" -p "$PG_PORT" -U "$user" -d "$db" -c "$sql"
}

node_running() { [[ -f $(node_data "$1")/postmaster.pid ]] && pg_as "$1" "$(node_pgctl "$1")" status >/dev/null 2>&1; }

node_dirs() {
    local n=$1
    install -d -o postgres -g postgres -m 0755 "$(node_dir "$n")" "$(node_sock "$n")" || die "cannot create $(node_dir "$n")"
    : >"$(node_pglog "$n")" && chown postgres:postgres "$(node_pglog "$n")"
    write_pgctl "$n"
    is_repmgr_node "$n" || return 0
    : >"$(node_repmgrd_log "$n")" && chown postgres:postgres "$(node_repmgrd_log "$n")"
    write_repmgr_conf "$n"
}

# The lab's pg_hba.conf lines (Patroni writes them from its postgresql.pg_hba, a list of
# them). repmgr-nat's role, from the proxy, must come over TLS (every test proves it does;
# with two proxies, from each proxy's own address).
pg_hba_lines() {
    cat <<EOF
local      all          all                      trust
local      replication  all                      trust
hostnossl  all          repmgr_nat  $PROXY_IP/32   reject
hostnossl  all          repmgr_nat  $PROXY_A_IP/32   reject
hostnossl  all          repmgr_nat  $PROXY_B_IP/32   reject
host       all          all     $LAB_NET  scram-sha-256
host       replication  all     $LAB_NET  scram-sha-256
EOF
}

# db_init NODE: initdb, the lab's pg_hba.conf and postgresql.conf, started, its roles
db_init() {
    local n=$1 data
    data=$(node_data "$n")
    HINT="$LAB_LOG"
    run as postgres "$n" "$PG_BIN/initdb" -D "$data" -U postgres -E UTF8 --no-locale -N \
        --auth-local=trust --auth-host=scram-sha-256
    {
        echo "# $MARKER"
        echo "# TYPE     DATABASE     USER    ADDRESS          METHOD"
        pg_hba_lines
    } >"$data/pg_hba.conf"
    {
        printf "\n# ---- repmgr-nat lab (copied to db2 by the clone; per-node settings are on pg_ctl's command line)\n"
        if is_repmgr_node "$n"; then echo "shared_preload_libraries = 'repmgr'"; fi
        cat <<EOF
wal_level = replica
wal_log_hints = on
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = 256MB
# the backstop for barman's slots while nothing advances them (README: What barman can restore)
max_slot_wal_keep_size = 1200MB
hot_standby = on
shared_buffers = 32MB
password_encryption = scram-sha-256
log_line_prefix = '%m [%p] %q%u@%d '
EOF
    } >>"$data/postgresql.conf"
    chown postgres:postgres "$data/pg_hba.conf"
    HINT=$(node_pglog "$n")
    run as postgres "$n" "$(node_pgctl "$n")" start
    write_bootstrap_sql "$n"
    # No synchronous standby exists yet: bootstrap writes commit locally.
    run as postgres "$n" env "PGOPTIONS=-c synchronous_commit=local" "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 \
        -h "$(node_sock "$n")" -p "$PG_PORT" -U postgres -d postgres -f "$(node_dir "$n")/bootstrap.sql"
}

write_bootstrap_sql() { # NODE: its roles, in its directory (barman's only in the cluster, repmgr's only with repmgr)
    local n=$1
    {
        if is_repmgr_node "$n"; then
            cat <<EOF
CREATE ROLE repmgr LOGIN SUPERUSER PASSWORD '$PW_REPMGR';
ALTER ROLE repmgr SET search_path TO repmgr, "\$user", public;
CREATE DATABASE repmgr OWNER repmgr;
EOF
        fi
        if is_cluster_node "$n" || is_two_node "$n"; then
            cat <<EOF
CREATE ROLE barman LOGIN SUPERUSER PASSWORD '$PW_BARMAN';
CREATE ROLE streaming_barman LOGIN REPLICATION PASSWORD '$PW_STREAMING';
EOF
        fi
        cat <<EOF
-- repmgr-nat's own role, with no more than README.md (Security) says it needs
CREATE ROLE repmgr_nat LOGIN REPLICATION PASSWORD '$PW_RNAT';
GRANT pg_signal_backend, pg_read_all_stats TO repmgr_nat;
CREATE ROLE app LOGIN PASSWORD '$PW_APP';
CREATE DATABASE app OWNER app;
\\connect app
SET ROLE app;
CREATE TABLE $APP_TABLE (
    id         bigserial PRIMARY KEY,
    payload    text,
    server     inet DEFAULT inet_server_addr(),
    written_at timestamptz DEFAULT clock_timestamp()
);
EOF
    } >"$(node_dir "$n")/bootstrap.sql"
    chmod 0644 "$(node_dir "$n")/bootstrap.sql"
}

write_pgpass_files() {
    # libpq skips lines starting with '#' in a password file (checked by `up`: the marker
    # line sits in the file every lab connection uses).
    write_marked "$PGPASS_POSTGRES" 0600 postgres:postgres '#' <<EOF
*:*:*:repmgr:$PW_REPMGR
*:*:*:repmgr_nat:$PW_RNAT
*:*:*:barman:$PW_BARMAN
*:*:*:streaming_barman:$PW_STREAMING
*:*:*:app:$PW_APP
EOF
    write_marked "$PGPASS_BARMAN" 0600 barman:barman '#' <<EOF
*:*:*:barman:$PW_BARMAN
*:*:*:streaming_barman:$PW_STREAMING
EOF
}

# repmgr as postgres on NODE, its own config, ssh stand-in on PATH.
node_repmgr() {
    local n=$1; shift
    AS_EXTRA_ENV="PATH=$LAB_DIR/sshbin:$SYS_PATH ${REPMGR_ENV:-}" as postgres "$n" "$PG_BIN/repmgr" -f "$(node_conf "$n")" "$@"
}

# Bring-up assist (both handlers, only during `up`, off with --no-assist): barman keeps the
# newest complete WAL file in its streaming directory until a newer one has begun, so the
# handler's `switch-wal --archive` returns only after the primary writes its next WAL record;
# on the lab's idle db1 that is ~20 s later (bgwriter's standby snapshot). Until the
# primary_register handler run returns, a WAL record is written every 0.5 s, standing in for
# the write traffic of a production primary. No transaction, no commit: it never waits for a
# synchronous standby.
nudge_start() {
    rm -f "$LAB_DIR/db1/nudge.stop"
    as postgres db1 bash -c '
        for _ in $(seq 240); do
            [[ -e $1/nudge.stop ]] && exit 0
            "$2/psql" -X -q -A -t -h "$3" -p "$4" -U postgres -d postgres \
                -c "select pg_logical_emit_message(false, '\''repmgr-nat-lab'\'', '\''bring-up'\'')" >/dev/null 2>&1
            sleep 0.5
        done' nudge "$LAB_DIR/db1" "$PG_BIN" "$(node_sock db1)" "$PG_PORT" </dev/null >/dev/null 2>&1 &
}
nudge_stop() { touch "$LAB_DIR/db1/nudge.stop"; }

db1_create() { # both nodes' directories; db1 initialised, started, its users; the password files
    node_dirs db1
    node_dirs db2
    db_init db1
    write_pgpass_files
}

db1_register() {
    HINT="$(node_repmgrd_log db1) $EVENTS_LOG"
    if [[ $(state_get ASSIST) == 1 ]]; then
        [[ $(state_get HANDLER) == scripts ]] && scripts_assist_start
        nudge_start
    fi
    # Until a synchronous standby (db2 or barman's receive-wal) is connected, commits on db1
    # would wait: registration writes commit locally.
    REPMGR_ENV='PGOPTIONS=-csynchronous_commit=local' run node_repmgr db1 primary register
    nudge_stop
}

db2_clone() {
    local n=db2
    HINT="$LAB_LOG $(node_pglog db1)"
    run node_repmgr $n -h "$DB1_IP" -p "$PG_PORT" -U repmgr -d repmgr standby clone --fast-checkpoint
    HINT=$(node_pglog $n)
    run as postgres $n "$(node_pgctl $n)" start
    HINT="$(node_repmgrd_log $n) $EVENTS_LOG"
    run node_repmgr $n standby register
}

repmgrd_start() { # NODE...: as node_repmgr runs repmgr (ssh stand-in on PATH)
    local n
    for n; do
        HINT=$(node_repmgrd_log "$n")
        AS_EXTRA_ENV="PATH=$LAB_DIR/sshbin:$SYS_PATH" run as postgres "$n" \
            "$PG_BIN/repmgrd" -f "$(node_conf "$n")" --pid-file "$(node_repmgrd_pid "$n")" --daemonize
        wait_until 5 pid_alive "$(node_repmgrd_pid "$n")" ||
            die "repmgrd on $n did not start (no live pid in $(node_repmgrd_pid "$n")); look at $(node_repmgrd_log "$n")"
    done
}

repmgrd_stop() { stop_pidfile "$(node_repmgrd_pid "$1")"; }
