//! The validated context of a run, and the one place that turns it into live adapters
//! (ripgrep's `HiArgs`): the real ones, or for `--dry-run` printing ones around them (the
//! real ones still answer every question, nothing is changed). Every command, `watch`
//! included, acts only through what this builds, so no command can miss the dry run.

use std::cell::OnceCell;

use anyhow::Result;
use tokio::runtime::Runtime;

use crate::core::config::Config;
use crate::core::ruleset::Record;
use crate::core::watch_json::WatchReport;
use crate::effects::barman::{Backup, BarmanCli, NoBarman};
use crate::effects::db::{self, Cluster, PgCluster};
use crate::effects::dryrun::{PrintBackup, PrintCluster, PrintFirewall, PrintNat, Sink};
use crate::effects::firewall::{Firewall, Iptables};
use crate::effects::nat::{Direct, NatSwitch, ViaSudo};
use crate::effects::state::{Lock, NoRunLock, RunLock, StateDir};
use crate::effects::watch_file;
use crate::handler::Effects;

/// What every command knows before it starts: decided once.
pub struct Ctx {
    pub cfg: Config,
    /// Whether this process is root: it then switches the chains itself, otherwise
    /// through `sudo -n repmgr-nat route`.
    pub root: bool,
    pub dry_run: bool,
}

/// The live adapters of one run, built from its `Ctx`.
pub struct Adapters<'c> {
    pub ctx: &'c Ctx,
    /// Started on first use: root's commands never ask a node.
    rt: OnceCell<Runtime>,
    state: StateDir,
    /// What a running watch wrote last, read once per run.
    watch: OnceCell<Option<WatchReport>>,
    out: Sink,
}

impl<'c> Adapters<'c> {
    pub fn new(ctx: &'c Ctx) -> Adapters<'c> {
        Adapters {
            ctx,
            rt: OnceCell::new(),
            state: StateDir::new(&ctx.cfg.state.dir),
            watch: OnceCell::new(),
            out: Sink::Stdout,
        }
    }

    /// What a running watch wrote last (`watch.dir`), if anything.
    pub fn watch_report(&self) -> Option<&WatchReport> {
        self.watch.get_or_init(|| watch_file::read(&self.ctx.cfg)).as_ref()
    }

    /// The runtime every database call of this run runs on.
    pub fn runtime(&self) -> Result<&Runtime> {
        if let Some(rt) = self.rt.get() {
            return Ok(rt);
        }
        let rt = db::runtime()?;
        Ok(self.rt.get_or_init(|| rt))
    }

    /// The nodes, asked over connections of this run's own.
    pub fn cluster(&self) -> Result<PgCluster<'_>> {
        Ok(PgCluster::new(&self.ctx.cfg, self.runtime()?))
    }

    /// `teardown` ran since the last `setup`.
    pub fn torn_down(&self) -> bool {
        self.state.torn_down()
    }

    /// The run lock, waited for; none for a dry run, which changes nothing.
    pub fn lock(&self) -> Result<Option<Lock>> {
        if self.ctx.dry_run {
            return Ok(None);
        }
        self.state.lock(self.ctx.cfg.state.lock_timeout).map(Some)
    }

    /// The run lock as `watch` takes it, never waiting; a dry run neither needs it nor
    /// holds it against the runs that act.
    pub fn run_lock(&self) -> Box<dyn RunLock> {
        match self.ctx.dry_run {
            true => Box::new(NoRunLock),
            false => Box::new(self.state.clone()),
        }
    }

    /// The adapters of an event or a command: a node a running watch saw unanswered a
    /// moment ago gets a short deadline.
    pub fn effects<T>(&self, f: impl FnOnce(&Effects) -> Result<T>) -> Result<T> {
        let cfg = &self.ctx.cfg;
        let seen_down = self
            .watch_report()
            .filter(|r| r.fresh(crate::clock::now_ms()))
            .map(|r| r.unanswered.clone())
            .unwrap_or_default();
        if !seen_down.is_empty() {
            log::debug!("watch saw node(s) {seen_down:?} unanswered: asked within {} ms", db::SEEN_DOWN.as_millis());
        }
        let cluster = self.cluster()?.seen_down(seen_down);
        let barman = cfg.barman.as_ref().map(BarmanCli::new);
        self.effects_with(&cluster, barman.as_ref(), f)
    }

    /// The adapters around `cluster` and `barman`: the chains switched in this process as
    /// root, through sudo otherwise.
    pub fn effects_with<T>(
        &self,
        cluster: &dyn Cluster,
        barman: Option<&BarmanCli>,
        f: impl FnOnce(&Effects) -> T,
    ) -> T {
        let cfg = &self.ctx.cfg;
        let backup: &(dyn Backup + Sync) = match barman {
            Some(barman) => barman,
            None => &NoBarman,
        };
        let direct = Direct { cfg, fw: &Iptables, state: &self.state };
        let via_sudo = ViaSudo { cfg };
        let nat: &dyn NatSwitch = if self.ctx.root { &direct } else { &via_sudo };
        let real = Effects { nat, cluster, backup };
        dressed(cfg, self.ctx.dry_run, !self.ctx.root, &real, &self.out, f)
    }

    /// The chains as root's commands handle them in this process (`setup`, `teardown`,
    /// `route --show`): on the real tables, each change printed instead for a dry run.
    pub fn direct<T>(&self, f: impl FnOnce(&Direct) -> T) -> T {
        let printing = PrintFirewall { real: &Iptables, out: &self.out };
        let fw: &dyn Firewall = if self.ctx.dry_run { &printing } else { &Iptables };
        f(&Direct { cfg: &self.ctx.cfg, fw, state: &self.state })
    }

    /// The root step's switch (`route`): printed for a dry run.
    pub fn switch(&self, record: Record) -> Result<bool> {
        let cfg = &self.ctx.cfg;
        let direct = Direct { cfg, fw: &Iptables, state: &self.state };
        match self.ctx.dry_run {
            true => PrintNat::new(cfg, &direct, false, &self.out).switch(record),
            false => direct.switch(record),
        }
    }
}

/// `real` as a run uses it: as it is, or for a dry run wrapped in the printing adapters,
/// which ask `real` every question and print every change (`via_sudo`: the switch as the
/// sudo command line it would be).
pub fn dressed<T>(
    cfg: &Config,
    dry_run: bool,
    via_sudo: bool,
    real: &Effects,
    out: &Sink,
    f: impl FnOnce(&Effects) -> T,
) -> T {
    if !dry_run {
        return f(real);
    }
    let nat = PrintNat::new(cfg, real.nat, via_sudo, out);
    let cluster = PrintCluster { cfg, real: real.cluster, out };
    let printing = cfg.barman.as_ref().map(|barman| PrintBackup { cfg: barman, out });
    let backup: &(dyn Backup + Sync) = match &printing {
        Some(printing) => printing,
        None => &NoBarman,
    };
    f(&Effects { nat: &nat, cluster: &cluster, backup })
}
