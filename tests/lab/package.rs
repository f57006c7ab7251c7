//! repmgr-nat as an operator installs it: every lab installs the Debian package (`dpkg
//! -i`: the binary, the sudoers file and the units where the package puts them). Here a
//! failover through it with watch's metrics scraped meanwhile, then `dpkg --purge`, which
//! must leave no rule, chain or file behind; a removal with watch still running and a jump
//! someone added, and one whose teardown cannot finish; an upgrade from the previous release
//! (0.1.0, one cluster a host: tests/previous-deb builds it), then upgrades the new program
//! refuses.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lab_kit::clients::series;
use lab_kit::lab::{Session, poll_until};
use lab_kit::now_ms;
use lab_kit::series::{alert_names, freeze, grid, none_fire};

use crate::common::{CONVERGE, DB1, DB2, Lab, Restore, routed_to, sorted};

const PACKAGED: &[&str] = &[
    "/usr/bin/repmgr-nat",
    "/etc/repmgr-nat.toml",
    "/etc/sudoers.d/repmgr-nat",
    "/usr/lib/systemd/system/repmgr-nat-setup.service",
    "/usr/lib/systemd/system/repmgr-nat-watch.service",
    "/usr/share/man/man1/repmgr-nat.1.gz",
    "/usr/share/bash-completion/completions/repmgr-nat",
    "/usr/share/doc/repmgr-nat/README.md",
    "/usr/share/repmgr-nat/repmgr-nat.rules.yml",
    "/var/lib/repmgr-nat",
];

#[test]
fn the_package_fails_over_reports_metrics_and_purges_without_a_trace() {
    let lab = Lab::up();
    for path in PACKAGED {
        assert!(Path::new(path).exists(), "the package did not install {path}");
    }
    let meta = |p: &str| std::fs::metadata(p).unwrap();
    assert_eq!(meta("/etc/sudoers.d/repmgr-nat").permissions().mode() & 0o7777, 0o440);
    assert_eq!(meta("/usr/bin/repmgr-nat").permissions().mode() & 0o7777, 0o755);
    let state = meta("/var/lib/repmgr-nat");
    assert_eq!((state.uid(), state.permissions().mode() & 0o7777), (0, 0o755), "the state directory");
    let conffiles =
        lab.in_proxy("root", &[], "dpkg-query", &["-W", "-f=${Conffiles}", "repmgr-nat"]).expect(0, "conffiles");
    for conffile in ["/etc/repmgr-nat.toml", "/etc/sudoers.d/repmgr-nat"] {
        assert!(conffiles.stdout.contains(conffile), "{conffile} is not a conffile: {}", conffiles.stdout);
    }
    // installed, not enabled: the operator enables the units
    let wants = lab.in_proxy("root", &[], "sh", &["-c", "ls -d /etc/systemd/system/*.wants/repmgr-nat* 2>/dev/null"]);
    assert_eq!(wants.stdout.trim(), "", "the package enabled a unit");
    // a reinstall keeps the administrator's config
    let edited = std::fs::read("/etc/repmgr-nat.toml").unwrap();
    lab.in_proxy("root", &[], "dpkg", &["-i", "--force-confold", &lab.env["REPMGR_NAT_DEB"]]).expect(0, "a reinstall");
    assert_eq!(std::fs::read("/etc/repmgr-nat.toml").unwrap(), edited, "a reinstall changed /etc/repmgr-nat.toml");

    // watch, as the packaged unit runs it, serves its metrics on the proxy's loopback
    lab.ok(&["watch", "start"]);
    let scrape = || lab.lab(&["exec", "proxy", "--", &lab.env["KIT_BIN"], "metrics"]);
    let metrics = || scrape().stdout;
    let shows = |text: &str, name: &str, at_least: f64| series(text, name).is_some_and(|v| v >= at_least);
    lab.wait_until("metrics: the route and both nodes up", CONVERGE, || {
        let m = metrics();
        series(&m, "repmgr_nat_route_node_id") == Some(1.0)
            && shows(&m, "repmgr_nat_node_up{node=\"1\"}", 1.0)
            && shows(&m, "repmgr_nat_node_up{node=\"2\"}", 1.0)
    });

    // a failover through the packaged paths (the event and sudo call /usr/bin/repmgr-nat),
    // scraped all through: every scrape answers, and some show the primary lost, not yet
    // replaced
    let done = AtomicBool::new(false);
    let scrapes = std::thread::scope(|s| {
        let scraper = s.spawn(|| {
            let started = Instant::now();
            let mut scrapes = Vec::new();
            while !done.load(Ordering::Relaxed) && started.elapsed() < 2 * CONVERGE {
                scrapes.push((now_ms(), scrape()));
                std::thread::sleep(Duration::from_millis(100));
            }
            scrapes
        });
        lab.ok(&["stop", "db1"]);
        lab.ok(&["wait-primary", "db2", "60"]);
        lab.wait_until("the rules on db2", CONVERGE, || lab.routed(DB2));
        done.store(true, Ordering::Relaxed);
        scraper.join().unwrap()
    });
    let mut timed: Vec<(u64, Option<String>)> =
        scrapes.iter().map(|(at, r)| (*at, (r.code == 0).then(|| r.stdout.clone()))).collect();
    let scrapes: Vec<_> = scrapes.into_iter().map(|(_, r)| r).collect();
    let failed: Vec<_> = scrapes.iter().filter(|r| r.code != 0).collect();
    assert!(failed.is_empty(), "{} of {} scrapes failed during the failover: {failed:?}", failed.len(), scrapes.len());
    let lost = scrapes.iter().any(|r| {
        series(&r.stdout, "repmgr_nat_node_up{node=\"1\"}") == Some(0.0)
            && series(&r.stdout, "repmgr_nat_route_node_id") == Some(1.0)
            && series(&r.stdout, "repmgr_nat_primary_state{state=\"none\"}") == Some(1.0)
    });
    assert!(lost, "none of {} scrapes saw node 1 down while the route still pointed at it", scrapes.len());
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
    assert!(series(&m, "repmgr_nat_slot_lag_bytes{node=\"2\"}").is_some(), "no slot lag for db2:\n{m}");
    // the scraping stopped once the rules moved, maybe before a pass of watch saw the new
    // primary: the settled state ends the series
    assert_eq!(series(&m, "repmgr_nat_primary_state{state=\"legit\"}"), Some(1.0), "{m}");
    timed.push((now_ms(), Some(m.clone())));
    the_shipped_alerts_judge_the_scrapes(&timed);

    // dpkg --purge, in the proxy's namespace as an operator would run it on the proxy:
    // every file the package installed goes, with what it made at run time
    let listed = lab.in_proxy("root", &[], "dpkg", &["-L", "repmgr-nat"]).expect(0, "dpkg -L");
    let mut installed: Vec<String> =
        listed.stdout.lines().filter(|p| Path::new(p).is_file()).map(str::to_string).collect();
    installed.extend(PACKAGED.iter().map(|p| p.to_string()));
    lab.ok(&["watch", "stop"]);
    lab.ok(&["exec", "proxy", "--", "dpkg", "--purge", "repmgr-nat"]);
    assert_eq!(lab.our_rules(), Vec::<String>::new(), "the purge left rules or chains");
    let left: Vec<_> = installed.iter().filter(|p| Path::new(p).exists()).collect();
    assert!(left.is_empty(), "the purge left {left:?}");
    let status = lab.in_proxy("root", &[], "dpkg-query", &["-W", "-f=${db:Status-Status}", "repmgr-nat"]);
    assert!(
        status.code != 0 || status.stdout.trim() == "not-installed",
        "dpkg still knows repmgr-nat: {}",
        status.stdout
    );
    assert_ne!(lab.app_reaches().ok().as_deref(), Some(DB1), "nothing may route to the old primary");
}

/// The failover's scrapes, on a 1 s grid and then held for 2 minutes as they ended (settled), fed to
/// the alerting rules the package installed: none fires; the same scrapes with the route
/// frozen as it was before the switch make `RepmgrNatAppNotRouted` fire, and only it.
fn the_shipped_alerts_judge_the_scrapes(scrapes: &[(u64, Option<String>)]) {
    let rules = "/usr/share/repmgr-nat/repmgr-nat.rules.yml";
    let alerts = alert_names(&std::fs::read_to_string(rules).unwrap());
    assert!(alerts.len() >= 10, "{alerts:?}");
    let start = scrapes.first().expect("scrapes").0;
    let span = (scrapes.last().unwrap().0 - start) / 1000 + 1;
    let seconds = span + 120;
    let healthy = grid(scrapes, start, seconds);
    let mut frozen = healthy.clone();
    for name in ["repmgr_nat_route_node_id", "repmgr_nat_route_app_open", "repmgr_nat_route_timeline"] {
        freeze(&mut frozen, name);
    }
    let promtool = |name: &str, grid| {
        let file = std::env::temp_dir().join(format!("repmgr-nat-lab-alerts-{name}.yml"));
        std::fs::write(&file, none_fire(rules, grid, seconds - 1, &alerts)).unwrap();
        let out = std::process::Command::new("promtool").arg("test").arg("rules").arg(&file).output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), said, file)
    };
    let (ok, said, file) = promtool("failover", &healthy);
    assert!(ok, "an alert fires after a failover {span} s long ({}):\n{said}", file.display());
    let (ok, said, file) = promtool("frozen", &frozen);
    assert!(!ok, "nothing fires with the route frozen before the switch ({}):\n{said}", file.display());
    let fired: Vec<&str> = said
        .lines()
        .filter_map(|l| l.trim().strip_prefix("alertname: "))
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(fired, ["RepmgrNatAppNotRouted"], "with the route frozen ({}):\n{said}", file.display());
    assert!(said.contains("alertname=\"RepmgrNatAppNotRouted\""), "{said}");
    eprintln!(
        "alerts: {} scrapes over {span} s fed to promtool: none fires; with the route frozen, RepmgrNatAppNotRouted",
        scrapes.len()
    );
}

const STATE: &str = "/var/lib/repmgr-nat";

/// After a test that makes the purge keep the state directory: it goes (the next lab's
/// preflight refuses it), or the mark that keeps it does while the package is installed.
struct KeptState;

impl Drop for KeptState {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(Path::new(STATE).join("teardown-failed"));
        let known = std::process::Command::new("dpkg-query").args(["-W", "repmgr-nat"]).output();
        if known.is_ok_and(|out| !out.status.success()) {
            let _ = std::fs::remove_dir_all(STATE);
        }
    }
}

#[test]
fn removal_leaves_nothing_forwarding_with_watch_running_and_says_so_when_it_cannot() {
    let lab = Lab::up();
    let _kept = KeptState;
    let iptables = |args: &[&str]| lab.ok(&[&["exec", "proxy", "--", "iptables"][..], args].concat());
    lab.ok(&["watch", "start"]);
    lab.wait_until("watch passes", CONVERGE, || lab.watch_passes() > 2);
    // a jump with a condition, as someone might add: the kernel keeps a chain jumped to
    iptables(&["-t", "nat", "-I", "PREROUTING", "-p", "tcp", "-j", "repmgr_dnat"]);

    // teardown with watch running, asking the rules twice a second: nothing comes back
    let teardown = lab.repmgr_nat("root", &["teardown"]).expect(0, "teardown with watch running");
    assert!(teardown.stderr.contains("still runs; it can switch nothing any more"), "{}", teardown.stderr);
    assert_eq!(lab.our_rules(), Vec::<String>::new(), "teardown left rules");
    let passes = lab.watch_passes();
    lab.wait_until("watch passes after the teardown", CONVERGE, || lab.watch_passes() >= passes + 6);
    assert_eq!(lab.our_rules(), Vec::<String>::new(), "something put rules back after teardown");
    let reconcile = lab.repmgr_nat("postgres", &["reconcile"]).expect(3, "reconcile after teardown");
    assert!(reconcile.stderr.contains("was torn down"), "{}", reconcile.stderr);
    assert_eq!(lab.our_rules(), Vec::<String>::new());
    assert!(lab.app_reaches().is_err(), "the application port forwards after teardown");

    // the package's removal, watch still running: nothing left, nothing loud
    let removal = lab.in_proxy("root", &[], "dpkg", &["-r", "repmgr-nat"]).expect(0, "dpkg -r");
    assert!(!removal.stderr.contains("FAILED"), "{}", removal.stderr);
    assert_eq!(lab.our_rules(), Vec::<String>::new(), "the removal left rules");

    // installed again (the config stayed), set up: routed again, watch follows
    lab.in_proxy("root", &[], "dpkg", &["-i", &lab.env["REPMGR_NAT_DEB"]]).expect(0, "install again");
    lab.repmgr_nat("root", &["setup"]).expect(0, "setup after the removal");
    assert_eq!(sorted(lab.our_rules()), routed_to(DB1, &[54321, 54322]));

    // a rule of someone else's in our hold chain: teardown cannot finish; the purge says
    // so, loudly, and keeps the record of where the rules forward
    iptables(&["-A", "repmgr_hold", "-p", "udp", "-j", "ACCEPT"]);
    let purge = lab.in_proxy("root", &[], "dpkg", &["--purge", "repmgr-nat"]).expect(0, "dpkg --purge");
    assert!(purge.stderr.contains("TEARDOWN FAILED"), "{}", purge.stderr);
    assert!(purge.stderr.contains("/var/lib/repmgr-nat KEPT"), "{}", purge.stderr);
    assert!(Path::new(STATE).join("teardown-failed").is_file());
    assert!(lab.record().starts_with("1 all "), "the record: {:?}", lab.record());
    assert!(lab.our_rules().iter().any(|l| l.contains("--to-destination 198.51.100.11")), "{:?}", lab.our_rules());
    lab.ok(&["watch", "stop"]);
}

/// A package's path: `var` from the environment (tests/run builds both once), or what
/// `script` builds and prints on its last line.
fn package(var: &str, script: &str) -> String {
    if let Ok(path) = std::env::var(var) {
        return path;
    }
    let out = std::process::Command::new(crate::common::repo().join(script)).output().expect(script);
    assert!(out.status.success(), "{script} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string()
}

#[test]
fn an_upgrade_from_the_single_cluster_release_moves_nothing_and_one_that_would_stop_switching_is_refused() {
    // the previous first: its cargo deb empties target/debian, where packaging/deb puts ours
    let previous = package("REPMGR_NAT_PREVIOUS_DEB", "tests/previous-deb");
    let deb = package("REPMGR_NAT_DEB", "packaging/deb");
    // a host set up and watched with 0.1.0, the release before instances
    let lab = Lab::up_with(&Session::take(), &[], &[("REPMGR_NAT_DEB", previous.as_str())]);
    let version = || lab.in_proxy("root", &[], "dpkg-query", &["-W", "-f=${Version}", "repmgr-nat"]).stdout;
    assert_eq!(version(), "0.1.0-1");
    lab.ok(&["watch", "start"]);
    lab.wait_until("watch passes", CONVERGE, || lab.watch_passes() > 2);
    let kept = [
        "/etc/repmgr-nat.toml",
        "/usr/lib/systemd/system/repmgr-nat-setup.service",
        "/usr/lib/systemd/system/repmgr-nat-watch.service",
    ];
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let before: Vec<String> = kept.iter().map(|p| read(p)).collect();
    let (rules, record) = (lab.nat(), lab.record());
    assert!(record.starts_with("1 all "), "the record: {record:?}");

    // the upgrade as apt makes it, nothing edited but the config: no question, no refusal
    let run = lab.in_proxy("root", &[], "dpkg", &["-i", &deb]).expect(0, "the upgrade from 0.1.0");
    assert!(!run.stderr.contains("REFUSED"), "{}", run.stderr);
    assert_ne!(version(), "0.1.0-1");
    assert!(read("/etc/sudoers.d/repmgr-nat").contains("--follow"), "the unedited sudoers file was not replaced");
    for path in ["repmgr-nat-setup@.service", "repmgr-nat-watch@.service"] {
        assert!(Path::new("/usr/lib/systemd/system").join(path).is_file(), "the upgrade did not install {path}");
    }
    let after: Vec<String> = kept.iter().map(|p| read(p)).collect();
    assert_eq!(after, before, "the upgrade changed the config or a unit");
    assert_eq!((lab.nat(), lab.record()), (rules.clone(), record.clone()), "the upgrade moved the rules or the record");

    // watch restarted with the new program, as the package's postinst has systemd do: it
    // follows the tables, agrees with the old record and switches nothing
    lab.ok(&["watch", "stop"]);
    lab.ok(&["watch", "start"]);
    let log = lab.env["WATCH_LOG"].clone();
    lab.wait_until("the new watch following the tables", CONVERGE, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("watch: following the tables"))
    });
    let passes = lab.watch_passes();
    lab.wait_until("the new watch passes", CONVERGE, || lab.watch_passes() >= passes + 4);
    assert_eq!((lab.nat(), lab.record()), (rules, record), "the new watch moved the rules or the record");
    lab.repmgr_nat("postgres", &["status"]).expect(0, "status after the upgrade");
    assert_eq!(lab.app_reaches().unwrap(), DB1);

    // upgrades of it the new program refuses
    let upgrade = || lab.in_proxy("root", &[], "dpkg", &["-i", "--force-confold", &deb]);
    let state = || lab.in_proxy("root", &[], "dpkg-query", &["-W", "-f=${db:Status-Status}", "repmgr-nat"]).stdout;

    // sudoers grants kept from before that no longer admit what repmgr-nat runs
    let sudoers = Restore::file("/etc/sudoers.d/repmgr-nat");
    let granted = std::fs::read_to_string("/etc/sudoers.d/repmgr-nat").unwrap();
    std::fs::write("/etc/sudoers.d/repmgr-nat", granted.replace("main_backup", "other_backup")).unwrap();
    let refused = upgrade().expect(1, "an upgrade with grants that admit no barman command");
    assert!(refused.stderr.contains("UPGRADE REFUSED"), "{}", refused.stderr);
    assert!(refused.stderr.contains("receive-wal --stop main_backup"), "what is refused: {}", refused.stderr);
    assert_eq!(state(), "half-configured");
    let passes = lab.watch_passes();
    lab.wait_until("the old watch passes on", CONVERGE, || lab.watch_passes() >= passes + 4);
    drop(sudoers);
    lab.in_proxy("root", &[], "dpkg", &["--configure", "repmgr-nat"]).expect(0, "configure once fixed");
    assert_eq!(state(), "installed");

    // a config the new program refuses
    let config = Restore::file("/etc/repmgr-nat.toml");
    let text = std::fs::read_to_string("/etc/repmgr-nat.toml").unwrap();
    std::fs::write("/etc/repmgr-nat.toml", format!("{text}[nat]\nbogus = 1\n")).unwrap();
    let refused = upgrade().expect(1, "an upgrade with a config it refuses");
    assert!(refused.stderr.contains("UPGRADE REFUSED") && refused.stderr.contains("bad config"), "{}", refused.stderr);
    drop(config);
    lab.in_proxy("root", &[], "dpkg", &["--configure", "repmgr-nat"]).expect(0, "configure once fixed");

    // the packaged config, never edited: nothing configured, nothing to check
    let config = Restore::file("/etc/repmgr-nat.toml");
    std::fs::copy(crate::common::repo().join("packaging/repmgr-nat.toml"), "/etc/repmgr-nat.toml").unwrap();
    let run = upgrade().expect(0, "an upgrade of a host never configured");
    assert!(!run.stderr.contains("REFUSED"), "{}", run.stderr);
    drop(config);
    lab.ok(&["watch", "stop"]);
}
