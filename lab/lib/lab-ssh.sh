# lab-ssh: the remote end of the lab's ssh stand-in (runs as root through `sudo -n`). It runs
# a command as postgres on a database node, in that node's namespace, the way sshd would run
# `ssh postgres@node COMMAND`. Installed by lab.sh with SYS_PATH and the node map above this
# line (NODE_NS: address or name -> namespace). Every command is logged to SSH_LOG.
set -u
host=${1:-} cmd=${2:-}
if (($# != 2)) || [[ -z $cmd ]]; then
    echo "lab-ssh: usage: lab-ssh HOST COMMAND" >&2
    exit 255
fi
ns=${NODE_NS[$host]:-}
if [[ -z $ns ]]; then
    echo "ssh: Could not resolve hostname $host (lab ssh stand-in knows: ${!NODE_NS[*]})" >&2
    exit 255
fi
printf '%s %s %s\n' "$(date +%FT%T.%3N)" "$host" "$cmd" >>"$SSH_LOG"
exec ip netns exec "$ns" runuser -u postgres -- env -i HOME=/var/lib/postgresql USER=postgres LOGNAME=postgres \
    PATH="$LAB_SSHBIN:$SYS_PATH" LANG=C.UTF-8 /bin/sh -c "$cmd"
