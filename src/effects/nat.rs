//! Switching the NAT chains, from either side of the privilege boundary: `Direct` does
//! it in this process as root; `ViaSudo` asks `sudo -n repmgr-nat route`, which runs
//! `Direct` as root with addresses read only from the root-owned config.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::core::config::Config;
use crate::core::ruleset::{self, Live, Record};
use crate::effects::exec::{self, Cmd};
use crate::effects::firewall::Firewall;
use crate::effects::follow::{Feed, SudoFeed};
use crate::effects::state::StateDir;

/// Where sudoers.d/repmgr-nat expects the program: the unprivileged side asks sudo to run
/// exactly this path.
pub const INSTALLED_PATH: &str = "/usr/bin/repmgr-nat";

pub trait NatSwitch {
    /// What the nat table holds for our chains now.
    fn live(&self) -> Result<Live>;
    /// What root recorded with its last switch.
    fn recorded(&self) -> Result<Option<Record>>;
    /// Switches the chains to the record's route and records it; true if a rule changed.
    /// A timeline of 0 (unknown) keeps the recorded one.
    fn switch(&self, record: Record) -> Result<bool>;
    /// Readings as the tables change (`route --show --follow`), instead of asking again
    /// and again; none where reading is cheap (root's own process reads them directly).
    fn follow(&self) -> Result<Option<Box<dyn Feed>>> {
        Ok(None)
    }
}

pub struct Direct<'a> {
    pub cfg: &'a Config,
    pub fw: &'a dyn Firewall,
    pub state: &'a StateDir,
}

impl NatSwitch for Direct<'_> {
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
        // after teardown, whoever asks (a watch still running, an event that waited for
        // the run lock, a `route` started before) creates nothing
        if self.state.torn_down() {
            return Err(refused(anyhow::anyhow!(
                "repmgr-nat was torn down (`repmgr-nat teardown`, which the package's removal runs): nothing is \
                 switched until `repmgr-nat setup` runs again"
            )));
        }
        // an unknown timeline (a switch by hand) keeps the recorded one, read under the
        // lock: a switch that came between must not have its fence lowered
        let record = match record.timeline {
            0 => Record { timeline: self.state.recorded(cfg).ok().flatten().map_or(0, |r| r.timeline), ..record },
            _ => record,
        };
        let ruleset::Switch { before, changed, restore, cuts } =
            ruleset::switch(cfg, &self.live()?, route).map_err(refused)?;
        let mut said = Vec::new();
        if let Some(text) = restore {
            let started = Instant::now();
            self.fw.restore(&text)?;
            let what = if changed { format!("{before} -> {route}") } else { format!("{route}, repaired") };
            said.push((log::Level::Info, format!("nat: {what} ({} ms)", started.elapsed().as_millis())));
        }
        // recorded at once: the rules and the record disagree for as short a time as can be
        if changed || self.state.recorded(cfg).ok().flatten() != Some(record) {
            self.state.record(record)?;
        }
        for (node, port) in cuts {
            let started = Instant::now();
            let through = port.map(|p| format!(" through port {p}")).unwrap_or_default();
            said.push(match self.fw.forget(cfg.proxy, port, cfg.postgres_addr(node)) {
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

    /// `setup`, under root's switch lock: teardown's mark lifted, then `install`.
    pub fn set_up(&self) -> Result<()> {
        let _lock = self.state.route_lock(self.cfg.state.lock_timeout)?;
        if self.state.unmark_torn_down()? {
            log::info!("setup: torn down before; switches are allowed again");
        }
        self.install()
    }

    /// `teardown`, for good: under root's switch lock (a switch under way ends first), the
    /// mark that refuses every later switch, then `uninstall`, then the tables read again:
    /// anything of ours still there is an error that names it.
    pub fn tear_down(&self) -> Result<()> {
        let _lock = self.state.route_lock(self.cfg.state.lock_timeout)?;
        self.state.mark_torn_down()?;
        self.uninstall()?;
        let left = self.live()?;
        if !left.is_empty() {
            bail!("teardown left these in the tables:\n{}", left.render().trim_end());
        }
        Ok(())
    }
}

pub fn refused(e: anyhow::Error) -> anyhow::Error {
    crate::exit::Exit::Refused(format!("{e:#}")).into()
}

/// The unprivileged side: `sudo -n /usr/bin/repmgr-nat [--instance NAME] route ...`.
pub struct ViaSudo<'a> {
    pub cfg: &'a Config,
}

const ROUTE_TIMEOUT: Duration = Duration::from_secs(60);

impl ViaSudo<'_> {
    pub fn route_cmd(cfg: &Config, args: &[&str]) -> Cmd {
        Cmd::new(exec::system_tool("sudo"))
            .args(["-n", INSTALLED_PATH])
            .args(cfg.instance.args())
            .arg("route")
            .args(args.iter().copied())
    }

    /// `route <id> --ports <open> --timeline <t>` (no timeline when it is unknown).
    pub fn switch_cmd(cfg: &Config, record: Record) -> Cmd {
        let (id, open, timeline) =
            (record.route.node.id().to_string(), record.route.open.to_string(), record.timeline.to_string());
        let mut args = vec![id.as_str(), "--ports", open.as_str()];
        if record.timeline > 0 {
            args.extend(["--timeline", timeline.as_str()]);
        }
        Self::route_cmd(cfg, &args)
    }

    fn run(&self, cmd: &Cmd) -> Result<String> {
        // root's refusal (exit 3) or bad input (2) stays what it is for our caller
        let out = exec::run(cmd, None, ROUTE_TIMEOUT).map_err(|e| crate::exit::of_child(e.code(), e.into()))?;
        // What root logged belongs in the same log as ours.
        crate::logging::relay(&out.stderr);
        Ok(out.stdout)
    }
}

impl NatSwitch for ViaSudo<'_> {
    fn live(&self) -> Result<Live> {
        let text = self.run(&Self::route_cmd(self.cfg, &["--show"]))?;
        Ok(Live::parse(self.cfg, &text))
    }

    /// The record is readable by anyone; no sudo needed.
    fn recorded(&self) -> Result<Option<Record>> {
        StateDir::new(&self.cfg.state.dir).recorded(self.cfg)
    }

    fn switch(&self, record: Record) -> Result<bool> {
        let cmd = Self::switch_cmd(self.cfg, record);
        match self.run(&cmd)?.trim() {
            "changed" => Ok(true),
            "unchanged" => Ok(false),
            other => bail!("{cmd} answered {other:?}, expected changed or unchanged"),
        }
    }

    fn follow(&self) -> Result<Option<Box<dyn Feed>>> {
        Ok(Some(Box::new(SudoFeed::start(self.cfg)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::tests::{example, node};
    use crate::core::ruleset::sim::Tables;
    use crate::core::ruleset::{Open, Route, Routing};
    use crate::effects::dryrun::{PrintNat, Sink};
    use crate::effects::testing::FakeFirewall;

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
    fn a_dry_run_prints_the_switch_the_root_step_makes_and_refuses_what_it_refuses() {
        let cfg = example();
        let fw = FakeFirewall::routed(route(1, Open::All));
        let (dir, state) = state_dir("dry-run");
        let direct = Direct { cfg: &cfg, fw: &fw, state: &state };
        let plan = ruleset::switch(&cfg, &direct.live().unwrap(), route(2, Open::Barman)).unwrap();
        let out = Sink::capture();
        assert!(PrintNat::new(&cfg, &direct, false, &out).switch(rec(2, Open::Barman)).unwrap());
        assert_eq!(fw.calls(), Vec::<String>::new(), "a dry run changed the tables");
        let printed = out.captured();
        assert!(printed.contains(plan.restore.as_deref().unwrap()), "{printed}");
        assert!(
            printed.contains("conntrack -D -p tcp --orig-dst 10.8.3.1 --reply-src 10.8.1.1 --reply-port-src 5432"),
            "{printed}"
        );
        // someone else's rule in our chain: both refuse, exit 3
        let foreign = fw.tables.borrow().restore("*nat\n-A repmgr_dnat -p udp -j ACCEPT\nCOMMIT\n").unwrap();
        *fw.tables.borrow_mut() = foreign;
        let out = Sink::capture();
        let err = PrintNat::new(&cfg, &direct, false, &out).switch(rec(2, Open::Barman)).unwrap_err();
        assert_eq!(crate::exit::code(&err), crate::exit::REFUSED);
        assert_eq!(out.captured(), "", "a refused switch printed");
        let real = direct.switch(rec(2, Open::Barman)).unwrap_err();
        assert_eq!(format!("{err:#}"), format!("{real:#}"));
        let _ = std::fs::remove_dir_all(dir);
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
    fn after_teardown_no_switch_puts_anything_back_until_setup() {
        let cfg = example();
        let fw = FakeFirewall::routed(route(1, Open::All));
        // someone's jump with a condition: the kernel keeps a chain jumped to
        let added = fw.tables.borrow().restore("*nat\n-A PREROUTING -p tcp -j repmgr_dnat\nCOMMIT\n").unwrap();
        *fw.tables.borrow_mut() = added;
        let (dir, state) = state_dir("torn-down");
        let direct = Direct { cfg: &cfg, fw: &fw, state: &state };
        direct.tear_down().unwrap();
        assert_eq!(*fw.tables.borrow(), Tables::default());
        // a watch still running, an event that waited for the run lock: refused, nothing made
        let err = direct.switch(rec(2, Open::All)).unwrap_err();
        assert_eq!(crate::exit::code(&err), crate::exit::REFUSED);
        assert!(format!("{err:#}").contains("until `repmgr-nat setup` runs again"), "{err:#}");
        assert_eq!(*fw.tables.borrow(), Tables::default());
        assert_eq!(state.recorded(&cfg).unwrap(), None);
        direct.set_up().unwrap();
        assert!(direct.switch(rec(2, Open::All)).unwrap(), "setup lifts it");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_teardown_that_cannot_finish_says_why_and_still_refuses_switches() {
        let cfg = example();
        let fw = FakeFirewall::routed(route(1, Open::All));
        let foreign = fw.tables.borrow().restore("*nat\n-A repmgr_dnat -p udp -j ACCEPT\nCOMMIT\n").unwrap();
        *fw.tables.borrow_mut() = foreign;
        let (dir, state) = state_dir("torn-down-refused");
        let direct = Direct { cfg: &cfg, fw: &fw, state: &state };
        let err = direct.tear_down().unwrap_err();
        assert!(format!("{err:#}").contains("-A repmgr_dnat -p udp -j ACCEPT"), "{err:#}");
        assert!(direct.switch(rec(2, Open::All)).is_err(), "switched after a teardown");
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
