# shellcheck shell=bash
# A second cluster behind the same proxy (`up --clusters 2`): namespace db3 (DB3_IP) runs a
# single PostgreSQL 15 primary made as db1 is (its certificate from the lab's CA, the same
# pg_hba.conf, the repmgr_nat and app roles), with no repmgr, repmgrd or barman server.
# repmgr-nat's instance "two" (`repmgr-nat --instance two`) is its proxy side:
# /etc/repmgr-nat/two.toml names db3 alone, the application port TWO_APP_PORT, and chains,
# a state directory, a watch directory and a metrics address of its own.

TWO_ETC=/etc/repmgr-nat                      # the instances' configs (made when missing)
TWO_CONFIG=$TWO_ETC/two.toml
TWO_MADE_ETC=$LAB_DIR/made-etc-repmgr-nat    # the lab created /etc/repmgr-nat: down removes it
TWO_STATE_DIR=$RNAT_STATE_DIR/two            # marker: a file named .repmgr-nat-lab inside
TWO_WATCH_DIR=$LAB_DIR/watch-two
TWO_APP_PORT=55432
TWO_METRICS=127.0.0.1:9722                   # the default instance's is the package's 9721

two_clusters() { [[ $(state_get CLUSTERS) == 2 ]]; }
lab_nodes() { if two_clusters; then echo db1 db2 db3; else echo "${NODES[*]}"; fi; }

# ---- db3 ---------------------------------------------------------------------------------
db3_create() { # its directories, initialised, started, its users (the password files are db1's)
    node_dirs db3
    db_init db3
}

# ---- repmgr-nat's instance "two" -----------------------------------------------------------
two_preflight() {
    claim_path "$TWO_CONFIG"
    if [[ -e $TWO_STATE_DIR && ! -e $TWO_STATE_DIR/.repmgr-nat-lab ]]; then
        die "$TWO_STATE_DIR exists and was not made by the lab (no .repmgr-nat-lab inside); move it away and run up again"
    fi
}

two_install() { # after the package: its config, state and watch directories
    if [[ ! -d $TWO_ETC ]]; then
        install -d -o root -g root -m 0755 "$TWO_ETC" && : >"$TWO_MADE_ETC" || die "cannot create $TWO_ETC"
    fi
    # root's and written by root only, as the package makes the default instance's
    install -d -o root -g root -m 0755 "$TWO_STATE_DIR" || die "cannot create $TWO_STATE_DIR"
    : >"$TWO_STATE_DIR/.repmgr-nat-lab"
    run install -d -o postgres -g postgres -m 0755 "$TWO_WATCH_DIR"
    rnat_config "" 0 "$TWO_STATE_DIR" "$TWO_WATCH_DIR" two | write_marked "$TWO_CONFIG" 0644 root:root '#'
}

two_remove() { # down, after the package's purge (which removes /var/lib/repmgr-nat): the problems, one a line
    if [[ -e $TWO_CONFIG ]] && has_marker "$TWO_CONFIG"; then rm -f -- "$TWO_CONFIG" || echo "$TWO_CONFIG"; fi
    if [[ -e $TWO_MADE_ETC && -d $TWO_ETC ]]; then rmdir -- "$TWO_ETC" 2>/dev/null || echo "$TWO_ETC (not empty)"; fi
    if [[ -e $TWO_STATE_DIR/.repmgr-nat-lab ]]; then rm -rf -- "$TWO_STATE_DIR" || echo "$TWO_STATE_DIR"; fi
    return 0
}
