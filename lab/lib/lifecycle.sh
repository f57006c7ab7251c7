# shellcheck shell=bash
# The lab's lifecycle: its packages, its lock, `down` and `up` (sourced by lab.sh).

# ============================================================================ deps
DEPS_PKGS=(iptables iproute2 sudo conntrack postgresql-15 postgresql-15-repmgr barman libssl-dev pkg-config openssl acl
    keepalived conntrackd    # `up --proxies 2`
    patroni etcd-server      # `up --manager patroni`; their own services are disabled (the lab runs them itself)
    prometheus)              # its promtool tests the alerting rules (tests/alerts/run); no server
# Installed by deps too, but needed by lab/bench alone (no `up` asks for them): HAProxy
# with Patroni's example config, the anchor beside the NAT on Patroni (its own service disabled).
BENCH_PKGS=(haproxy)

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

cmd_deps() {
    local p missing=() all=("${DEPS_PKGS[@]}" "${BENCH_PKGS[@]}")
    for p in "${all[@]}"; do pkg_installed "$p" || missing+=("$p"); done
    if ((${#missing[@]} == 0)); then
        say "deps: all present (${all[*]})"
    else
        say "deps: installing ${missing[*]}"
        # Do not let the packages start services (PostgreSQL's main cluster, ...): a
        # policy-rc.d that refuses, unless the machine has one already.
        local policy=$POLICY_RC_D made_policy=0
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\n# %s\nexit 101\n' "$MARKER" >"$policy" && chmod 0755 "$policy" || die "cannot write $policy"
            made_policy=1
        fi
        local rc=0
        {
            DEBIAN_FRONTEND=noninteractive apt-get update &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${all[@]}"
        } || rc=$?
        ((made_policy)) && has_marker "$policy" && rm -f "$policy"
        ((rc == 0)) || die "apt-get failed (exit $rc): see its output above"
        [[ " ${missing[*]} " != *" prometheus "* ]] || no_server prometheus "the Prometheus server (only promtool is used)"
        [[ " ${missing[*]} " != *" etcd-server "* ]] || no_server etcd "etcd's own server (the lab starts one in its namespace)"
        [[ " ${missing[*]} " != *" patroni "* ]] || no_server patroni "Patroni's own service (the lab starts Patroni on its nodes)"
        [[ " ${missing[*]} " != *" haproxy "* ]] || no_server haproxy "HAProxy's own service (lab/bench starts one in the proxy namespace)"
    fi
    for p in "${all[@]}"; do pkg_installed "$p" || die "package $p is still not installed after apt-get"; done
    # The lab does not use Debian's own clusters: none may be running.
    if command -v pg_lsclusters >/dev/null; then
        local ver name
        while read -r ver name _; do
            say "deps: stopping Debian's cluster $ver/$name (the lab does not use it)"
            pg_ctlcluster "$ver" "$name" stop || die "cannot stop Debian's cluster $ver/$name: pg_ctlcluster $ver $name stop"
        done < <(pg_lsclusters -h | awk '$4 == "online" {print $1, $2}')
    fi
    [[ -x $PG_BIN/postgres && -x $PG_BIN/repmgr && -x $PG_BIN/repmgrd && -x /usr/bin/barman ]] ||
        die "PostgreSQL 15, repmgr or barman binaries are missing under $PG_BIN or /usr/bin"
    [[ -x $PATRONI_BIN && -x $PATRONICTL_BIN && -x $ETCD_BIN ]] || die "patroni, patronictl or etcd is missing under /usr/bin"
    say "deps: ok"
}

# no_server SERVICE WHAT: a service a package enables (and starts, where no policy-rc.d
# refuses) that the lab does not want: prometheus (the lab wants its promtool only), etcd
# and patroni (the lab runs its own, in its namespaces). Run only when deps installed the
# package: a server the machine had before is not the lab's.
no_server() {
    local svc=$1 what=$2
    if [[ -d /run/systemd/system ]]; then
        if systemctl cat "$svc.service" >/dev/null 2>&1; then
            systemctl disable --now "$svc.service" || die "cannot stop and disable $svc.service"
        fi
    else
        if command -v systemctl >/dev/null && [[ -e /lib/systemd/system/$svc.service || -e /usr/lib/systemd/system/$svc.service ]]; then
            systemctl disable "$svc.service" || die "cannot disable $svc.service"
        fi
        if [[ -x /etc/init.d/$svc ]] && /etc/init.d/"$svc" status >/dev/null 2>&1; then
            /etc/init.d/"$svc" stop || die "cannot stop $what: /etc/init.d/$svc stop"
        fi
    fi
    say "deps: $what is disabled and not running"
}

check_deps() {
    local p missing=()
    for p in "${DEPS_PKGS[@]}"; do pkg_installed "$p" || missing+=("$p"); done
    ((${#missing[@]} == 0)) || die "missing Debian packages: ${missing[*]}; run: lab.sh deps"
    command -v cargo >/dev/null || [[ -n ${REPMGR_NAT_DEB:-} || ${1:-} == scripts ]] ||
        die "cargo not found (needed to build repmgr-nat): install Rust, or set REPMGR_NAT_DEB"
}

# ============================================================================ lock
# One driver of the lab at a time: the tests, lab/bench and lab/demo hold LOCK for their
# whole session and run lab.sh with LAB_LOCKED=1; `up` and `down` run by hand take it
# for as long as they run (flock -o: nothing the lab starts inherits it).
LOCK=/run/repmgr-nat-lab.session.lock
locked() { # CMD ARGS...: lab.sh CMD ARGS under the lock, then exit with its status
    local rc=0
    LAB_LOCKED=1 flock -n -o -E 75 "$LOCK" "$0" "$@" || rc=$?
    ((rc != 75)) || die "the lab is in use (the tests, lab/bench or lab/demo hold $LOCK); wait for them to end"
    exit "$rc"
}

# ============================================================================ down
DOWN_LOG=/dev/null
cmd_down() {
    local purge=0
    while (($#)); do
        case $1 in
        --purge-logs) purge=1 ;;
        *) die "down: unknown option $1" ;;
        esac
        shift
    done
    local problems=() n ours=0
    [[ -d $LAB_DIR/logs ]] && DOWN_LOG=$LAB_DIR/logs/down.log
    [[ -e $RNAT_INSTALLED ]] && ours=1
    # 1. what the lab started, by pid file: the cron loop and repmgrd get TERM (waited for
    #    below, with everything else in the namespaces); PostgreSQL: pg_ctl stop -m immediate
    local pidf pid ns
    ha_thaw_all   # a proxy frozen by `lab.sh proxy-freeze` must hear TERM
    ha_kill
    patroni_kill_all   # before PostgreSQL: a Patroni still there would start it again
    for pidf in "$WATCH_PID" "$(watch_pid proxy2)" "$CRON_PID" "$(node_repmgrd_pid db1)" "$(node_repmgrd_pid db2)" \
        "$(node_repmgrd_pid db3)" "$(node_repmgrd_pid db4)"; do
        if pid=$(lab_pid "$pidf"); then
            kill -TERM "$pid" 2>/dev/null || true
            echo "down: kill -TERM $pid ($pidf)" >>"$DOWN_LOG"
        fi
        rm -f "$pidf"
    done
    local -a jobs=()
    for n in "${DB_NODES[@]}"; do
        [[ -f $(node_data "$n")/postmaster.pid ]] || continue
        # after a reboot the pid names some other process: pg_ctl must not signal it
        if from_before_boot "$(node_data "$n")/postmaster.pid"; then rm -f "$(node_data "$n")/postmaster.pid"; continue; fi
        # a postmaster frozen by `lab.sh freeze` must hear pg_ctl
        pid=$(postmaster_pid "$n")
        if [[ $pid =~ ^[0-9]+$ ]]; then kill -CONT "$pid" 2>/dev/null || true; fi
        # (a stale postmaster.pid makes pg_ctl fail; leftovers are killed below)
        ns=-
        ns_is_lab "$n" && ns=$n
        as postgres "$ns" "$PG_BIN/pg_ctl" -D "$(node_data "$n")" -m immediate -w -t 20 stop >>"$DOWN_LOG" 2>&1 &
        jobs+=($!)
    done
    recovered_stop
    ((${#jobs[@]})) && { wait "${jobs[@]}" || true; }
    # 2. anything still inside the lab's namespaces (all of it was started by the lab)
    ns_kill_all || problems+=("processes in the lab's namespaces (ip netns pids NS)")
    # 3. repmgr-nat's package, purged in the proxy's namespace (its removal tears down every
    #    instance it finds a config of: the second cluster's files stay until after it)
    uninstall_repmgr_nat || problems+=("dpkg --purge repmgr-nat (see $DOWN_LOG)")
    # 4. namespaces
    net_down || problems+=("namespaces")
    # 5. files the lab installed
    local f
    for f in "${MARKED_FILES[@]}" "$RNAT_CONFIG"; do
        if [[ -e $f ]] && has_marker "$f"; then rm -f -- "$f" || problems+=("$f"); fi
    done
    local left
    while read -r left; do [[ -z $left ]] || problems+=("$left"); done < <(proxy2_remove)
    while read -r left; do [[ -z $left ]] || problems+=("$left"); done < <(two_remove)
    while read -r left; do [[ -z $left ]] || problems+=("$left"); done < <(barman_server_remove "$BARMAN_SERVER_HOME" "$BARMAN_SERVER")
    # 6. keep the logs, then remove the lab directory
    local save=${LAB_SAVE_LOGS:-$LAB_LOGS_SAVE_DEFAULT}
    if ((purge)); then
        rm -rf -- "$LAB_LOGS_SAVE_DEFAULT"
        [[ -n ${LAB_SAVE_LOGS:-} ]] && rm -rf -- "$LAB_SAVE_LOGS"
    elif [[ -d $LAB_DIR/logs ]]; then
        rm -rf -- "$save" && mkdir -p "$save" || problems+=("saving logs to $save")
        cp -a "$LAB_DIR/logs/." "$save/" 2>/dev/null || true
        if [[ -f $EVENTS_LOG ]]; then cp -a "$EVENTS_LOG" "$save/" || true; fi
        for n in "${DB_NODES[@]}"; do
            for f in "$(node_pglog "$n")" "$(node_repmgrd_log "$n")" "$(node_conf "$n")" "$(patroni_log "$n")" "$(patroni_conf "$n")"; do
                if [[ -f $f ]]; then cp -a "$f" "$save/$n-$(basename "$f")" || true; fi
            done
        done
    fi
    if [[ -e $LAB_DIR ]]; then rm -rf -- "$LAB_DIR" || problems+=("$LAB_DIR"); fi
    # 7. verify
    for n in "${LAB_NAMESPACES[@]}"; do ns_is_lab "$n" && problems+=("namespace $n still exists"); done
    for f in "${MARKED_FILES[@]}" "$RNAT_CONFIG" "$PROXY2_CONFIG" "$TWO_CONFIG" "$TWO_SUDOERS" "$TWO_BARMAN_CONF"; do [[ -e $f ]] && has_marker "$f" && problems+=("$f still exists"); done
    for f in "$PROXY2_STATE_DIR" "$TWO_STATE_DIR"; do [[ -e $f/.repmgr-nat-lab ]] && problems+=("$f still exists"); done
    ((ours)) && dpkg_knows repmgr-nat && problems+=("the package repmgr-nat is still installed")
    if ((${#problems[@]})); then
        die "down could not clean up: ${problems[*]}"
    fi
    return 0
}

# ============================================================================ up
UP_DONE=0
up_cleanup() {
    local rc=$?
    ((UP_DONE)) && return 0
    trap - EXIT INT TERM
    failed_silently "$rc"
    echo >&2
    if [[ -n ${LAB_KEEP_ON_FAILURE:-} ]]; then
        say "up failed (exit $rc); LAB_KEEP_ON_FAILURE is set: the lab is left as it is (lab.sh down removes it)" >&2
        exit "$rc"
    fi
    say "up failed (exit $rc): taking the lab down; logs are saved in ${LAB_SAVE_LOGS:-$LAB_LOGS_SAVE_DEFAULT}" >&2
    PHASE_NAME=
    cmd_down || true
    exit "$rc"
}

cmd_up() {
    local mode=repmgr-nat cron=1 assist=1 proxies=1 clusters=1 manager=repmgr
    while (($#)); do
        case $1 in
        --manager) manager=${2:-}; shift ;;
        --manager=*) manager=${1#*=} ;;
        --proxies) proxies=${2:-}; shift ;;
        --proxies=*) proxies=${1#*=} ;;
        --clusters) clusters=${2:-}; shift ;;
        --clusters=*) clusters=${1#*=} ;;
        --no-assist) assist=0 ;;
        --handler) mode=${2:-}; shift ;;
        --handler=*) mode=${1#*=} ;;
        --no-cron) cron=0 ;;
        *) die "up: unknown option $1 (see lab.sh help)" ;;
        esac
        shift
    done
    [[ $mode == repmgr-nat || $mode == scripts ]] || die "up: --handler must be repmgr-nat or scripts, not '$mode'"
    [[ $proxies == 1 || $proxies == 2 ]] || die "up: --proxies must be 1 or 2, not '$proxies'"
    [[ $proxies == 1 || $mode == repmgr-nat ]] || die "up: two proxies need the repmgr-nat handler"
    [[ $clusters == 1 || $clusters == 2 ]] || die "up: --clusters must be 1 or 2, not '$clusters'"
    [[ $clusters == 1 || $mode == repmgr-nat ]] || die "up: two clusters need the repmgr-nat handler (its instances)"
    [[ $clusters == 1 || $proxies == 1 ]] || die "up: two clusters behind two proxies are not built yet: one of --clusters 2, --proxies 2"
    [[ $manager == repmgr || $manager == patroni ]] || die "up: --manager must be repmgr or patroni, not '$manager'"
    if [[ $manager == patroni ]]; then
        [[ $mode == repmgr-nat ]] || die "up: Patroni needs the repmgr-nat handler (its watch; the scripts need repmgr's events)"
        [[ $proxies == 1 ]] || die "up: Patroni behind two proxies is not built yet: one of --manager patroni, --proxies 2"
        [[ $clusters == 1 ]] || die "up: Patroni with a second cluster is not built yet: one of --manager patroni, --clusters 2"
    fi
    check_deps "$mode"
    UP_T0=$(now_ms)

    step "down (previous lab)" cmd_down
    step "preflight" preflight "$mode" "$manager"
    trap up_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    install -d -o root -g root -m 0755 "$LAB_DIR" "$LAB_DIR/logs" || die "cannot create $LAB_DIR"
    : >"$LAB_LOG"
    : >"$CRON_LOG"
    state_set HANDLER "$mode"
    state_set STARTED_MS "$UP_T0"
    state_set ASSIST "$assist"
    state_set CRON "$cron"
    state_set PROXIES "$proxies"
    state_set CLUSTERS "$clusters"
    state_set MANAGER "$manager"
    step "build lab/kit" build_kit
    [[ $mode == scripts ]] || step "build repmgr-nat's package" build_repmgr_nat
    step "network" net_up
    step "TLS: the lab's CA and the nodes' certificates" write_tls_certs
    step "handler: install + boot step" install_handler "$mode"
    if two_proxies; then step "proxies: conntrackd, keepalived" ha_start; fi
    step "barman config" barman_configure
    if [[ $manager == patroni ]]; then
        step "etcd (Patroni's DCS)" etcd_start
        step "db1: Patroni bootstraps it (initdb, start, users)" patroni_db1
        step "db2: Patroni makes it a replica (basebackup, synchronous standby)" patroni_db2
        if ((cron)); then step "barman cron loop" cron_start; fi
        # no events with Patroni: watch, as its unit runs it, routes to the leader, makes
        # barman's slots and starts receive-wal
        if ((assist)); then nudge_start; fi
        step "watch (the trigger with Patroni)" watch_start proxy
        if ((assist)); then step "barman: the first WAL file archived (bring-up assist)" barman_first_wal; fi
        step "wait: barman check all OK" barman_wait_ok 60
        nudge_stop
    else
        step "db1: initdb, start, users" db1_create
        step "db1: repmgr primary register" db1_register
        step "db2: clone, start, register" db2_clone
        step "repmgrd on db1, db2" repmgrd_start db1 db2
        if two_clusters; then
            step "db3, db4 (the second cluster): initdb, register, clone" two_create
            step "repmgrd on db3, db4" repmgrd_start db3 db4
        fi
        if ((cron)); then step "barman cron loop" cron_start; fi
        step "wait: barman check all OK" barman_wait_ok 60
    fi
    step "wait: app port reaches db1" wait_app_reaches "$DB1_IP"
    if two_proxies; then step "watch on both proxies, both can serve" watch_both; fi

    UP_DONE=1
    trap - EXIT INT TERM
    say "up: done in $(bc_div $(($(now_ms) - UP_T0))) s (manager $manager, handler $mode, cron $( ((cron)) && echo on || echo off)); \`lab.sh status\` shows it, \`lab.sh down\` removes it"
}

# Two proxies: watch runs on both all the time, as the packaged unit would, and both pass
# keepalived's check (repmgr-nat can-serve) before `up` ends.
watch_both() {
    local p
    for p in proxy proxy2; do watch_start "$p"; done
    for p in proxy proxy2; do
        wait_until 20 as postgres "$p" "$RNAT_BIN" can-serve ||
            die "repmgr-nat can-serve still fails in $p after 20 s: $(as postgres "$p" "$RNAT_BIN" can-serve 2>&1); look at $(watch_log "$p")"
    done
    sleep 2.5   # keepalived's rise 2 at interval 1: both back at full priority
    vip_held_once || die "the address is held by '$(vip_holders)' after both proxies can serve"
}

install_handler() { # MODE: the lab's own scripts, the handler, its boot step
    install_lab_bin "$1"
    if [[ $1 == scripts ]]; then
        install_scripts_handler
        scripts_boot
    else
        install_repmgr_nat
        repmgr_nat_boot
    fi
    local p
    for p in $(lab_proxies); do
        [[ $(ip netns exec "$p" sysctl -n net.ipv4.ip_forward) == 1 ]] ||
            die "after the boot step net.ipv4.ip_forward is not 1 in the $p namespace (the handler's boot step must set it); look at $LAB_LOG"
    done
}

# Refuse early (before anything is created) when a path the lab would write belongs to
# somebody else.
preflight() {
    local mode=$1 manager=$2 f
    for f in "$SUDOERS_LAB" "$BARMAN_CONF" "$PGPASS_POSTGRES" "$PGPASS_BARMAN"; do claim_path "$f"; done
    proxy2_preflight
    two_preflight
    if [[ $mode == scripts ]]; then
        claim_path "$SUDOERS_SCRIPTS"
        [[ -d $(seed_dir) ]] || die "the article's scripts are missing: $(seed_dir) does not exist (set SEED_SCRIPTS)"
    else
        ! dpkg_knows repmgr-nat ||
            die "the package repmgr-nat is installed on this machine; the lab installs its own and purges it at down: remove it first (dpkg --purge repmgr-nat)"
        for f in "$RNAT_CONFIG" "$RNAT_BIN" /etc/sudoers.d/repmgr-nat "$RNAT_STATE_DIR" /run/repmgr-nat; do
            [[ ! -e $f ]] || die "$f exists and no package owns it (repmgr-nat installed by hand?): the lab's package would overwrite it and its purge remove it; move it away and run up again"
        done
    fi
    if [[ -e $BARMAN_SERVER_HOME && ! -e $BARMAN_SERVER_HOME/.repmgr-nat-lab ]]; then
        die "$BARMAN_SERVER_HOME exists and was not made by the lab (no .repmgr-nat-lab inside): it holds somebody's barman data for '$BARMAN_SERVER'; move it away and run up again"
    fi
    [[ -e $LAB_DIR ]] && die "$LAB_DIR still exists after down; remove it"
    getent passwd postgres >/dev/null && getent passwd barman >/dev/null || die "the postgres or barman OS user is missing: run lab.sh deps"
    [[ $manager != patroni ]] || getent passwd etcd >/dev/null || die "the etcd OS user is missing: run lab.sh deps"
    return 0
}

app_reaches() { [[ $(cmd_psql proxy-app "select host(inet_server_addr())" 2>/dev/null) == "$1" ]]; }
wait_app_reaches() {
    wait_until 30 app_reaches "$1" ||
        die "a query through $PROXY_IP:$APP_PORT from the app namespace did not reach $1 within 30 s; check: lab.sh nat, $EVENTS_LOG"
}
