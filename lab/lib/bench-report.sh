# shellcheck shell=bash
# lab/bench: the report (markdown) from the metrics files under $OUT. Sourced by lab/bench.

declare -A SCENARIO_TITLE=(
    [failover]="automatic failover (db1 stopped, repmgrd promotes db2)"
    [promote]="manual \`repmgr standby promote\` on db2 (repmgrd off, db1 stopped 1 s before)"
    [switchover]="\`repmgr standby switchover\` to db2"
    [duplicate]="duplicate promote event (\`standby_promote\` for the running primary db1)"
)
declare -A NAT_TITLE=(
    [scripts-root]="scripts: \`repmgr_iptables.sh\` x2, as root"
    [scripts-sudo]="scripts: the same through \`sudo\` as postgres (as their handler runs it)"
    [rnat-sudo]="repmgr-nat: \`sudo -n repmgr-nat route <id> --ports all\` as postgres (as its handler runs it)"
    [rnat-root]="repmgr-nat: \`repmgr-nat route <id> --ports all\` as root"
)

num() { [[ $1 =~ ^-?[0-9]+(\.[0-9]+)?$ ]]; }
sec() { # ms -> "1.23 s"
    num "${1:-}" || { echo "${1:--}"; return; }
    awk -v v="$1" 'BEGIN { printf "%.2f s", v / 1000 }'
}
msu() { # µs -> "12.3 ms"
    num "${1:-}" || { echo "${1:--}"; return; }
    awk -v v="$1" 'BEGIN { printf "%.1f ms", v / 1000 }'
}
ratio() { # A B -> A/B
    num "${1:-}" && num "${2:-}" || { echo "-"; return; }
    awk -v a="$1" -v b="$2" 'BEGIN { if (b <= 0) print "-"; else printf "%.3f", a / b }'
}
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; } # A <= B

M() { metric_get "$OUT/$1/$2/metrics" "$3"; }     # HANDLER SCENARIO KEY
N() { metric_get "$OUT/nat/$1.metrics" "$2"; }    # MODE KEY

# A scenario's cell: the value, or why there is none.
cell() { # HANDLER SCENARIO TEXT
    local failed
    failed=$(M "$1" "$2" failed)
    if [[ ! -f $OUT/$1/$2/metrics ]]; then echo "not run"
    elif [[ -n $failed && -z $(M "$1" "$2" probes) ]]; then echo "failed: $failed"
    else echo "$3"; fi
}

TARGETS=()   # "target|measured|met or missed"
TARGET_SCOPE=   # the metrics file that must exist for target() to count (not run: no target)
target() { [[ -f $TARGET_SCOPE ]] && TARGETS+=("$1|$2|$3"); return 0; }

scenario_rows() {
    local s=$1 hs=scripts hr=repmgr-nat
    local title=${SCENARIO_TITLE[$s]}
    TARGET_SCOPE=$OUT/$hr/$s/metrics
    # promotion
    if [[ $s != duplicate ]]; then
        echo "| $title | promotion: repmgr's \`standby_promote\` event began | $(cell $hs "$s" "$(sec "$(M $hs "$s" promotion_ms)")") | $(cell $hr "$s" "$(sec "$(M $hr "$s" promotion_ms)")") | | |"
        title=
    fi
    # application back
    local bs br t='' verdict
    bs=$(M $hs "$s" back_ms) br=$(M $hr "$s" back_ms)
    if [[ $s != duplicate ]]; then
        local p
        p=$(M $hr "$s" promotion_ms)
        if num "$br" && num "$p" && ((br >= 0)); then
            if le "$br" $((p + 1000)); then verdict=met; else verdict=missed; fi
            t="<= promotion + 1 s = $(sec $((p + 1000))): **$verdict**"
            target "application outage <= promotion + 1 s: $s" "back after $(sec "$br"), promotion $(sec "$p")" "$verdict"
        else
            t="<= promotion + 1 s: **missed** (no measurement)"
            target "application outage <= promotion + 1 s: $s" "no measurement" missed
        fi
    fi
    echo "| $title | application answers again: first answer after the last refusal | $(cell $hs "$s" "$(backtxt "$bs")") | $(cell $hr "$s" "$(backtxt "$br")") | $(ratio "$br" "$bs") | $t |"
    local fs fr
    fs=$(M $hs "$s" first_ok_ms) fr=$(M $hr "$s" first_ok_ms)
    echo "| | first answer after the first refusal | $(cell $hs "$s" "$(sec "$fs")") | $(cell $hr "$s" "$(sec "$fr")") | | |"
    # refused in total
    local rs rr
    rs=$(M $hs "$s" refused_ms) rr=$(M $hr "$s" refused_ms)
    t=
    if [[ $s == duplicate ]]; then
        if [[ $rr == 0 && -n $(M $hr "$s" probes) ]]; then verdict=met; else verdict=missed; fi
        t="0 s: **$verdict**"
        target "duplicate promote event: 0 s outage" "refused for $(sec "${rr:-?}") ($(M $hr "$s" interruptions) interruptions)" "$verdict"
    fi
    echo "| | application port refused in total (interruptions) | $(cell $hs "$s" "$(sec "$rs") ($(M $hs "$s" interruptions))") | $(cell $hr "$s" "$(sec "$rr") ($(M $hr "$s" interruptions))") | $(ratio "$rr" "$rs") | $t |"
    # repmgr waited
    local ws wr
    ws=$(M $hs "$s" max_wait_ms) wr=$(M $hr "$s" max_wait_ms)
    if num "$wr" && ((wr >= 0)) && [[ -n $(M $hr "$s" events) ]]; then
        if ((wr <= 2000)); then verdict=met; else verdict=missed; fi
        target "repmgr waits <= ~2 s per event: $s" "longest $(sec "$wr") ($(M $hr "$s" max_wait_event))" "$verdict"
    else
        verdict=missed
        target "repmgr waits <= ~2 s per event: $s" "no handler run measured" missed
    fi
    echo "| | repmgr waited for the handler, longest event | $(cell $hs "$s" "$(sec "$ws") ($(M $hs "$s" max_wait_event))") | $(cell $hr "$s" "$(sec "$wr") ($(M $hr "$s" max_wait_event))") | $(ratio "$wr" "$ws") | <= 2 s: **$verdict** |"
    # barman
    echo "| | barman check all OK (within ${BARMAN_BOUND_S} s) / WAL archive without a gap | $(cell $hs "$s" "$(barmantxt $hs "$s")") | $(cell $hr "$s" "$(barmantxt $hr "$s")") | | |"
}

backtxt() {
    case ${1:-} in
    0) echo "no refusal" ;;
    -1) echo "not recovered" ;;
    *) sec "${1:-}" ;;
    esac
}
barmantxt() {
    local ok wal
    ok=$(M "$1" "$2" barman_ok) wal=$(M "$1" "$2" wal_gapless)
    [[ $ok == yes ]] && ok="yes (after $(M "$1" "$2" barman_ok_s) s)"
    echo "${ok:-?} / ${wal:-?}"
}

events_detail() {
    local h s
    for s in "${SCENARIOS[@]}"; do
        for h in scripts repmgr-nat; do
            [[ -f $OUT/$h/$s/metrics ]] || continue
            local list failed note
            list=$(M "$h" "$s" events) failed=$(M "$h" "$s" failed) note=$(M "$h" "$s" note)
            printf -- '- %s, %s (T0 at second %s):' "$s" "$h" "$(M "$h" "$s" t0_second)"
            if [[ -z $list ]]; then printf ' no handler run'; fi
            local IFS=,
            local e
            for e in $list; do
                IFS=: read -r ev node ex ms at <<<"$e"
                # shellcheck disable=SC2016 # the backquotes are markdown
                printf ' `%s` (node %s) at %s, repmgr waited %s, exit %s;' "$ev" "$node" "$(sec "$at")" "$(sec "$ms")" "$ex"
            done
            unset IFS
            local cmd
            cmd=$(M "$h" "$s" command_ms)
            [[ -n $cmd ]] && printf ' the command took %s (exit %s);' "$(sec "$cmd")" "$(M "$h" "$s" command_exit)"
            printf ' WAL: %s' "$(M "$h" "$s" wal_detail)"
            [[ -n $failed ]] && printf '; **failed: %s**' "$failed"
            [[ -n $note ]] && printf '; %s' "$note"
            [[ -n $(M "$h" "$s" settled) ]] && printf '; settled: %s' "$(M "$h" "$s" settled)"
            printf '\n'
        done
    done
}

nat_rows() {
    local mode base like
    base=$(N scripts-root median_us)
    for mode in scripts-root scripts-sudo rnat-sudo rnat-root; do
        [[ -f $OUT/nat/$mode.metrics ]] || continue
        like=$base
        [[ $mode == *-sudo ]] && like=$(N scripts-sudo median_us)
        local conn="-"
        if [[ -n $(N "$mode" connect_attempts) ]]; then
            conn="$(N "$mode" connect_refused) of $(N "$mode" connect_attempts) ($(N "$mode" connect_rate_per_s)/s); $(N "$mode" connect_windows) windows, $(awk -v t="$(N "$mode" connect_total_window_ms)" -v n="$BENCH_SWITCHES" 'BEGIN { printf "%.1f", t / n }') ms per switch, longest $(N "$mode" connect_longest_window_ms) ms; $(N "$mode" connect_other) timed out"
        fi
        if [[ -n $(N "$mode" failed) ]]; then
            echo "| ${NAT_TITLE[$mode]} | failed: $(N "$mode" failed) | | | | | | |"
            continue
        fi
        echo "| ${NAT_TITLE[$mode]} | $(msu "$(N "$mode" median_us)") | $(msu "$(N "$mode" p90_us)") | $(msu "$(N "$mode" min_us)")-$(msu "$(N "$mode" max_us)") | $(msu "$(N "$mode" loaded_median_us)") | $(N "$mode" execs) ($(N "$mode" programs | sed 's/,/, /g')) | $conn | $(ratio "$(N "$mode" median_us)" "$base") / $(ratio "$(N "$mode" median_us)" "$like") |"
    done
}

breakdown_rows() {
    local mode
    for mode in scripts-root scripts-sudo rnat-sudo rnat-root; do
        [[ -n $(N "$mode" traced_ms) ]] || continue
        echo "| ${NAT_TITLE[$mode]} | $(N "$mode" traced_ms) ms | $(N "$mode" children_ms) ms ($(N "$mode" children_by_program_ms | sed 's/:/ /g; s/,/ ms, /g') ms) | $(N "$mode" reap_wait_ms) ms | $(N "$mode" own_ms) ms |"
    done
}

nat_targets() {
    local base mode med verdict
    base=$(N scripts-root median_us)
    TARGET_SCOPE=$OUT/nat/rnat-sudo.metrics
    for mode in rnat-sudo rnat-root; do
        med=$(N "$mode" median_us)
        if num "$med" && num "$base" && le "$med" "$(awk -v b="$base" 'BEGIN { print b / 2 }')"; then verdict=met; else verdict=missed; fi
        target "NAT switch <= half the scripts' (median, scripts as root): ${NAT_TITLE[$mode]%% (*}" "$(msu "$med") vs $(msu "$base") / 2 = $(msu "$(awk -v b="${base:-0}" 'BEGIN { print b / 2 }')")" "$verdict"
    done
    local like
    like=$(N scripts-sudo median_us) med=$(N rnat-sudo median_us)
    if num "$med" && num "$like" && le "$med" "$(awk -v b="$like" 'BEGIN { print b / 2 }')"; then verdict=met; else verdict=missed; fi
    target "NAT switch <= half the scripts' (median, both through sudo as postgres, as their handlers run it)" "$(msu "$med") vs $(msu "$like") / 2" "$verdict"
    for mode in rnat-sudo rnat-root; do
        local refused attempts
        refused=$(N "$mode" connect_refused) attempts=$(N "$mode" connect_attempts)
        if [[ $refused == 0 ]] && num "$attempts" && ((attempts > 0)); then verdict=met; else verdict=missed; fi
        target "no window without a rule: ${NAT_TITLE[$mode]%% (*}" "${refused:-?} refused of ${attempts:-?} connects during $BENCH_SWITCHES switches" "$verdict"
    done
}

scaling_rows() {
    local nodes ports row m
    printf '| nodes \\ application ports |'
    for ports in "${SCALE_PORTS[@]}"; do printf ' %s |' "$ports"; done
    printf '\n|---|'
    for ports in "${SCALE_PORTS[@]}"; do printf -- '---|'; done
    printf '\n'
    for nodes in "${SCALE_NODES[@]}"; do
        row="| $nodes |"
        for ports in "${SCALE_PORTS[@]}"; do
            m=$OUT/scaling/n${nodes}-p${ports}.metrics
            if [[ ! -f $m ]]; then row+=" not run |"
            elif [[ -n $(metric_get "$m" failed) ]]; then row+=" failed |"
            else row+=" $(msu "$(metric_get "$m" median_us)") (p90 $(msu "$(metric_get "$m" p90_us)"); $(metric_get "$m" rules) rules, $(metric_get "$m" execs) processes) |"
            fi
        done
        echo "$row"
    done
}

report() {
    TARGETS=()
    echo "## Results of $(date -d "@$((BENCH_T0 / 1000))" '+%Y-%m-%d %H:%M %Z')"
    echo
    echo "Machine: $MACHINE."
    echo "Versions: $VERSIONS."
    echo "repmgr-nat: $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO_ROOT" diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' (with uncommitted changes in src/)')."
    echo "Command: \`$BENCH_CMD\`; it took $(( (BENCH_END - BENCH_T0) / 60000 )) min $(( (BENCH_END - BENCH_T0) / 1000 % 60 )) s."
    echo "T0 at second ${BENCH_PHASE} of a minute (barman's cron runs at second 0); probe every ${PROBE_MS} ms; $BENCH_SWITCHES switches per NAT measurement."
    echo
    echo "### Failover scenarios (each on a freshly built lab; ratio = repmgr-nat / scripts; targets judged for repmgr-nat)"
    echo
    echo "| scenario | measure (from T0: the stop, or the command's start) | scripts | repmgr-nat | ratio | target |"
    echo "|---|---|---|---|---|---|"
    local s
    for s in "${SCENARIOS[@]}"; do scenario_rows "$s"; done
    echo
    echo "Handler runs since T0 (when each began, how long repmgr waited for it):"
    echo
    events_detail
    echo
    echo "### NAT switch alone ($BENCH_SWITCHES switches alternating db2/db1, after one warm-up switch)"
    echo
    echo "| switch | median | p90 | min-max | median under the connect loop | processes per switch (execve) | connects refused during the switches (tight loop through the app port) | median / scripts as root / like-for-like |"
    echo "|---|---|---|---|---|---|---|---|"
    nat_rows
    nat_targets
    echo
    echo "Where a switch's time goes (mean of $TRACED switches under \`strace -f --seccomp-bpf\`, which slows every process a little):"
    echo
    echo "| switch | traced | in the programs it runs (each) | noticing a program had ended (exit to reaping) | the rest: own work, starting programs |"
    echo "|---|---|---|---|---|"
    breakdown_rows
    local mode
    for mode in rnat-sudo rnat-root; do
        [[ -n $(N "$mode" step_rules_median_ms) ]] || continue
        echo
        echo "${NAT_TITLE[$mode]%% (*}, its own log of each step in the timing pass (ms:how often): rule change (iptables-restore) median $(N "$mode" step_rules_median_ms) ms ($(N "$mode" step_rules_values)); cutting connections (conntrack) median $(N "$mode" step_cut_median_ms) ms ($(N "$mode" step_cut_values))."
    done
    echo
    echo "### repmgr-nat's switch by cluster size (as root, throwaway namespace, $BENCH_SWITCHES switches each; median)"
    echo
    scaling_rows
    echo
    echo "### Targets (repmgr-nat)"
    echo
    echo "| target | measured | result |"
    echo "|---|---|---|"
    local t
    for t in "${TARGETS[@]}"; do
        IFS='|' read -r name measured verdict <<<"$t"
        echo "| $name | $measured | **$verdict** |"
    done
}
