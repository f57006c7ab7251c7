//! Switching the NAT chains, from either side of the privilege boundary: `Direct` does
//! it in this process as root; `ViaSudo` asks `sudo -n repmgr-nat route`, which runs
//! `Direct` as root with addresses read only from the root-owned config.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::core::config::Config;
use crate::effects::exec::{self, Cmd};
use crate::effects::firewall::Firewall;
use crate::core::ruleset::{self, Live, Route, Routing};
use crate::effects::state::StateDir;

/// Where sudoers.d/repmgr-nat expects the program: the unprivileged side asks sudo to run
/// exactly this path.
pub const INSTALLED_PATH: &str = "/usr/local/bin/repmgr-nat";

pub trait Nat {
    /// What the nat table holds for our chains now.
    fn live(&self) -> Result<Live>;
    /// Switches the chains to `route`; true if anything changed.
    fn switch(&self, route: Route) -> Result<bool>;
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

    /// Under root's switch lock: one `iptables-restore` transaction when the chains hold
    /// anything else, missing jumps added, the connections proxied through ports that
    /// stopped forwarding cut, and the route recorded.
    fn switch(&self, route: Route) -> Result<bool> {
        let cfg = self.cfg;
        cfg.node(route.node)?;
        let _lock = self.state.route_lock(cfg.state.lock_timeout)?;
        let live = self.live()?;
        let before = live.routing(cfg);
        let changed = before != Routing::To(route);
        if changed {
            let started = Instant::now();
            self.fw.restore(&ruleset::restore_text(cfg, route))?;
            log::info!("nat: {before} -> {route} ({} ms)", started.elapsed().as_millis());
        }
        fix_jumps(cfg, self.fw, &live)?;
        if changed {
            for (node, port) in ruleset::cuts(cfg, &before, route) {
                let started = Instant::now();
                let through = port.map(|p| format!(" through port {p}")).unwrap_or_default();
                match self.fw.forget(cfg.proxy, port, cfg.node(node)?) {
                    Ok(found) => log::info!(
                        "nat: {} connections proxied to node {node}{through} ({} ms)",
                        if found { "cut the" } else { "no" },
                        started.elapsed().as_millis()
                    ),
                    // The new rules stand; only old connections may linger until they end.
                    Err(e) => log::error!("nat: cannot cut connections proxied to node {node}{through}: {e:#}"),
                }
            }
        }
        if changed || self.state.recorded().ok().flatten() != Some(route) {
            self.state.record(route)?;
        }
        Ok(changed)
    }
}

/// Adds the jumps into our chains that are missing and removes duplicates, so that each
/// built-in chain reaches ours exactly once. `setup` does it at boot; every switch does it
/// too, which heals a nat table that something else rewrote.
pub fn fix_jumps(cfg: &Config, fw: &dyn Firewall, live: &Live) -> Result<()> {
    for (hook, chain, count) in live.jumps(cfg) {
        if count == 0 {
            log::info!("nat: -A {hook} -j {chain} is missing: adding it");
            fw.add_jump(hook, chain)?;
        }
        for _ in 1..count {
            log::info!("nat: -A {hook} -j {chain} is there {count} times: removing one");
            fw.delete_jump(hook, chain)?;
        }
    }
    Ok(())
}

/// `setup`: the chains where missing, and exactly one jump to them from each built-in
/// chain (the article's chains and jumps are adopted as they are).
pub fn install(cfg: &Config, fw: &dyn Firewall, live: &Live) -> Result<()> {
    for (present, chain) in [(live.dnat_chain, &cfg.nat.dnat_chain), (live.snat_chain, &cfg.nat.snat_chain)] {
        if !present {
            log::info!("nat: chain {chain} is missing: creating it");
            fw.new_chain(chain)?;
        }
    }
    fix_jumps(cfg, fw, live)
}

/// `teardown`: every jump to our chains, then the chains.
pub fn uninstall(cfg: &Config, fw: &dyn Firewall, live: &Live) -> Result<()> {
    for (hook, chain, count) in live.jumps(cfg) {
        for _ in 0..count {
            fw.delete_jump(hook, chain)?;
        }
    }
    for chain in [&cfg.nat.dnat_chain, &cfg.nat.snat_chain] {
        fw.delete_chain(chain)?;
    }
    Ok(())
}

/// The unprivileged side: `sudo -n /usr/local/bin/repmgr-nat route ...`.
pub struct ViaSudo<'a> {
    pub cfg: &'a Config,
}

const ROUTE_TIMEOUT: Duration = Duration::from_secs(60);

impl ViaSudo<'_> {
    pub fn route_cmd(args: &[&str]) -> Cmd {
        Cmd::new(exec::system_tool("sudo")).args(["-n", INSTALLED_PATH, "route"]).args(args.iter().copied())
    }

    fn run(&self, cmd: &Cmd) -> Result<String> {
        let out = exec::run(cmd, None, ROUTE_TIMEOUT)?;
        // What root logged belongs in the same log as ours.
        eprint!("{}", out.stderr);
        Ok(out.stdout)
    }
}

impl Nat for ViaSudo<'_> {
    fn live(&self) -> Result<Live> {
        let text = self.run(&Self::route_cmd(&["--show"]))?;
        Ok(Live::parse(self.cfg, &text))
    }

    fn switch(&self, route: Route) -> Result<bool> {
        let cmd = Self::route_cmd(&[&route.node.to_string(), "--ports", &route.open.to_string()]);
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
    use crate::core::config::NodeId;
    use crate::core::config::tests::example;
    use crate::core::ruleset::{Open, restore_text};

    /// A nat table in memory: `save` prints it, `restore` replaces our chains; every call
    /// is recorded and the calls named in `failing` fail.
    struct FakeFirewall {
        table: RefCell<String>,
        calls: RefCell<Vec<String>>,
        failing: Vec<&'static str>,
    }

    const JUMPS: &str = "-A PREROUTING -j repmgr_dnat\n-A OUTPUT -j repmgr_dnat\n-A POSTROUTING -j repmgr_snat\n";

    impl FakeFirewall {
        fn holding(text: &str) -> FakeFirewall {
            FakeFirewall { table: RefCell::new(text.to_string()), calls: RefCell::new(Vec::new()), failing: Vec::new() }
        }
        fn routed(route: Route) -> FakeFirewall {
            let text = restore_text(&example(), route).replace("COMMIT\n", &format!("{JUMPS}COMMIT\n"));
            FakeFirewall::holding(&text)
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
            Ok(self.table.borrow().clone())
        }
        fn restore(&self, text: &str) -> Result<()> {
            let routed = Live::parse(&example(), text).routing(&example());
            self.call(format!("restore {routed}"))?;
            let jumps: String =
                self.table.borrow().lines().filter(|l| !l.contains("-A repmgr_")).map(|l| format!("{l}\n")).collect();
            *self.table.borrow_mut() = format!("{}{}", text.replace("COMMIT\n", ""), jumps.replace("*nat\n", ""));
            Ok(())
        }
        fn forget(&self, _proxy: Ipv4Addr, port: Option<u16>, node: Ipv4Addr) -> Result<bool> {
            self.call(format!("forget {node}{}", port.map(|p| format!(":{p}")).unwrap_or_default()))?;
            Ok(true)
        }
        fn new_chain(&self, chain: &str) -> Result<()> {
            self.call(format!("new chain {chain}"))
        }
        fn add_jump(&self, hook: &str, chain: &str) -> Result<()> {
            self.call(format!("add -A {hook} -j {chain}"))
        }
        fn delete_jump(&self, hook: &str, chain: &str) -> Result<()> {
            self.call(format!("delete -A {hook} -j {chain}"))
        }
        fn delete_chain(&self, chain: &str) -> Result<()> {
            self.call(format!("delete chain {chain}"))
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

    fn route(node: u32, open: Open) -> Route {
        Route { node: NodeId(node), open }
    }

    #[test]
    fn a_switch_is_one_transaction_then_the_cut_then_the_record() {
        let cfg = example();
        let fw = FakeFirewall::routed(route(1, Open::All));
        let (dir, state) = state_dir("switch");
        let direct = Direct { cfg: &cfg, fw: &fw, state: &state };
        assert!(direct.switch(route(2, Open::Barman)).unwrap());
        assert_eq!(fw.calls(), ["restore node 2 ports barman", "forget 10.8.1.1"]);
        assert_eq!(state.recorded().unwrap(), Some(route(2, Open::Barman)));
        assert!(direct.switch(route(2, Open::All)).unwrap());
        assert_eq!(fw.calls()[2..], ["restore node 2 ports all"], "opening a port cuts nothing");
        assert_eq!(state.recorded().unwrap(), Some(route(2, Open::All)));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_switch_to_what_the_chains_hold_writes_nothing() {
        let cfg = example();
        let fw = FakeFirewall::routed(route(2, Open::All));
        let (dir, state) = state_dir("unchanged");
        let direct = Direct { cfg: &cfg, fw: &fw, state: &state };
        assert!(!direct.switch(route(2, Open::All)).unwrap());
        assert_eq!(fw.calls(), Vec::<String>::new());
        assert_eq!(state.recorded().unwrap(), Some(route(2, Open::All)), "the record catches up");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_transaction_changes_nothing_and_records_nothing() {
        let cfg = example();
        let mut fw = FakeFirewall::routed(route(1, Open::All));
        fw.failing.push("restore");
        let (dir, state) = state_dir("failed");
        let direct = Direct { cfg: &cfg, fw: &fw, state: &state };
        assert!(direct.switch(route(2, Open::Barman)).is_err());
        assert_eq!(fw.calls(), ["restore node 2 ports barman"]);
        assert_eq!(direct.live().unwrap().routing(&cfg), Routing::To(route(1, Open::All)));
        assert_eq!(state.recorded().unwrap(), None);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_failed_cut_does_not_undo_the_switch() {
        let cfg = example();
        let mut fw = FakeFirewall::routed(route(1, Open::All));
        fw.failing.push("forget");
        let (dir, state) = state_dir("cut");
        let direct = Direct { cfg: &cfg, fw: &fw, state: &state };
        assert!(direct.switch(route(2, Open::Barman)).unwrap());
        assert_eq!(state.recorded().unwrap(), Some(route(2, Open::Barman)));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_switch_restores_missing_jumps() {
        let cfg = example();
        let fw = FakeFirewall::holding(&restore_text(&cfg, route(1, Open::All)));
        let (dir, state) = state_dir("jumps");
        let direct = Direct { cfg: &cfg, fw: &fw, state: &state };
        assert!(!direct.switch(route(1, Open::All)).unwrap());
        assert_eq!(
            fw.calls(),
            ["add -A PREROUTING -j repmgr_dnat", "add -A OUTPUT -j repmgr_dnat", "add -A POSTROUTING -j repmgr_snat"]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn install_adopts_the_scripts_chains_and_removes_duplicate_jumps() {
        let cfg = example();
        // what the article's chains script leaves when it runs twice: -N fails the second
        // time, the jumps are appended again
        let saved = format!("*nat\n:repmgr_dnat - [0:0]\n:repmgr_snat - [0:0]\n{JUMPS}{JUMPS}COMMIT\n");
        let fw = FakeFirewall::holding(&saved);
        install(&cfg, &fw, &Live::parse(&cfg, &saved)).unwrap();
        assert_eq!(
            fw.calls(),
            [
                "delete -A PREROUTING -j repmgr_dnat",
                "delete -A OUTPUT -j repmgr_dnat",
                "delete -A POSTROUTING -j repmgr_snat"
            ]
        );

        let fw = FakeFirewall::holding("*nat\nCOMMIT\n");
        install(&cfg, &fw, &Live::parse(&cfg, "*nat\nCOMMIT\n")).unwrap();
        assert_eq!(
            fw.calls(),
            [
                "new chain repmgr_dnat",
                "new chain repmgr_snat",
                "add -A PREROUTING -j repmgr_dnat",
                "add -A OUTPUT -j repmgr_dnat",
                "add -A POSTROUTING -j repmgr_snat"
            ]
        );
    }

    #[test]
    fn uninstall_removes_every_jump_then_the_chains() {
        let cfg = example();
        let saved =
            format!("*nat\n:repmgr_dnat - [0:0]\n:repmgr_snat - [0:0]\n{JUMPS}-A OUTPUT -j repmgr_dnat\nCOMMIT\n");
        let fw = FakeFirewall::holding(&saved);
        uninstall(&cfg, &fw, &Live::parse(&cfg, &saved)).unwrap();
        assert_eq!(
            fw.calls(),
            [
                "delete -A PREROUTING -j repmgr_dnat",
                "delete -A OUTPUT -j repmgr_dnat",
                "delete -A OUTPUT -j repmgr_dnat",
                "delete -A POSTROUTING -j repmgr_snat",
                "delete chain repmgr_dnat",
                "delete chain repmgr_snat"
            ]
        );
    }
}
