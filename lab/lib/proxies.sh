# shellcheck shell=bash
# Two proxy hosts (`up --proxies 2`): proxy (own address PROXY_A_IP) and proxy2
# (PROXY_B_IP) share PROXY_IP, moved by keepalived (VRRP); conntrackd copies the
# application's connections between them. Both run keepalived and conntrackd from the
# package's own examples (/usr/share/doc/repmgr-nat/examples), rewritten to the lab's
# addresses and paths, so that the tests prove what users copy. proxy keeps barman;
# proxy2's repmgr-nat has no [barman] and opens only the application port.

PROXY_A_IP=198.51.100.4                      # proxy's own address (two proxies)
PROXY_B_IP=198.51.100.5                      # proxy2's
PROXY2_ETC=/etc/netns/proxy2                 # `ip netns exec proxy2` mounts its files over /etc
PROXY2_CONFIG=$PROXY2_ETC/repmgr-nat.toml    # what repmgr-nat in proxy2 reads as /etc/repmgr-nat.toml
PROXY2_STATE_DIR=/var/lib/repmgr-nat-proxy2  # marker: a file named .repmgr-nat-lab inside
PROXY2_MADE_NETNS=$LAB_DIR/made-etc-netns    # the lab created /etc/netns: down removes it
EXAMPLES=/usr/share/doc/repmgr-nat/examples  # where the package puts keepalived.conf & co.
NOTIFY=$EXAMPLES/repmgr-nat-conntrackd-notify

two_proxies() { [[ $(state_get PROXIES) == 2 ]]; }
lab_proxies() { if two_proxies; then echo proxy proxy2; else echo proxy; fi; }
check_proxy() {
    [[ $1 == proxy ]] || { [[ $1 == proxy2 ]] && two_proxies; } ||
        die "unknown proxy '$1' (expected $(lab_proxies | sed 's/ / or /'))"
}
proxy_own() { case $1 in proxy) echo "$PROXY_A_IP" ;; proxy2) echo "$PROXY_B_IP" ;; esac; }
proxy_peer() { case $1 in proxy) echo proxy2 ;; proxy2) echo proxy ;; esac; }
ha_dir() { echo "$LAB_DIR/ha-$1"; }           # a proxy's keepalived and conntrackd files
ha_pidfiles() { local d; d=$(ha_dir "$1"); echo "$d/keepalived.lab.pid $d/conntrackd.lab.pid"; }

# Where repmgr's events, the tables and the faults reach: every proxy's own address and
# the shared one (`lab.sh partition` cuts a node off from all of them).
proxy_sources() {
    echo "$PROXY_IP"
    two_proxies && echo "$PROXY_A_IP $PROXY_B_IP"
    return 0
}

# ---- proxy2's repmgr-nat: its own config, state and watch directories ------------------
proxy2_preflight() {
    claim_path "$PROXY2_CONFIG"
    if [[ -e $PROXY2_STATE_DIR && ! -e $PROXY2_STATE_DIR/.repmgr-nat-lab ]]; then
        die "$PROXY2_STATE_DIR exists and was not made by the lab (no .repmgr-nat-lab inside); move it away and run up again"
    fi
}

proxy2_install() {
    if [[ ! -d /etc/netns ]]; then
        install -d -o root -g root -m 0755 /etc/netns && : >"$PROXY2_MADE_NETNS" || die "cannot create /etc/netns"
    fi
    install -d -o root -g root -m 0755 "$PROXY2_ETC" || die "cannot create $PROXY2_ETC"
    # the state directory must be root's and written by root only (the package makes
    # /var/lib/repmgr-nat so for proxy)
    install -d -o root -g root -m 0755 "$PROXY2_STATE_DIR" || die "cannot create $PROXY2_STATE_DIR"
    : >"$PROXY2_STATE_DIR/.repmgr-nat-lab"
    run install -d -o postgres -g postgres -m 0755 "$(watch_dir proxy2)"
    rnat_config "$PROXY_B_IP" 0 "$PROXY2_STATE_DIR" "$(watch_dir proxy2)" |
        write_marked "$PROXY2_CONFIG" 0644 root:root '#'
}

proxy2_remove() { # down: what proxy2_install made; the problems, one a line
    if [[ -e $PROXY2_CONFIG ]] && has_marker "$PROXY2_CONFIG"; then rm -f -- "$PROXY2_CONFIG" || echo "$PROXY2_CONFIG"; fi
    if [[ -d $PROXY2_ETC ]]; then rmdir -- "$PROXY2_ETC" 2>/dev/null || echo "$PROXY2_ETC (not empty)"; fi
    if [[ -e $PROXY2_MADE_NETNS && -d /etc/netns ]]; then rmdir -- /etc/netns 2>/dev/null || echo "/etc/netns (not empty)"; fi
    if [[ -e $PROXY2_STATE_DIR/.repmgr-nat-lab ]]; then rm -rf -- "$PROXY2_STATE_DIR" || echo "$PROXY2_STATE_DIR"; fi
    return 0
}

# ---- keepalived and conntrackd, from the package's examples ------------------------------
# The example is proxy A's with the article's addresses: 10.8.3.1 the shared one, 10.8.3.2
# this proxy's own, 10.8.3.3 the other's; paths of /etc, /var/run, /var/lock, /var/log
# become the lab's.
ha_subst() { # PROXY: sed arguments
    local d; d=$(ha_dir "$1")
    printf '%s\n' -e "s#10\.8\.3\.1\b#$PROXY_IP#g" -e "s#10\.8\.3\.2\b#$(proxy_own "$1")#g" \
        -e "s#10\.8\.3\.3\b#$(proxy_own "$(proxy_peer "$1")")#g" \
        -e "s#/etc/keepalived/repmgr-nat-conntrackd-notify#$NOTIFY#g" \
        -e "s#/etc/conntrackd/conntrackd\.conf#$d/conntrackd.conf#g" \
        -e "s#/var/log/conntrackd\.log#$LAB_DIR/logs/conntrackd-$1.log#g" \
        -e "s#/var/lock/conntrackd\.lock#$d/conntrackd.lock#g" \
        -e "s#/var/run/conntrackd\.ctl#$d/conntrackd.ctl#g"
}

ha_write() { # PROXY: its keepalived.conf and conntrackd.conf from the examples
    local p=$1 d f
    d=$(ha_dir "$p")
    install -d -o root -g root -m 0755 "$d" || die "cannot create $d"
    local -a subst
    mapfile -t subst < <(ha_subst "$p")
    for f in keepalived.conf conntrackd.conf; do
        [[ -f $EXAMPLES/$f ]] || die "the package did not install $EXAMPLES/$f"
        sed "${subst[@]}" "$EXAMPLES/$f" >"$d/$f" || die "cannot write $d/$f"
        if grep -nE '10\.8\.[0-9]+\.[0-9]+|/etc/|/var/(run|lock|log)/' "$d/$f" | grep -v "$NOTIFY" | grep -v '^[0-9]*:\s*#'; then
            die "$d/$f still names an example address or path after the rewrite (lines above)"
        fi
    done
    [[ -x $NOTIFY ]] || die "the package did not install $NOTIFY executable"
}

ha_start() { # every proxy: conntrackd, then keepalived (whose notify scripts call conntrackd)
    local p d
    command -v keepalived >/dev/null && command -v conntrackd >/dev/null ||
        die "keepalived or conntrackd is missing: run lab.sh deps"
    for p in $(lab_proxies); do
        d=$(ha_dir "$p")
        ha_write "$p"
        # as the README's set-up says: a thawed holder's old entries must not reset sessions
        run ip netns exec "$p" sysctl -q -w net.netfilter.nf_conntrack_tcp_be_liberal=1
        ip netns exec "$p" conntrackd -C "$d/conntrackd.conf" </dev/null >>"$LAB_DIR/logs/conntrackd-$p.out" 2>&1 &
        echo $! >"$d/conntrackd.lab.pid"
        wait_until 5 test -S "$d/conntrackd.ctl" || die "conntrackd did not start in $p; look at $LAB_DIR/logs/conntrackd-$p.out and conntrackd-$p.log"
        # -n: in the foreground (its pid is ours); -P: VRRP only; -l -D: detailed log to stderr
        ip netns exec "$p" keepalived -n -P -l -D -f "$d/keepalived.conf" -p "$d/keepalived.pid" -r "$d/vrrp.pid" \
            </dev/null >>"$LAB_DIR/logs/keepalived-$p.log" 2>&1 &
        echo $! >"$d/keepalived.lab.pid"
    done
    for p in $(lab_proxies); do
        wait_until 5 pid_alive "$(ha_dir "$p")/keepalived.lab.pid" && sleep 0.2 && pid_alive "$(ha_dir "$p")/keepalived.lab.pid" ||
            die "keepalived did not start in $p; look at $LAB_DIR/logs/keepalived-$p.log"
    done
    wait_until 10 vip_held_once || die "no proxy took $PROXY_IP within 10 s (held by: $(vip_holders)); look at $LAB_DIR/logs/keepalived-*.log"
    PHASE_NAME+=" ($PROXY_IP on $(vip_holders))"
}

ha_kill() { # down: TERM to keepalived and conntrackd (waited for with the rest)
    local p pidf pid
    for p in proxy proxy2; do
        for pidf in $(ha_pidfiles "$p"); do
            if pid=$(lab_pid "$pidf"); then
                kill -TERM "$pid" 2>/dev/null || true
                echo "down: kill -TERM $pid ($pidf)" >>"$DOWN_LOG"
            fi
            rm -f "$pidf"
        done
    done
}

# ---- who holds the address, faults of a proxy ----------------------------------------------
vip_holders() { # the proxies whose eth0 carries PROXY_IP (both during a freeze, none between)
    local p out=()
    for p in proxy proxy2; do
        ns_is_lab "$p" || continue
        ip -n "$p" -o -4 addr show dev eth0 2>/dev/null | grep -qF " $PROXY_IP/" && out+=("$p")
    done
    echo "${out[*]}"
}
vip_held_once() { local h; h=$(vip_holders); [[ -n $h && $h != *' '* ]]; }

cmd_vip() { # one line: the holder of PROXY_IP, both (a frozen holder keeps it), or "none"
    local h; h=$(vip_holders)
    echo "${h:-none}"
}

# proxy-down|proxy-up PROXY: its link; proxy-freeze|proxy-thaw PROXY: SIGSTOP|SIGCONT to
# every process in its namespace (the kernel still answers: ARP, the NAT of what it forwards)
cmd_proxy_fault() {
    (($# == 2)) || die "usage: lab.sh proxy-down|proxy-up|proxy-freeze|proxy-thaw PROXY"
    local what=$1 p=$2 pids
    check_proxy "$p"
    case $what in
    proxy-down) ip -n "$p" link set eth0 down || die "cannot set $p's eth0 down"; say "$p: eth0 down" ;;
    proxy-up) ip -n "$p" link set eth0 up || die "cannot set $p's eth0 up"; say "$p: eth0 up" ;;
    proxy-freeze | proxy-thaw)
        local sig=STOP
        [[ $what == proxy-thaw ]] && sig=CONT
        pids=$(ip netns pids "$p" | tr '\n' ' ')
        # shellcheck disable=SC2086
        [[ -z ${pids// /} ]] || kill -"$sig" $pids || die "kill -$sig failed in $p"
        say "$p: SIG$sig to ${pids:-nothing}"
        ;;
    esac
}

ha_thaw_all() { # down: a frozen namespace must hear TERM
    local p pids
    for p in proxy proxy2; do
        ns_is_lab "$p" || continue
        pids=$(ip netns pids "$p" 2>/dev/null | tr '\n' ' ')
        # shellcheck disable=SC2086
        [[ -z ${pids// /} ]] || kill -CONT $pids 2>/dev/null || true
    done
}
