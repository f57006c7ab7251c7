# shellcheck shell=bash
# Shared constants and helpers of the repmgr-nat lab. Sourced by lab/lab.sh.

# ---- topology (the only addresses the lab ever uses) -------------------------------------
LAB_NET=198.51.100.0/24
PROXY_IP=198.51.100.3           # the proxy's; with two proxies the address they share (VRRP)
DB1_IP=198.51.100.11
DB2_IP=198.51.100.12
DB3_IP=198.51.100.13            # the second cluster's primary, then db4 its standby: only with `up --clusters 2`
DB4_IP=198.51.100.14
APP_IP=198.51.100.20
ETCD_IP=198.51.100.30           # Patroni's DCS, in a namespace of its own: only with `up --manager patroni`
PG_PORT=5432
BARMAN_PORT=54321
APP_PORT=54322
NODES=(db1 db2)                 # the cluster (repmgr's, or Patroni's with `up --manager patroni`)
TWO_NODES=(db3 db4)             # the second cluster (repmgr's too): only with `up --clusters 2`
DB_NODES=(db1 db2 db3 db4)      # every database node a lab may have
NS_BRIDGE=rnlab                 # namespace that holds the bridge
BRIDGE=rnlab-br0
LAB_NAMESPACES=(db1 db2 db3 db4 proxy proxy2 app etcd "$NS_BRIDGE")   # proxy2: only with `up --proxies 2`, db3 and db4 with `--clusters 2`, etcd with `--manager patroni`

# ---- paths ----------------------------------------------------------------------------
LAB_DIR=/var/tmp/repmgr-nat-lab          # fixed: the sudoers entries name files in it
LAB_LOGS_SAVE_DEFAULT=/var/tmp/repmgr-nat-lab.logs
PG_BIN=/usr/lib/postgresql/15/bin
EVENTS_LOG=$LAB_DIR/events.log
TLS_DIR=$LAB_DIR/tls                     # the lab's CA, the nodes' certificates and keys
LAB_LOG=$LAB_DIR/logs/lab.log
CRON_LOG=$LAB_DIR/logs/cron.log
CRON_PID=$LAB_DIR/cron.pid
STATE_FILE=$LAB_DIR/lab.env
SYS_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# System files the lab writes itself; each carries MARKER.
MARKER='repmgr-nat-lab: written by lab/lab.sh; `lab.sh down` removes it'
PGPASS_POSTGRES=/var/lib/postgresql/.pgpass
PGPASS_BARMAN=/var/lib/barman/.pgpass
BARMAN_SERVER=main_backup
BARMAN_SLOT=barman
BARMAN_CONF=/etc/barman.d/$BARMAN_SERVER.conf
BARMAN_SERVER_HOME=/var/lib/barman/$BARMAN_SERVER   # marker: a file named .repmgr-nat-lab inside
SUDOERS_LAB=/etc/sudoers.d/repmgr-nat-lab
SUDOERS_SCRIPTS=/etc/sudoers.d/repmgr-nat-lab-scripts
POLICY_RC_D=/usr/sbin/policy-rc.d             # only while `deps` installs, only if absent
MARKED_FILES=("$SUDOERS_LAB" "$SUDOERS_SCRIPTS" "$BARMAN_CONF" "$PGPASS_POSTGRES" "$PGPASS_BARMAN" "$POLICY_RC_D")

# repmgr-nat as its Debian package installs it (handler mode repmgr-nat).
RNAT_BIN=/usr/bin/repmgr-nat
RNAT_CONFIG=/etc/repmgr-nat.toml
RNAT_STATE_DIR=/var/lib/repmgr-nat
RNAT_INSTALLED=$LAB_DIR/repmgr-nat.installed   # the lab installed the package: down purges it
WATCH_DIR=$LAB_DIR/watch                 # the config's watch.dir (the unit's /run/repmgr-nat)
WATCH_PID=$LAB_DIR/watch.pid
WATCH_LOG=$LAB_DIR/logs/watch.log

# Lab passwords (the network is private to the lab's namespaces).
PW_REPMGR=lab-repmgr-pw
PW_RNAT=lab-repmgr-nat-pw
PW_BARMAN=lab-barman-pw
PW_STREAMING=lab-streaming-pw
PW_APP=lab-app-pw
APP_TABLE=writes

LAB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)   # .../lab
REPO_ROOT=$(cd "$LAB_ROOT/.." && pwd)

# ---- node helpers ----------------------------------------------------------------------
# a namespace's own address (with two proxies, proxy's own is not the shared PROXY_IP)
ns_ip() {
    case $1 in
    db1) echo "$DB1_IP" ;; db2) echo "$DB2_IP" ;; db3) echo "$DB3_IP" ;; db4) echo "$DB4_IP" ;; app) echo "$APP_IP" ;; proxy2) echo "$PROXY_B_IP" ;;
    etcd) echo "$ETCD_IP" ;;
    proxy) if two_proxies; then echo "$PROXY_A_IP"; else echo "$PROXY_IP"; fi ;;
    esac
}
ns_ips() { case $1 in proxy) echo "$PROXY_IP $PROXY_A_IP" ;; *) ns_ip "$1" ;; esac; } # any it may have had
node_ip() { check_node "$1"; ns_ip "$1"; }
node_id() { check_node "$1"; echo "${1#db}"; }   # repmgr's node_id (3 and 4 in the second cluster)
node_other() { case $1 in db1) echo db2 ;; db2) echo db1 ;; db3) echo db4 ;; db4) echo db3 ;; *) die "unknown node '$1' (db1 to db4)" ;; esac; }
is_node() { [[ " $(lab_nodes) " == *" $1 "* ]]; }            # a database node of this lab
is_cluster_node() { [[ " ${NODES[*]} " == *" $1 "* ]]; }    # one of its cluster (db1, db2)
is_two_node() { two_clusters && [[ " ${TWO_NODES[*]} " == *" $1 "* ]]; }   # one of the second cluster's
is_repmgr_node() { { is_cluster_node "$1" && ! patroni_lab; } || is_two_node "$1"; }  # ... run by repmgr
check_node() { is_node "$1" || die "unknown node '$1' (expected one of: $(lab_nodes))"; }
check_cluster_node() { is_cluster_node "$1" || die "$1 is not a node of the cluster (db1 or db2)"; }
check_repmgr_node() {
    ! patroni_lab || die "the lab runs Patroni (up --manager patroni): there is no repmgr on $1"
    is_repmgr_node "$1" || die "$1 is not a node of the repmgr cluster (db1 or db2)"
}
node_dir() { echo "$LAB_DIR/$1"; }
node_data() { echo "$LAB_DIR/$1/data"; }
node_sock() { echo "$LAB_DIR/$1/run"; }
node_conf() { echo "$LAB_DIR/$1/repmgr.conf"; }
node_pglog() { echo "$LAB_DIR/$1/postgresql.log"; }
node_repmgrd_log() { echo "$LAB_DIR/$1/repmgrd.log"; }
node_repmgrd_pid() { echo "$LAB_DIR/$1/repmgrd.pid"; }
node_pgctl() { echo "$LAB_DIR/$1/pgctl"; }

# ---- output ----------------------------------------------------------------------------
now_ms() { local t=$EPOCHREALTIME; echo $(( ${t/./} / 1000 )); }
say() { printf '[lab] %s\n' "$*"; }
warn() { printf '[lab] WARNING: %s\n' "$*" >&2; }
# Extra "where to look" hint printed by die(); phases set it.
HINT=
DIED=
die() {
    printf '[lab] ERROR%s: %s\n' "${PHASE_NAME:+ (during: $PHASE_NAME)}" "$*" >&2
    [[ -n $HINT ]] && printf '[lab]   look at: %s\n' "$HINT" >&2
    DIED=1
    exit 1
}
# Under set -e a failing command ends the run; the ERR trap notes which (set -E: functions
# inherit it) and the EXIT trap says so, so that no run fails without a word.
FAILED_AT=
set -E
trap 'FAILED_AT="${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND"' ERR
failed_silently() { # RC: one line for a run that ends non-zero without die
    (($1 == 0)) || [[ -n $DIED ]] ||
        printf '[lab] ERROR%s: exit %d after a command failed: %s\n' \
            "${PHASE_NAME:+ (during: $PHASE_NAME)}" "$1" "${FAILED_AT:-unknown}" >&2
}

require_root() {
    [[ $(id -u) -eq 0 ]] || die "lab.sh must run as root (it creates network namespaces, runs PostgreSQL as postgres and installs files under /etc); try: sudo $0 ${ORIG_ARGS[*]:-}"
}

# run CMD...: append the command and its output to the lab log; fail loudly with the tail.
run() {
    local rc=0
    printf '+ %s\n' "$*" >>"$LAB_LOG"
    "$@" >>"$LAB_LOG" 2>&1 </dev/null || rc=$?
    if ((rc != 0)); then
        printf '[lab] ERROR%s: command failed (exit %d): %s\n' "${PHASE_NAME:+ (during: $PHASE_NAME)}" "$rc" "$*" >&2
        printf '[lab] last lines of %s:\n' "$LAB_LOG" >&2
        tail -n 25 "$LAB_LOG" | sed 's/^/    /' >&2
        [[ -n $HINT ]] && printf '[lab]   also look at: %s\n' "$HINT" >&2
        exit 1
    fi
}

# as USER NS CMD...: run CMD as USER inside namespace NS (NS "-" = root namespace) with a clean
# environment, the way a login through ssh would give it.
as() {
    local user=$1 ns=$2; shift 2
    local home
    home=$(getent passwd "$user" | cut -d: -f6) || die "no such user: $user"
    local -a envv=(env -i "HOME=$home" "USER=$user" "LOGNAME=$user" "PATH=$SYS_PATH" LANG=C.UTF-8)
    [[ -n ${AS_EXTRA_ENV:-} ]] && envv+=($AS_EXTRA_ENV)
    if [[ $ns == - ]]; then
        runuser -u "$user" -- "${envv[@]}" "$@"
    else
        ip netns exec "$ns" runuser -u "$user" -- "${envv[@]}" "$@"
    fi
}

# Whether dpkg knows PACKAGE (installed, or its conffiles left): not the lab's to touch.
dpkg_knows() {
    local st
    st=$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) && [[ -n $st && $st != not-installed ]]
}

# ---- marked system files ---------------------------------------------------------------
has_marker() { [[ -f $1 ]] && grep -qF "$MARKER" "$1"; }

# claim_path PATH: refuse to go on when PATH exists and the lab did not write it.
claim_path() {
    local p=$1
    if [[ -e $p ]] && ! has_marker "$p"; then
        die "$p exists and was not written by the lab (no marker line '$MARKER'); it belongs to someone else: move it away (or remove it) and run up again"
    fi
}

# write_marked PATH MODE OWNER COMMENT_PREFIX < content: write a file carrying the marker.
write_marked() {
    local p=$1 mode=$2 owner=$3 cprefix=$4 tmp
    claim_path "$p"
    tmp=$(mktemp "$(dirname "$p")/.lab.XXXXXX") || die "cannot create a temporary file next to $p"
    { printf '%s %s\n' "$cprefix" "$MARKER"; cat; } >"$tmp" || die "cannot write $tmp"
    chmod "$mode" "$tmp" && chown "$owner" "$tmp" && mv -f "$tmp" "$p" || die "cannot install $p"
}

state_get() { # state_get KEY -> value from the lab state file (empty when absent)
    [[ -f $STATE_FILE ]] || return 0
    sed -n "s/^$1=//p" "$STATE_FILE" | tail -n1
}
state_set() { echo "$1=$2" >>"$STATE_FILE"; }

require_up() {
    [[ -f $STATE_FILE ]] || die "the lab is not up (no $STATE_FILE); run: lab.sh up"
}

# timer helpers for phases
PHASE_T0=0
UP_T0=0
PHASE_NAME=
phase() {
    PHASE_NAME=$1 PHASE_T0=$(now_ms) HINT=${2:-}
    if [[ -f $LAB_LOG ]]; then printf '+++ phase: %s\n' "$1" >>"$LAB_LOG"; fi
}
phase_done() {
    local t; t=$(now_ms)
    printf '[lab] %6s s  %s%s\n' "$(bc_div $((t - PHASE_T0)))" "$PHASE_NAME" "${1:+ ($1)}"
    PHASE_NAME= HINT=
}
step() { phase "$1"; shift; "$@"; phase_done; }   # NAME CMD...: a phase of up
bc_div() { printf '%d.%02d' $(($1 / 1000)) $(($1 % 1000 / 10)); }   # ms -> s.cc

# wait_until SECONDS CMD...: until CMD succeeds (tried every 0.1 s); 1 when SECONDS pass first.
wait_until() {
    local deadline=$(($(now_ms) + $1 * 1000))
    shift
    until "$@" >/dev/null 2>&1; do
        (($(now_ms) > deadline)) && return 1
        sleep 0.1
    done
}

# FILE was written before this machine booted: the pid in it names nothing the lab started.
from_before_boot() { [[ -e $1 ]] && (($(stat -c %Y "$1") < $(awk '$1 == "btime" { print $2 }' /proc/stat))); }
# lab_pid PIDFILE: the pid in it, if that process lives in one of the lab's namespaces
# (watch, the cron loop and repmgrd all do): a pid reused by another process, after a
# reboot or not, is never signalled.
lab_pid() {
    local pid ns
    [[ -s $1 ]] && pid=$(<"$1") && [[ $pid =~ ^[0-9]+$ ]] || return 1
    ns=$(ip netns identify "$pid" 2>/dev/null) && [[ -n $ns ]] && ns_is_lab "$ns" || return 1
    echo "$pid"
}
pid_alive() { lab_pid "$1" >/dev/null; }        # PIDFILE
pid_gone() { ! kill -0 "$1" 2>/dev/null; }      # PID

# stop_pidfile FILE [SIGNAL]: SIGNAL (TERM) to the process FILE names, KILL if it is still
# there 5 s later; the file goes.
stop_pidfile() {
    local pid
    pid=$(lab_pid "$1") || { rm -f "$1"; return 0; }
    rm -f "$1"
    kill -"${2:-TERM}" "$pid"
    wait_until 5 pid_gone "$pid" && return 0
    kill -KILL "$pid" 2>/dev/null || true
    wait_until 2 pid_gone "$pid" || die "pid $pid ($1) is still there after KILL"
}
