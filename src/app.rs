//! The commands: each loads what it needs, takes the lock where it changes anything,
//! builds the adapters and hands over to the handler.

use std::path::Path;

use anyhow::Result;

use crate::effects::barman::Barman;
use crate::cli::{Cli, Command};
use crate::core::config::{self, Config, NodeId};
use crate::effects::db::Postgres;
use crate::effects::dryrun::{PrintBackup, PrintCluster, PrintFirewall, PrintNat};
use crate::core::event::Event;
use crate::exit::{BadInput, Inconsistent};
use crate::effects::firewall::{Firewall, Iptables};
use crate::handler::{self, Effects};
use crate::effects::nat::{self, Direct, Nat, ViaSudo};
use crate::core::plan::{self, NoAnswer, Triage};
use crate::effects::privilege;
use crate::core::ruleset::{Live, Route};
use crate::effects::state::{Lock, StateDir};
use crate::core::status;

pub fn run(cli: Cli) -> Result<()> {
    let dry_run = cli.dry_run;
    match cli.command {
        Command::Event { node_id, event, success } => {
            let event = Event::parse(&node_id, &event, success.as_deref()).map_err(bad_input)?;
            if let Triage::Ignore { why, warn } = plan::triage(&event) {
                let level = if warn { log::Level::Warn } else { log::Level::Debug };
                log::log!(level, "node {} {}: {why}", event.node, event.name);
                return Ok(());
            }
            let cfg = load(cli.config.as_deref())?;
            cfg.node(event.node).map_err(bad_input)?;
            let _lock = lock(&cfg, dry_run)?;
            with_effects(&cfg, cli.config.as_deref(), dry_run, |fx| handler::event(&cfg, fx, &event))
        }
        Command::Reconcile { primary } => {
            let cfg = load(cli.config.as_deref())?;
            let named = primary.map(|text| node_id(&cfg, &text)).transpose()?;
            let _lock = lock(&cfg, dry_run)?;
            with_effects(&cfg, cli.config.as_deref(), dry_run, |fx| {
                handler::reconcile(&cfg, fx, fx.cluster.inspect_all(), named)
            })
        }
        Command::Status { json } => {
            let cfg = load(cli.config.as_deref())?;
            status(&cfg, cli.config.as_deref(), json)
        }
        Command::Setup => {
            require_root("setup")?;
            let cfg = load(cli.config.as_deref())?;
            setup(&cfg, cli.config.as_deref(), dry_run)
        }
        Command::Teardown => {
            require_root("teardown")?;
            let cfg = load(cli.config.as_deref())?;
            teardown(&cfg, dry_run)
        }
        Command::Route { node_id: node, ports, show } => {
            require_root("route")?;
            if let Some(path) = &cli.config {
                return Err(BadInput(format!(
                    "route reads only {}; --config {} and REPMGR_NAT_CONFIG are refused",
                    config::DEFAULT_PATH,
                    path.display()
                ))
                .into());
            }
            let cfg = load(None)?;
            let fw = Iptables::new();
            let state = StateDir::new(&cfg.state.dir);
            let direct = Direct { cfg: &cfg, fw: &fw, state: &state };
            if show {
                print!("{}", direct.live()?.render(&cfg));
                return Ok(());
            }
            let (Some(node), Some(open)) = (node, ports) else { unreachable!("clap requires both without --show") };
            let route = Route { node: node_id(&cfg, &node)?, open };
            let changed = if dry_run { PrintNat::new(&cfg, &direct).switch(route)? } else { direct.switch(route)? };
            println!("{}", if changed { "changed" } else { "unchanged" });
            Ok(())
        }
    }
}

fn bad_input(e: anyhow::Error) -> anyhow::Error {
    BadInput(format!("{e:#}")).into()
}

fn node_id(cfg: &Config, text: &str) -> Result<NodeId> {
    let node = NodeId::parse(text).map_err(bad_input)?;
    cfg.node(node).map_err(bad_input)?;
    Ok(node)
}

/// The config at `requested`, or at the default path; as root, only a file only root
/// can change.
fn load(requested: Option<&Path>) -> Result<Config> {
    let path = requested.unwrap_or(Path::new(config::DEFAULT_PATH));
    let text = privilege::read_trusted(path).map_err(bad_input)?;
    Config::parse(&text).map_err(|e| bad_input(e.context(format!("bad config {}", path.display()))))
}

fn require_root(command: &str) -> Result<()> {
    if privilege::is_root() {
        Ok(())
    } else {
        Err(BadInput(format!("{command} changes the nat table and must run as root")).into())
    }
}

/// The run lock, except for a dry run, which changes nothing.
fn lock(cfg: &Config, dry_run: bool) -> Result<Option<Lock>> {
    if dry_run {
        return Ok(None);
    }
    StateDir::new(&cfg.state.dir).lock(cfg.state.lock_timeout).map(Some)
}

/// Builds the adapters: NAT changes in this process as root, through sudo otherwise;
/// wrapped in the printing adapter for a dry run.
fn with_effects<T>(
    cfg: &Config,
    requested: Option<&Path>,
    dry_run: bool,
    f: impl FnOnce(&Effects) -> Result<T>,
) -> Result<T> {
    let cluster = Postgres::new(cfg);
    let backup = Barman::new(&cfg.barman);
    let fw = Iptables::new();
    let state = StateDir::new(&cfg.state.dir);
    let direct;
    let via_sudo;
    let nat: &dyn Nat = if privilege::is_root() {
        direct = Direct { cfg, fw: &fw, state: &state };
        &direct
    } else {
        same_as_routes_config(cfg, requested)?;
        via_sudo = ViaSudo { cfg };
        &via_sudo
    };
    if dry_run {
        let nat = PrintNat::new(cfg, nat);
        let cluster = PrintCluster { cfg, real: &cluster };
        f(&Effects { nat: &nat, cluster: &cluster, backup: &PrintBackup(&cfg.barman), dry_run })
    } else {
        f(&Effects { nat, cluster: &cluster, backup: &backup, dry_run })
    }
}

/// Through sudo, `route` acts on /etc/repmgr-nat.toml whatever this run was given; a
/// run on another config must agree with it on everything the two sides share, or the
/// node this run checked would not be the node root routes to.
fn same_as_routes_config(cfg: &Config, requested: Option<&Path>) -> Result<()> {
    let Some(path) = requested.filter(|p| *p != Path::new(config::DEFAULT_PATH)) else { return Ok(()) };
    let routes = load(None).map_err(|e| {
        e.context(format!("--config {} needs {} to compare with", path.display(), config::DEFAULT_PATH))
    })?;
    let same = cfg.proxy == routes.proxy
        && cfg.ports == routes.ports
        && cfg.nodes == routes.nodes
        && cfg.nat == routes.nat
        && cfg.state.dir == routes.state.dir;
    if !same {
        return Err(BadInput(format!(
            "{} and {} (the config route reads as root) differ in proxy, ports, nodes, nat or state.dir",
            path.display(),
            config::DEFAULT_PATH
        ))
        .into());
    }
    Ok(())
}

fn status(cfg: &Config, requested: Option<&Path>, json: bool) -> Result<()> {
    let report = with_effects(cfg, requested, false, |fx| {
        let answers = fx.cluster.inspect_all();
        let live = fx.nat.live().map_err(|e| format!("{e:#}"));
        let recorded = StateDir::new(&cfg.state.dir).recorded().map_err(|e| format!("{e:#}"));
        Ok(status::assess(cfg, &answers, live, recorded))
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    if report.consistent {
        Ok(())
    } else {
        Err(Inconsistent(format!("status: inconsistent: {}", report.problems.join("; "))).into())
    }
}

/// Boot: forwarding on, chains and jumps where missing (duplicates removed), then the
/// live primary; when no node answers at all, the route recorded before the reboot.
fn setup(cfg: &Config, requested: Option<&Path>, dry_run: bool) -> Result<()> {
    let state = StateDir::new(&cfg.state.dir);
    if !dry_run {
        state.create()?;
    }
    let _lock = lock(cfg, dry_run)?;
    let iptables = Iptables::new();
    let printing = PrintFirewall(&iptables);
    let fw: &dyn Firewall = if dry_run { &printing } else { &iptables };
    if fw.enable_forwarding()? {
        log::info!("setup: turned on IPv4 forwarding");
    }
    nat::install(cfg, fw, &Live::parse(cfg, &fw.save()?))?;

    with_effects(cfg, requested, dry_run, |fx| {
        let answers = fx.cluster.inspect_all();
        let replied = |answer: &Result<_, NoAnswer>| answer.as_ref().map_or_else(|e| e.replied, |_| true);
        if answers.iter().any(|(_, answer)| replied(answer)) {
            return handler::reconcile(cfg, fx, answers, None);
        }
        match state.recorded()? {
            Some(route) => {
                log::warn!("setup: no node answered; restoring the route recorded before: {route}");
                fx.nat.switch(route).map(drop)
            }
            None => {
                log::warn!("setup: no node answered and no route is recorded; the ports stay closed");
                Ok(())
            }
        }
    })
}

/// Removes the jumps and the chains; the recorded route stays for the next setup.
fn teardown(cfg: &Config, dry_run: bool) -> Result<()> {
    let state = StateDir::new(&cfg.state.dir);
    let _lock = if state.path().is_dir() { lock(cfg, dry_run)? } else { None };
    let iptables = Iptables::new();
    let printing = PrintFirewall(&iptables);
    let fw: &dyn Firewall = if dry_run { &printing } else { &iptables };
    nat::uninstall(cfg, fw, &Live::parse(cfg, &fw.save()?))?;
    if !dry_run {
        log::info!("teardown: removed the jumps and the chains {} and {}", cfg.nat.dnat_chain, cfg.nat.snat_chain);
    }
    Ok(())
}
