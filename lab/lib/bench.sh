# shellcheck shell=bash
# lab/bench: the failover scenarios, each on a freshly built lab, and what is measured in
# them. Sourced by lab/bench after lib/common.sh (addresses, paths, now_ms).
#
# Every scenario writes key=value lines to $OUT/<handler>/<scenario>/metrics, keeps the
# probe output (probe.txt), the handler runs (events.txt) and the lab's logs (lab-logs/).

SCENARIOS=(failover promote switchover duplicate)
BARMAN_BOUND_S=75      # barman must be all OK within this (one cron period + 15 s)
SETTLE_TIMEOUT_S=300   # a scenario's handler runs must end within this after T0
PROBE_MS=50

# lab.sh, with its output in the bench log; the session lock is not handed on to what the
# lab starts (PostgreSQL, repmgrd and the cron loop would otherwise hold it after we end).
lab() { "$LAB" "$@" {BENCH_LOCK_FD}>&- >>"$BENCH_LOG" 2>&1; }
lab_out() { "$LAB" "$@" {BENCH_LOCK_FD}>&- 2>>"$BENCH_LOG"; }

metric() { printf '%s=%s\n' "$1" "$2" >>"$SC_DIR/metrics"; }
metric_get() { # FILE KEY -> value (empty when absent)
    [[ -f $1 ]] || return 0
    sed -n "s/^$2=//p" "$1" | tail -n 1
}

sleep_until() { # epoch ms
    local d=$(($1 - $(now_ms)))
    ((d > 0)) && sleep "$((d / 1000)).$(printf '%03d' $((d % 1000)))"
    return 0
}

# The scripts' outage depends on when, within the minute, the primary goes away: their
# handler waits for barman's next cron run (second 0). Every scenario of both handlers puts
# T0 at the same second of a minute (BENCH_PHASE, default 30: the mean wait), so runs and
# handlers compare. Prints the planned T0 (epoch ms), at least 3 s from now.
plan_t0() {
    local now
    now=$(now_ms)
    if [[ $BENCH_PHASE == off ]]; then
        echo $((now + 3000))
        return
    fi
    local t=$((now - now % 60000 + BENCH_PHASE * 1000))
    while ((t < now + 3000)); do t=$((t + 60000)); done
    echo "$t"
}

probe_pid=
start_probe() {
    ip netns exec app "$PROBE_BIN" watch --conninfo "$APP_CONNINFO" --interval-ms "$PROBE_MS" \
        {BENCH_LOCK_FD}>&- >"$SC_DIR/probe.txt" 2>&1 &
    probe_pid=$!
}
stop_probe() {
    [[ -n $probe_pid ]] || return 0
    kill -TERM "$probe_pid" 2>/dev/null || true
    wait "$probe_pid" 2>/dev/null || true
    probe_pid=
}

# Until no handler run is going on and the application port answered for the last 2 s
# (or SETTLE_TIMEOUT_S after T0).
settle() {
    local t0=$1 deadline=$(($1 + SETTLE_TIMEOUT_S * 1000)) running last_err last_line now
    while :; do
        now=$(now_ms)
        running=$(lab_out events --summary | awk -v t="$t0" '$1 >= t && $7 == "running"' | wc -l)
        last_err=$(awk '$2 == "err" { t = $1 } END { print (t == "" ? 0 : t) }' "$SC_DIR/probe.txt")
        last_line=$(tail -n 1 "$SC_DIR/probe.txt" | cut -d' ' -f1)
        if ((running == 0)) && [[ $last_line =~ ^[0-9]+$ ]] && ((now - last_err > 2000 && now - last_line < 500)); then
            return 0
        fi
        ((now > deadline)) && { metric settled "no (after ${SETTLE_TIMEOUT_S} s)"; return 0; }
        sleep 0.25
    done
}

# What the application saw, from the probe's lines, relative to T0:
#   first_err_ms  first refusal at/after T0 (or the one running at T0)
#   first_ok_ms   the first answer after it
#   back_ms       the first answer after the last refusal: the outage's end (0: none)
#   refused_ms    total time the port refused at/after T0 (each failed probe counts until
#                 the next probe), interruptions: separate runs of refusals
probe_metrics() {
    awk -v t0="$1" '
        $2 != "ok" && $2 != "err" { next }
        { n++; ts[n] = $1; ok[n] = ($2 == "ok"); srv[n] = $3 }
        END {
            fe = 0; le = 0; runs = 0; refused = 0; inrun = 0
            for (i = 1; i <= n; i++) {
                if (ok[i]) { inrun = 0; continue }
                nxt = (i < n) ? ts[i + 1] : ts[i]
                if (nxt < t0) continue
                if (!fe) fe = i
                le = i
                from = ts[i] < t0 ? t0 : ts[i]
                refused += nxt - from
                if (!inrun) runs++
                inrun = 1
            }
            fo = 0; back = 0; recovered = 1
            if (fe) {
                for (i = fe; i <= n; i++) if (ok[i]) { fo = i; break }
                back = -1; recovered = 0
                for (i = le; i <= n; i++) if (ok[i]) { back = ts[i] - t0; recovered = 1; break }
            }
            last = ""
            for (i = n; i >= 1; i--) if (ok[i]) { last = srv[i]; break }
            printf "probes=%d\n", n
            printf "first_err_ms=%s\n", fe ? (ts[fe] < t0 ? 0 : ts[fe] - t0) : "-"
            printf "first_ok_ms=%s\n", fo ? ts[fo] - t0 : (fe ? -1 : "-")
            printf "back_ms=%d\nrecovered=%s\nrefused_ms=%d\ninterruptions=%d\nanswered_at_end=%s\n",
                back, recovered ? "yes" : "no", refused, runs, last
        }' "$SC_DIR/probe.txt"
}

# The handler runs begun at/after T0: events.txt and metrics (how long repmgr waited).
event_metrics() {
    local t0=$1
    lab_out events --summary | awk -v t="$t0" '$1 >= t' >"$SC_DIR/events.txt" || true
    awk -v t0="$t0" '
        {
            ev = $4; sub(/^event=/, "", ev); node = $3; sub(/^node=/, "", node)
            ex = $7; sub(/^exit=/, "", ex); ms = $8; sub(/^ms=/, "", ms)
            if (ms == "") { ms = -1; ex = "running" }
            list = list (list == "" ? "" : ",") ev ":" node ":" ex ":" ms ":" ($1 - t0)
            if (ms + 0 > max + 0) { max = ms + 0; maxev = ev }
            if (ev == "standby_promote" && promote == "") promote = $1 - t0
        }
        END {
            printf "events=%s\n", list
            printf "max_wait_ms=%d\nmax_wait_event=%s\n", max, maxev
            printf "promotion_ms=%s\n", promote == "" ? "-" : promote
        }' "$SC_DIR/events.txt"
}

# barman continuity: `barman check` all OK, and its WAL archive without a gap (across the
# timeline switch when there is one: the 00000002.history file), within BARMAN_BOUND_S.
barman_continuity() {
    local switch=$1 t0 deadline out ok=no wal=no wal_detail=
    t0=$(now_ms)
    deadline=$((t0 + BARMAN_BOUND_S * 1000))
    while :; do
        if [[ $ok == no ]] && out=$(lab_out barman check "$BARMAN_SERVER" 2>&1) && [[ $out != *FAILED* ]]; then
            ok=yes
            metric barman_ok_s "$(bc_div $(($(now_ms) - t0)))"
        fi
        if [[ $wal == no ]]; then
            wal_detail=$(wal_gapless "$switch") && wal=yes
        fi
        [[ $ok == yes && $wal == yes ]] && break
        (($(now_ms) > deadline)) && break
        sleep 1
    done
    [[ $ok == yes ]] || printf '%s\n' "$out" >"$SC_DIR/barman-check.txt"
    metric barman_ok "$ok"
    metric wal_gapless "$wal"
    metric wal_detail "$wal_detail"
}

# barman's archive: every timeline's segments contiguous; with a switch, timeline 1 reaches
# the switch's segment and timeline 2 starts at or before it (as tests/lab.rs checks).
wal_gapless() {
    local switch=$1 dir=$BARMAN_HOME/wals f name tl seg
    local -a tl1=() tl2=() other=()
    for f in "$dir"/*/*; do
        name=${f##*/}
        [[ $name =~ ^[0-9A-F]{24}$ ]] || continue
        tl=$((16#${name:0:8})) seg=$((16#${name:8:8} * 256 + 16#${name:16:8}))
        case $tl in 1) tl1+=("$seg") ;; 2) tl2+=("$seg") ;; *) other+=("$name") ;; esac
    done
    mapfile -t tl1 < <(printf '%s\n' "${tl1[@]}" | sed '/^$/d' | sort -n)
    mapfile -t tl2 < <(printf '%s\n' "${tl2[@]}" | sed '/^$/d' | sort -n)
    local desc="tl1 ${tl1[0]:-none}..${tl1[-1]:-none} (${#tl1[@]})"
    contiguous() { local prev='' s; for s in "$@"; do [[ -n $prev ]] && ((s != prev && s != prev + 1)) && return 1; prev=$s; done; return 0; }
    ((${#tl1[@]})) && contiguous "${tl1[@]}" || { echo "$desc: gap or empty"; return 1; }
    ((${#other[@]} == 0)) || { echo "$desc; unexpected timelines: ${other[*]}"; return 1; }
    if ((switch)); then
        local hist=$dir/00000002.history lsn hi lo sw
        [[ -f $hist ]] || { echo "$desc; no 00000002.history"; return 1; }
        lsn=$(awk 'NF >= 2 { l = $2 } END { print l }' "$hist")
        [[ $lsn =~ ^([0-9A-F]+)/([0-9A-F]+)$ ]] || { echo "$desc; bad history: $(head -c 200 "$hist")"; return 1; }
        hi=$((16#${BASH_REMATCH[1]})) lo=$((16#${BASH_REMATCH[2]}))
        sw=$((((hi << 32) | lo) / (16 << 20)))
        desc+=", tl2 ${tl2[0]:-none}..${tl2[-1]:-none} (${#tl2[@]}), switch in segment $sw"
        ((${#tl2[@]})) && contiguous "${tl2[@]}" || { echo "$desc: timeline 2 gap or empty"; return 1; }
        ((tl1[-1] + 1 >= sw)) || { echo "$desc: timeline 1 ends before the switch"; return 1; }
        ((tl2[0] <= sw)) || { echo "$desc: timeline 2 starts after the switch"; return 1; }
    fi
    echo "$desc"
}

# run_scenario HANDLER SCENARIO: one scenario on a fresh lab. Runs in a subshell of its own
# (lab/bench records a failure and goes on with the next one).
run_scenario() {
    local h=$1 s=$2 t0 planned rc=0 c0
    SC_DIR=$OUT/$h/$s
    rm -rf "$SC_DIR"
    mkdir -p "$SC_DIR"
    export LAB_SAVE_LOGS=$SC_DIR/lab-logs
    trap 'stop_probe; lab down || true' EXIT
    echo "+++ $h $s" >>"$BENCH_LOG"

    lab up --handler "$h" || { metric failed "lab up"; return 1; }
    eval "$(lab_out env | grep -E '^(APP_CONNINFO|PROBE_BIN|BARMAN_HOME|SCRIPTS_DIR)=')"
    if [[ $s == promote ]]; then
        # repmgrd could promote by itself: the operator's promote must be the only one
        lab repmgrd stop db1 && lab repmgrd stop db2 || { metric failed "repmgrd stop"; return 1; }
    fi
    start_probe
    planned=$(plan_t0)
    case $s in
    failover)
        sleep_until "$planned"
        t0=$(now_ms)
        lab stop db1 || { metric failed "stop db1"; return 1; }
        lab wait-primary db2 60 || metric failed "db2 not promoted within 60 s"
        lab wait-event repmgrd_failover_promote --node 2 --since-ms "$t0" --timeout "$SETTLE_TIMEOUT_S" ||
            metric failed "no repmgrd_failover_promote"
        ;;
    promote)
        sleep_until $((planned - 1000))
        lab stop db1 || { metric failed "stop db1"; return 1; }
        sleep_until "$planned"
        t0=$(now_ms)
        lab repmgr db2 standby promote || rc=$?
        metric command_ms $(($(now_ms) - t0))
        metric command_exit "$rc"
        ;;
    switchover)
        sleep_until "$planned"
        t0=$(now_ms)
        lab switchover db2 || rc=$?
        metric command_ms $(($(now_ms) - t0))
        metric command_exit "$rc"
        lab wait-event standby_switchover --node 2 --since-ms "$t0" --timeout 60 || metric failed "no standby_switchover"
        lab wait-event repmgrd_standby_reconnect --node 1 --since-ms "$t0" --timeout 60 ||
            metric note "no repmgrd_standby_reconnect from db1 within 60 s"
        ;;
    duplicate)
        sleep_until "$planned"
        t0=$(now_ms)
        # repmgrd's second promote event for the node that already is the primary
        lab event db1 1 standby_promote 1 || rc=$?
        metric command_ms $(($(now_ms) - t0))
        metric command_exit "$rc"
        ;;
    esac
    metric t0 "$t0"
    metric t0_second "$(date -d "@$((t0 / 1000))" +%S)"
    settle "$t0"
    sleep 1
    stop_probe
    probe_metrics "$t0" >>"$SC_DIR/metrics"
    event_metrics "$t0" >>"$SC_DIR/metrics"
    c0=0
    [[ $s == duplicate ]] || c0=1
    barman_continuity "$c0"
    if [[ $s == duplicate && $BENCH_NAT == 1 ]]; then
        # the last scenario's lab is healthy (both nodes up): the NAT switches run on it
        nat_bench "$h"
    fi
    trap - EXIT
    lab down || { metric failed "lab down"; return 1; }
    return 0
}
