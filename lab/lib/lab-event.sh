# lab-event: repmgr's event_notification_command on the database nodes (runs as root through
# `sudo -n`, from the node's namespace). It crosses to the proxy the way ssh would in
# production and runs the handler there as postgres, logging what the run printed, its exit
# code and duration to the events log. Installed by lab.sh with HANDLER_MODE, HANDLER_CMD,
# HANDLER_NS (the proxies' namespaces), EVENTS_LOG and SYS_PATH defined above this line.
set -u

node=${1:-} event=${2:-} success=${3:-}
if (($# < 2 || $# > 3)) || [[ ! $node =~ ^[0-9]{1,6}$ || ! $event =~ ^[a-z_]{1,64}$ || ! $success =~ ^[01]?$ ]]; then
    echo "lab-event: refused: expected <node_id> <event> [<success>], got: $*" >&2
    exit 2
fi

ms() { local t=$EPOCHREALTIME; REPLY=$(( ${t/./} / 1000 )); }
from=$(ip netns identify $$ 2>/dev/null)

case $HANDLER_MODE in
scripts) args=("$node" "$event") ;;       # the article's handler takes %n %e
*) args=("$node" "$event" ${success:+"$success"}) ;;
esac

# cross PROXY ID: the handler in PROXY's namespace, logged as run ID; its exit code.
cross() {
    local proxy=$1 id=$2 t0 t1 rc fifo_dir stamp_pid field=
    ((${#HANDLER_NS[@]} > 1)) && field=" proxy=$proxy"
    ms; t0=$REPLY
    echo "$t0 $id begin node=$node event=$event success=${success:-?} from=${from:-root} handler=$HANDLER_MODE$field" >>"$EVENTS_LOG"

    # `lab.sh events drop`: the event command fails before it reaches the proxy, as when ssh
    # is down or repmgr.conf has a typo; repmgr only logs a warning and never sends it again.
    if [[ -e ${EVENTS_LOG%/*}/events.drop ]]; then
        ms
        echo "$REPLY $id out dropped: the event command failed before reaching the proxy (lab.sh events drop)" >>"$EVENTS_LOG"
        echo "$REPLY $id end exit=255 ms=$((REPLY - t0))" >>"$EVENTS_LOG"
        return 255
    fi

    # Timestamp every line the handler prints; also pass it on to repmgr's log (stderr).
    stamp() {
        local line
        while IFS= read -r line || [[ -n $line ]]; do
            ms
            printf '%s %s out %s\n' "$REPLY" "$id" "$line" >>"$EVENTS_LOG"
            printf '%s\n' "$line" >&2
        done
    }

    fifo_dir=$(mktemp -d "${EVENTS_LOG%/*}/tmp/event.XXXXXX") || return 1
    mkfifo "$fifo_dir/out" || return 1
    stamp <"$fifo_dir/out" &
    stamp_pid=$!
    ip netns exec "$proxy" runuser -u postgres -- env -i HOME=/var/lib/postgresql USER=postgres LOGNAME=postgres \
        PATH="$SYS_PATH" LANG=C.UTF-8 ${HANDLER_ENV[@]+"${HANDLER_ENV[@]}"} \
        "${HANDLER_CMD[@]}" "${args[@]}" </dev/null >"$fifo_dir/out" 2>&1
    rc=$?
    rm -rf "$fifo_dir"
    ms; t1=$REPLY
    # ssh would wait until the remote side closes its output: a handler that leaves a process
    # holding it open would hang repmgr there. Wait a bounded time and say so.
    if ! timeout 5 tail -s 0.01 --pid="$stamp_pid" -f /dev/null; then
        ms
        echo "$REPLY $id warn the handler exited but a process it started still holds its output open (over ssh, repmgr would hang here)" >>"$EVENTS_LOG"
    fi
    echo "$t1 $id end exit=$rc ms=$((t1 - t0))" >>"$EVENTS_LOG"
    return "$rc"
}

# One proxy: one run, id = this crossing's pid. Two: both at once (as one ssh per proxy
# in the background would), ids PID and PID-2; the exit code is the first proxy's that
# failed.
if ((${#HANDLER_NS[@]} == 1)); then
    cross "${HANDLER_NS[0]}" "$$"
    exit
fi
pids=() i=0
for proxy in "${HANDLER_NS[@]}"; do
    i=$((i + 1))
    id=$$
    ((i == 1)) || id=$$-$i
    cross "$proxy" "$id" &
    pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do
    wait "$pid" || { r=$?; ((rc != 0)) || rc=$r; }
done
exit "$rc"
