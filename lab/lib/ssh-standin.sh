# ssh stand-in for repmgr (switchover, rejoin): `ssh [options] [user@]host command...`
# crosses to the node's namespace through sudo (lab-ssh), like ssh would reach another host.
# Installed by lab.sh with LAB_DIR defined above this line.
set -u
while (($#)); do
    case $1 in
    -[bcDEeFIiJLlmOoPpQRSWw]) shift 2 ;;   # options that take an argument
    -*) shift ;;
    *) break ;;
    esac
done
if (($# < 1)); then
    echo "usage: ssh [options] host command" >&2
    exit 255
fi
host=${1#*@}
shift
if (($# == 0)); then
    echo "lab ssh stand-in: interactive sessions are not supported (host $host)" >&2
    exit 255
fi
exec sudo -n "$LAB_DIR/bin/lab-ssh" "$host" "$*"
