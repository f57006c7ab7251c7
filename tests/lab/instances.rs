//! Two repmgr clusters behind one proxy (`lab.sh up --clusters 2`), barman streaming from
//! both: the default instance fronts db1 and db2 (barman server main_backup), instance
//! "two" fronts db3 and db4 (/etc/repmgr-nat/two.toml, barman server two, its own chains,
//! state directory, watch directory and metrics port). A failover in one moves only its own
//! rules, slot, record and barman, and barman restores every commit acknowledged across it;
//! a config that claims what another claims is refused before anything changes.

use lab_kit::clients::series;
use lab_kit::lab::{DB3, Session};
use lab_kit::proof::{self, Case};

use crate::common::{CONVERGE, DB2, Lab, Restore};

/// Instance two's rules (iptables-save lines of its chains and the jumps to them).
fn rules_of_two(lab: &Lab) -> Vec<String> {
    let mut lines: Vec<String> = lab.nat().lines().filter(|l| l.contains("repmgr_two_")).map(str::to_string).collect();
    lines.sort();
    lines
}

fn record_of_two(lab: &Lab) -> String {
    let dir = lab.env["TWO_STATE_DIR"].clone();
    std::fs::read_to_string(std::path::Path::new(&dir).join("route")).unwrap_or_default()
}

/// `barman check two` passes (barman asked in the proxy's namespace, as barman).
fn barman_two_ok(lab: &Lab) -> bool {
    lab.lab(&["barman", "check", "two"]).code == 0
}

#[test]
fn a_failover_in_one_cluster_moves_its_rules_and_leaves_the_other_instance_alone() {
    let lab = Lab::up_with(&Session::take(), &["--clusters", "2"], &[]);
    assert_eq!(lab.clusters(), 2, "lab.sh env: {:?}", lab.env.get("CLUSTERS"));
    let two = |user: &str, args: &[&str]| {
        let all: Vec<&str> = ["--instance", "two"].iter().chain(args).copied().collect();
        lab.repmgr_nat(user, &all)
    };

    // instance two's boot step: its own chains, routed to db3, its own record
    two("root", &["setup"]).expect(0, "setup of instance two");
    let port = lab.env["TWO_APP_PORT"].clone();
    let to_db3 = format!("-j DNAT --to-destination {DB3}:5432");
    let before = rules_of_two(&lab);
    assert!(before.iter().any(|l| l.contains(&format!("--dport {port} ")) && l.ends_with(&to_db3)), "{before:#?}");
    assert_eq!(record_of_two(&lab).split_whitespace().take(2).collect::<Vec<_>>(), ["3", "all"]);
    let record_before = record_of_two(&lab);
    // its watch, as repmgr-nat-watch@two runs it, with its metrics labelled cluster="two"
    let watch_two = lab.spawn_in_proxy("postgres", &lab.env["REPMGR_NAT_BIN"], &["--instance", "two", "watch"]);
    let metrics = |addr: &str| lab.lab(&["exec", "proxy", "--", &lab.env["KIT_BIN"], "metrics", "--addr", addr]).stdout;
    let two_addr = lab.env["TWO_METRICS"].clone();
    lab.wait_until("instance two's metrics: db3 routed", CONVERGE, || {
        let m = metrics(&two_addr);
        series(&m, "repmgr_nat_route_node_id") == Some(3.0) && m.contains("cluster=\"two\"")
    });
    // barman streams from db3 through instance two's port (watch two made the slots and
    // started receive-wal two); one WAL file archived, as the README says for a cluster
    // without repmgr's primary_register event
    lab.wait_until("barman's stream from db3", CONVERGE, || lab.barman_walsender("db3").is_some());
    lab.wait_until("watch two's slot on db4", CONVERGE, || lab.slot_active("db4") == Some(false));
    lab.ok(&["barman", "switch-wal", "--force", "--archive", "--archive-timeout=30", "two"]);
    lab.wait_until("barman check two", CONVERGE, || barman_two_ok(&lab));
    let stream_before = lab.barman_walsender("db3");

    // the default instance fails over under writes (db1 dies, repmgrd promotes db2, watch
    // follows), and barman restores every acknowledged commit from a backup taken before
    let backup = proof::prepare(&lab);
    let compared = proof::run(Case::Failover, &lab, &backup, &std::env::temp_dir());
    let rows = compared.verdict().unwrap_or_else(|e| panic!("barman's restore of {backup}: {e}"));
    eprintln!("proof: {} attempts, {} acknowledged, {rows} rows restored", compared.attempted, compared.acknowledged);
    lab.wait_barman_ok(CONVERGE);

    // instance two's rules, record, slot, barman stream and metrics did not move
    assert_eq!(rules_of_two(&lab), before, "instance two's rules changed");
    assert_eq!(record_of_two(&lab), record_before, "instance two's record changed");
    assert_eq!(lab.barman_walsender("db3"), stream_before, "barman's stream from db3 was restarted");
    assert_eq!(lab.slot_active("db4"), Some(false), "watch two's slot on db4");
    assert!(barman_two_ok(&lab), "barman check two: {}", lab.lab(&["barman", "check", "two"]).stdout);
    let m = metrics(&two_addr);
    assert_eq!(series(&m, "repmgr_nat_route_node_id"), Some(3.0), "{m}");
    assert_eq!(series(&m, "repmgr_nat_switches_total"), Some(0.0), "instance two switched:\n{m}");
    let default = metrics("127.0.0.1:9721");
    assert_eq!(series(&default, "repmgr_nat_route_node_id"), Some(2.0), "{default}");
    assert!(default.contains("cluster=\"default\"") && !default.contains("cluster=\"two\""), "{default}");
    // every instance at once: both consistent
    let all = lab.repmgr_nat("postgres", &["status", "--all"]);
    let all = all.expect(0, "status --all after the failover");
    assert!(all.stdout.contains("== instance default") && all.stdout.contains("== instance two"), "{}", all.stdout);

    // a third config that claims the default's chain is refused before anything changes;
    // the default, which routed before, goes on and says why on every run
    let three = "/etc/repmgr-nat/three.toml";
    let _three = Restore::file(three);
    let text = std::fs::read_to_string(&lab.env["TWO_CONFIG"]).unwrap();
    let text = text
        .replace("repmgr_two_dnat", "repmgr_dnat")
        .replace(&two_addr, "127.0.0.1:9723")
        .replace(&lab.env["TWO_STATE_DIR"], "/var/lib/repmgr-nat/three");
    std::fs::write(three, text).unwrap();
    let nat = lab.nat();
    let run =
        lab.repmgr_nat("root", &["--instance", "three", "setup"]).expect(2, "setup of three claiming repmgr_dnat");
    assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
    assert!(run.stderr.contains("chain repmgr_dnat") && run.stderr.contains("/etc/repmgr-nat.toml"), "{}", run.stderr);
    assert_eq!(lab.nat(), nat, "a refused config changed the tables");
    let run = lab.repmgr_nat("root", &["setup"]).expect(0, "the default's setup beside the newcomer");
    assert!(run.stderr.contains("instance three") && run.stderr.contains("refused until it changes"), "{}", run.stderr);
    lab.repmgr_nat("postgres", &["status"]).expect(0, "the default's status beside the newcomer");
    let check = lab.repmgr_nat("root", &["check"]);
    assert!(
        check.stdout.lines().any(|l| l.starts_with("FAILED  the other instances") && l.contains("instance three")),
        "{}",
        check.stdout
    );
    assert!(lab.routed(DB2), "the default's rules moved");
    drop(_three);

    // the default's config copied verbatim, its state directory too (the usual first step
    // of adding a cluster): the record there stays the default's, so the copy alone is
    // refused and the default goes on
    let four = "/etc/repmgr-nat/four.toml";
    let _four = Restore::file(four);
    std::fs::copy("/etc/repmgr-nat.toml", four).unwrap();
    let listed = lab.repmgr_nat("postgres", &["instances"]).expect(0, "instances");
    assert_eq!(listed.stdout, "default\nfour\ntwo\n");
    let run = lab.repmgr_nat("root", &["--instance", "four", "setup"]).expect(2, "setup of a verbatim copy");
    assert!(run.stderr.contains("state.dir /var/lib/repmgr-nat"), "{}", run.stderr);
    let run = lab.repmgr_nat("root", &["setup"]).expect(0, "the default's setup beside its copy");
    assert!(run.stderr.contains("instance four") && run.stderr.contains("refused until it changes"), "{}", run.stderr);
    lab.repmgr_nat("postgres", &["status"]).expect(0, "the default's status beside its copy");
    assert!(lab.routed(DB2), "the default's rules moved");
    drop(_four);
    lab.stop(watch_two);
}
