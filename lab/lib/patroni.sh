# shellcheck shell=bash
# The cluster run by Patroni instead of repmgr (`up --manager patroni`): Debian's patroni
# on db1 and db2 (one process per node, started and stopped by pid), PostgreSQL 15 started
# by it, and Debian's etcd-server in a namespace of its own (etcd, ETCD_IP) as Patroni's DCS
# (the v3 API). No repmgr anywhere: repmgr-nat's watch on the proxy is the only trigger, as
# README "With Patroni" sets it up. db1 bootstraps the cluster, db2 joins as its replica;
# the roles, pg_hba.conf and TLS are the repmgr lab's.

ETCD_PORT=2379                            # clients (Patroni); peers on 127.0.0.1:2380 inside the namespace
ETCD_DIR=$LAB_DIR/etcd                    # its data directory (etcd's)
ETCD_PID=$LAB_DIR/etcd.pid
ETCD_LOG=$LAB_DIR/logs/etcd.log
PATRONI_PORT=8008                         # Patroni's REST API, on the node's address
PATRONI_SCOPE=repmgr-nat-lab              # the cluster's name in the DCS
PATRONI_BIN=/usr/bin/patroni
PATRONICTL_BIN=/usr/bin/patronictl
ETCD_BIN=/usr/bin/etcd
PW_POSTGRES=lab-postgres-pw               # Patroni's superuser (its rewinds connect as it)
PW_REPLICATOR=lab-replicator-pw           # Patroni's replication user (the replica's basebackup and stream)

lab_manager() { local m; m=$(state_get MANAGER); echo "${m:-repmgr}"; }
patroni_lab() { [[ $(state_get MANAGER) == patroni ]]; }

patroni_conf() { echo "$(node_dir "$1")/patroni.yml"; }
patroni_log() { echo "$(node_dir "$1")/patroni.log"; }
patroni_pid() { echo "$(node_dir "$1")/patroni.pid"; }

# lab_http NS ADDRESS PORT PATH: an HTTP/1.0 GET from inside namespace NS with bash's
# /dev/tcp (no client needed): the status line, the headers, the body.
lab_http() {
    ip netns exec "$1" timeout 3 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: %s:%s\r\n\r\n" "$2" "$0" "$1" >&3
        cat <&3' "$2" "$3" "$4"
}
http_status() { lab_http "$@" 2>/dev/null | awk 'NR == 1 { print $2 }'; } # NS ADDRESS PORT PATH -> 200, 503, ...

# Patroni holds the leader key for NODE and runs it as the primary: its REST API's /primary
# answers 200 (503 on a replica, nothing from a node whose Patroni is down).
patroni_leader() { [[ $(http_status "$1" "$(node_ip "$1")" "$PATRONI_PORT" /primary) == 200 ]]; }
patroni_answers() { [[ -n $(http_status "$1" "$(node_ip "$1")" "$PATRONI_PORT" /patroni) ]]; }

# ---- etcd ----------------------------------------------------------------------------------
etcd_healthy() { lab_http etcd "$ETCD_IP" "$ETCD_PORT" /health 2>/dev/null | grep -q '"health":"true"'; }

# One etcd member in the etcd namespace, as Debian's etcd user, listening for clients on
# ETCD_IP only and for peers on the namespace's loopback (a cluster of one). Its pid is
# etcd's own (ip netns exec and setpriv exec).
etcd_start() {
    getent passwd etcd >/dev/null || die "there is no etcd user (etcd-server's package makes it): run lab.sh deps"
    [[ -x $ETCD_BIN ]] || die "$ETCD_BIN is missing: run lab.sh deps"
    install -d -o etcd -g etcd -m 0700 "$ETCD_DIR" || die "cannot create $ETCD_DIR"
    : >"$ETCD_LOG"
    HINT=$ETCD_LOG
    ip netns exec etcd setpriv --reuid=etcd --regid=etcd --init-groups -- \
        env -i HOME="$ETCD_DIR" USER=etcd LOGNAME=etcd PATH="$SYS_PATH" LANG=C.UTF-8 \
        "$ETCD_BIN" --name lab --data-dir "$ETCD_DIR/data" \
        --listen-client-urls "http://$ETCD_IP:$ETCD_PORT" --advertise-client-urls "http://$ETCD_IP:$ETCD_PORT" \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster lab=http://127.0.0.1:2380 --initial-cluster-state new \
        --initial-cluster-token "$PATRONI_SCOPE" </dev/null >>"$ETCD_LOG" 2>&1 &
    echo $! >"$ETCD_PID"
    disown
    wait_until 15 etcd_healthy || die "etcd did not answer healthy on $ETCD_IP:$ETCD_PORT within 15 s"
    PHASE_NAME+=" ($ETCD_IP:$ETCD_PORT, pid $(cat "$ETCD_PID"), etcd $("$ETCD_BIN" --version | awk 'NR == 1 { print $3 }'))"
}

# ---- Patroni's configuration ---------------------------------------------------------------
yaml_str() { local v=${1//\\/\\\\}; v=${v//\"/\\\"}; printf '"%s"' "$v"; }

# NODE's patroni.yml. The dynamic part (bootstrap.dcs) reaches the DCS when db1 bootstraps
# the cluster: ignore_slots keeps Patroni's hands off barman's slot on every node (README
# "barman's slot and Patroni's slot management"); ttl/loop_wait/retry_timeout make a
# failover take seconds; synchronous_mode makes the replica a synchronous standby (Patroni
# writes synchronous_standby_names), so no acknowledged commit is lost when the leader dies.
write_patroni_conf() {
    local n=$1 ip line
    ip=$(node_ip "$n")
    {
        echo "# $MARKER"
        cat <<EOF
scope: $PATRONI_SCOPE
namespace: /service/
name: $n
restapi:
  listen: $ip:$PATRONI_PORT
  connect_address: $ip:$PATRONI_PORT
etcd3:
  hosts:
    - $ETCD_IP:$ETCD_PORT
  protocol: http
watchdog:
  mode: "off"
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 2
    retry_timeout: 4
    maximum_lag_on_failover: 1048576
    synchronous_mode: true
    ignore_slots:
      - name: $BARMAN_SLOT
        type: physical
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        wal_log_hints: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 256MB
        max_slot_wal_keep_size: 1200MB
        hot_standby: "on"
        shared_buffers: 32MB
        password_encryption: scram-sha-256
        synchronous_commit: "on"
  initdb:
    - encoding: UTF8
    - no-locale
    - auth-local: trust
    - auth-host: scram-sha-256
  post_bootstrap: $(node_dir "$n")/post-bootstrap
postgresql:
  listen: $ip:$PG_PORT
  connect_address: $ip:$PG_PORT
  use_unix_socket: true
  data_dir: $(node_data "$n")
  bin_dir: $PG_BIN
  pgpass: $(node_dir "$n")/patroni.pgpass
  authentication:
    superuser:
      username: postgres
      password: $PW_POSTGRES
    replication:
      username: replicator
      password: $PW_REPLICATOR
  basebackup:
    - checkpoint: fast
  parameters:
    unix_socket_directories: $(node_sock "$n")
    ssl: "on"
    ssl_cert_file: $TLS_DIR/$n.crt
    ssl_key_file: $TLS_DIR/$n.key
    logging_collector: "on"
    log_directory: $(node_dir "$n")
    log_filename: $(basename "$(node_pglog "$n")")
    log_file_mode: "0644"
    log_rotation_age: 0
    log_rotation_size: 0
    log_line_prefix: '%m [%p] %q%u@%d '
  pg_hba:
EOF
        while read -r line; do
            printf '    - %s\n' "$(yaml_str "$(tr -s ' ' <<<"$line")")"
        done < <(pg_hba_lines)
    } >"$(patroni_conf "$n")" || die "cannot write $(patroni_conf "$n")"
    chown postgres:postgres "$(patroni_conf "$n")" && chmod 0600 "$(patroni_conf "$n")"
    # bootstrap.post_bootstrap: the lab's roles, database and table, as db_init runs them for
    # repmgr; Patroni passes its superuser's connection string (and synchronous_commit=local)
    local script
    script="$(node_dir "$n")/post-bootstrap"
    cat >"$script" <<EOF
#!/bin/sh
# $MARKER
exec '$PG_BIN/psql' -X -q -v ON_ERROR_STOP=1 -d "\$1" -f '$(node_dir "$n")/bootstrap.sql'
EOF
    chmod 0755 "$script"
}

# ---- Patroni's processes -------------------------------------------------------------------
# NODE's Patroni, as postgres in its namespace, its output in NODE/patroni.log; the pid is
# Patroni's own (ip netns exec and setpriv exec). Back once its REST API answers.
patroni_start() {
    local n=$1 pidf log
    pidf=$(patroni_pid "$n") log=$(patroni_log "$n")
    if pid_alive "$pidf"; then say "$n: Patroni already runs (pid $(cat "$pidf"))"; return 0; fi
    [[ -x $PATRONI_BIN ]] || die "$PATRONI_BIN is missing: run lab.sh deps"
    ip netns exec "$n" setpriv --reuid=postgres --regid=postgres --init-groups -- \
        env -i HOME=/var/lib/postgresql USER=postgres LOGNAME=postgres PATH="$SYS_PATH" LANG=C.UTF-8 \
        "$PATRONI_BIN" "$(patroni_conf "$n")" </dev/null >>"$log" 2>&1 &
    echo $! >"$pidf"
    disown   # not this shell's job: a failing up kills it without a word from bash
    if ! wait_until 20 patroni_answers "$n"; then
        tail -n 15 "$log" | sed 's/^/    /' >&2
        die "$n: Patroni's REST API did not answer within 20 s (pid $(cat "$pidf"), alive: $(pid_alive "$pidf" && echo yes || echo no)); look at $log"
    fi
}

# NODE's Patroni gone (KILL, by its pid file), and its PostgreSQL with it (pg_ctl stop -m
# immediate): a crash of the node. Nothing else stops it, and nothing starts it again.
patroni_crash() {
    local n=$1
    stop_pidfile "$(patroni_pid "$n")" KILL
    if [[ -f $(node_data "$n")/postmaster.pid ]]; then
        pg_as "$n" "$PG_BIN/pg_ctl" -D "$(node_data "$n")" -m immediate -w -t 60 stop ||
            die "pg_ctl stop -m immediate failed on $n; look at $(node_pglog "$n")"
    fi
    say "$n: Patroni killed, PostgreSQL stopped (immediate)"
}

# down: KILL to every Patroni by its pid file, waited for (before PostgreSQL is stopped: a
# Patroni still there would start it again), TERM to etcd. Best effort: what is left is
# killed with the rest of the namespaces' processes.
patroni_kill_all() {
    local n pidf pid
    for n in "${NODES[@]}"; do
        pidf=$(patroni_pid "$n")
        if pid=$(lab_pid "$pidf"); then
            kill -KILL "$pid" 2>/dev/null || true
            echo "down: kill -KILL $pid ($pidf)" >>"$DOWN_LOG"
            wait_until 5 pid_gone "$pid" || true
        fi
        rm -f "$pidf"
    done
    if pid=$(lab_pid "$ETCD_PID"); then
        kill -TERM "$pid" 2>/dev/null || true
        echo "down: kill -TERM $pid ($ETCD_PID)" >>"$DOWN_LOG"
    fi
    rm -f "$ETCD_PID"
}

# patronictl as postgres on NODE with its config: ARGS...
node_patronictl() {
    local n=$1; shift
    as postgres "$n" "$PATRONICTL_BIN" -c "$(patroni_conf "$n")" "$@"
}

# ---- bring-up ------------------------------------------------------------------------------
# PRIMARY STANDBY: STANDBY is PRIMARY's synchronous standby, in PostgreSQL and in Patroni's
# DCS (its sync key names it: the REST API's /sync answers 200), so Patroni may promote it
# (synchronous_mode: a failover or a switchover only to the synchronous standby)
sync_standby_of() {
    [[ $(node_psql "$1" postgres "select sync_state from pg_stat_replication where application_name = '$2'" 2>/dev/null) == sync ]] &&
        [[ $(http_status "$2" "$(node_ip "$2")" "$PATRONI_PORT" /sync) == 200 ]]
}

patroni_db1() { # both nodes' directories and configs; Patroni bootstraps db1 (initdb, post_bootstrap: the roles)
    local n
    for n in "${NODES[@]}"; do
        node_dirs "$n"
        : >"$(patroni_log "$n")" && chown postgres:postgres "$(patroni_log "$n")"
        write_bootstrap_sql "$n"
        write_patroni_conf "$n"
    done
    write_pgpass_files
    HINT="$(patroni_log db1) $(node_pglog db1) $ETCD_LOG"
    patroni_start db1
    if ! wait_until 90 is_primary db1; then
        tail -n 20 "$(patroni_log db1)" | sed 's/^/    /' >&2
        die "Patroni did not bootstrap db1 as the leader within 90 s"
    fi
    [[ $(node_psql db1 app "select count(*) from $APP_TABLE" 2>/dev/null) == 0 ]] ||
        die "db1 is the leader but the app database has no $APP_TABLE table: did post_bootstrap run? look at $(patroni_log db1)"
}

patroni_db2() { # Patroni makes db2 a replica of db1 (pg_basebackup), then its synchronous standby
    HINT="$(patroni_log db2) $(node_pglog db2) $(patroni_log db1)"
    patroni_start db2
    if ! wait_until 120 is_streaming_standby db2; then
        tail -n 20 "$(patroni_log db2)" | sed 's/^/    /' >&2
        die "db2 is not a streaming replica within 120 s"
    fi
}

# Bring-up assist with Patroni: barman check's "WAL archive" fails until barman has archived
# one WAL file. With repmgr, the primary_register event's `switch-wal --archive` does it at
# once; watch's first route does not (it starts receive-wal only), so on a fresh cluster it
# waits for a complete WAL file and the cron loop's next minute. The lab switches and
# archives once, as that event would, once receive-wal streams (the nudge writes the next
# WAL record meanwhile).
barman_streams_from() { [[ $(node_psql "$1" postgres "select active from pg_replication_slots where slot_name = '$BARMAN_SLOT'" 2>/dev/null) == t ]]; }
barman_first_wal() {
    HINT="/var/log/barman/barman.log $WATCH_LOG"
    wait_until 30 barman_streams_from db1 || die "barman's receive-wal does not stream from db1 30 s after watch started"
    run barman_as switch-wal --force --archive --archive-timeout=30 "$BARMAN_SERVER"
}
