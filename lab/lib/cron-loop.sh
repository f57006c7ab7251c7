# lab-cron: barman's cron job as cron would run it (`* * * * * barman -q cron` in
# /etc/cron.d/barman): at every minute boundary, as the barman user, in the proxy namespace.
# Runs as root like crond; stopped by `lab.sh down` through its pid file. Installed by lab.sh
# with CRON_PID and SYS_PATH defined above this line.
set -u
echo $$ >"$CRON_PID"
sleeper=
trap '[[ -n $sleeper ]] && kill "$sleeper" 2>/dev/null; echo "$(date +%FT%T.%3N) cron loop stopped"; exit 0' TERM INT
echo "$(date +%FT%T.%3N) cron loop started (pid $$)"
while :; do
    t=$EPOCHREALTIME
    us=${t/./}
    left=$(( 60000000 - us % 60000000 ))      # microseconds to the next minute boundary
    sleep "$((left / 1000000)).$(printf '%06d' $((left % 1000000)))" &
    sleeper=$!
    wait "$sleeper"
    sleeper=
    echo "$(date +%FT%T.%3N) barman -q cron"
    runuser -u barman -- env -i HOME=/var/lib/barman USER=barman LOGNAME=barman PATH="$SYS_PATH" LANG=C.UTF-8 \
        /usr/bin/barman -q cron </dev/null 2>&1
    echo "$(date +%FT%T.%3N) barman -q cron: exit $?"
done
