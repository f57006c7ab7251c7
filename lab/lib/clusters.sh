# shellcheck shell=bash
# A second cluster behind the same proxy (`up --clusters 2`): repmgr's too, db3 its primary
# and db4 its standby (namespaces of their own, made as db1 and db2 are: certificates from
# the lab's CA, the same pg_hba.conf and roles, repmgrd on both), with no events: its
# instance's watch is the trigger. repmgr-nat's instance "two" (`repmgr-nat --instance two`)
# is its proxy side: /etc/repmgr-nat/two.toml names db3 and db4, the ports TWO_BARMAN_PORT
# and TWO_APP_PORT, barman server "two", and chains, a state directory, a watch directory
# and a metrics address of its own. barman streams from it as server "two" through that
# port; the sudoers lines for its three commands are a file of their own, as README.md
# ("Several clusters behind one proxy") tells an operator to add them.

TWO_ETC=/etc/repmgr-nat                      # the instances' configs (made when missing)
TWO_CONFIG=$TWO_ETC/two.toml
TWO_MADE_ETC=$LAB_DIR/made-etc-repmgr-nat    # the lab created /etc/repmgr-nat: down removes it
TWO_STATE_DIR=$RNAT_STATE_DIR/two            # marker: a file named .repmgr-nat-lab inside
TWO_WATCH_DIR=$LAB_DIR/watch-two
TWO_APP_PORT=55432
TWO_BARMAN_PORT=55431
TWO_METRICS=127.0.0.1:9722                   # the default instance's is the package's 9721
TWO_BARMAN_SERVER=two
TWO_BARMAN_CONF=/etc/barman.d/$TWO_BARMAN_SERVER.conf
TWO_BARMAN_HOME=/var/lib/barman/$TWO_BARMAN_SERVER   # marker: a file named .repmgr-nat-lab inside
TWO_SUDOERS=/etc/sudoers.d/repmgr-nat-lab-two

two_clusters() { [[ $(state_get CLUSTERS) == 2 ]]; }
lab_nodes() { if two_clusters; then echo "${NODES[*]} ${TWO_NODES[*]}"; else echo "${NODES[*]}"; fi; }

# ---- db3 and db4 -------------------------------------------------------------------------
two_create() { # db3 initialised, started, its users (the password files are db1's), registered; db4 cloned from it
    node_dirs db3
    node_dirs db4
    db_init db3
    HINT=$(node_repmgrd_log db3)
    # until db4 streams, a commit on db3 would wait for a synchronous standby
    REPMGR_ENV='PGOPTIONS=-csynchronous_commit=local' run node_repmgr db3 primary register
    HINT="$LAB_LOG $(node_pglog db3)"
    run node_repmgr db4 -h "$DB3_IP" -p "$PG_PORT" -U repmgr -d repmgr standby clone --fast-checkpoint
    HINT=$(node_pglog db4)
    run as postgres db4 "$(node_pgctl db4)" start
    HINT=$(node_repmgrd_log db4)
    run node_repmgr db4 standby register
}

# ---- repmgr-nat's instance "two" -----------------------------------------------------------
two_preflight() {
    claim_path "$TWO_CONFIG"
    local dir
    for dir in "$TWO_STATE_DIR" "$TWO_BARMAN_HOME"; do
        if [[ -e $dir && ! -e $dir/.repmgr-nat-lab ]]; then
            die "$dir exists and was not made by the lab (no .repmgr-nat-lab inside); move it away and run up again"
        fi
    done
}

two_install() { # after the package: its config, state and watch directories
    if [[ ! -d $TWO_ETC ]]; then
        install -d -o root -g root -m 0755 "$TWO_ETC" && : >"$TWO_MADE_ETC" || die "cannot create $TWO_ETC"
    fi
    # root's and written by root only, as the package makes the default instance's
    install -d -o root -g root -m 0755 "$TWO_STATE_DIR" || die "cannot create $TWO_STATE_DIR"
    : >"$TWO_STATE_DIR/.repmgr-nat-lab"
    run install -d -o postgres -g postgres -m 0755 "$TWO_WATCH_DIR"
    rnat_config "" 1 "$TWO_STATE_DIR" "$TWO_WATCH_DIR" two | write_marked "$TWO_CONFIG" 0644 root:root '#'
    # barman's three commands for server two, as the packaged file has them for main_backup
    write_marked "$TWO_SUDOERS" 0440 root:root '#' <<EOF
Cmnd_Alias REPMGR_NAT_BARMAN_TWO = /usr/bin/barman ^receive-wal --stop $TWO_BARMAN_SERVER\$, \\
                                   /usr/bin/barman ^receive-wal $TWO_BARMAN_SERVER\$, \\
                                   /usr/bin/barman ^switch-wal --force --archive --archive-timeout=[1-9][0-9]{0,3} $TWO_BARMAN_SERVER\$
postgres ALL = (barman) NOPASSWD: REPMGR_NAT_BARMAN_TWO
EOF
    visudo -c -q -f "$TWO_SUDOERS" >>"$LAB_LOG" 2>&1 || die "visudo refuses $TWO_SUDOERS; look at $LAB_LOG"
}

two_barman_configure() { # server two, through instance two's barman port, in a fresh home
    barman_server_conf "$TWO_BARMAN_SERVER" "$TWO_BARMAN_PORT" "the second cluster's primary" |
        write_marked "$TWO_BARMAN_CONF" 0644 root:root ';'
    barman_server_home "$TWO_BARMAN_HOME"
}

two_remove() { # down, after the package's purge (which removes /var/lib/repmgr-nat): the problems, one a line
    local f
    for f in "$TWO_CONFIG" "$TWO_SUDOERS" "$TWO_BARMAN_CONF"; do
        if [[ -e $f ]] && has_marker "$f"; then rm -f -- "$f" || echo "$f"; fi
    done
    barman_server_remove "$TWO_BARMAN_HOME" "$TWO_BARMAN_SERVER"
    if [[ -e $TWO_MADE_ETC && -d $TWO_ETC ]]; then rmdir -- "$TWO_ETC" 2>/dev/null || echo "$TWO_ETC (not empty)"; fi
    if [[ -e $TWO_STATE_DIR/.repmgr-nat-lab ]]; then rm -rf -- "$TWO_STATE_DIR" || echo "$TWO_STATE_DIR"; fi
    return 0
}
