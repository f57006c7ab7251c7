#!/bin/bash
# shellcheck source-path=SCRIPTDIR/lib
# The repmgr-nat lab: a whole cluster (PostgreSQL 15 + repmgr/repmgrd on db1 and db2, or
# Patroni and etcd with `up --manager patroni`, barman and the NAT on the proxy, a client
# namespace) in network namespaces on this machine.
# See lab/README.md. Run `lab.sh help` for the commands.
set -euo pipefail
export LC_ALL=C.UTF-8
umask 022

LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib
source "$LIB/common.sh"
source "$LIB/proxies.sh"
source "$LIB/clusters.sh"
source "$LIB/net.sh"
source "$LIB/pg.sh"
source "$LIB/barman.sh"
source "$LIB/handler.sh"
source "$LIB/patroni.sh"
source "$LIB/lifecycle.sh"

usage() {
    cat <<EOF
usage: lab.sh COMMAND [ARGS]   (as root; every command and its output: lab/README.md, "Commands")
  lifecycle  deps | up [--manager repmgr|patroni] [--handler repmgr-nat|scripts] [--proxies 1|2] [--clusters 1|2] [--no-cron] [--no-assist]
             down [--purge-logs] | status
  cluster    psql [-d DB] [-U USER] NODE|proxy-app|proxy-app-two|proxy-barman|recovered SQL | stop|start NODE
             freeze|thaw NODE | partition|heal NODE | pgctl NODE ACTION   (NODE: db1, db2; db3, db4 with --clusters 2)
             wait-primary|wait-standby NODE [S] | switchover NODE
             rejoin NODE [--clone] | repmgr NODE ARGS... | repmgrd start|stop NODE   (repmgr)
             patronictl NODE ARGS...   (Patroni; stop|start NODE then stop or start Patroni with PostgreSQL)
  barman     barman ARGS... | backup | recover BACKUP_ID | cron start|stop|status
  handler    event NODE ID EVENT [SUCCESS] | events [--summary|drop|pass] | watch start|stop|kill|status [PROXY] | nat [PROXY]
  proxies    vip | proxy-down|proxy-up PROXY | proxy-freeze|proxy-thaw PROXY   (PROXY: proxy, proxy2)
  clients    probe watch|hold|write|connect|tcp ARGS... | exec NS [--user U] -- CMD... | env
EOF
}

# ============================================================================ cluster commands
cmd_psql() {
    local db= user=
    while (($#)); do
        case $1 in
        -d) db=$2; shift 2 ;;
        -U) user=$2; shift 2 ;;
        *) break ;;
        esac
    done
    (($# == 2)) || die "usage: lab.sh psql [-d DB] [-U USER] NODE|proxy-app|proxy-app-two|proxy-barman|recovered SQL"
    local target=$1 sql=$2 port=$APP_PORT
    case $target in
    proxy-app | proxy-app-two)
        if [[ $target == proxy-app-two ]]; then
            two_clusters || die "psql proxy-app-two: the lab has one cluster (up --clusters 2 has two)"
            port=$TWO_APP_PORT
        fi
        # any lab user: the passwords come from postgres' pgpass (read by root here)
        ip netns exec app env -i PATH="$SYS_PATH" LANG=C.UTF-8 PGPASSFILE="$PGPASS_POSTGRES" PGCONNECT_TIMEOUT=2 \
            "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$PROXY_IP" -p "$port" -U "${user:-app}" -d "${db:-app}" -c "$sql"
        ;;
    recovered) recovered_psql "${db:-postgres}" "$sql" ;;
    proxy-barman)
        as barman proxy env PGCONNECT_TIMEOUT=2 "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$(ns_ip proxy)" -p "$BARMAN_PORT" \
            -U "${user:-barman}" -d "${db:-postgres}" -c "$sql"
        ;;
    *)
        is_node "$target" || die "psql: unknown target '$target' ($(lab_nodes), proxy-app, proxy-app-two, proxy-barman, recovered)"
        node_psql "$target" "${db:-postgres}" "$sql" "${user:-postgres}"
        ;;
    esac
}

postmaster_pid() { head -n 1 "$(node_data "$1")/postmaster.pid" 2>/dev/null; }

# freeze|thaw NODE: SIGSTOP or SIGCONT to the postmaster (its children keep running, as
# with a hung disk: new connections are accepted by the kernel and never answered).
cmd_freeze() {
    (($# == 2)) || die "usage: lab.sh freeze|thaw NODE"; check_node "$2"
    local pid sig=STOP
    [[ $1 == thaw ]] && sig=CONT
    pid=$(postmaster_pid "$2")
    [[ $pid =~ ^[0-9]+$ ]] || die "$2: no postmaster.pid (is it running?)"
    kill -"$sig" "$pid" || die "kill -$sig $pid failed"
    say "$2: postmaster $pid got SIG$sig"
}

# partition|heal NODE: the node's own filter table drops (or no longer drops) whatever the
# proxy sends it, both ways in effect: a network partition between them, the database
# nodes still see each other. The proxy's tables are not touched. With two proxies: from
# both proxies' own addresses and the shared one.
cmd_partition() {
    (($# == 2)) || die "usage: lab.sh partition|heal NODE"; check_node "$2"
    local src rule
    for src in $(proxy_sources); do
        rule=(INPUT -s "$src" -j DROP)
        if [[ $1 == partition ]]; then
            ip netns exec "$2" iptables -C "${rule[@]}" 2>/dev/null || ip netns exec "$2" iptables -I "${rule[@]}" ||
                die "cannot partition $2"
        else
            while ip netns exec "$2" iptables -C "${rule[@]}" 2>/dev/null; do
                ip netns exec "$2" iptables -D "${rule[@]}" || die "cannot heal $2"
            done
        fi
    done
    if [[ $1 == partition ]]; then say "$2 no longer hears the proxy"; else say "$2 hears the proxy again"; fi
}

cmd_pgctl() { # NODE ACTION: the node's pg_ctl wrapper (stop: immediate, as a crash)
    (($# == 2)) || die "usage: lab.sh pgctl NODE ACTION"; check_node "$1"
    pg_as "$1" "$(node_pgctl "$1")" "$2" || die "pg_ctl $2 failed on $1; look at $(node_pglog "$1")"
}

cmd_repmgr() {
    (($# >= 1)) || die "usage: lab.sh repmgr NODE ARGS..."; check_repmgr_node "$1"
    node_repmgr "$@"
}

cmd_repmgrd() {
    (($# == 2)) || die "usage: lab.sh repmgrd start|stop NODE"; check_repmgr_node "$2"
    case $1 in
    start) repmgrd_start "$2" ;;
    stop) repmgrd_stop "$2" ;;
    *) die "usage: lab.sh repmgrd start|stop NODE" ;;
    esac
}

# in_recovery NODE -> t|f (empty when the node does not answer)
in_recovery() { node_psql "$1" postgres "select pg_is_in_recovery()" 2>/dev/null || true; }

is_primary() { # out of recovery, and repmgr records it as the primary (Patroni: it holds the leader key)
    [[ $(in_recovery "$1") == f ]] || return 1
    if patroni_lab; then
        patroni_leader "$1"
    else
        [[ $(node_psql "$1" repmgr "select type from repmgr.nodes where node_id = $(node_id "$1") and active" 2>/dev/null) == primary ]]
    fi
}
manager_logs() { # NODE...: where to look (the manager's logs)
    local n
    for n; do if patroni_lab; then printf '%s ' "$(patroni_log "$n")"; else printf '%s ' "$(node_repmgrd_log "$n")"; fi; done
}
is_streaming_standby() { # in recovery and streaming (Patroni: and the primary's synchronous standby, synchronous_mode)
    [[ $(in_recovery "$1") == t && $(node_psql "$1" postgres "select status from pg_stat_wal_receiver" 2>/dev/null) == streaming ]] || return 1
    ! patroni_lab || sync_standby_of "$(node_other "$1")" "$1"
}

cmd_wait_primary() {
    (($# >= 1)) || die "usage: lab.sh wait-primary NODE [TIMEOUT]"; check_cluster_node "$1"
    local t0; t0=$(now_ms)
    if ! wait_until "${2:-30}" is_primary "$1"; then
        if patroni_lab; then node_patronictl "$1" list >&2 || true; else node_repmgr "$1" cluster show >&2 || true; fi
        die "$1 is not primary after ${2:-30}s (in recovery: $(in_recovery "$1")); look at $(manager_logs db1 db2)$EVENTS_LOG"
    fi
    say "$1 is primary ($(bc_div $(($(now_ms) - t0))) s)"
}

cmd_wait_standby() {
    (($# >= 1)) || die "usage: lab.sh wait-standby NODE [TIMEOUT]"; check_cluster_node "$1"
    local t0; t0=$(now_ms)
    if ! wait_until "${2:-30}" is_streaming_standby "$1"; then
        tail -n 15 "$(node_pglog "$1")" | sed 's/^/    /' >&2
        if patroni_lab; then
            tail -n 15 "$(patroni_log "$1")" | sed 's/^/    /' >&2
            say "pg_stat_replication on $(node_other "$1"): $(node_psql "$(node_other "$1")" postgres "select application_name, state, sync_state from pg_stat_replication" 2>&1 | tr '\n' ' ')" >&2
        fi
        die "$1 is not a streaming standby after ${2:-30}s (in recovery: $(in_recovery "$1")); look at $(node_pglog "$1") $(manager_logs "$1")"
    fi
    say "$1 is a streaming standby ($(bc_div $(($(now_ms) - t0))) s)"
}

cmd_rejoin() {
    local clone=0
    [[ ${2:-} == --clone ]] && { clone=1; set -- "$1"; }
    (($# == 1)) || die "usage: lab.sh rejoin NODE [--clone]"; check_repmgr_node "$1"
    local n=$1 p
    p=$(node_other "$n")
    [[ $(in_recovery "$p") == f ]] || die "rejoin $n: $p is not a running primary"
    if node_running "$n"; then
        [[ $(in_recovery "$n") == t ]] && { say "$n is already a running standby"; return 0; }
        say "rejoin $n: it runs as a primary: stopping it (fast)"
        pg_as "$n" "$(node_pgctl "$n")" stop || die "cannot stop $n; look at $(node_pglog "$n")"
    fi
    local state
    state=$(pg_as "$n" "$PG_BIN/pg_controldata" "$(node_data "$n")" | sed -n 's/^Database cluster state: *//p')
    if [[ $state != "shut down" ]]; then
        say "rejoin $n: cluster state '$state': crash recovery in single-user mode first"
        pg_as "$n" "$(node_pgctl "$n")" single >>"$(node_pglog "$n")" 2>&1 || die "single-user crash recovery failed on $n; look at $(node_pglog "$n")"
    fi
    local out rc=0
    if ((clone)); then
        rc=1 out="(--clone: no node rejoin attempted)"
    else
        out=$(node_repmgr "$n" node rejoin -d "host=$(node_ip "$p") port=$PG_PORT user=repmgr dbname=repmgr connect_timeout=2" \
            --force-rewind --verbose 2>&1) || rc=$?
    fi
    printf '%s\n' "$out" >>"$(node_repmgrd_log "$n")"
    if ((rc == 0)); then
        say "rejoin $n: repmgr node rejoin done (standby of $p)"
        # repmgr can misjudge a rewind as unneeded when the old primary's last checkpoint
        # sits exactly at the fork: PostgreSQL then never streams ("forked off ... before
        # current recovery point"). An operator clones afresh; so does the lab.
        wait_until 20 is_streaming_standby "$n" && { cmd_wait_standby "$n" 1; return; }
        warn "rejoin $n: not streaming 20 s after repmgr node rejoin: fresh clone instead; the log's last lines:"
        tail -n 8 "$(node_pglog "$n")" | sed 's/^/    /' >&2
    elif ((!clone)); then
        warn "repmgr node rejoin failed on $n (exit $rc; output in $(node_repmgrd_log "$n")): fresh clone instead"
        printf '%s\n' "$out" | tail -n 5 | sed 's/^/    /' >&2
    fi
    if node_running "$n"; then pg_as "$n" "$(node_pgctl "$n")" immediate || die "cannot stop $n before the clone"; fi
    rm -rf -- "$(node_data "$n")"
    node_repmgr "$n" -h "$(node_ip "$p")" -p "$PG_PORT" -U repmgr -d repmgr standby clone --fast-checkpoint -F ||
        die "standby clone of $n from $p failed; look at $(node_repmgrd_log "$n")"
    pg_as "$n" "$(node_pgctl "$n")" start || die "$n did not start after the clone; look at $(node_pglog "$n")"
    node_repmgr "$n" standby register -F || die "standby register -F failed on $n"
    say "rejoin $n: cloned from $p and registered (event standby_register, not node_rejoin)"
    cmd_wait_standby "$n" 30
}

# switchover NODE: repmgr's `standby switchover` on NODE, or Patroni's `patronictl
# switchover --candidate NODE --force` (the old leader restarts as a replica by itself);
# then until NODE is the primary and the other its streaming standby.
cmd_switchover() {
    (($# == 1)) || die "usage: lab.sh switchover NODE (the standby that becomes primary)"; check_cluster_node "$1"
    local n=$1 old
    old=$(node_other "$n")
    [[ $(in_recovery "$n") == t ]] || die "switchover: $n is not a running standby"
    [[ $(in_recovery "$old") == f ]] || die "switchover: $old is not the running primary"
    if patroni_lab; then
        node_patronictl "$n" switchover --candidate "$n" --force ||
            die "patronictl switchover to $n failed; look at $(manager_logs "$n" "$old")"
    else
        node_repmgr "$n" standby switchover --force-rewind --verbose ||
            die "repmgr standby switchover to $n failed; look at $(manager_logs "$n" "$old")$EVENTS_LOG"
    fi
    cmd_wait_primary "$n" 30
    cmd_wait_standby "$old" 60
}

# stop|start NODE: with Patroni on db1 or db2, the node's Patroni with its PostgreSQL (a
# crash: Patroni killed, pg_ctl stop -m immediate; Patroni started again, which rejoins the
# node as a replica, rewound when it has to); elsewhere pg_ctl (immediate, or a start).
cmd_stop_start() {
    (($# == 2)) || die "usage: lab.sh stop|start NODE"; check_node "$2"
    if patroni_lab && is_cluster_node "$2"; then
        if [[ $1 == stop ]]; then patroni_crash "$2"; else patroni_start "$2"; say "$2: Patroni started (pid $(cat "$(patroni_pid "$2")"))"; fi
    elif [[ $1 == stop ]]; then
        cmd_pgctl "$2" immediate
    else
        cmd_pgctl "$2" start
    fi
}

cmd_patronictl() {
    (($# >= 1)) || die "usage: lab.sh patronictl NODE ARGS..."
    patroni_lab || die "patronictl: the lab runs repmgr (up --manager patroni runs Patroni)"
    check_cluster_node "$1"
    node_patronictl "$@"
}

cmd_recover() {
    (($# == 1)) || die "usage: lab.sh recover BACKUP_ID"
    barman_recover "$1"
    say "recovered $1 to the newest timeline: lab.sh psql recovered SQL"
}

# Fire the event handler as repmgr would: from NODE's namespace, as postgres, through the
# crossing (logged in the events log like any other run). Exit code: the handler's.
cmd_event() {
    (($# == 3 || $# == 4)) || die "usage: lab.sh event NODE NODE_ID EVENT [SUCCESS]  (e.g. lab.sh event db2 2 standby_promote 1)"
    check_repmgr_node "$1"
    local n=$1; shift
    as postgres "$n" sudo -n "$LAB_DIR/bin/lab-event" "$@"
}

cmd_cron() {
    case ${1:-} in
    start) cron_start; say "cron loop running (pid $(cat "$CRON_PID"))" ;;
    stop) stop_pidfile "$CRON_PID"; say "cron loop stopped" ;;
    status) if pid_alive "$CRON_PID"; then echo "running $(cat "$CRON_PID")"; else echo stopped; return 1; fi ;;
    *) die "usage: lab.sh cron start|stop|status" ;;
    esac
}

cmd_watch() { # start|stop|kill|status [PROXY]
    local p=${2:-proxy} pidf
    (($# <= 2)) || die "usage: lab.sh watch start|stop|kill|status [PROXY]"
    check_proxy "$p"
    pidf=$(watch_pid "$p")
    case ${1:-} in
    start) watch_start "$p"; say "watch running in $p (pid $(cat "$pidf"), log $(watch_log "$p"))" ;;
    stop) stop_pidfile "$pidf"; say "watch stopped in $p" ;;
    kill) stop_pidfile "$pidf" KILL; say "watch killed in $p" ;;
    status) if pid_alive "$pidf"; then echo "running $(cat "$pidf")"; else echo stopped; return 1; fi ;;
    *) die "usage: lab.sh watch start|stop|kill|status [PROXY]" ;;
    esac
}

# ============================================================================ events, clients
cmd_events() {
    case ${1:-} in
    --summary) "$(kit_bin)" events "$EVENTS_LOG" ;;
    drop) : >"$LAB_DIR/events.drop"; say "events are dropped before they reach the proxy" ;;
    pass) rm -f "$LAB_DIR/events.drop"; say "events reach the proxy" ;;
    "") cat "$EVENTS_LOG" ;;
    *) die "usage: lab.sh events [--summary|drop|pass]" ;;
    esac
}

kit_bin() { # lab/kit's binary, built when missing or older than its sources
    local bin=$REPO_ROOT/target/release/lab-kit
    if [[ -n ${LAB_KIT_BIN:-} ]]; then
        bin=$LAB_KIT_BIN
    elif [[ ! -x $bin || -n $(find "$LAB_ROOT/kit" -newer "$bin" -type f -print -quit) ]]; then
        command -v cargo >/dev/null || die "cargo not found: cannot build lab/kit (or set LAB_KIT_BIN)"
        cargo build --release -q --manifest-path "$REPO_ROOT/Cargo.toml" -p lab-kit >&2 || die "cargo build -p lab-kit failed"
    fi
    [[ -x $bin ]] || die "lab-kit not found at $bin"
    echo "$bin"
}

build_kit() { kit_bin >/dev/null; }

cmd_probe() { # a lab-kit client, in the app namespace
    local bin; bin=$(kit_bin)
    exec ip netns exec app "$bin" probe "$@"
}

cmd_exec() {
    local ns=${1:-} user=
    shift || true
    [[ -n $ns ]] || die "usage: lab.sh exec NS [--user U] -- CMD..."
    ns_is_lab "$ns" || die "exec: $ns is not one of the lab's namespaces (${LAB_NAMESPACES[*]}); is the lab up?"
    while (($#)); do
        case $1 in
        --user) user=$2; shift 2 ;;
        --) shift; break ;;
        *) break ;;
        esac
    done
    (($#)) || die "usage: lab.sh exec NS [--user U] -- CMD..."
    if [[ -n $user ]]; then
        as "$user" "$ns" "$@"
    else
        exec ip netns exec "$ns" "$@"
    fi
}

cmd_env() {
    local kv
    for kv in \
        "LAB_DIR=$LAB_DIR" "LAB_NET=$LAB_NET" \
        "PROXY_IP=$PROXY_IP" "PROXIES=$(state_get PROXIES)" "PROXY_NAMESPACES=$(lab_proxies)" \
        "PROXY_OWN_IP=$(ns_ip proxy)" "PROXY2_IP=$PROXY_B_IP" "PROXY2_CONFIG=$PROXY2_CONFIG" \
        "PROXY2_STATE_DIR=$PROXY2_STATE_DIR" "WATCH2_DIR=$(watch_dir proxy2)" "WATCH2_LOG=$(watch_log proxy2)" \
        "DB1_IP=$DB1_IP" "DB2_IP=$DB2_IP" "APP_IP=$APP_IP" \
        "PG_PORT=$PG_PORT" "BARMAN_PORT=$BARMAN_PORT" "APP_PORT=$APP_PORT" \
        "NAMESPACES=${LAB_NAMESPACES[*]}" "NS_BRIDGE=$NS_BRIDGE" \
        "PG_BIN=$PG_BIN" "HANDLER=$(state_get HANDLER)" \
        "DB1_ID=1" "DB2_ID=2" \
        "DB1_DATA=$(node_data db1)" "DB2_DATA=$(node_data db2)" \
        "DB1_SOCKET_DIR=$(node_sock db1)" "DB2_SOCKET_DIR=$(node_sock db2)" \
        "DB1_REPMGR_CONF=$(node_conf db1)" "DB2_REPMGR_CONF=$(node_conf db2)" \
        "DB1_PG_LOG=$(node_pglog db1)" "DB2_PG_LOG=$(node_pglog db2)" \
        "DB1_REPMGRD_LOG=$(node_repmgrd_log db1)" "DB2_REPMGRD_LOG=$(node_repmgrd_log db2)" \
        "EVENTS_LOG=$EVENTS_LOG" "LAB_LOG=$LAB_LOG" "CRON_LOG=$CRON_LOG" "WATCH_LOG=$WATCH_LOG" "WATCH_DIR=$WATCH_DIR" "SSH_LOG=$LAB_DIR/logs/ssh.log" "LOGS_SAVED_TO=${LAB_SAVE_LOGS:-$LAB_LOGS_SAVE_DEFAULT}" \
        "BARMAN_SERVER=$BARMAN_SERVER" "BARMAN_SLOT=$BARMAN_SLOT" "BARMAN_CONF=$BARMAN_CONF" \
        "BARMAN_HOME=$BARMAN_SERVER_HOME" \
        "REPMGR_NAT_BIN=$RNAT_BIN" "REPMGR_NAT_CONFIG=$RNAT_CONFIG" "REPMGR_NAT_STATE_DIR=$RNAT_STATE_DIR" \
        "REPMGR_NAT_DEB=$(state_get DEB)" \
        "SCRIPTS_DIR=$SCRIPTS_DIR" \
        "APP_USER=app" "APP_DB=app" "APP_PASSWORD=$PW_APP" "APP_TABLE=$APP_TABLE" \
        "APP_CONNINFO=host=$PROXY_IP port=$APP_PORT user=app password=$PW_APP dbname=app connect_timeout=1" \
        "REPMGR_PASSWORD=$PW_REPMGR" "BARMAN_PASSWORD=$PW_BARMAN" "STREAMING_BARMAN_PASSWORD=$PW_STREAMING" \
        "KIT_BIN=${LAB_KIT_BIN:-$REPO_ROOT/target/release/lab-kit}" "SYS_PATH=$SYS_PATH" "WATCH_PID=$WATCH_PID" \
        "CLUSTERS=$(state_get CLUSTERS)" "DB3_IP=$DB3_IP" "DB3_ID=3" "DB3_DATA=$(node_data db3)" \
        "DB3_SOCKET_DIR=$(node_sock db3)" "DB3_PG_LOG=$(node_pglog db3)" "DB4_IP=$DB4_IP" \
        "TWO_CONFIG=$TWO_CONFIG" "TWO_STATE_DIR=$TWO_STATE_DIR" "TWO_WATCH_DIR=$TWO_WATCH_DIR" \
        "TWO_APP_PORT=$TWO_APP_PORT" "TWO_METRICS=$TWO_METRICS" \
        "TWO_BARMAN_PORT=$TWO_BARMAN_PORT" "TWO_BARMAN_SERVER=$TWO_BARMAN_SERVER" \
        "TWO_APP_CONNINFO=host=$PROXY_IP port=$TWO_APP_PORT user=app password=$PW_APP dbname=app connect_timeout=1" \
        "MANAGER=$(lab_manager)" "ETCD_IP=$ETCD_IP" "ETCD_PORT=$ETCD_PORT" "ETCD_LOG=$ETCD_LOG" \
        "PATRONI_PORT=$PATRONI_PORT" "PATRONI_SCOPE=$PATRONI_SCOPE" \
        "DB1_PATRONI_CONF=$(patroni_conf db1)" "DB2_PATRONI_CONF=$(patroni_conf db2)" \
        "DB1_PATRONI_LOG=$(patroni_log db1)" "DB2_PATRONI_LOG=$(patroni_log db2)" \
        "DB1_PATRONI_PID=$(patroni_pid db1)" "DB2_PATRONI_PID=$(patroni_pid db2)" \
        "LAB_SH=$LAB_ROOT/lab.sh"; do
        local k=${kv%%=*} v=${kv#*=}
        if [[ $v == *' '* ]]; then printf "%s='%s'\n" "$k" "$v"; else printf '%s=%s\n' "$k" "$v"; fi
    done
}

cmd_status() {
    local n role
    echo "== lab (manager $(lab_manager), handler $(state_get HANDLER), cron $(state_get CRON))"
    for n in $(lab_nodes); do
        case $(in_recovery "$n") in t) role=standby ;; f) role=primary ;; *) role='down / not answering' ;; esac
        printf '%s %-15s %s\n' "$n" "$(node_ip "$n")" "$role"
    done
    if patroni_lab; then
        echo "== patronictl list"
        node_patronictl db1 list 2>&1 || true
    else
        echo "== repmgr cluster show"
        for n in "${NODES[@]}"; do
            node_running "$n" && { node_repmgr "$n" cluster show 2>&1 || true; break; }
        done
    fi
    echo "== app port: $(cmd_psql proxy-app 'select host(inet_server_addr())' 2>&1 | head -n1)"
    two_clusters && echo "== app port two: $(cmd_psql proxy-app-two 'select host(inet_server_addr())' 2>&1 | head -n1)"
    local p
    two_proxies && echo "== $PROXY_IP held by: $(vip_holders)"
    for p in $(lab_proxies); do
        echo "== nat ($p)"
        ip netns exec "$p" iptables-save -t nat | grep -E '^(-A|:repmgr)' || true
    done
    echo "== slots"
    for n in $(lab_nodes); do echo "$n: $(node_psql "$n" postgres "select string_agg(slot_name || case when active then ' (active)' else '' end, ', ') from pg_replication_slots" 2>/dev/null || echo '?')"; done
    echo "== barman check"
    barman_as check "$BARMAN_SERVER" 2>&1 || true
    echo "== handler runs"
    "$(kit_bin)" events "$EVENTS_LOG" --last 10
}

# ============================================================================ main
ORIG_ARGS=("$@")
main() {
    local cmd=${1:-help}
    shift || true
    case $cmd in
    help | -h | --help) usage; return ;;
    env) cmd_env; return ;;
    esac
    require_root
    case $cmd in deps | up | down) ;; *) require_up ;; esac
    case $cmd in
    deps) cmd_deps "$@" ;;
    up)
        [[ -n ${LAB_LOCKED:-} ]] || locked up "$@"
        cmd_up "$@"
        ;;
    down)
        [[ -n ${LAB_LOCKED:-} ]] || locked down "$@"
        cmd_down "$@"
        say "down: clean"
        ;;
    status) cmd_status "$@" ;;
    psql) cmd_psql "$@" ;;
    stop | start) cmd_stop_start "$cmd" "$@" ;;
    freeze | thaw) cmd_freeze "$cmd" "$@" ;;
    partition | heal) cmd_partition "$cmd" "$@" ;;
    pgctl) cmd_pgctl "$@" ;;
    wait-primary) cmd_wait_primary "$@" ;;
    wait-standby) cmd_wait_standby "$@" ;;
    rejoin) cmd_rejoin "$@" ;;
    switchover) cmd_switchover "$@" ;;
    repmgr) cmd_repmgr "$@" ;;
    repmgrd) cmd_repmgrd "$@" ;;
    patronictl) cmd_patronictl "$@" ;;
    barman) barman_as "$@" ;;
    backup) barman_backup ;;
    recover) cmd_recover "$@" ;;
    event) cmd_event "$@" ;;
    cron) cmd_cron "$@" ;;
    watch) cmd_watch "$@" ;;
    nat) check_proxy "${1:-proxy}"; ip netns exec "${1:-proxy}" iptables-save ;;
    vip) cmd_vip ;;
    proxy-down | proxy-up | proxy-freeze | proxy-thaw) cmd_proxy_fault "$cmd" "$@" ;;
    events) cmd_events "$@" ;;
    probe) cmd_probe "$@" ;;
    exec) cmd_exec "$@" ;;
    *) usage >&2; die "unknown command: $cmd" ;;
    esac
}

trap 'failed_silently $?' EXIT
main "$@"
