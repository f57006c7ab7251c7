# shellcheck shell=bash
# A second cluster behind the same proxy (`up --clusters 2`): namespace db3 (DB3_IP) runs a
# single PostgreSQL 15 primary made as db1 is (its certificate from the lab's CA, the same
# pg_hba.conf, the repmgr_nat and app roles), with no repmgr, repmgrd or barman server.

two_clusters() { [[ $(state_get CLUSTERS) == 2 ]]; }
lab_nodes() { if two_clusters; then echo db1 db2 db3; else echo "${NODES[*]}"; fi; }

# ---- db3 ---------------------------------------------------------------------------------
db3_create() { # its directories, initialised, started, its users (the password files are db1's)
    node_dirs db3
    db_init db3
}
