//! The commands: each loads what it needs, takes the lock where it changes anything,
//! builds the adapters and hands over to the handler.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::barman::Barman;
use crate::cli::{Cli, Command};
use crate::config::{self, Config, NodeId};
use crate::db::Postgres;
use crate::event::{Event, Kind};
use crate::exit::{BadInput, Inconsistent};
use crate::firewall::{Firewall, Iptables};
use crate::handler::{self, Effects};
use crate::nat::{Direct, Nat, ViaSudo};
use crate::privilege;
use crate::ruleset::{self, Live, Open, Route};
use crate::state::{Lock, StateDir};
use crate::status;

pub fn run(cli: Cli) -> Result<()> {
    let dry_run = cli.dry_run;
    match cli.command {
        Command::Event { node_id, event, success } => {
            let event = Event::parse(&node_id, &event, success.as_deref()).map_err(bad_input)?;
            if event.kind == Kind::Other {
                log::debug!("node {} {}: not an event repmgr-nat acts on", event.node, event.name);
                return Ok(());
            }
            if !event.success {
                log::warn!("node {} {}: repmgr reports it failed (success 0); ignored", event.node, event.name);
                return Ok(());
            }
            let cfg = load(cli.config)?;
            cfg.node(event.node).map_err(bad_input)?;
            let _lock = lock(&cfg, dry_run)?;
            with_effects(&cfg, dry_run, |fx| handler::event(&cfg, fx, &event))
        }
        Command::Reconcile { primary } => {
            let cfg = load(cli.config)?;
            let named = match primary {
                Some(text) => Some(node_id(&cfg, &text)?),
                None => None,
            };
            let _lock = lock(&cfg, dry_run)?;
            with_effects(&cfg, dry_run, |fx| handler::reconcile(&cfg, fx, fx.cluster.inspect_all(), named))
        }
        Command::Status { json } => {
            let cfg = load(cli.config)?;
            status(&cfg, json)
        }
        Command::Setup => {
            require_root("setup")?;
            let cfg = load(cli.config)?;
            setup(&cfg, dry_run)
        }
        Command::Teardown => {
            require_root("teardown")?;
            let cfg = load(cli.config)?;
            teardown(&cfg, dry_run)
        }
        Command::Route { node_id: node, ports, show } => {
            let path = privilege::route_config(cli.config.as_deref())?;
            let cfg = load_from(&path)?;
            let fw = Iptables::new();
            let state = StateDir::new(&cfg.state.dir);
            let direct = Direct { cfg: &cfg, fw: &fw, state: &state, dry_run };
            if show {
                print!("{}", direct.live()?.render(&cfg));
                return Ok(());
            }
            let (Some(node), Some(open)) = (node, ports) else { unreachable!("clap requires both without --show") };
            let route = Route { node: node_id(&cfg, &node)?, open };
            let changed = direct.switch(route)?;
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

fn load(requested: Option<PathBuf>) -> Result<Config> {
    load_from(&requested.unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH)))
}

fn load_from(path: &std::path::Path) -> Result<Config> {
    privilege::check_trusted(path).map_err(bad_input)?;
    Config::load(path).map_err(bad_input)
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

/// Builds the adapters: NAT changes in this process as root, through sudo otherwise.
fn with_effects<T>(cfg: &Config, dry_run: bool, f: impl FnOnce(&Effects) -> Result<T>) -> Result<T> {
    let cluster = Postgres::new(cfg, dry_run);
    let backup = Barman::new(&cfg.barman, dry_run);
    let fw = Iptables::new();
    let state = StateDir::new(&cfg.state.dir);
    let direct;
    let via_sudo;
    let nat: &dyn Nat = if privilege::is_root() {
        direct = Direct { cfg, fw: &fw, state: &state, dry_run };
        &direct
    } else {
        let exe = std::env::current_exe().context("cannot find this program's own path for sudo")?;
        via_sudo = ViaSudo { cfg, exe, dry_run };
        &via_sudo
    };
    f(&Effects { nat, cluster: &cluster, backup: &backup })
}

fn status(cfg: &Config, json: bool) -> Result<()> {
    let report = with_effects(cfg, false, |fx| {
        let answers = fx.cluster.inspect_all();
        let live = fx.nat.live().map_err(|e| format!("{e:#}"));
        let recorded = StateDir::new(&cfg.state.dir).primary().map_err(|e| format!("{e:#}"));
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
/// live primary, or the recorded one when no node answers.
fn setup(cfg: &Config, dry_run: bool) -> Result<()> {
    let state = StateDir::new(&cfg.state.dir);
    if !dry_run {
        state.create()?;
    }
    let _lock = lock(cfg, dry_run)?;
    let fw = Iptables::new();
    if dry_run {
        println!("sysctl -w net.ipv4.ip_forward=1");
    } else if fw.enable_forwarding()? {
        log::info!("setup: turned on IPv4 forwarding");
    }
    let live = Live::parse(cfg, &fw.save()?);
    ensure_chains(cfg, &fw, &live, dry_run)?;

    with_effects(cfg, dry_run, |fx| {
        let answers = fx.cluster.inspect_all();
        if answers.iter().any(|(_, a)| a.is_ok()) {
            return handler::reconcile(cfg, fx, answers, None);
        }
        match state.primary()? {
            Some(node) => {
                log::warn!("setup: no node answered; pointing the ports at the recorded primary, node {node}");
                fx.nat.switch(Route { node, open: Open::All }).map(drop)
            }
            None => {
                log::warn!("setup: no node answered and no primary is recorded; the ports stay closed");
                Ok(())
            }
        }
    })
}

fn ensure_chains(cfg: &Config, fw: &dyn Firewall, live: &Live, dry_run: bool) -> Result<()> {
    for (present, chain) in [(live.dnat_chain, &cfg.nat.dnat_chain), (live.snat_chain, &cfg.nat.snat_chain)] {
        if present {
            continue;
        }
        if dry_run {
            println!("iptables -t nat -N {chain}");
        } else {
            fw.new_chain(chain)?;
            log::info!("setup: created chain {chain}");
        }
    }
    for ((builtin, chain), count) in ruleset::hooks(cfg).iter().zip(live.jumps) {
        match count {
            0 if dry_run => println!("iptables -t nat -A {builtin} -j {chain}"),
            0 => {
                fw.add_jump(builtin, chain)?;
                log::info!("setup: added -A {builtin} -j {chain}");
            }
            1 => {}
            extra => {
                for _ in 1..extra {
                    if dry_run {
                        println!("iptables -t nat -D {builtin} -j {chain}");
                    } else {
                        fw.delete_jump(builtin, chain)?;
                    }
                }
                log::info!("setup: removed {} duplicate(s) of -A {builtin} -j {chain}", extra - 1);
            }
        }
    }
    Ok(())
}

/// Removes the jumps and the chains; the recorded primary stays for the next setup.
fn teardown(cfg: &Config, dry_run: bool) -> Result<()> {
    let state = StateDir::new(&cfg.state.dir);
    let _lock = if state.path().is_dir() { lock(cfg, dry_run)? } else { None };
    let fw = Iptables::new();
    let live = Live::parse(cfg, &fw.save()?);
    for ((builtin, chain), count) in ruleset::hooks(cfg).iter().zip(live.jumps) {
        for _ in 0..count {
            if dry_run {
                println!("iptables -t nat -D {builtin} -j {chain}");
            } else {
                fw.delete_jump(builtin, chain)?;
            }
        }
    }
    for chain in [&cfg.nat.dnat_chain, &cfg.nat.snat_chain] {
        if dry_run {
            println!("iptables -t nat -F {chain}\niptables -t nat -X {chain}");
        } else {
            fw.delete_chain(chain)?;
        }
    }
    if !dry_run {
        log::info!("teardown: removed the jumps and the chains {} and {}", cfg.nat.dnat_chain, cfg.nat.snat_chain);
    }
    Ok(())
}
