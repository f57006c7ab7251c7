//! repmgr-nat as an operator installs it: every lab installs the Debian package (`dpkg
//! -i`: the binary, the sudoers file and the units where the package puts them). Here a
//! failover through it with watch's metrics scraped meanwhile, then `dpkg --purge`, which
//! must leave no rule, chain or file behind.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use lab_kit::clients::series;
use lab_kit::lab::poll_until;

use crate::common::{CONVERGE, DB1, DB2, Lab};

const PACKAGED: &[&str] = &[
    "/usr/bin/repmgr-nat",
    "/etc/repmgr-nat.toml",
    "/etc/sudoers.d/repmgr-nat",
    "/usr/lib/systemd/system/repmgr-nat-setup.service",
    "/usr/lib/systemd/system/repmgr-nat-watch.service",
    "/usr/share/man/man1/repmgr-nat.1.gz",
    "/usr/share/bash-completion/completions/repmgr-nat",
    "/usr/share/doc/repmgr-nat/README.md",
    "/var/lib/repmgr-nat",
];

#[test]
fn the_package_fails_over_reports_metrics_and_purges_without_a_trace() {
    let lab = Lab::up();
    for path in PACKAGED {
        assert!(Path::new(path).exists(), "the package did not install {path}");
    }
    let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("/etc/sudoers.d/repmgr-nat"), 0o440);
    assert_eq!(mode("/usr/bin/repmgr-nat"), 0o755);
    let conffiles = lab.in_proxy("root", &[], "dpkg-query", &["-W", "-f=${Conffiles}", "repmgr-nat"]).expect(0, "conffiles");
    for conffile in ["/etc/repmgr-nat.toml", "/etc/sudoers.d/repmgr-nat"] {
        assert!(conffiles.stdout.contains(conffile), "{conffile} is not a conffile: {}", conffiles.stdout);
    }

    // watch, as the packaged unit runs it, serves its metrics on the proxy's loopback
    lab.ok(&["watch", "start"]);
    let metrics = || lab.lab(&["exec", "proxy", "--", &lab.env["KIT_BIN"], "metrics"]).stdout;
    let shows = |text: &str, name: &str, at_least: f64| series(text, name).is_some_and(|v| v >= at_least);
    lab.wait_until("metrics: the route and both nodes up", CONVERGE, || {
        let m = metrics();
        series(&m, "repmgr_nat_route_node_id") == Some(1.0)
            && shows(&m, "repmgr_nat_node_up{node=\"1\"}", 1.0)
            && shows(&m, "repmgr_nat_node_up{node=\"2\"}", 1.0)
    });

    // a failover through the packaged paths: the event and sudo call /usr/bin/repmgr-nat
    lab.ok(&["stop", "db1"]);
    lab.ok(&["wait-primary", "db2", "60"]);
    lab.wait_until("the rules on db2", CONVERGE, || lab.routed(DB2));
    assert_eq!(lab.app_reaches().unwrap(), DB2);
    let mut last = String::new();
    let after = poll_until(CONVERGE, || {
        let m = metrics();
        last = m.clone();
        series(&m, "repmgr_nat_route_node_id") == Some(2.0)
            && series(&m, "repmgr_nat_primary_timeline") == Some(2.0)
            && series(&m, "repmgr_nat_node_up{node=\"1\"}") == Some(0.0)
            && shows(&m, "repmgr_nat_switches_total", 1.0)
            && shows(&m, "repmgr_nat_switch_latency_seconds_count", 1.0)
            && shows(&m, "repmgr_nat_events_total{event=\"standby_promote\",outcome=\"ok\"}", 1.0)
    });
    assert!(after, "the metrics after the failover:\n{last}");
    let m = metrics();
    assert!(m.contains("repmgr_nat_slot_lag_bytes{node=\"2\"}"), "no slot lag for db2:\n{m}");

    // dpkg --purge, in the proxy's namespace as an operator would run it on the proxy
    lab.ok(&["watch", "stop"]);
    lab.ok(&["exec", "proxy", "--", "dpkg", "--purge", "repmgr-nat"]);
    assert_eq!(lab.our_rules(), Vec::<String>::new(), "the purge left rules or chains");
    for path in PACKAGED {
        assert!(!Path::new(path).exists(), "the purge left {path}");
    }
    let status = lab.in_proxy("root", &[], "dpkg-query", &["-W", "-f=${db:Status-Status}", "repmgr-nat"]);
    assert!(status.code != 0 || status.stdout.trim() == "not-installed", "dpkg still knows repmgr-nat: {}", status.stdout);
    assert_ne!(lab.app_reaches().ok().as_deref(), Some(DB1), "nothing may route to the old primary");
}
