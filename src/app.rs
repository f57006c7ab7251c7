//! The commands: each loads the config once, takes the run lock where it changes
//! anything, builds the adapters and hands over to the handler (or to `watch`).

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::adapters::{Adapters, Ctx};
use crate::cli::{Cli, Command};
use crate::clock::now_ms;
use crate::core::config::{self, Config, Instance, Node, NodeId};
use crate::core::event::{self, Event, Triage};
use crate::core::plan::Ask;
use crate::core::ruleset::{self, Open, Record, Route};
use crate::core::status;
use crate::effects::exec::{self, Cmd};
use crate::effects::exporter;
use crate::effects::nat::{NatSwitch, ViaSudo};
use crate::effects::privilege::{self, OsUser};
use crate::effects::state::StateDir;
use crate::effects::watch_file;
use crate::exit::{self, Exit, bad_input};
use crate::handler::{self, Effects};
use crate::watch;

/// How this run was invoked: decided once, before any command.
struct Invocation {
    config: Option<PathBuf>,
    /// `--instance`: the default one without it (and with `--config`).
    instance: Instance,
    root: bool,
    dry_run: bool,
}

impl Invocation {
    /// For a command that only reads: the config asked for.
    fn reading(&self) -> Result<Ctx> {
        Ok(Ctx { cfg: load(&self.instance, self.config.as_deref())?, root: self.root, dry_run: self.dry_run })
    }

    /// For a command that may change the rules through sudo: only the config root routes
    /// by (see `acting_config`).
    fn acting(&self) -> Result<Ctx> {
        let path = acting_config(self.config.clone(), self.root, self.dry_run)?;
        Ok(Ctx { cfg: load(&self.instance, path.as_deref())?, root: self.root, dry_run: self.dry_run })
    }

    /// For a command that changes the nat table itself: root, with the umask and limits
    /// the root step sets for itself.
    fn as_root(&self, command: &str) -> Result<()> {
        require_root(command, self.root)?;
        privilege::sanitize_root();
        Ok(())
    }
}

pub fn run(cli: Cli) -> Result<()> {
    let instance = cli.instance.as_deref().map(Instance::parse).transpose().map_err(bad_input)?.unwrap_or_default();
    let inv = Invocation { config: cli.config.clone(), instance, root: privilege::is_root(), dry_run: cli.dry_run };
    match &cli.command {
        Command::Event { node_id, event, success } => {
            let (ctx, handled) = handle_event(&inv, node_id, event, success.as_deref());
            if !inv.dry_run {
                count_event(&inv, ctx, event, &handled);
            }
            handled.map(drop)
        }
        Command::Reconcile { primary, boot } => reconcile(&inv.acting()?, primary.as_deref(), *boot),
        Command::Watch => {
            refuse_root("watch", inv.root)?;
            let ctx = inv.acting()?;
            watch::run(&Adapters::new(&ctx))
        }
        Command::Status { json, all: false } => status(&inv.reading()?, *json),
        Command::Status { json, all: true } => status_all(&inv, *json),
        Command::CanServe => can_serve(&inv.reading()?),
        Command::Instances => {
            installed_instances().iter().for_each(|instance| println!("{}", instance.name()));
            Ok(())
        }
        Command::Setup => {
            inv.as_root("setup")?;
            setup(&inv.reading()?, &cli)
        }
        Command::Teardown => {
            inv.as_root("teardown")?;
            teardown(&inv.reading()?)
        }
        Command::Check { json, nagios: false } => crate::check::run(&inv.reading()?, inv.config.as_deref(), *json),
        Command::Check { nagios: true, .. } => {
            crate::check::nagios(&inv.instance, &crate::check::report(&inv.reading()?, inv.config.as_deref())?)
        }
        Command::CheckConfig => {
            inv.as_root("check-config")?;
            check_config(&inv.reading()?)
        }
        Command::Route { node_id, ports, timeline, show, follow } => {
            inv.as_root("route")?;
            // a follow holds no lock and writes nothing but its readings: its caller may
            // end it any time
            if !*follow {
                privilege::block_callers_signals();
            }
            crate::logging::never_block_on_output();
            route_command(&inv, node_id.as_deref(), *ports, timeline.as_deref(), (*show, *follow))
        }
    }
}

/// repmgr's event: checked, then the plan for the whole cluster if its claim holds. True
/// when it was acted on, false when ignored; with the config it read, if it read one.
fn handle_event(inv: &Invocation, node_id: &str, event: &str, success: Option<&str>) -> (Option<Ctx>, Result<bool>) {
    let event = match Event::parse(node_id, event, success) {
        Ok(event) => event,
        Err(e) => return (None, Err(bad_input(e))),
    };
    let claim = match event.triage() {
        Triage::Ignore { why, warn } => {
            let level = if warn { log::Level::Warn } else { log::Level::Debug };
            log::log!(level, "node {} {}: {why}", event.node, event.name);
            return (None, Ok(false));
        }
        Triage::Act(claim) => claim,
    };
    let ctx = match inv.acting() {
        Ok(ctx) => ctx,
        Err(e) => return (None, Err(e)),
    };
    let label = format!("node {} {}", event.node, event.name);
    let handled = ctx.cfg.node(event.node).map_err(bad_input).and_then(|_| {
        let adapters = Adapters::new(&ctx);
        let _lock = adapters.lock()?;
        adapters.effects(|fx| handler::run(&ctx.cfg, fx, Ask::Event(claim), &label))
    });
    (Some(ctx), handled.map(|()| true))
}

/// Routes to the legitimate primary (or the one named); `--boot` is setup's cluster part.
fn reconcile(ctx: &Ctx, primary: Option<&str>, boot: bool) -> Result<()> {
    let named = primary.map(|text| node(&ctx.cfg, text)).transpose()?;
    let adapters = Adapters::new(ctx);
    let _lock = adapters.lock()?;
    if boot {
        return adapters.effects(|fx| boot_cluster(&ctx.cfg, fx));
    }
    adapters.effects(|fx| handler::run(&ctx.cfg, fx, Ask::Reconcile { named }, "reconcile"))
}

/// The root step: reads only the instance's root-owned config (`/etc/repmgr-nat.toml`, or
/// `/etc/repmgr-nat/<name>.toml`); shows the chains, or switches them.
fn route_command(
    inv: &Invocation,
    node_id: Option<&str>,
    ports: Option<Open>,
    timeline: Option<&str>,
    (show, follow): (bool, bool),
) -> Result<()> {
    if let Some(path) = &inv.config {
        return Err(Exit::BadInput(format!(
            "route reads only {}; --config {} and REPMGR_NAT_CONFIG are refused",
            inv.instance.config_path().display(),
            path.display()
        ))
        .into());
    }
    if follow && !crate::effects::follow::is_pipe(&std::io::stdout()) {
        return Err(Exit::BadInput(
            "route --show --follow writes only to a pipe, whose reader's going ends it (standard output is not one); \
             route --show reads the tables once"
                .into(),
        )
        .into());
    }
    let ctx = inv.reading()?;
    match (node_id, ports, show) {
        (_, _, true) => route_show(&ctx, follow),
        (Some(node_id), Some(open), false) => {
            let timeline = timeline.map(|t| ruleset::parse_timeline(t).map_err(bad_input)).transpose()?;
            route(&ctx, node(&ctx.cfg, node_id)?, open, timeline)
        }
        _ => Err(Exit::BadInput("route needs a node id and --ports, or --show".into()).into()),
    }
}

/// Counts a handled event for watch's metrics (in `watch.dir`, where watch reads it), by
/// its name and outcome: acted (ok) or ignored, else what its exit code says. The config
/// is the one the event read, or read now (an ignored event reads none).
fn count_event(inv: &Invocation, ctx: Option<Ctx>, event: &str, handled: &Result<bool>) {
    let Some(Ctx { cfg, .. }) = ctx.or_else(|| inv.acting().ok()) else { return };
    let outcome = match handled {
        Ok(true) => "ok",
        Ok(false) => "ignored",
        Err(e) => match exit::code(e) {
            exit::BAD_INPUT => "bad_input",
            exit::REFUSED => "refused",
            _ => "failed",
        },
    };
    let name = if event::well_formed_name(event) { event } else { "malformed" };
    // as root, only into a file of repmgr's OS user's, who owns watch.dir
    let owner = match inv.root {
        true => OsUser::named(&cfg.repmgr_user).map(|user| Some(user.uid)),
        false => Ok(None),
    };
    let counted = owner.and_then(|owner| exporter::count_event(&cfg.watch.dir, name, outcome, owner));
    if let Err(e) = counted {
        log::debug!("event not counted for the metrics: {e:#}");
    }
}

/// The instance's config (the default instance's at `requested`, if given); as root,
/// only a file only root can change. Refused when it claims a chain, port, node, barman
/// server or directory another instance of this host claims, unless this one was set up
/// (routed) and the other never was: a newcomer cannot silence an instance that works.
fn load(instance: &Instance, requested: Option<&Path>) -> Result<Config> {
    let path = requested.map_or_else(|| instance.config_path(), Path::to_path_buf);
    let cfg = read_config(instance, &path)?;
    for (other, theirs) in others(&cfg) {
        let theirs = match theirs {
            Ok(theirs) => theirs,
            // its own runs refuse it, and say why
            Err(e) => {
                log::debug!("{other} not compared: {e}");
                continue;
            }
        };
        let shared = config::instance::collisions(&cfg, &theirs);
        if shared.is_empty() {
            continue;
        }
        if routed_before(&cfg, &theirs) && !routed_before(&theirs, &cfg) {
            log::warn!(
                "{} ({}) claims {} too, and is refused until it changes; {instance} goes on",
                other,
                other.config_path().display(),
                shared.join(", ")
            );
            continue;
        }
        return Err(bad_input(anyhow::anyhow!(
            "config {}: {} shares {} with {} ({}); two instances may share none of these: change one",
            path.display(),
            instance,
            shared.join(", "),
            other,
            other.config_path().display()
        )));
    }
    Ok(cfg)
}

/// Every other instance of this host than `cfg`'s, with its config, or why it cannot be
/// read.
pub fn others(cfg: &Config) -> Vec<(Instance, Result<Config, String>)> {
    let others = installed_instances().into_iter().filter(|other| *other != cfg.instance);
    others
        .map(|other| {
            let theirs = read_config(&other, &other.config_path()).map_err(|e| format!("{e:#}"));
            (other, theirs)
        })
        .collect()
}

/// `cfg`'s instance routed before, beside `other`'s: its state directory holds a record,
/// and the record is its own (a directory both name is the one whose default it is).
fn routed_before(cfg: &Config, other: &Config) -> bool {
    config::instance::owns_state_dir(cfg, other) && StateDir::new(&cfg.state.dir).has_record()
}

fn read_config(instance: &Instance, path: &Path) -> Result<Config> {
    let text = privilege::read_trusted(path).map_err(bad_input)?;
    Config::parse_instance(&text, instance).map_err(|e| bad_input(e.context(format!("bad config {}", path.display()))))
}

/// The instances configured on this host: the default one if its file exists, then every
/// `/etc/repmgr-nat/<name>.toml`, by name. A `.toml` there whose name is no instance's is
/// said on the log, once per run that asks.
pub fn installed_instances() -> Vec<Instance> {
    let mut found: Vec<Instance> = Vec::new();
    if Path::new(config::DEFAULT_PATH).exists() {
        found.push(Instance::Default);
    }
    if let Ok(entries) = std::fs::read_dir(config::instance::DIR) {
        let mut named = Vec::new();
        for name in entries.flatten().filter_map(|e| e.file_name().into_string().ok()) {
            match Instance::of_file(&name) {
                Some(instance) => named.push(instance),
                None if name.ends_with(".toml") => log::warn!(
                    "{}/{name} is no instance's config and is ignored: {}",
                    config::instance::DIR,
                    Instance::parse(name.trim_end_matches(".toml")).err().map_or(String::new(), |e| format!("{e:#}"))
                ),
                None => {}
            }
        }
        named.sort();
        found.extend(named);
    }
    found
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

/// `watch` never runs as root: it writes into `watch.dir`, which repmgr's OS user owns,
/// and runs what that user may run. Refused before anything is read or opened.
fn refuse_root(command: &str, root: bool) -> Result<()> {
    match root {
        true => Err(Exit::BadInput(format!(
            "{command} must not run as root: run it as repmgr's OS user (repmgr.user), as the \
             repmgr-nat-watch unit does; it switches the rules through sudo"
        ))
        .into()),
        false => Ok(()),
    }
}

fn status(ctx: &Ctx, json: bool) -> Result<()> {
    let report = status_report(ctx)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text(now_ms()));
    }
    if report.consistent {
        Ok(())
    } else {
        Err(Exit::Inconsistent(format!("status: inconsistent: {}", report.problems.join("; "))).into())
    }
}

fn status_report(ctx: &Ctx) -> Result<status::Report> {
    let adapters = Adapters::new(ctx);
    adapters.effects(|fx| {
        let view = fx.cluster.view();
        let live = fx.nat.live().map_err(|e| format!("{e:#}"));
        let recorded = fx.nat.recorded().map_err(|e| format!("{e:#}"));
        let seen = status::Seen {
            view: &view,
            live,
            recorded,
            watch: adapters.watch_report().cloned(),
            torn_down: adapters.torn_down(),
            now_ms: now_ms(),
        };
        Ok(status::assess(&ctx.cfg, seen))
    })
}

/// `status --all`: every instance of this host, one after the other. Exit 4 when any is
/// inconsistent, 2 when one's config cannot be used (the others are still shown).
fn status_all(inv: &Invocation, json: bool) -> Result<()> {
    if inv.config.is_some() || inv.instance != Instance::Default {
        return Err(
            Exit::BadInput("status --all shows every instance: --config and --instance are refused".into()).into()
        );
    }
    let instances = installed_instances();
    if instances.is_empty() {
        return Err(Exit::BadInput(format!(
            "status --all: no instance is configured (neither {} nor {}/*.toml)",
            config::DEFAULT_PATH,
            config::instance::DIR
        ))
        .into());
    }
    let mut all = Vec::new();
    for instance in instances {
        let report = load(&instance, None)
            .and_then(|cfg| status_report(&Ctx { cfg, root: inv.root, dry_run: inv.dry_run }))
            .map_err(|e| format!("{e:#}"));
        all.push(status::OfInstance::new(&instance, report));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&status::All::new(&all))?);
    } else {
        for one in &all {
            print!("{}", one.to_text(now_ms()));
        }
    }
    let unreadable: Vec<String> =
        all.iter().filter(|one| one.error.is_some()).map(|one| one.instance.clone()).collect();
    let inconsistent: Vec<String> = all
        .iter()
        .filter(|one| one.report.as_ref().is_some_and(|r| !r.consistent))
        .map(|one| one.instance.clone())
        .collect();
    match (unreadable.is_empty(), inconsistent.is_empty()) {
        (false, _) => {
            Err(Exit::BadInput(format!("status --all: cannot read instance(s) {}", unreadable.join(", "))).into())
        }
        (true, false) => {
            Err(Exit::Inconsistent(format!("status --all: inconsistent: instance(s) {}", inconsistent.join(", ")))
                .into())
        }
        (true, true) => Ok(()),
    }
}

/// keepalived's check: exit 0 when this proxy host can serve, 1 (and why) when not. It
/// reads only the config and watch.json: cheap enough to run every second.
fn can_serve(ctx: &Ctx) -> Result<()> {
    let report = watch_file::read(&ctx.cfg);
    let running = report.as_ref().is_some_and(|r| watch_file::runs(r.pid));
    status::can_serve(&ctx.cfg, report.as_ref(), running, now_ms()).map_err(|why| anyhow::anyhow!("can-serve: {why}"))
}

/// Boot, as root: forwarding on, our chains, jumps and hold where missing (duplicates
/// removed), the run lock made; then the cluster part as repmgr's OS user, so that root
/// neither reads that user's password file nor talks to the nodes: `reconcile --boot`.
fn setup(ctx: &Ctx, cli: &Cli) -> Result<()> {
    let cfg = &ctx.cfg;
    let user = OsUser::named(&cfg.repmgr_user).map_err(|e| bad_input(e.context("repmgr.user")))?;
    // one budget for the whole run (the boot unit's TimeoutStartSec outlasts it): the
    // lock, the nodes' deadline, barman's confirmation
    let deadline = Instant::now()
        + cfg.state.lock_timeout
        + cfg.barman.as_ref().map_or(Duration::ZERO, |b| b.worst_case())
        + Duration::from_secs(30);
    let adapters = Adapters::new(ctx);
    if !ctx.dry_run {
        let state = StateDir::new(&cfg.state.dir);
        state.create()?;
        state.make_run_lock(user.gid)?;
    }
    {
        let _lock = adapters.lock()?;
        adapters.direct(|direct| {
            if direct.fw.enable_forwarding()? {
                log::info!("setup: turned on IPv4 forwarding");
            }
            if ctx.dry_run { direct.install() } else { direct.set_up() }
        })?;
    }
    let exe = std::env::current_exe().context("cannot tell which program this is")?;
    let mut args: Vec<String> = cfg.instance.args();
    if let Some(path) = &cli.config {
        args.extend(["--config".into(), path.display().to_string()]);
    }
    if ctx.dry_run {
        args.push("--dry-run".into());
    }
    args.extend((0..cli.verbose).map(|_| "-v".to_string()));
    args.extend(["reconcile".into(), "--boot".into()]);
    let cmd = Cmd::new(exec::system_tool("runuser"))
        .args(["-u", user.name.as_str(), "--"])
        .arg(exe.to_string_lossy())
        .args(args)
        .env("HOME", user.home.to_string_lossy());
    let out = exec::run_status(&cmd, None, deadline.saturating_duration_since(Instant::now()))?;
    print!("{}", out.stdout);
    crate::logging::relay(&out.stderr);
    match out.code() {
        Some(0) => Ok(()),
        code => Err(exit::of_child(code, anyhow::anyhow!("setup: {cmd} failed"))),
    }
}

/// The cluster part of the boot (`reconcile --boot`): the plan for the live cluster, or,
/// when no node answers at all, the route recorded before the reboot, unverified.
fn boot_cluster(cfg: &Config, fx: &Effects) -> Result<()> {
    let view = fx.cluster.view();
    if view.nodes.iter().any(|(_, answer)| answer.replied()) {
        return handler::act_on(cfg, fx, Ask::Converge, "setup", &view).map(drop);
    }
    match fx.nat.recorded()? {
        Some(record) => {
            log::warn!("setup: no node answered ({}); restoring the route recorded before: {record}", view.describe());
            fx.nat.switch(record).map(drop)
        }
        None => {
            log::warn!("setup: no node answered and no route is recorded; the ports stay closed");
            Ok(())
        }
    }
}

/// Removes the jumps and the chains for good: no switch puts them back until the next
/// setup (whoever asks: a watch still running, an event, a `route` under way). The recorded
/// route stays. It waits for a switch under way (root's switch lock), not for the run
/// lock: a run that held it switches nothing after.
fn teardown(ctx: &Ctx) -> Result<()> {
    let cfg = &ctx.cfg;
    let adapters = Adapters::new(ctx);
    if ctx.dry_run {
        return adapters.direct(|direct| direct.uninstall());
    }
    adapters.direct(|direct| direct.tear_down())?;
    let chains: Vec<&str> = ruleset::chains(cfg).into_iter().map(|chain| chain.name).collect();
    log::info!("teardown: removed the chains {} and every rule that jumps to them", chains.join(", "));
    if let Some(pid) = watch_file::read(cfg).map(|r| r.pid).filter(|pid| watch_file::runs(*pid)) {
        log::warn!("teardown: watch (pid {pid}) still runs; it can switch nothing any more: stop it");
    }
    Ok(())
}

/// `check-config`: the config as the root step reads it (a refusal is the load's, exit 2),
/// repmgr's OS user, and every command line that user runs through sudo as sudo judges it
/// (`sudo -l -U`): a newer program whose `route` takes other words than the sudoers file
/// kept from before admits would otherwise fail every switch. Asks no node, reads no table.
fn check_config(ctx: &Ctx) -> Result<()> {
    let cfg = &ctx.cfg;
    let user = OsUser::named(&cfg.repmgr_user).map_err(|e| bad_input(e.context("repmgr.user")))?;
    let refused: Vec<String> = sudo_commands(cfg)
        .iter()
        .filter_map(|cmd| match sudo_refusal(Some(&user.name), cmd)? {
            said if said.is_empty() => Some(cmd.to_string()),
            said => Some(format!("{cmd} ({said})")),
        })
        .collect();
    if !refused.is_empty() {
        return Err(Exit::BadInput(format!(
            "sudo would refuse {} what repmgr-nat runs: {}; edit the grants (visudo -f /etc/sudoers.d/repmgr-nat; \
             dpkg leaves the packaged version beside it as .dpkg-dist when you had edited yours)",
            user.name,
            refused.join("; ")
        ))
        .into());
    }
    log::info!("check-config: the config reads, and sudo admits every command {} runs through it", user.name);
    Ok(())
}

/// One command line of each form that repmgr's OS user runs through sudo: `route --show`,
/// a switch to every node for each ports value, with a timeline and without, and barman's
/// three commands.
pub fn sudo_commands(cfg: &Config) -> Vec<Cmd> {
    let mut cmds = vec![ViaSudo::route_cmd(cfg, &["--show"])];
    for node in &cfg.nodes {
        for (open, timeline) in [(Open::All, 1), (Open::Barman, 1), (Open::None, 0)] {
            cmds.push(ViaSudo::switch_cmd(cfg, Record { route: Route::new(*node, open), timeline }));
        }
    }
    if let Some(barman) = &cfg.barman {
        cmds.extend([crate::effects::barman::stop_cmd(barman), crate::effects::barman::start_cmd(barman)]);
        cmds.push(crate::effects::barman::switch_cmd(barman));
    }
    cmds
}

/// `sudo -n -l [-U <user>] ...`: whether sudo lets `user` (as root), or this user itself
/// (`None`), run `cmd` (a `sudo -n ...` command line), without running it.
pub fn sudo_list(user: Option<&str>, cmd: &Cmd) -> Cmd {
    let words = cmd.args.strip_prefix(&["-n".to_string()]).unwrap_or(&cmd.args);
    let list = Cmd::new(cmd.program.clone()).args(["-n", "-l"]);
    let list = match user {
        Some(user) => list.args(["-U", user]),
        None => list,
    };
    list.args(words.iter().cloned())
}

/// None when sudo admits `cmd` for `user` (see `sudo_list`), else the first line it said
/// (empty when it said nothing), or why it could not be asked within 10 s.
pub fn sudo_refusal(user: Option<&str>, cmd: &Cmd) -> Option<String> {
    match exec::run_status(&sudo_list(user, cmd), None, Duration::from_secs(10)) {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(exec::first_line(&out.stderr).unwrap_or("").to_string()),
        Err(e) => Some(e.to_string()),
    }
}

/// `route --show`: the chains, their rules and the jumps, as iptables-save prints them;
/// with `--follow`, again whenever the tables change, until the reader goes.
fn route_show(ctx: &Ctx, follow: bool) -> Result<()> {
    let adapters = Adapters::new(ctx);
    if follow {
        let stdout = std::io::stdout();
        let mut changes = crate::effects::follow::Kernel::new(&stdout, crate::effects::firewall::notifies());
        return adapters.direct(|direct| crate::effects::follow::follow(direct, &mut changes, &mut stdout.lock()));
    }
    let text = adapters.direct(|direct| direct.live())?.render();
    print!("{text}");
    Ok(())
}

/// The one privileged step: switch the chains to `node`. Without a timeline the recorded
/// one stays (a switch by hand), as read under root's switch lock.
fn route(ctx: &Ctx, node: Node, open: Open, timeline: Option<u32>) -> Result<()> {
    let record = Record { route: Route::new(node, open), timeline: timeline.unwrap_or(0) };
    let changed = Adapters::new(ctx).switch(record)?;
    crate::logging::answer(if changed { "changed" } else { "unchanged" });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_config_asks_sudo_about_every_command_line_repmgr_nat_runs_through_it() {
        let cfg = crate::core::config::tests::example();
        let sudo = exec::system_tool("sudo").display().to_string();
        let asked: Vec<String> = sudo_commands(&cfg)
            .iter()
            .map(|cmd| sudo_list(Some("postgres"), cmd).to_string().replacen(&sudo, "sudo", 1))
            .collect();
        let route = "sudo -n -l -U postgres /usr/bin/repmgr-nat route";
        let barman = "sudo -n -l -U postgres -u barman /usr/bin/barman";
        assert_eq!(
            asked,
            [
                format!("{route} --show"),
                format!("{route} 1 --ports all --timeline 1"),
                format!("{route} 1 --ports barman --timeline 1"),
                format!("{route} 1 --ports none"),
                format!("{route} 2 --ports all --timeline 1"),
                format!("{route} 2 --ports barman --timeline 1"),
                format!("{route} 2 --ports none"),
                format!("{barman} receive-wal --stop main_backup"),
                format!("{barman} receive-wal main_backup"),
                format!("{barman} switch-wal --force --archive --archive-timeout=90 main_backup"),
            ]
        );
    }

    #[test]
    fn watch_is_refused_to_root_as_bad_input() {
        let err = refuse_root("watch", true).unwrap_err();
        assert_eq!(exit::code(&err), exit::BAD_INPUT);
        assert!(format!("{err:#}").starts_with("watch must not run as root"), "{err:#}");
        refuse_root("watch", false).unwrap();
    }
}
