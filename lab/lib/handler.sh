# shellcheck shell=bash
# The event handler on the proxy: repmgr-nat (installed as its README says) or the article's
# scripts (rewritten for the lab's addresses into a folder under the lab directory).

SCRIPTS_DIR=$LAB_DIR/scripts               # root-owned copies of the article's scripts
SCRIPTS_STATE=$LAB_DIR/scripts-state       # repmgr_master lives here (written by postgres)

# install_lab_script DEST TEMPLATE VAR...: $LAB_DIR/DEST, a root-owned script: lib/TEMPLATE
# with the given shell variables defined at the top.
install_lab_script() {
    local dest=$LAB_DIR/$1 template=$2; shift 2
    {
        echo '#!/bin/bash'
        echo "# $MARKER"
        declare -p "$@"
        cat "$LAB_ROOT/lib/$template"
    } >"$dest" || die "cannot write $dest"
    chown root:root "$dest" && chmod 0755 "$dest" || die "cannot set owner/mode of $dest"
    bash -n "$dest" || die "syntax error in generated $dest"
}

# Scripts of the lab itself: event crossing, ssh stand-in, cron loop; sudoers for postgres.
install_lab_bin() {
    local HANDLER_MODE=$1
    install -d -o root -g root -m 0755 "$LAB_DIR/bin" "$LAB_DIR/sshbin"
    local -a HANDLER_CMD=("$RNAT_BIN" event) HANDLER_ENV=()
    [[ $HANDLER_MODE == scripts ]] && HANDLER_CMD=("$SCRIPTS_DIR/repmgr_handler.sh")
    [[ -n ${LAB_HANDLER_ENV:-} ]] && read -r -a HANDLER_ENV <<<"$LAB_HANDLER_ENV"
    local -a HANDLER_NS
    read -r -a HANDLER_NS <<<"$(lab_proxies)"
    install_lab_script bin/lab-event lab-event.sh HANDLER_MODE HANDLER_CMD HANDLER_ENV HANDLER_NS EVENTS_LOG SYS_PATH

    local LAB_SSHBIN=$LAB_DIR/sshbin
    local -A NODE_NS=([$DB1_IP]=db1 [$DB2_IP]=db2 [db1]=db1 [db2]=db2)
    local SSH_LOG=$LAB_DIR/logs/ssh.log
    install_lab_script bin/lab-ssh lab-ssh.sh NODE_NS LAB_SSHBIN SYS_PATH SSH_LOG
    install_lab_script bin/lab-cron cron-loop.sh CRON_PID SYS_PATH
    install_lab_script sshbin/ssh ssh-standin.sh LAB_DIR

    install -d -o root -g root -m 0700 "$LAB_DIR/tmp"
    : >"$EVENTS_LOG" && chmod 0644 "$EVENTS_LOG"
    local tmp
    tmp=$(mktemp) || die "mktemp failed"
    cat >"$tmp" <<EOF
# $MARKER
# repmgr's event_notification_command on the database nodes crosses to the proxy as root
# (stands in for ssh to the backup host); lab-ssh is the lab's ssh stand-in for switchover.
postgres ALL = (root) NOPASSWD: $LAB_DIR/bin/lab-event, $LAB_DIR/bin/lab-ssh
EOF
    visudo -cqf "$tmp" >/dev/null || { rm -f "$tmp"; die "the lab's sudoers file does not pass visudo -cf"; }
    write_marked "$SUDOERS_LAB" 0440 root:root '#' < <(tail -n +2 "$tmp")
    rm -f "$tmp"
}

# ---- handler: the article's scripts -------------------------------------------------------
seed_dir() { echo "${SEED_SCRIPTS:-$REPO_ROOT/../shared/seed-scripts}"; }

# The article's three scripts, rewritten for the lab into $SCRIPTS_DIR (never into the repo).
write_article_scripts() {
    local src f
    src=$(seed_dir)
    for f in repmgr_handler.sh repmgr_iptables.sh repmgr_iptables_chains.sh pg_sudoers; do
        [[ -f $src/$f ]] || die "the article's scripts are missing: $src/$f not found (set SEED_SCRIPTS to the folder holding repmgr_handler.sh, repmgr_iptables.sh, repmgr_iptables_chains.sh and pg_sudoers)"
    done
    install -d -o root -g root -m 0755 "$SCRIPTS_DIR"
    install -d -o postgres -g postgres -m 0755 "$SCRIPTS_STATE"
    for f in repmgr_handler.sh repmgr_iptables.sh repmgr_iptables_chains.sh; do
        sed "${ARTICLE_SUBST[@]}" "$src/$f" >"$SCRIPTS_DIR/$f" || die "cannot rewrite $src/$f into $SCRIPTS_DIR"
        chmod 0755 "$SCRIPTS_DIR/$f"
        if grep -qE '10\.8\.[0-9]+\.[0-9]+|/usr/local/bin/repmgr_' "$SCRIPTS_DIR/$f"; then
            die "$SCRIPTS_DIR/$f still names an article address or path after the rewrite"
        fi
    done
}

# Addresses and paths rewritten for the lab; nothing else changes.
ARTICLE_SUBST=(
    -e "s#10\.8\.1\.1#$DB1_IP#g" -e "s#10\.8\.2\.1#$DB2_IP#g" -e "s#10\.8\.3\.1#$PROXY_IP#g"
    -e "s#/usr/local/bin/repmgr_master#$SCRIPTS_STATE/repmgr_master#g"
    -e "s#/usr/local/bin/repmgr_#$SCRIPTS_DIR/repmgr_#g"
)

install_scripts_handler() {
    write_article_scripts
    local tmp
    tmp=$(mktemp) || die "mktemp failed"
    { echo "# $MARKER"; echo "# the article's pg_sudoers, paths rewritten for the lab"; sed "${ARTICLE_SUBST[@]}" "$(seed_dir)/pg_sudoers"; } >"$tmp"
    visudo -cqf "$tmp" >/dev/null || { rm -f "$tmp"; die "the rewritten pg_sudoers does not pass visudo -cf ($(seed_dir)/pg_sudoers)"; }
    write_marked "$SUDOERS_SCRIPTS" 0440 root:root '#' < <(tail -n +2 "$tmp")
    rm -f "$tmp"
}

# Bring-up assist for the scripts (only during `up`): on a fresh cluster the article's handler
# waits 90 s in `switch-wal --archive` at primary_register, because the slot it creates
# reserves no WAL and nothing restarts receive-wal until cron's next minute. The lab creates
# the slot reserving WAL first (as the article's `barman receive-wal --create-slot` would), and
# fires the cron job once as soon as the handler waits for the WAL file, as if the minute had
# just struck. `up --no-assist` shows the unassisted behaviour.
scripts_assist_start() {
    run node_psql db1 postgres "select pg_create_physical_replication_slot('$BARMAN_SLOT', true)"
    {
        wait_until 30 grep -q "out Waiting for the WAL file" "$EVENTS_LOG"
        echo "$(date +%FT%T.%3N) bring-up assist: barman -q cron (the handler waits for a WAL file)"
        exec ip netns exec proxy runuser -u barman -- env -i HOME=/var/lib/barman PATH="$SYS_PATH" LANG=C.UTF-8 \
            /usr/bin/barman -q cron
    } </dev/null >>"$CRON_LOG" 2>&1 &
}

scripts_boot() { # the article's @reboot step, as root on the proxy
    HINT=$LAB_LOG
    run ip netns exec proxy "$SCRIPTS_DIR/repmgr_iptables_chains.sh"
}

# ---- handler: repmgr-nat, installed from its Debian package as its README says -------------
build_repmgr_nat() { # RNAT_DEB: REPMGR_NAT_DEB, or what packaging/deb builds
    if [[ -n ${REPMGR_NAT_DEB:-} ]]; then
        [[ -f $REPMGR_NAT_DEB ]] || die "REPMGR_NAT_DEB=$REPMGR_NAT_DEB is not a file"
        RNAT_DEB=$REPMGR_NAT_DEB
        return 0
    fi
    command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) or set REPMGR_NAT_DEB to a built package"
    RNAT_DEB=$("$REPO_ROOT/packaging/deb" 2>>"$LAB_LOG" | tail -n 1) || die "packaging/deb failed; look at $LAB_LOG"
    [[ -f $RNAT_DEB ]] || die "packaging/deb printed no package ($RNAT_DEB); look at $LAB_LOG"
}

# `dpkg -i` of the package, then what an administrator edits: /etc/repmgr-nat.toml (a
# conffile: the purge at down removes it). The packaged sudoers file already names postgres
# and main_backup, as the lab does. With two proxies, proxy's config names its own address
# and proxy2 gets one of its own (proxies.sh).
install_repmgr_nat() {
    HINT=$LAB_LOG
    touch "$RNAT_INSTALLED"   # first: down purges an interrupted install too
    # --no-triggers: the package's own maintainer scripts run as always; man-db's index
    # update (3 s at each install and purge, in every test's lab) is left pending
    run dpkg --no-triggers -i "$RNAT_DEB"
    state_set DEB "$RNAT_DEB"
    local own=
    two_proxies && own=$PROXY_A_IP
    { echo "# $MARKER"; rnat_config "$own" 1 "$RNAT_STATE_DIR" "$WATCH_DIR"; } >"$RNAT_CONFIG" || die "cannot write $RNAT_CONFIG"
    # what the watch unit's RuntimeDirectory= gives it: a directory of repmgr's OS user
    run install -d -o postgres -g postgres -m 0755 "$WATCH_DIR"
    if two_proxies; then proxy2_install; fi
    if two_clusters; then two_install; fi
}

# rnat_config OWN_ADDRESS BARMAN STATE_DIR WATCH_DIR [INSTANCE]: a proxy's /etc/repmgr-nat.toml,
# without the marker line (the caller's); OWN_ADDRESS "" for none, BARMAN 0 for a proxy
# without barman (no [barman], no ports.barman). INSTANCE two: the second cluster's
# (`up --clusters 2`): db3 and db4 behind TWO_BARMAN_PORT and TWO_APP_PORT, barman server
# two, chains repmgr_two_*, a metrics address of its own.
rnat_config() {
    local own=$1 barman=$2 state=$3 watch=$4 instance=${5:-} app=$APP_PORT n
    local barman_port=$BARMAN_PORT server=$BARMAN_SERVER
    local -a members=("${NODES[@]}")
    if [[ $instance == two ]]; then
        app=$TWO_APP_PORT barman_port=$TWO_BARMAN_PORT server=$TWO_BARMAN_SERVER
        members=("${TWO_NODES[@]}")
    fi
    echo "[proxy]"
    echo "address = \"$PROXY_IP\""
    [[ -z $own ]] || echo "own_address = \"$own\""
    echo "[ports]"
    echo "postgres = $PG_PORT"
    ((barman == 0)) || echo "barman = $barman_port"
    echo "app = $app"
    echo "[nodes]"
    for n in "${members[@]}"; do echo "$(node_id "$n") = \"$(node_ip "$n")\""; done
    cat <<EOF
[postgres]
user = "repmgr_nat"
dbname = "postgres"
sslmode = "verify-full"
sslrootcert = "$TLS_DIR/ca.crt"
channel_binding = "require"
connect_timeout = 2
EOF
    ((barman == 0)) || cat <<EOF
[barman]
server = "$server"
slot = "$BARMAN_SLOT"
archive_timeout = 30
EOF
    [[ -z $instance ]] || cat <<EOF
[nat]
dnat_chain = "repmgr_${instance}_dnat"
snat_chain = "repmgr_${instance}_snat"
hold_chain = "repmgr_${instance}_hold"
EOF
    cat <<EOF
[state]
dir = "$state"
[watch]
dir = "$watch"
EOF
    [[ $instance != two ]] || echo "metrics = \"$TWO_METRICS\""
}

# down: `dpkg --purge`, in the proxy's namespace, where its prerm tears the chains down (in
# an empty one of its own when the proxy's is gone: never in this machine's own tables).
uninstall_repmgr_nat() {
    [[ -e $RNAT_INSTALLED ]] || return 0
    local -a ns=(unshare --net)
    ns_is_lab proxy && ns=(ip netns exec proxy)
    "${ns[@]}" env -i PATH="$SYS_PATH" dpkg --no-triggers --purge repmgr-nat >>"$DOWN_LOG" 2>&1 || return 1
    rm -f "$RNAT_INSTALLED"
}

# ---- repmgr-nat watch, as the packaged unit runs it, in a proxy's namespace ---------------
watch_pid() { if [[ ${1:-proxy} == proxy2 ]]; then echo "$LAB_DIR/watch2.pid"; else echo "$WATCH_PID"; fi; }
watch_log() { if [[ ${1:-proxy} == proxy2 ]]; then echo "$LAB_DIR/logs/watch2.log"; else echo "$WATCH_LOG"; fi; }
watch_dir() { if [[ ${1:-proxy} == proxy2 ]]; then echo "$LAB_DIR/watch2"; else echo "$WATCH_DIR"; fi; }

watch_start() { # [PROXY]
    local p=${1:-proxy} pidf log
    pidf=$(watch_pid "$p") log=$(watch_log "$p")
    pid_alive "$pidf" && return 0
    [[ $(state_get HANDLER) == repmgr-nat ]] || die "watch: the lab runs the article's scripts, not repmgr-nat"
    local -a extra=() exec=()
    [[ -n ${LAB_HANDLER_ENV:-} ]] && read -r -a extra <<<"$LAB_HANDLER_ENV"
    # the user, group and command line of the packaged unit (systemd does not run here)
    local unit=/usr/lib/systemd/system/repmgr-nat-watch.service user group home
    user=$(sed -n 's/^User=//p' "$unit") group=$(sed -n 's/^Group=//p' "$unit")
    read -r -a exec <<<"$(sed -n 's/^ExecStart=//p' "$unit")"
    [[ -n $user && -n $group && ${#exec[@]} -gt 0 ]] || die "cannot read User=, Group= and ExecStart= in $unit"
    home=$(getent passwd "$user" | cut -d: -f6)
    # ip netns exec and setpriv exec: the pid is repmgr-nat's own
    ip netns exec "$p" setpriv --reuid="$user" --regid="$group" --init-groups -- \
        env -i HOME="$home" USER="$user" LOGNAME="$user" PATH="$SYS_PATH" LANG=C.UTF-8 \
        ${extra[@]+"${extra[@]}"} "${exec[@]}" </dev/null >>"$log" 2>&1 &
    echo $! >"$pidf"
    # its own report: the directory keeps an earlier watch's (RuntimeDirectoryPreserve), so
    # the file being there says nothing
    wait_until 5 grep -q "\"pid\":$!," "$(watch_dir "$p")/watch.json" ||
        die "watch wrote no report within 5 s in $p; look at $log"
}

repmgr_nat_boot() { # the boot step, as packaging/repmgr-nat-setup.service runs it: as root on each proxy
    HINT=$LAB_LOG
    local p
    for p in $(lab_proxies); do
        run ip netns exec "$p" env -i PATH="$SYS_PATH" "$RNAT_BIN" setup
    done
}

