//! Switching the NAT chains, from either side of the privilege boundary: `Direct` does
//! it in this process as root; `ViaSudo` asks `sudo -n repmgr-nat route`, which runs
//! `Direct` as root with addresses read only from the root-owned config.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::core::config::Config;
use crate::core::ruleset::{self, Live, Record, Routing};
use crate::effects::exec::{self, Cmd};
use crate::effects::firewall::Firewall;
use crate::effects::state::StateDir;

/// Where sudoers.d/repmgr-nat expects the program: the unprivileged side asks sudo to run
/// exactly this path.
pub const INSTALLED_PATH: &str = "/usr/bin/repmgr-nat";

pub trait Nat {
    /// What the nat table holds for our chains now.
    fn live(&self) -> Result<Live>;
    /// What root recorded with its last switch.
    fn recorded(&self) -> Result<Option<Record>>;
    /// Switches the chains to the record's route and records it; true if a rule changed.
    /// A timeline of 0 (unknown) keeps the recorded one.
    fn switch(&self, record: Record) -> Result<bool>;
}

pub struct Direct<'a> {
    pub cfg: &'a Config,
    pub fw: &'a dyn Firewall,
    pub state: &'a StateDir,
}

impl Nat for Direct<'_> {
    fn live(&self) -> Result<Live> {
        Ok(Live::parse(self.cfg, &self.fw.save()?))
    }

    fn recorded(&self) -> Result<Option<Record>> {
        self.state.recorded(self.cfg)
    }

    /// Under root's switch lock: one `iptables-restore` transaction when anything of ours
    /// differs from the route (which also puts back missing chains, jumps and the hold:
    /// every switch heals tables that something else rewrote), the route recorded, the
    /// connections proxied through ports that stopped forwarding cut. What it did is said
    /// once the lock is released: output may block on a caller that reads nothing, and
    /// must never hold the lock, nor come between the rules and the record.
    fn switch(&self, record: Record) -> Result<bool> {
        let Switched { changed, said, audit } = self.switched(record)?;
        for (level, line) in said {
            log::log!(level, "{line}");
        }
        if let Some(audit) = audit {
            crate::logging::audit(&audit);
        }
        Ok(changed)
    }
}

/// What a switch did, and what it has to say about it.
struct Switched {
    changed: bool,
    said: Vec<(log::Level, String)>,
    /// For the system log (a syslog socket can block too).
    audit: Option<String>,
}

impl Direct<'_> {
    /// The switch itself, under root's switch lock, which is released when it returns.
    fn switched(&self, record: Record) -> Result<Switched> {
        let cfg = self.cfg;
        let route = record.route;
        let _lock = self.state.route_lock(cfg.state.lock_timeout)?;
        // an unknown timeline (a switch by hand) keeps the recorded one, read under the
        // lock: a switch that came between must not have its fence lowered
        let record = match record.timeline {
            0 => Record { timeline: self.state.recorded(cfg).ok().flatten().map_or(0, |r| r.timeline), ..record },
            _ => record,
        };
        let live = self.live()?;
        live.check_ours(cfg).map_err(refused)?;
        let before = live.routing(cfg);
        let changed = before != Routing::To(route);
        let mut said = Vec::new();
        if let Some(text) = ruleset::transaction(cfg, &live, Some(route)) {
            let started = Instant::now();
            self.fw.restore(&text)?;
            let what = if changed { format!("{before} -> {route}") } else { format!("{route}, repaired") };
            said.push((log::Level::Info, format!("nat: {what} ({} ms)", started.elapsed().as_millis())));
        }
        // recorded at once: the rules and the record disagree for as short a time as can be
        if changed || self.state.recorded(cfg).ok().flatten() != Some(record) {
            self.state.record(record)?;
        }
        if changed {
            for (node, port) in ruleset::cuts(cfg, &before, route) {
                let started = Instant::now();
                let through = port.map(|p| format!(" through port {p}")).unwrap_or_default();
                said.push(match self.fw.forget(cfg.proxy, port, node.addr()) {
                    Ok(found) => (
                        log::Level::Info,
                        format!(
                            "nat: {} connections proxied to node {}{through} ({} ms)",
                            if found { "cut the" } else { "no" },
                            node.id(),
                            started.elapsed().as_millis()
                        ),
                    ),
                    // The new rules stand; only old connections may linger until they end.
                    Err(e) => (
                        log::Level::Error,
                        format!("nat: cannot cut connections proxied to node {}{through}: {e:#}", node.id()),
                    ),
                });
            }
        }
        let audit = changed.then(|| format!("switched {before} -> {record}"));
        Ok(Switched { changed, said, audit })
    }
}

impl Direct<'_> {
    /// `setup`: our chains where missing, exactly one jump to each, the hold; the rules in
    /// the nat chains stay as they are (the article's chains are adopted).
    pub fn install(&self) -> Result<()> {
        let live = self.live()?;
        live.check_ours(self.cfg).map_err(refused)?;
        if let Some(text) = ruleset::transaction(self.cfg, &live, None) {
            self.fw.restore(&text)?;
            log::info!("nat: chains, jumps and hold put in place");
        }
        Ok(())
    }

    /// `teardown`: every jump to our chains, then the chains.
    pub fn uninstall(&self) -> Result<()> {
        let live = self.live()?;
        live.check_ours(self.cfg).map_err(refused)?;
        if let Some(text) = ruleset::teardown_transaction(self.cfg, &live) {
            self.fw.restore(&text)?;
        }
        Ok(())
    }
}

fn refused(e: anyhow::Error) -> anyhow::Error {
    crate::exit::Exit::Refused(format!("{e:#}")).into()
}

/// The unprivileged side: `sudo -n /usr/bin/repmgr-nat route ...`.
pub struct ViaSudo<'a> {
    pub cfg: &'a Config,
}

const ROUTE_TIMEOUT: Duration = Duration::from_secs(60);

impl ViaSudo<'_> {
    pub fn route_cmd(args: &[&str]) -> Cmd {
        Cmd::new(exec::system_tool("sudo")).args(["-n", INSTALLED_PATH, "route"]).args(args.iter().copied())
    }

    /// `route <id> --ports <open> --timeline <t>` (no timeline when it is unknown).
    pub fn switch_cmd(record: Record) -> Cmd {
        let (id, open, timeline) =
            (record.route.node.id().to_string(), record.route.open.to_string(), record.timeline.to_string());
        let mut args = vec![id.as_str(), "--ports", open.as_str()];
        if record.timeline > 0 {
            args.extend(["--timeline", timeline.as_str()]);
        }
        Self::route_cmd(&args)
    }

    fn run(&self, cmd: &Cmd) -> Result<String> {
        // root's refusal (exit 3) or bad input (2) stays what it is for our caller
        let out = exec::run(cmd, None, ROUTE_TIMEOUT).map_err(|e| crate::exit::of_child(e.code(), e.into()))?;
        // What root logged belongs in the same log as ours.
        crate::logging::relay(&out.stderr);
        Ok(out.stdout)
    }
}

impl Nat for ViaSudo<'_> {
    fn live(&self) -> Result<Live> {
        let text = self.run(&Self::route_cmd(&["--show"]))?;
        Ok(Live::parse(self.cfg, &text))
    }

    /// The record is readable by anyone; no sudo needed.
    fn recorded(&self) -> Result<Option<Record>> {
        StateDir::new(&self.cfg.state.dir).recorded(self.cfg)
    }

    fn switch(&self, record: Record) -> Result<bool> {
        let cmd = Self::switch_cmd(record);
        match self.run(&cmd)?.trim() {
            "changed" => Ok(true),
            "unchanged" => Ok(false),
            other => bail!("{cmd} answered {other:?}, expected changed or unchanged"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::net::Ipv4Addr;

    use anyhow::anyhow;

    use super::*;
    use crate::core::config::tests::{example, node};
    use crate::core::ruleset::sim::Tables;
    use crate::core::ruleset::{Open, Route};

    /// The kernel's tables in memory; records every restore and cut, fails those whose
    /// description starts with one of `failing`.
    struct FakeFirewall {
        tables: RefCell<Tables>,
        calls: RefCell<Vec<String>>,
        failing: Vec<&'static str>,
    }

    impl FakeFirewall {
        fn holding(tables: Tables) -> FakeFirewall {
            FakeFirewall { tables: RefCell::new(tables), calls: RefCell::default(), failing: Vec::new() }
        }
        /// Routed by a complete switch to `route`.
        fn routed(route: Route) -> FakeFirewall {
            let cfg = example();
            let text = ruleset::transaction(&cfg, &Live::default(), Some(route)).unwrap();
            FakeFirewall::holding(Tables::default().restore(&text).unwrap())
        }
        fn call(&self, name: String) -> Result<()> {
            let fails = self.failing.iter().any(|f| name.starts_with(f));
            self.calls.borrow_mut().push(name.clone());
            if fails { Err(anyhow!("{name}: injected failure")) } else { Ok(()) }
        }
        fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }
    }

    impl Firewall for FakeFirewall {
        fn save(&self) -> Result<String> {
            Ok(self.tables.borrow().save())
        }
        fn restore(&self, text: &str) -> Result<()> {
            let next = self.tables.borrow().restore(text).map_err(|e| anyhow!(e))?;
            let routed = Live::parse(&example(), &next.save()).routing(&example());
            self.call(format!("restore: {routed}"))?;
            *self.tables.borrow_mut() = next;
            Ok(())
        }
        fn forget(&self, _proxy: Ipv4Addr, port: Option<u16>, node: Ipv4Addr) -> Result<bool> {
            self.call(format!("forget {node}{}", port.map(|p| format!(":{p}")).unwrap_or_default()))?;
            Ok(true)
        }
        fn enable_forwarding(&self) -> Result<bool> {
            self.call("forwarding".into()).map(|()| true)
        }
    }

    fn state_dir(name: &str) -> (std::path::PathBuf, StateDir) {
        let dir = std::env::temp_dir().join(format!("repmgr-nat-test-nat-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (dir.clone(), StateDir::new(&dir))
    }

    fn route(id: u32, open: Open) -> Route {
        Route::new(node(id), open)
    }

    fn rec(id: u32, open: Open) -> Record {
        Record { route: route(id, open), timeline: 2 }
    }

    #[test]
    fn a_switch_is_one_transaction_then_the_cut_then_the_record() {
        let cfg = example();
        let fw = FakeFirewall::routed(route(1, Open::All));
        let (dir, state) = state_dir("switch");
        let direct = Direct { cfg: &cfg, fw: &fw, state: &state };
        assert!(direct.switch(rec(2, Open::Barman)).unwrap());
        assert_eq!(fw.calls(), ["restore: node 2 ports barman", "forget 10.8.1.1"]);
        assert_eq!(state.recorded(&cfg).unwrap(), Some(rec(2, Open::Barman)));
        assert!(direct.switch(rec(2, Open::All)).unwrap());
        assert_eq!(fw.calls()[2..], ["restore: node 2 ports all"], "opening a port cuts nothing");
        assert_eq!(state.recorded(&cfg).unwrap(), Some(rec(2, Open::All)));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn what_a_switch_says_waits_until_the_record_is_written_and_the_lock_released() {
        let cfg = example();
        let fw = FakeFirewall::routed(route(1, Open::All));
        let (dir, state) = state_dir("said");
        let direct = Direct { cfg: &cfg, fw: &fw, state: &state };
        let switched = direct.switched(rec(2, Open::Barman)).unwrap();
        assert!(switched.changed);
        assert_eq!(state.recorded(&cfg).unwrap(), Some(rec(2, Open::Barman)));
        assert!(state.route_lock(Duration::ZERO).is_ok(), "the lock is still held");
        let said: Vec<_> = switched.said.iter().map(|(_, line)| line.split(" (").next().unwrap()).collect();
        assert_eq!(
            said,
            ["nat: node 1 ports all -> node 2 ports barman", "nat: cut the connections proxied to node 1"]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_switch_of_unknown_timeline_keeps_the_one_recorded_when_it_runs() {
        let cfg = example();
        let fw = FakeFirewall::routed(route(1, Open::All));
        let (dir, state) = state_dir("keep-timeline");
        let direct = Direct { cfg: &cfg, fw: &fw, state: &state };
        // another switch recorded timeline 3 after this one was asked for
        drop(state.route_lock(Duration::ZERO).unwrap());
        state.record(Record { route: route(1, Open::All), timeline: 3 }).unwrap();
        direct.switch(Record { route: route(2, Open::All), timeline: 0 }).unwrap();
        assert_eq!(state.recorded(&cfg).unwrap(), Some(Record { route: route(2, Open::All), timeline: 3 }));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_switch_to_what_the_tables_hold_writes_nothing() {
        let cfg = example();
        let fw = FakeFirewall::routed(route(2, Open::All));
        let (dir, state) = state_dir("unchanged");
        let direct = Direct { cfg: &cfg, fw: &fw, state: &state };
        assert!(!direct.switch(rec(2, Open::All)).unwrap());
        assert_eq!(fw.calls(), Vec::<String>::new());
        assert_eq!(state.recorded(&cfg).unwrap(), Some(rec(2, Open::All)), "the record catches up");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_transaction_changes_nothing_and_records_nothing() {
        let cfg = example();
        let mut fw = FakeFirewall::routed(route(1, Open::All));
        fw.failing.push("restore");
        let (dir, state) = state_dir("failed");
        let direct = Direct { cfg: &cfg, fw: &fw, state: &state };
        assert!(direct.switch(rec(2, Open::Barman)).is_err());
        assert_eq!(direct.live().unwrap().routing(&cfg), Routing::To(route(1, Open::All)));
        assert_eq!(state.recorded(&cfg).unwrap(), None);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_failed_cut_does_not_undo_the_switch() {
        let cfg = example();
        let mut fw = FakeFirewall::routed(route(1, Open::All));
        fw.failing.push("forget");
        let (dir, state) = state_dir("cut");
        let direct = Direct { cfg: &cfg, fw: &fw, state: &state };
        assert!(direct.switch(rec(2, Open::Barman)).unwrap());
        assert_eq!(state.recorded(&cfg).unwrap(), Some(rec(2, Open::Barman)));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_switch_repairs_what_someone_else_removed() {
        let cfg = example();
        let fw = FakeFirewall::routed(route(1, Open::All));
        // a jump deleted by hand, the hold flushed
        let damaged = fw
            .tables
            .borrow()
            .restore("*nat\n-D OUTPUT -j repmgr_dnat\nCOMMIT\n*filter\n:repmgr_hold - [0:0]\nCOMMIT\n");
        *fw.tables.borrow_mut() = damaged.unwrap();
        assert!(!Live::parse(&cfg, &fw.save().unwrap()).in_place(&cfg));
        let (dir, state) = state_dir("repair");
        let direct = Direct { cfg: &cfg, fw: &fw, state: &state };
        assert!(!direct.switch(rec(1, Open::All)).unwrap(), "the route did not change");
        assert_eq!(fw.calls(), ["restore: node 1 ports all"], "but the tables were repaired");
        assert!(Live::parse(&cfg, &fw.save().unwrap()).in_place(&cfg));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn install_adopts_the_scripts_chains_and_uninstall_removes_everything_of_ours() {
        let cfg = example();
        // the article's @reboot script run twice, and its rules for db1
        let scripts = Tables::default()
            .restore(
                "*nat\n:repmgr_dnat - [0:0]\n:repmgr_snat - [0:0]\n-A PREROUTING -j repmgr_dnat\n\
                 -A PREROUTING -j repmgr_dnat\n-A OUTPUT -j repmgr_dnat\n-A POSTROUTING -j repmgr_snat\n\
                 -A repmgr_dnat -d 10.8.3.1/32 -p tcp -m tcp --dport 54321 -j DNAT --to-destination 10.8.1.1:5432\n\
                 -A repmgr_snat -d 10.8.1.1/32 -p tcp -m tcp --dport 5432 -j SNAT --to-source 10.8.3.1\nCOMMIT\n",
            )
            .unwrap();
        let fw = FakeFirewall::holding(scripts);
        let (dir, state) = state_dir("install");
        let direct = Direct { cfg: &cfg, fw: &fw, state: &state };
        direct.install().unwrap();
        let live = direct.live().unwrap();
        assert!(live.in_place(&cfg));
        assert_eq!(live.routing(&cfg), Routing::To(route(1, Open::Barman)), "the rules stay");
        direct.install().unwrap();
        assert_eq!(fw.calls().len(), 1, "a second install changes nothing");
        direct.uninstall().unwrap();
        assert_eq!(*fw.tables.borrow(), Tables::default());
        let _ = std::fs::remove_dir_all(dir);
    }
}
