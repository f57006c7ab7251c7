//! The commands: each loads the config once, takes the run lock where it changes
//! anything, builds the adapters and hands over to the handler (or to `watch`).

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::core::config::{self, Config, Node, NodeId};
use crate::core::event::{Event, Triage};
use crate::core::plan::Ask;
use crate::core::ruleset::{self, Open, Record, Route};
use crate::core::status;
use crate::effects::barman::Barman;
use crate::effects::db::{self, Postgres};
use crate::effects::dryrun::{PrintBackup, PrintCluster, PrintFirewall, PrintNat, Sink};
use crate::effects::firewall::{Firewall, Iptables};
use crate::effects::nat::{Direct, Nat, ViaSudo};
use crate::effects::privilege;
use crate::effects::state::{Lock, StateDir};
use crate::exit::{Exit, bad_input};
use crate::handler::{self, Effects};
use crate::watch;

/// What every command knows before it starts: decided once.
pub struct Ctx {
    pub cfg: Config,
    /// Whether this process is root: it then switches the chains itself, otherwise
    /// through `sudo -n repmgr-nat route`.
    pub root: bool,
    pub dry_run: bool,
}

pub fn run(cli: Cli) -> Result<()> {
    let dry_run = cli.dry_run;
    let root = privilege::is_root();
    let ctx = |path: Option<PathBuf>| -> Result<Ctx> { Ok(Ctx { cfg: load(path.as_deref())?, root, dry_run }) };
    match cli.command {
        Command::Event { node_id, event, success } => {
            let event = Event::parse(&node_id, &event, success.as_deref()).map_err(bad_input)?;
            let claim = match event.triage() {
                Triage::Ignore { why, warn } => {
                    let level = if warn { log::Level::Warn } else { log::Level::Debug };
                    log::log!(level, "node {} {}: {why}", event.node, event.name);
                    return Ok(());
                }
                Triage::Act(claim) => claim,
            };
            let ctx = ctx(acting_config(cli.config, root, dry_run)?)?;
            ctx.cfg.node(event.node).map_err(bad_input)?;
            let _lock = lock(&ctx)?;
            with_effects(&ctx, |fx| {
                handler::run(&ctx.cfg, fx, Ask::Event(claim), &format!("node {} {}", event.node, event.name))
            })
        }
        Command::Reconcile { primary } => {
            let ctx = ctx(acting_config(cli.config, root, dry_run)?)?;
            let named = primary.map(|text| node(&ctx.cfg, &text)).transpose()?;
            let _lock = lock(&ctx)?;
            with_effects(&ctx, |fx| handler::run(&ctx.cfg, fx, Ask::Reconcile { named }, "reconcile"))
        }
        Command::Watch => {
            let ctx = ctx(acting_config(cli.config, root, dry_run)?)?;
            watch::run(&ctx)
        }
        Command::Status { json } => status(&ctx(cli.config)?, json),
        Command::Setup => {
            require_root("setup", root)?;
            setup(&ctx(cli.config)?)
        }
        Command::Teardown => {
            require_root("teardown", root)?;
            teardown(&ctx(cli.config)?)
        }
        Command::Route { node_id, ports, timeline, show } => {
            require_root("route", root)?;
            if let Some(path) = &cli.config {
                return Err(Exit::BadInput(format!(
                    "route reads only {}; --config {} and REPMGR_NAT_CONFIG are refused",
                    config::DEFAULT_PATH,
                    path.display()
                ))
                .into());
            }
            let ctx = ctx(None)?;
            match (node_id, ports, show) {
                (_, _, true) => route_show(&ctx),
                (Some(node_id), Some(open), false) => {
                    let timeline = timeline.map(|t| ruleset::parse_timeline(&t).map_err(bad_input)).transpose()?;
                    route(&ctx, node(&ctx.cfg, &node_id)?, open, timeline)
                }
                _ => Err(Exit::BadInput("route needs a node id and --ports, or --show".into()).into()),
            }
        }
    }
}

/// The config at `requested`, or at the default path; as root, only a file only root
/// can change.
fn load(requested: Option<&Path>) -> Result<Config> {
    let path = requested.unwrap_or(Path::new(config::DEFAULT_PATH));
    let text = privilege::read_trusted(path).map_err(bad_input)?;
    Config::parse(&text).map_err(|e| bad_input(e.context(format!("bad config {}", path.display()))))
}

/// A run that changes anything through sudo acts on the config `route` reads as root
/// (/etc/repmgr-nat.toml): it may not decide from another one. Root, and dry runs, may.
fn acting_config(requested: Option<PathBuf>, root: bool, dry_run: bool) -> Result<Option<PathBuf>> {
    match requested {
        Some(path) if !root && !dry_run && path != Path::new(config::DEFAULT_PATH) => Err(Exit::BadInput(format!(
            "--config {} (or REPMGR_NAT_CONFIG): a run that switches the rules through sudo must read {}, the \
             config root routes by; use --dry-run to try another",
            path.display(),
            config::DEFAULT_PATH
        ))
        .into()),
        other => Ok(other),
    }
}

fn node(cfg: &Config, text: &str) -> Result<Node> {
    let id = NodeId::parse(text).map_err(bad_input)?;
    cfg.node(id).map_err(bad_input)
}

fn require_root(command: &str, root: bool) -> Result<()> {
    if root {
        Ok(())
    } else {
        Err(Exit::BadInput(format!("{command} changes the nat table and must run as root")).into())
    }
}

/// The run lock, except for a dry run, which changes nothing.
pub fn lock(ctx: &Ctx) -> Result<Option<Lock>> {
    if ctx.dry_run {
        return Ok(None);
    }
    StateDir::new(&ctx.cfg.state.dir).lock(ctx.cfg.state.lock_timeout).map(Some)
}

/// Builds the adapters: the chains switched in this process as root, through sudo
/// otherwise; wrapped in the printing adapters for a dry run.
pub fn with_effects<T>(ctx: &Ctx, f: impl FnOnce(&Effects) -> Result<T>) -> Result<T> {
    let cfg = &ctx.cfg;
    let rt = db::runtime()?;
    // what a running watch saw unanswered a moment ago gets a short deadline
    let seen_down = watch::report(cfg).filter(|r| r.fresh(watch::now_ms())).map(|r| r.unanswered).unwrap_or_default();
    if !seen_down.is_empty() {
        log::debug!("watch saw node(s) {seen_down:?} unanswered: asked within {} ms", db::SEEN_DOWN.as_millis());
    }
    let cluster = Postgres::new(cfg, &rt).seen_down(seen_down);
    let backup = Barman::new(&cfg.barman);
    let fw = Iptables;
    let state = StateDir::new(&cfg.state.dir);
    let direct = Direct { cfg, fw: &fw, state: &state };
    let via_sudo = ViaSudo { cfg };
    let nat: &dyn Nat = if ctx.root { &direct } else { &via_sudo };
    if ctx.dry_run {
        let out = Sink::Stdout;
        let nat = PrintNat::new(cfg, nat, !ctx.root, &out);
        let cluster = PrintCluster { cfg, real: &cluster, out: &out };
        let backup = PrintBackup { cfg: &cfg.barman, out: &out };
        f(&Effects { nat: &nat, cluster: &cluster, backup: &backup })
    } else {
        f(&Effects { nat, cluster: &cluster, backup: &backup })
    }
}

fn status(ctx: &Ctx, json: bool) -> Result<()> {
    let report = with_effects(ctx, |fx| {
        let view = fx.cluster.view();
        let live = fx.nat.live().map_err(|e| format!("{e:#}"));
        let recorded = fx.nat.recorded().map_err(|e| format!("{e:#}"));
        let seen =
            status::Seen { view: &view, live, recorded, watch: watch::report(&ctx.cfg), now_ms: watch::now_ms() };
        Ok(status::assess(&ctx.cfg, seen))
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text(watch::now_ms()));
    }
    if report.consistent {
        Ok(())
    } else {
        Err(Exit::Inconsistent(format!("status: inconsistent: {}", report.problems.join("; "))).into())
    }
}

/// Boot: forwarding on, chains and jumps where missing (duplicates removed), then the
/// live cluster; when no node answers at all, the route recorded before the reboot.
fn setup(ctx: &Ctx) -> Result<()> {
    let cfg = &ctx.cfg;
    let state = StateDir::new(&cfg.state.dir);
    if !ctx.dry_run {
        state.create()?;
    }
    let _lock = lock(ctx)?;
    let out = Sink::Stdout;
    let printing = PrintFirewall { real: &Iptables, out: &out };
    let fw: &dyn Firewall = if ctx.dry_run { &printing } else { &Iptables };
    if fw.enable_forwarding()? {
        log::info!("setup: turned on IPv4 forwarding");
    }
    Direct { cfg, fw, state: &state }.install()?;

    with_effects(ctx, |fx| {
        let view = fx.cluster.view();
        if view.nodes.iter().any(|(_, answer)| answer.replied()) {
            return handler::act_on(cfg, fx, Ask::Converge, "setup", &view).map(drop);
        }
        match fx.nat.recorded()? {
            Some(record) => {
                log::warn!(
                    "setup: no node answered ({}); restoring the route recorded before: {record}",
                    view.describe()
                );
                fx.nat.switch(record).map(drop)
            }
            None => {
                log::warn!("setup: no node answered and no route is recorded; the ports stay closed");
                Ok(())
            }
        }
    })
}

/// Removes the jumps and the chains; the recorded route stays for the next setup.
fn teardown(ctx: &Ctx) -> Result<()> {
    let cfg = &ctx.cfg;
    let state = StateDir::new(&cfg.state.dir);
    let _lock = if state.path().is_dir() { lock(ctx)? } else { None };
    let out = Sink::Stdout;
    let printing = PrintFirewall { real: &Iptables, out: &out };
    let fw: &dyn Firewall = if ctx.dry_run { &printing } else { &Iptables };
    Direct { cfg, fw, state: &state }.uninstall()?;
    if !ctx.dry_run {
        log::info!("teardown: removed the jumps and the chains {} and {}", cfg.nat.dnat_chain, cfg.nat.snat_chain);
    }
    Ok(())
}

/// `route --show`: the chains, their rules and the jumps, as iptables-save prints them.
fn route_show(ctx: &Ctx) -> Result<()> {
    let fw = Iptables;
    let state = StateDir::new(&ctx.cfg.state.dir);
    let direct = Direct { cfg: &ctx.cfg, fw: &fw, state: &state };
    print!("{}", direct.live()?.render());
    Ok(())
}

/// The one privileged step: switch the chains to `node`. Without a timeline the recorded
/// one stays (a switch by hand).
fn route(ctx: &Ctx, node: Node, open: Open, timeline: Option<u32>) -> Result<()> {
    let cfg = &ctx.cfg;
    let fw = Iptables;
    let state = StateDir::new(&cfg.state.dir);
    let direct = Direct { cfg, fw: &fw, state: &state };
    let timeline = match timeline {
        Some(t) => t,
        None => direct.recorded().ok().flatten().map_or(0, |r| r.timeline),
    };
    let record = Record { route: Route::new(node, open), timeline };
    let out = Sink::Stdout;
    let changed =
        if ctx.dry_run { PrintNat::new(cfg, &direct, false, &out).switch(record)? } else { direct.switch(record)? };
    println!("{}", if changed { "changed" } else { "unchanged" });
    Ok(())
}
