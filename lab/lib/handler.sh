# shellcheck shell=bash
# The event handler on the proxy: repmgr-nat (installed as its README says) or the article's
# scripts (rewritten for the lab's addresses into a folder under the lab directory).

SCRIPTS_DIR=$LAB_DIR/scripts               # root-owned copies of the article's scripts
SCRIPTS_STATE=$LAB_DIR/scripts-state       # repmgr_master lives here (written by postgres)

# install_lab_script NAME TEMPLATE VAR... : root-owned script in $LAB_DIR/bin with the given
# shell variables defined at the top.
install_lab_script() {
    local name=$1 template=$2; shift 2
    local dest=$LAB_DIR/bin/$name
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
    local mode=$1
    install -d -o root -g root -m 0755 "$LAB_DIR/bin" "$LAB_DIR/sshbin"
    local HANDLER_MODE=$mode
    local -a HANDLER_CMD HANDLER_ENV=()
    if [[ $mode == scripts ]]; then
        HANDLER_CMD=("$SCRIPTS_DIR/repmgr_handler.sh")
    else
        HANDLER_CMD=("$RNAT_BIN" event)
    fi
    [[ -n ${LAB_HANDLER_ENV:-} ]] && read -r -a HANDLER_ENV <<<"$LAB_HANDLER_ENV"
    install_lab_script lab-event lab-event.sh HANDLER_MODE HANDLER_CMD HANDLER_ENV EVENTS_LOG SYS_PATH

    local LAB_SSHBIN=$LAB_DIR/sshbin
    local -A NODE_NS=([$DB1_IP]=db1 [$DB2_IP]=db2 [db1]=db1 [db2]=db2)
    local SSH_LOG=$LAB_DIR/logs/ssh.log
    install_lab_script lab-ssh lab-ssh.sh NODE_NS LAB_SSHBIN SYS_PATH SSH_LOG
    install_lab_script lab-cron cron-loop.sh CRON_PID SYS_PATH
    {
        echo '#!/bin/bash'
        echo "# $MARKER"
        declare -p LAB_DIR
        cat "$LAB_ROOT/lib/ssh-standin.sh"
    } >"$LAB_DIR/sshbin/ssh" && chmod 0755 "$LAB_DIR/sshbin/ssh" || die "cannot write $LAB_DIR/sshbin/ssh"

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
    ip netns exec proxy bash -c '
        for _ in $(seq 600); do
            grep -q "out Waiting for the WAL file" "$1" && break
            sleep 0.05
        done
        echo "$(date +%FT%T.%3N) bring-up assist: barman -q cron (the handler waits for a WAL file)"
        exec runuser -u barman -- env -i HOME=/var/lib/barman PATH="$2" LANG=C.UTF-8 /usr/bin/barman -q cron' \
        assist "$EVENTS_LOG" "$SYS_PATH" </dev/null >>"$CRON_LOG" 2>&1 &
}

scripts_boot() { # the article's @reboot step, as root on the proxy
    HINT=$LAB_LOG
    run ip netns exec proxy "$SCRIPTS_DIR/repmgr_iptables_chains.sh"
}

# ---- handler: repmgr-nat, installed the way its README tells a user -------------------------
record_installed() { echo "$1 $2" >>"$INSTALLED_LIST"; }   # PATH SHA256|dir

# A product path may be overwritten only when the lab installed it (recorded, same content).
claim_product_path() {
    local p=$1
    [[ -e $p ]] || return 0
    die "$p exists and was not installed by the lab; the lab installs repmgr-nat itself and removes it at down: move $p away (or uninstall repmgr-nat) and run up again"
}

build_repmgr_nat() {
    if [[ -n ${REPMGR_NAT_BIN:-} ]]; then
        [[ -x $REPMGR_NAT_BIN ]] || die "REPMGR_NAT_BIN=$REPMGR_NAT_BIN is not an executable file"
        RNAT_SRC_BIN=$REPMGR_NAT_BIN
        return 0
    fi
    command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) or set REPMGR_NAT_BIN to a built repmgr-nat"
    HINT=$LAB_LOG
    run cargo build --release --manifest-path "$REPO_ROOT/Cargo.toml" -p repmgr-nat
    RNAT_SRC_BIN=$REPO_ROOT/target/release/repmgr-nat
    [[ -x $RNAT_SRC_BIN ]] || die "cargo build succeeded but $RNAT_SRC_BIN is missing"
}

install_repmgr_nat() {
    local f
    for f in "$RNAT_BIN" "$RNAT_SUDOERS" "$RNAT_STATE_DIR"; do claim_product_path "$f"; done
    claim_path "$RNAT_CONFIG"
    HINT=$LAB_LOG
    run install -m 0755 "$RNAT_SRC_BIN" "$RNAT_BIN"
    record_installed "$RNAT_BIN" "$(sha256sum <"$RNAT_BIN" | cut -d' ' -f1)"
    write_marked "$RNAT_CONFIG" 0644 root:root '#' <<EOF
[proxy]
address = "$PROXY_IP"
[ports]
postgres = $PG_PORT
barman = $BARMAN_PORT
app = $APP_PORT
[nodes]
1 = "$DB1_IP"
2 = "$DB2_IP"
[postgres]
user = "repmgr_nat"
dbname = "postgres"
sslmode = "verify-full"
sslrootcert = "$TLS_DIR/ca.crt"
channel_binding = "require"
connect_timeout = 2
[barman]
server = "$BARMAN_SERVER"
slot = "$BARMAN_SLOT"
archive_timeout = 30
[state]
dir = "$RNAT_STATE_DIR"
[watch]
dir = "$WATCH_DIR"
EOF
    if [[ -f $REPO_ROOT/sudoers.d/repmgr-nat ]]; then
        run visudo -cf "$REPO_ROOT/sudoers.d/repmgr-nat"
        run install -m 0440 "$REPO_ROOT/sudoers.d/repmgr-nat" "$RNAT_SUDOERS"
        record_installed "$RNAT_SUDOERS" "$(sha256sum <"$RNAT_SUDOERS" | cut -d' ' -f1)"
        RNAT_SUDOERS_NOTE=
    else
        RNAT_SUDOERS_NOTE="sudoers.d/repmgr-nat is not in the repository yet: NOT installed, repmgr-nat's sudo calls will fail"
        warn "$RNAT_SUDOERS_NOTE"
    fi
    run install -d -m 0755 "$RNAT_STATE_DIR"
    record_installed "$RNAT_STATE_DIR" dir
    # what the watch unit's RuntimeDirectory= gives it: a directory of repmgr's OS user
    run install -d -o postgres -g postgres -m 0755 "$WATCH_DIR"
}

# ---- repmgr-nat watch, as the unit runs it: as postgres, in the proxy namespace ------------
watch_running() { [[ -s $WATCH_PID ]] && kill -0 "$(cat "$WATCH_PID")" 2>/dev/null; }

watch_start() {
    watch_running && return 0
    [[ $(state_get HANDLER) == repmgr-nat ]] || die "watch: the lab runs the article's scripts, not repmgr-nat"
    local -a extra=()
    [[ -n ${LAB_HANDLER_ENV:-} ]] && read -r -a extra <<<"$LAB_HANDLER_ENV"
    # ip netns exec and setpriv exec: the pid is repmgr-nat's own
    ip netns exec proxy setpriv --reuid=postgres --regid=postgres --init-groups -- \
        env -i HOME=/var/lib/postgresql USER=postgres LOGNAME=postgres PATH="$SYS_PATH" LANG=C.UTF-8 \
        ${extra[@]+"${extra[@]}"} "$RNAT_BIN" watch </dev/null >>"$WATCH_LOG" 2>&1 &
    echo $! >"$WATCH_PID"
    wait_until 5 "watch's first pass ($WATCH_LOG)" test -s "$WATCH_DIR/watch.json"
}

# watch_stop [SIGNAL]: TERM (the unit's stop) by default; KILL for a crash.
watch_stop() {
    local sig=${1:-TERM} pid
    watch_running || { rm -f "$WATCH_PID"; return 0; }
    pid=$(cat "$WATCH_PID")
    kill -"$sig" "$pid"
    wait_until 10 "watch (pid $pid) to end" bash -c "! kill -0 $pid 2>/dev/null"
    rm -f "$WATCH_PID"
}

repmgr_nat_boot() { # the boot step, as packaging/repmgr-nat-setup.service runs it: as root on the proxy
    HINT=$LAB_LOG
    run ip netns exec proxy env -i PATH="$SYS_PATH" "$RNAT_BIN" setup
}

# Remove what the lab installed of repmgr-nat (only files recorded with the same content).
uninstall_repmgr_nat() {
    [[ -f $INSTALLED_LIST ]] || return 0
    local p sum rc=0
    while read -r p sum; do
        [[ -e $p ]] || continue
        if [[ $sum == dir ]]; then
            rm -rf -- "$p" || { warn "cannot remove $p"; rc=1; }
        elif [[ $(sha256sum <"$p" | cut -d' ' -f1) == "$sum" ]]; then
            rm -f -- "$p" || { warn "cannot remove $p"; rc=1; }
        else
            warn "$p changed since the lab installed it: left in place"
            rc=1
        fi
    done <"$INSTALLED_LIST"
    rm -f "$INSTALLED_LIST"
    return $rc
}
