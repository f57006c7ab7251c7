//! `repmgr-nat check` against the real deployment: watch not started yet is named; then
//! every line OK on a clean lab with watch running, as postgres and as root; then misconfigurations made for real, each named in the output
//! with what to change, and each repaired (also when the test fails half-way); `--nagios`
//! says OK, WARNING and CRITICAL with the same verdicts.

use std::time::Duration;

use crate::common::{CONVERGE, Lab, PROXY, Restore};

/// Far more than check takes: every probe has a deadline of its own.
const BOUNDED: Duration = Duration::from_secs(90);
const BARMAN_CONF: &str = "/etc/barman.d/main_backup.conf";
const CONFIG: &str = "/etc/repmgr-nat.toml";
const SUDOERS: &str = "/etc/sudoers.d/repmgr-nat";

/// `check` as `user`: its exit code and lines.
fn check(lab: &Lab, user: &str) -> (i32, Vec<String>) {
    let run = lab.repmgr_nat_within(BOUNDED, user, &["check"]);
    assert!(run.code == 0 || run.code == 1, "check as {user} exited {}:\n{}{}", run.code, run.stdout, run.stderr);
    (run.code, run.stdout.lines().map(str::to_string).collect())
}

/// `check --nagios` as `user`: the plugin's state (its exit code) and first line.
fn nagios(lab: &Lab, user: &str) -> (i32, String) {
    let run = lab.repmgr_nat_within(BOUNDED, user, &["check", "--nagios"]);
    (run.code, run.stdout.lines().next().unwrap_or_default().to_string())
}

#[track_caller]
fn all_ok(lab: &Lab, user: &str) {
    let (code, lines) = check(lab, user);
    let text = lines.join("\n");
    assert_eq!(code, 0, "check as {user}:\n{text}");
    assert!(lines.len() >= 8 && lines.iter().all(|l| l.starts_with("OK  ")), "check as {user}:\n{text}");
}

/// The one FAILED line of `check` as `user` that starts with `start`; it must exit 1.
#[track_caller]
fn failed(lab: &Lab, user: &str, start: &str) -> String {
    let (code, lines) = check(lab, user);
    let text = lines.join("\n");
    assert_eq!(code, 1, "check as {user}:\n{text}");
    let found: Vec<&String> = lines.iter().filter(|l| l.starts_with(&format!("FAILED  {start}"))).collect();
    assert_eq!(found.len(), 1, "one line FAILED  {start}... as {user}:\n{text}");
    found[0].clone()
}

#[track_caller]
fn ok_line(lab: &Lab, user: &str, start: &str) {
    let (_, lines) = check(lab, user);
    assert!(
        lines.iter().any(|l| l.starts_with(&format!("OK  {start}"))),
        "OK  {start} as {user}:\n{}",
        lines.join("\n")
    );
}

/// Runs `undo` (lab.sh ARGS) when it goes, also when the test fails half-way.
#[test]
fn check_is_all_ok_on_a_clean_lab_and_names_each_misconfiguration() {
    let lab = Lab::up();
    // watch is not started yet: named, with what to do
    let line = failed(&lab, "postgres", "watch runs and its last pass is fresh: ");
    assert!(line.contains("watch.json: watch does not run here; systemctl enable --now repmgr-nat-watch"), "{line}");
    lab.ok(&["watch", "start"]);
    lab.wait_until("watch passes", CONVERGE, || lab.watch_passes() > 2);
    all_ok(&lab, "postgres");
    all_ok(&lab, "root");
    let (code, first) = nagios(&lab, "root");
    assert!(code == 0 && first.starts_with("REPMGR-NAT OK - "), "check --nagios as root: {code} {first}");

    // a sudoers file from before `route --show --follow` (as an edited one stays on an
    // upgrade): a warning; watch started then reads the tables through sudo, and still
    // repairs a flushed table
    {
        let _sudoers = Restore::file(SUDOERS);
        let text = std::fs::read_to_string(SUDOERS).unwrap();
        assert!(text.contains("route --show( --follow)?$"), "{text}");
        std::fs::write(SUDOERS, text.replace("route --show( --follow)?$", "route --show$")).unwrap();
        let (code, lines) = check(&lab, "postgres");
        let warned = "WARN  sudo admits postgres's follow of the tables: refused";
        assert!(code == 0 && lines.iter().any(|l| l.starts_with(warned)), "{}", lines.join("\n"));
        let (code, first) = nagios(&lab, "postgres");
        let warning = "REPMGR-NAT WARNING - 1 of ";
        assert!(code == 1 && first.starts_with(warning) && first.contains("follow of the tables"), "{code} {first}");
        lab.ok(&["watch", "kill"]);
        lab.ok(&["watch", "start"]);
        let log = lab.env["WATCH_LOG"].clone();
        lab.wait_until("watch reading the tables through sudo", CONVERGE, || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("reading the rules through sudo twice a second"))
        });
        lab.ok(&["exec", "proxy", "--", "iptables", "-t", "nat", "-F", "repmgr_dnat"]);
        lab.wait_until("the flushed chain restored", CONVERGE, || lab.routed(crate::common::DB1));
    }
    lab.ok(&["watch", "kill"]);
    lab.ok(&["watch", "start"]);
    lab.wait_until("watch passes", CONVERGE, || lab.watch_passes() > 2);
    ok_line(&lab, "postgres", "sudo admits postgres's follow of the tables");

    // barman's slot_name differs from barman.slot (as root: barman is asked)
    {
        let _conf = Restore::file(BARMAN_CONF);
        let text = std::fs::read_to_string(BARMAN_CONF).unwrap();
        assert!(text.contains("slot_name = barman\n"), "{text}");
        std::fs::write(BARMAN_CONF, text.replace("slot_name = barman\n", "slot_name = barman_other\n")).unwrap();
        let line = failed(&lab, "root", "barman slot_name is barman.slot (barman): ");
        let (code, first) = nagios(&lab, "root");
        assert!(code == 2 && first.starts_with("REPMGR-NAT CRITICAL - ") && first.contains("slot_name"), "{first}");
        assert!(
            line.contains(&format!("slot_name = barman_other in {BARMAN_CONF}, but repmgr-nat keeps the slot barman")),
            "{line}"
        );
    }
    ok_line(&lab, "root", "barman slot_name is barman.slot (barman)");

    // forwarding off in the proxy's namespace
    {
        let _on = lab.undo(&["exec", "proxy", "--", "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        lab.ok(&["exec", "proxy", "--", "sysctl", "-qw", "net.ipv4.ip_forward=0"]);
        let line = failed(&lab, "postgres", "net.ipv4.ip_forward = 1: ");
        assert!(line.contains("it is 0: the proxy forwards nothing"), "{line}");
    }
    ok_line(&lab, "postgres", "net.ipv4.ip_forward = 1");

    // another tool's DNAT for the application port, before our jump
    let shadow = format!("-d {PROXY}/32 -p tcp -m tcp --dport 54322 -j DNAT --to-destination 198.51.100.12:5432");
    {
        let rule = |op: &str| -> Vec<String> {
            let head = ["exec", "proxy", "--", "iptables", "-t", "nat", op, "PREROUTING"].map(String::from);
            let at = if op == "-I" { vec!["1".to_string()] } else { vec![] };
            head.into_iter().chain(at).chain(shadow.split(' ').map(String::from)).collect()
        };
        lab.ok(&rule("-I").iter().map(String::as_str).collect::<Vec<_>>());
        let _gone = lab.undo(&rule("-D"));
        let line =
            failed(&lab, "root", "nothing in PREROUTING or OUTPUT before the jump to repmgr_dnat takes our ports: ");
        assert!(line.contains(&format!("\"-A PREROUTING {shadow}\" comes first")), "{line}");
        assert!(line.ends_with(&format!("remove it (iptables -t nat -D PREROUTING {shadow})")), "{line}");
    }
    ok_line(&lab, "root", "nothing in PREROUTING or OUTPUT before the jump to repmgr_dnat takes our ports");

    // the role without pg_read_all_stats (revoked on the primary, replicated to the standby)
    {
        let _grant = lab.undo(&["psql", "db1", "GRANT pg_read_all_stats TO repmgr_nat"]);
        lab.sql("db1", "REVOKE pg_read_all_stats FROM repmgr_nat");
        let line =
            failed(&lab, "postgres", "node 1: role repmgr_nat has REPLICATION, pg_signal_backend, pg_read_all_stats: ");
        assert!(line.ends_with("missing; on the primary run: GRANT pg_read_all_stats TO repmgr_nat"), "{line}");
    }

    // repmgr's metadata against [nodes]: the lab connects to database postgres, where repmgr
    // has no schema (no line); pointed at repmgr's database, the role may not read it (a
    // warning with the grants), then may (OK), then repmgr knows a node [nodes] does not
    let name = "repmgr's nodes (repmgr.nodes) are those of [nodes]";
    assert!(!check(&lab, "postgres").1.iter().any(|l| l.contains(name)));
    {
        let _config = Restore::file(CONFIG);
        let text = std::fs::read_to_string(CONFIG).unwrap();
        assert!(text.contains("dbname = \"postgres\"\n"), "{text}");
        std::fs::write(CONFIG, text.replace("dbname = \"postgres\"\n", "dbname = \"repmgr\"\n")).unwrap();
        let (code, lines) = check(&lab, "postgres");
        assert_eq!(code, 0, "a warning fails nothing:\n{}", lines.join("\n"));
        let grants = "GRANT USAGE ON SCHEMA repmgr TO repmgr_nat; GRANT SELECT ON repmgr.nodes TO repmgr_nat";
        assert!(
            lines.contains(&format!(
                "WARN  {name}: role repmgr_nat may not read repmgr.nodes in database repmgr, so check cannot compare; \
                 to let it, on the primary in database repmgr run: {grants}"
            )),
            "{}",
            lines.join("\n")
        );
        let _revoke = lab.undo(&[
            "psql",
            "-d",
            "repmgr",
            "db1",
            "REVOKE SELECT ON repmgr.nodes FROM repmgr_nat; REVOKE USAGE ON SCHEMA repmgr FROM repmgr_nat",
        ]);
        lab.ok(&["psql", "-d", "repmgr", "db1", grants]);
        ok_line(&lab, "postgres", &format!("{name}: 2 node(s), repmgr.nodes on node 1"));
        // an inactive node 3 (as a failed node stays until it is unregistered)
        let _gone = lab.undo(&["psql", "-d", "repmgr", "db1", "DELETE FROM repmgr.nodes WHERE node_id = 3"]);
        lab.ok(&[
            "psql",
            "-d",
            "repmgr",
            "db1",
            "INSERT INTO repmgr.nodes (node_id, active, node_name, type, conninfo, repluser, config_file) \
             VALUES (3, false, 'db3', 'standby', 'host=198.51.100.13 user=repmgr dbname=repmgr', 'repmgr', '/nonexistent')",
        ]);
        let line = failed(&lab, "postgres", &format!("{name}: "));
        assert!(
            line.starts_with(&format!("FAILED  {name}: repmgr has node 3 (198.51.100.13), [nodes] does not (repmgr.nodes on node 1); [nodes] in /etc/repmgr-nat.toml must name")),
            "{line}"
        );
    }

    // everything repaired: all OK again, both ways
    all_ok(&lab, "postgres");
    all_ok(&lab, "root");
    let (code, first) = nagios(&lab, "root");
    assert!(code == 0 && first.starts_with("REPMGR-NAT OK - "), "check --nagios as root: {code} {first}");
}
