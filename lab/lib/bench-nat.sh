# shellcheck shell=bash
# lab/bench: the NAT switch alone (on a running lab, each handler's own way), the window
# without a rule, the processes per switch, and how repmgr-nat's switch grows with nodes
# and application ports (in a throwaway namespace, the lab down). Sourced by lab/bench.

# One switch, each handler's way. scripts-*: the article's repmgr_iptables.sh twice, as
# its handler calls it (barman port with the flush, then the application port); rnat-*:
# `repmgr-nat route <id> --ports all`. *-sudo: as postgres through sudo, the way each
# handler runs it; *-root: as root directly.
NAT_MODES_scripts=(scripts-root scripts-sudo)
NAT_MODES_repmgr_nat=(rnat-sudo rnat-root)

# The switch loop, run by bash in the proxy namespace (as root or postgres): a warm-up
# switch to node 1 (not counted), then N switches alternating node 2 / node 1, printing
# each one's duration in microseconds. Args: MODE N SCRIPTS_DIR PROXY DB1 DB2 PG BARMAN APP OUT
# shellcheck disable=SC2016
NAT_LOOP='
mode=$1 n=$2 dir=$3 proxy=$4 ip1=$5 ip2=$6 pg=$7 barman=$8 app=$9 out=${10}
switch() { # node id, node address
    case $mode in
    scripts-root) "$dir/repmgr_iptables.sh" "$2" "$proxy" "$pg" "$barman" &&
        "$dir/repmgr_iptables.sh" "$2" "$proxy" "$pg" "$app" app ;;
    scripts-sudo) sudo -n "$dir/repmgr_iptables.sh" "$2" "$proxy" "$pg" "$barman" &&
        sudo -n "$dir/repmgr_iptables.sh" "$2" "$proxy" "$pg" "$app" app ;;
    rnat-sudo) sudo -n /usr/local/bin/repmgr-nat route "$1" --ports all >>"$out" ;;
    rnat-root) /usr/local/bin/repmgr-nat route "$1" --ports all >>"$out" ;;
    esac
}
switch 1 "$ip1" || exit 1
for ((i = 0; i < n; i++)); do
    if ((i % 2 == 0)); then id=2 ip=$ip2; else id=1 ip=$ip1; fi
    t0=${EPOCHREALTIME/./}
    switch "$id" "$ip" || exit 1
    t1=${EPOCHREALTIME/./}
    echo $((t1 - t0))
done
'

# in_proxy_as MODE CMD...: run CMD in the proxy namespace as the mode's user, with the
# clean environment a handler run has.
in_proxy_as() {
    local mode=$1; shift
    if [[ $mode == *-sudo ]]; then
        ip netns exec proxy runuser -u postgres -- env -i HOME=/var/lib/postgresql USER=postgres \
            PATH="$SYS_PATH" LC_ALL=C "$@" {BENCH_LOCK_FD}>&-
    else
        ip netns exec proxy env -i HOME=/root PATH="$SYS_PATH" LC_ALL=C "$@" {BENCH_LOCK_FD}>&-
    fi
}

nat_loop() { # MODE N TMPDIR > durations (µs)
    : >"$3/route.out"
    chown postgres "$3/route.out"
    in_proxy_as "$1" bash -c "$NAT_LOOP" nat-loop "$1" "$2" "$SCRIPTS_DIR" "$PROXY_IP" "$DB1_IP" "$DB2_IP" \
        "$PG_PORT" "$BARMAN_PORT" "$APP_PORT" "$3/route.out" 2>>"$3/stderr" || return 1
    if [[ $1 == rnat-* ]]; then
        # every counted switch must have changed the rules (the warm-up may not have)
        local changed
        changed=$(tail -n +2 "$3/route.out" | grep -cx changed || true)
        ((changed == $2)) || { echo "only $changed of $2 switches changed the rules" >>"$3/stderr"; return 1; }
    fi
}

# durations (µs, one a line) -> n median_us p90_us min_us max_us
stats_us() {
    sort -n "$1" | awk '
        { v[++n] = $1 }
        END {
            if (!n) { print "n=0"; exit }
            med = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
            k = int(0.9 * n); if (k < 0.9 * n) k++
            printf "n=%d median_us=%d p90_us=%d min_us=%d max_us=%d\n", n, med, v[k], v[1], v[n]
        }'
}

# Processes per switch, and where a switch's time goes: TRACED switches (alternating node
# 2 / node 1) under strace -f (seccomp-bpf: only the traced calls stop the process). From
# the trace: the programs run (successful execve), each direct child's run time (execve to
# exit), how long the parent took to notice a child had ended (exit to wait4 reaping it),
# and the rest (the parent's own work, and spawning). strace slows every process down a
# little: these are proportions, the medians above are the timings. Prints key=value lines.
TRACED=6
trace_switches() {
    local mode=$1 tmp=$2 k id ip
    # shellcheck disable=SC2054 # commas inside one strace argument
    local -a strace=(strace -f --seccomp-bpf -qq -ttt -e trace=execve,exit_group,wait4,clone,clone3,vfork,fork
        -e status=successful,unfinished)
    [[ $mode == *-sudo ]] && strace+=(-u postgres)   # root traces, sudo still gets its setuid
    local pre=()
    [[ $mode == *-sudo ]] && pre=(sudo -n)
    rm -f "$tmp"/trace.*
    for ((k = 0; k < TRACED; k++)); do
        id=$((2 - k % 2)) ip=$DB2_IP
        ((id == 1)) && ip=$DB1_IP
        case $mode in
        scripts-*)
            in_proxy_as root "${strace[@]}" -o "$tmp/trace.$k.a" "${pre[@]}" "$SCRIPTS_DIR/repmgr_iptables.sh" \
                "$ip" "$PROXY_IP" "$PG_PORT" "$BARMAN_PORT" >/dev/null 2>>"$tmp/stderr" &&
                in_proxy_as root "${strace[@]}" -o "$tmp/trace.$k.b" "${pre[@]}" "$SCRIPTS_DIR/repmgr_iptables.sh" \
                    "$ip" "$PROXY_IP" "$PG_PORT" "$APP_PORT" app >/dev/null 2>>"$tmp/stderr" || return 1
            ;;
        rnat-*)
            in_proxy_as root "${strace[@]}" -o "$tmp/trace.$k.a" "${pre[@]}" /usr/local/bin/repmgr-nat route "$id" --ports all \
                >/dev/null 2>>"$tmp/stderr" || return 1
            ;;
        esac
        cat "$tmp"/trace."$k".* | trace_breakdown
    done | awk '
        { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] += kv[2]; if (kv[1] ~ /^prog:/ && !(kv[1] in seen)) { seen[kv[1]] = 1; order[++n] = kv[1] } } }
        NR == 1 { progs = $0; sub(/.* programs=/, "", progs); sub(/ .*/, "", progs) }
        END {
            k = NR
            printf "execs=%d\nprograms=%s\n", v["execs"] / k, progs
            printf "traced_ms=%.1f\nchildren_ms=%.1f\nreap_wait_ms=%.1f\nown_ms=%.1f\n", v["total"] / k, v["children"] / k, v["reap"] / k, v["own"] / k
            for (i = 1; i <= n; i++) { name = order[i]; sub(/^prog:/, "", name); list = list (i > 1 ? "," : "") name ":" sprintf("%.1f", v[order[i]] / k) }
            printf "children_by_program_ms=%s\n", list
        }'
}

# One switch's strace -f -ttt output (several files concatenated when the switch ran
# several top-level commands) -> execs= programs= total= children= reap= own= prog:NAME=ms...
trace_breakdown() {
    awk '
        function delta(a, b) { return (b - a) * 1000 }
        {
            pid = $1; ts = $2
            if (index($0, "execve(\"") && $0 !~ /resumed>/) {
                execs++
                if (!(pid in start)) start[pid] = ts
                p = $0; sub(/.*execve\("/, "", p); sub(/".*/, "", p); sub(/.*\//, "", p)
                names = names (names == "" ? "" : ",") p
                if (p == "iptables") {   # which iptables: --flush or -A (the scripts run both)
                    a = $0; sub(/.*execve\("[^"]*", \[/, "", a); split(a, arg, "\", \"")
                    p = p "(" arg[4] ")"
                }
                prog[pid] = p
            }
            if (index($0, "exit_group(")) end[pid] = ts
            if ($0 ~ /(clone3?|vfork|fork)[( ]/ && $0 ~ /= [0-9]+$/) { c = $NF; if (c + 0 > 0) parent[c] = pid }
            # strace stamps a call when it begins: a blocking wait4 returns as the child
            # ends (no delay); a polling one (WNOHANG) reaps when it is made
            if (index($0, "wait4") && $0 ~ /= [0-9]+$/) { c = $NF; if (c + 0 > 0) reaped[c] = index($0, "WNOHANG") ? ts : "" }
        }
        END {
            for (p in start) if (!(p in parent)) { top[p] = 1; total += delta(start[p], end[p]) }
            for (p in start) {
                if (!((p in parent) && (parent[p] in top))) continue
                run = delta(start[p], end[p]); children += run
                by[prog[p]] += run
                if ((p in reaped) && reaped[p] != "") reap += delta(end[p], reaped[p])
            }
            printf "execs=%d programs=%s total=%.3f children=%.3f reap=%.3f own=%.3f", execs, names, total, children, reap, total - children - reap
            for (n in by) printf " prog:%s=%.3f", n, by[n]
            printf "\n"
        }'
}

# repmgr-nat logs how long each step of a switch took; from the timing pass: the median and
# every value seen (ms:count) of the rule change (iptables-restore) and of the cut (conntrack).
step_times() {
    awk '
        / INFO: nat: .* -> node / { v = $(NF - 1); sub(/^\(/, "", v); r[++nr] = v + 0; rc[v + 0]++ }
        / INFO: nat: .*connections proxied/ { v = $(NF - 1); sub(/^\(/, "", v); c[++nc] = v + 0; cc[v + 0]++ }
        function med(a, n,   i, j, t) {
            for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
            return n ? a[int((n + 1) / 2)] : -1
        }
        function hist(h,   k, out, ks, n, i, j, t) {
            n = 0; for (k in h) ks[++n] = k + 0
            for (i = 2; i <= n; i++) { t = ks[i]; for (j = i - 1; j >= 1 && ks[j] > t; j--) ks[j + 1] = ks[j]; ks[j + 1] = t }
            for (i = 1; i <= n; i++) out = out (i > 1 ? "," : "") ks[i] ":" h[ks[i]]
            return out
        }
        END {
            printf "step_rules_median_ms=%s\nstep_rules_values=%s\n", med(r, nr), hist(rc)
            printf "step_cut_median_ms=%s\nstep_cut_values=%s\n", med(c, nc), hist(cc)
        }' "$1"
}

# The window without a rule: a tight connect loop through the application port, from the
# app namespace, while N switches run.
window_pass() { # MODE N TMPDIR -> the connect loop's summary line + the switches' durations
    local mode=$1 n=$2 tmp=$3 pid
    # 1 ms between attempts: with none, PostgreSQL's postmaster falls behind the bursts of
    # connections, its listen queue overflows and connects time out (measured: 8 in 4 s
    # with no switching at all); with 1 ms, none, at ~700 connects per second.
    ip netns exec app /usr/bin/python3 "$LAB_ROOT/lib/bench-connect.py" "$PROXY_IP" "$APP_PORT" 1 \
        {BENCH_LOCK_FD}>&- >"$tmp/connect.out" 2>>"$tmp/stderr" &
    pid=$!
    sleep 0.5
    nat_loop "$mode" "$n" "$tmp" >"$tmp/loaded.times" || { kill -TERM "$pid"; wait "$pid"; return 1; }
    sleep 0.3
    kill -TERM "$pid"
    wait "$pid" || true
    cat "$tmp/connect.out"
}

# nat_bench HANDLER: on the running lab (handler HANDLER; rules at db1, both nodes up).
nat_bench() {
    local h=$1 mode d m
    d=$OUT/nat
    mkdir -p "$d"
    local -n modes=NAT_MODES_${h//-/_}
    for mode in "${modes[@]}"; do
        m=$d/$mode.metrics
        : >"$m"
        local tmp=$d/$mode.tmp
        rm -rf "$tmp"
        install -d -o postgres -g postgres -m 0700 "$tmp"
        # 1. timing alone
        if nat_loop "$mode" "$BENCH_SWITCHES" "$tmp" >"$d/$mode.times"; then
            stats_us "$d/$mode.times" | tr ' ' '\n' >>"$m"
            [[ $mode == rnat-* ]] && step_times "$tmp/stderr" >>"$m"
        else
            echo "failed=switch loop (see $tmp/stderr)" >>"$m"
            continue
        fi
        # 2. the window without a rule, under a tight connect loop
        local w
        if w=$(window_pass "$mode" "$BENCH_SWITCHES" "$tmp"); then
            echo "$w" | tr ' ' '\n' | grep '=' | sed 's/^/connect_/' >>"$m"
            stats_us "$tmp/loaded.times" | tr ' ' '\n' | sed 's/^/loaded_/' >>"$m"
        else
            echo "window_failed=yes" >>"$m"
        fi
        # 3. processes per switch, and where the time goes
        trace_switches "$mode" "$tmp" >>"$m" || echo "execs=?" >>"$m"
    done
}

# ---------------------------------------------------------------------------------- scaling
SCALE_NODES=(2 8 32)
SCALE_PORTS=(1 4 16)
SCALE_NS=rnlab-bench
SCALE_PROXY=198.51.100.200   # addresses nothing uses (the lab is down; it never uses these)
SCALE_NODE_BASE=100          # node k: 198.51.100.(100 + k)
SCALE_SAVED=

# shellcheck disable=SC2016
SCALE_LOOP='
bin=$1 nodes=$2 n=$3 out=$4
"$bin" route 1 --ports all >>"$out" || exit 1
for ((i = 0; i < n; i++)); do
    id=$(( (i + 1) % nodes + 1 ))
    t0=${EPOCHREALTIME/./}
    "$bin" route "$id" --ports all >>"$out" || exit 1
    t1=${EPOCHREALTIME/./}
    echo $((t1 - t0))
done
'

scale_config() { # NODES PORTS STATE_DIR
    local k ports=()
    for ((k = 0; k < $2; k++)); do ports+=($((APP_PORT + k))); done
    {
        echo "# lab/bench: written for a scaling run; removed (or the previous file put back) afterwards"
        printf '[proxy]\naddress = "%s"\n' "$SCALE_PROXY"
        printf '[ports]\npostgres = %s\nbarman = %s\napp = [%s]\n' "$PG_PORT" "$BARMAN_PORT" "$(IFS=,; echo "${ports[*]}")"
        echo "[nodes]"
        for ((k = 1; k <= $1; k++)); do printf '%d = "198.51.100.%d"\n' "$k" $((SCALE_NODE_BASE + k)); done
        printf '[postgres]\nuser = "repmgr_nat"\ndbname = "postgres"\n'
        printf '[barman]\nserver = "main_backup"\nslot = "barman"\n'
        printf '[state]\ndir = "%s"\n' "$3"
    } >"$RNAT_CONFIG.bench"
    chmod 0644 "$RNAT_CONFIG.bench"
    mv -f "$RNAT_CONFIG.bench" "$RNAT_CONFIG"
}

scale_cleanup() {
    [[ -e /run/netns/$SCALE_NS && -f $OUT/scaling/.netns-ours ]] && ip netns del "$SCALE_NS"
    rm -f "$OUT/scaling/.netns-ours"
    if [[ -f $OUT/scaling/.config-ours ]]; then
        rm -f "$RNAT_CONFIG" "$OUT/scaling/.config-ours"
        [[ -n $SCALE_SAVED ]] && cp -a "$SCALE_SAVED" "$RNAT_CONFIG"
    fi
    [[ -n ${SCALE_STATE:-} ]] && rm -rf -- "$SCALE_STATE"
    SCALE_STATE=
}

# scale_bench: repmgr-nat route as root in a throwaway namespace, for every combination of
# SCALE_NODES x SCALE_PORTS; /etc/repmgr-nat.toml is ours only for the run.
scale_bench() {
    local d=$OUT/scaling nodes ports bin=$REPO_ROOT/target/release/repmgr-nat
    mkdir -p "$d"
    [[ -e /run/netns/$SCALE_NS ]] && { echo "failed=namespace $SCALE_NS exists and is not ours" >"$d/failed"; return 1; }
    if [[ -e $RNAT_CONFIG ]]; then
        SCALE_SAVED=$d/repmgr-nat.toml.saved
        cp -a "$RNAT_CONFIG" "$SCALE_SAVED"
    fi
    SCALE_STATE=$(mktemp -d /run/repmgr-nat-bench.XXXXXX)
    chmod 0755 "$SCALE_STATE"
    touch "$d/.config-ours"
    for nodes in "${SCALE_NODES[@]}"; do
        for ports in "${SCALE_PORTS[@]}"; do
            local tag=n${nodes}-p${ports} m
            m=$d/$tag.metrics
            : >"$m"
            scale_config "$nodes" "$ports" "$SCALE_STATE"
            rm -f "$SCALE_STATE/route"
            [[ -e /run/netns/$SCALE_NS ]] && ip netns del "$SCALE_NS"
            ip netns add "$SCALE_NS" && touch "$d/.netns-ours" && ip -n "$SCALE_NS" link set lo up || return 1
            : >"$d/$tag.out"
            if ip netns exec "$SCALE_NS" env -i PATH="$SYS_PATH" LC_ALL=C bash -c "$SCALE_LOOP" scale "$bin" "$nodes" \
                "$BENCH_SWITCHES" "$d/$tag.out" {BENCH_LOCK_FD}>&- >"$d/$tag.times" 2>>"$d/stderr" &&
                (($(tail -n +2 "$d/$tag.out" | grep -cx changed) == BENCH_SWITCHES)); then
                stats_us "$d/$tag.times" | tr ' ' '\n' >>"$m"
            else
                echo "failed=yes" >>"$m"
                continue
            fi
            echo "rules=$(ip netns exec "$SCALE_NS" iptables-save -t nat | grep -c '^-A repmgr_')" >>"$m"
            ip netns exec "$SCALE_NS" env -i PATH="$SYS_PATH" LC_ALL=C strace -f -qq -e trace=execve -e status=successful \
                -o "$d/$tag.strace" "$bin" route 2 --ports all {BENCH_LOCK_FD}>&- >/dev/null 2>>"$d/stderr" || true
            echo "execs=$(grep -c 'execve(' "$d/$tag.strace" || true)" >>"$m"
        done
    done
    scale_cleanup
}
