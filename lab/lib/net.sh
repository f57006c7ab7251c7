# shellcheck shell=bash
# Network namespaces: one bridge in its own namespace, one veth pair per host.

ns_exists() { [[ -e /run/netns/$1 ]]; }

# Is namespace NS one the lab made? It must carry the lab's interface or address (so that
# `down` never touches a namespace of the same name that somebody else created).
ns_is_lab() {
    local ns=$1
    ns_exists "$ns" || return 1
    if [[ $ns == "$NS_BRIDGE" ]]; then
        ip -n "$ns" -o link show 2>/dev/null | grep -q "$BRIDGE" && return 0
    else
        local ip addrs
        addrs=$(ip -n "$ns" -o addr show 2>/dev/null)
        for ip in $(ns_ips "$ns"); do
            grep -qF " $ip/24" <<<"$addrs" && return 0
        done
    fi
    # An empty namespace (interrupted `up` right after `ip netns add`) is ours only when the
    # lab's own record says so.
    [[ -f $LAB_DIR/netns.list ]] && grep -qx "$ns" "$LAB_DIR/netns.list" && return 0
    return 1
}

net_up() {
    local ns hosts nodes proxies
    read -r -a nodes <<<"$(lab_nodes)"
    read -r -a proxies <<<"$(lab_proxies)"
    hosts=("${nodes[@]}" "${proxies[@]}" app)
    if patroni_lab; then hosts+=(etcd); fi   # Patroni's DCS
    for ns in "${LAB_NAMESPACES[@]}"; do
        ns_exists "$ns" && die "network namespace '$ns' exists and is not the lab's (no $(ns_ip "$ns" || echo "$BRIDGE") in it): remove it yourself (ip netns del $ns) after checking what runs there (ip netns pids $ns)"
    done
    for ns in "${hosts[@]}" "$NS_BRIDGE"; do
        echo "$ns" >>"$LAB_DIR/netns.list"
        run ip netns add "$ns"
        run ip netns exec "$ns" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
        run ip -n "$ns" link set lo up
    done
    run ip -n "$NS_BRIDGE" link add "$BRIDGE" type bridge
    run ip -n "$NS_BRIDGE" link set "$BRIDGE" up
    for ns in "${hosts[@]}"; do
        run ip -n "$NS_BRIDGE" link add "rnlab-$ns" type veth peer name eth0 netns "$ns"
        run ip -n "$NS_BRIDGE" link set "rnlab-$ns" master "$BRIDGE" up
        run ip -n "$ns" addr add "$(ns_ip "$ns")/24" dev eth0
        run ip -n "$ns" link set eth0 up
    done
    # Prove the wiring: every host answers ARP for every other host on the bridge (no ping
    # binary needed; bash /dev/tcp to a closed port gets an RST, which proves reachability).
    # (with two proxies, each proxy's own address: the shared one comes with keepalived)
    local p out
    for p in $(lab_proxies); do
        for ns in "${nodes[@]}" app; do
            out=$(ip netns exec "$ns" timeout 3 bash -c "exec 3<>/dev/tcp/$(ns_ip "$p")/9" 2>&1 || true)
            if [[ $out != *refused* ]]; then
                die "namespace $ns cannot reach the proxy $(ns_ip "$p") over the bridge (expected 'connection refused' from port 9); check: ip -n $ns addr; ip -n $NS_BRIDGE link"
            fi
        done
    done
}

net_down() { # best effort; reports what it could not remove
    local ns rc=0
    for ns in "${LAB_NAMESPACES[@]}"; do
        ns_exists "$ns" || continue
        if ! ns_is_lab "$ns"; then
            warn "namespace $ns exists but is not the lab's: left alone"
            continue
        fi
        ip netns del "$ns" || { warn "ip netns del $ns failed"; rc=1; }
    done
    return $rc
}

# Kill every process still inside the lab's namespaces (everything there was started by the
# lab). TERM first, KILL after 3 s.
lab_pids() { local ns; for ns in "${LAB_NAMESPACES[@]}"; do ns_is_lab "$ns" || continue; ip netns pids "$ns" 2>/dev/null; done; }
ns_empty() { [[ -z $(lab_pids) ]]; }
ns_kill_all() {
    local sig pids
    for sig in TERM KILL; do
        pids=$(lab_pids | tr '\n' ' ')
        [[ -z ${pids// /} ]] && return 0
        echo "down: kill -$sig $pids (processes left in the lab's namespaces)" >>"$DOWN_LOG"
        # shellcheck disable=SC2086
        kill -"$sig" $pids 2>/dev/null
        wait_until 3 ns_empty && return 0
    done
    return 1
}
