//! Switching the NAT chains, from either side of the privilege boundary: `Direct` does
//! it in this process as root; `ViaSudo` asks `sudo -n repmgr-nat route`, which runs
//! `Direct` as root with addresses read only from the root-owned config.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::config::Config;
use crate::exec::{self, Cmd};
use crate::firewall::Firewall;
use crate::ruleset::{self, Live, Open, Route, Routing};
use crate::state::StateDir;

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
    pub dry_run: bool,
}

impl Nat for Direct<'_> {
    fn live(&self) -> Result<Live> {
        Ok(Live::parse(self.cfg, &self.fw.save()?))
    }

    /// One `iptables-restore` transaction when the chains hold anything else; then the
    /// connections proxied through ports that stopped forwarding are cut; then the
    /// primary is recorded when every port is open.
    fn switch(&self, route: Route) -> Result<bool> {
        let cfg = self.cfg;
        cfg.node(route.node)?;
        let live = self.live()?;
        let before = live.routing(cfg);
        let changed = before != Routing::To(route);
        let cuts = if changed { ruleset::cuts(cfg, &before, route) } else { Vec::new() };
        if self.dry_run {
            if changed {
                print!("iptables-restore --noflush -w 5 <<EOF\n{}EOF\n", ruleset::restore_text(cfg, route));
            } else {
                println!("# the chains already hold {route}");
            }
            for (node, port) in &cuts {
                println!("{}", forget_cmd(cfg, *node, *port));
            }
            return Ok(changed);
        }
        if changed {
            let started = Instant::now();
            self.fw.restore(&ruleset::restore_text(cfg, route))?;
            log::info!("nat: {before} -> {route} ({} ms)", started.elapsed().as_millis());
        }
        hook(cfg, self.fw, &live)?;
        for (node, port) in cuts {
            let addr = cfg.node(node)?;
            let started = Instant::now();
            match self.fw.forget(cfg.proxy, port, addr) {
                Ok(found) => log::info!(
                    "nat: {} connections proxied to node {node}{} ({} ms)",
                    if found { "cut the" } else { "no" },
                    port.map(|p| format!(" through port {p}")).unwrap_or_default(),
                    started.elapsed().as_millis()
                ),
                // The switch stands: the new rules are in place; only old connections
                // may linger until they end.
                Err(e) => log::error!("nat: cannot cut connections proxied to node {node}: {e:#}"),
            }
        }
        if route.open == Open::All && self.state.primary().ok().flatten() != Some(route.node) {
            self.state.create()?;
            self.state.record_primary(route.node)?;
        }
        Ok(changed)
    }
}

/// Adds the jumps into our chains that are missing, so rules are never written into
/// chains nothing reaches. `setup` does this at boot; doing it on every switch too
/// heals a nat table that something else rewrote.
pub fn hook(cfg: &Config, fw: &dyn Firewall, live: &Live) -> Result<()> {
    for ((builtin, chain), count) in ruleset::hooks(cfg).iter().zip(live.jumps) {
        if count == 0 {
            fw.add_jump(builtin, chain)?;
            log::warn!("nat: added the missing jump -A {builtin} -j {chain}");
        }
    }
    Ok(())
}

fn forget_cmd(cfg: &Config, node: crate::config::NodeId, port: Option<u16>) -> String {
    let addr = cfg.nodes[&node];
    match port {
        Some(port) => format!("conntrack -D -p tcp --orig-dst {} --orig-port-dst {port} --reply-src {addr}", cfg.proxy),
        None => format!("conntrack -D -p tcp --orig-dst {} --reply-src {addr}", cfg.proxy),
    }
}

/// The unprivileged side: `sudo -n <this binary> route ...`.
pub struct ViaSudo<'a> {
    pub cfg: &'a Config,
    pub exe: PathBuf,
    pub dry_run: bool,
}

const ROUTE_TIMEOUT: Duration = Duration::from_secs(60);

impl ViaSudo<'_> {
    pub fn route_cmd(&self, args: &[&str]) -> Cmd {
        Cmd::new(exec::system_tool("sudo")).arg("-n").arg(self.exe.to_string_lossy()).arg("route").args(args.iter().copied())
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
        let text = self.run(&self.route_cmd(&["--show"]))?;
        Ok(Live::parse(self.cfg, &text))
    }

    fn switch(&self, route: Route) -> Result<bool> {
        let node = route.node.to_string();
        let open = route.open.to_string();
        let cmd = self.route_cmd(&[&node, "--ports", &open]);
        if self.dry_run {
            println!("{cmd}");
            print!("{}", ruleset::restore_text(self.cfg, route));
            return Ok(true);
        }
        match self.run(&cmd)?.trim() {
            "changed" => Ok(true),
            "unchanged" => Ok(false),
            other => bail!("{cmd} answered {other:?}, expected changed or unchanged"),
        }
    }
}
