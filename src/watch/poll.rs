//! Asking the nodes: one task per node keeps that node's latest answer, and a pass reads
//! them all at once. A frozen node delays only its own task.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::Notify;

use crate::core::config::{Config, Watch};
use crate::core::view::{Answer, View};
use crate::effects::db::Pool;

/// Why a pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wake {
    Tick,
    /// A node's answer changed (role, timeline, slot, reachability).
    Changed,
    /// SIGUSR1: someone asks for a pass now.
    Asked,
    /// SIGTERM or SIGINT.
    Stop,
}

pub(super) struct Signals {
    usr1: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) async fn new() -> Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            usr1: signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?,
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }
}

/// The latest answer of each node, kept fresh by one task per node.
pub(super) struct Pollers {
    latest: Arc<Mutex<BTreeMap<usize, (Answer, Instant)>>>,
    changed: Arc<Notify>,
    pub(super) hurry: Arc<AtomicBool>,
}

impl Pollers {
    pub(super) fn start(rt: &tokio::runtime::Runtime, cfg: &Config, pool: Arc<Pool>) -> Pollers {
        let pollers = Pollers {
            latest: Arc::default(),
            changed: Arc::new(Notify::new()),
            hurry: Arc::new(AtomicBool::new(true)),
        };
        let cfg = Arc::new(cfg.clone());
        for index in 0..cfg.nodes.len() {
            let (cfg, pool) = (Arc::clone(&cfg), Arc::clone(&pool));
            let (latest, changed, hurry) =
                (Arc::clone(&pollers.latest), Arc::clone(&pollers.changed), Arc::clone(&pollers.hurry));
            rt.spawn(async move {
                let node = cfg.nodes[index];
                let ended = pool.ended(node);
                loop {
                    let started = tokio::time::Instant::now();
                    let answer = pool.answer(&cfg, node).await;
                    let differs = {
                        let mut latest = latest.lock().expect("latest");
                        let differs = latest.get(&index).is_none_or(|(old, _)| !same_meaning(old, &answer));
                        if differs {
                            let took = started.elapsed().as_millis();
                            log::debug!("watch: node {} now {} (asked in {took} ms)", node.id(), answer.describe());
                        }
                        latest.insert(index, (answer, Instant::now()));
                        differs
                    };
                    if differs {
                        changed.notify_one();
                    }
                    let every = if hurry.load(Ordering::Relaxed) {
                        Watch::HURRY.min(cfg.watch.interval)
                    } else {
                        cfg.watch.interval
                    };
                    // the next tick, or at once when the kept connection ends (a node that
                    // shuts down closes it before it refuses new ones)
                    tokio::select! {
                        _ = tokio::time::sleep_until(started + every) => {}
                        _ = ended.notified() => {}
                    }
                }
            });
        }
        pollers
    }

    /// Until every node answered once.
    pub(super) async fn first_answers(&self, cfg: &Config) {
        while self.latest.lock().expect("latest").len() < cfg.nodes.len() {
            self.changed.notified().await;
        }
    }

    /// Until the next tick, a changed answer or a signal.
    pub(super) async fn wait(&self, interval: Duration, signals: &mut Signals) -> Wake {
        tokio::select! {
            _ = tokio::time::sleep(interval) => Wake::Tick,
            _ = self.changed.notified() => Wake::Changed,
            _ = signals.usr1.recv() => Wake::Asked,
            _ = signals.term.recv() => Wake::Stop,
            _ = signals.int.recv() => Wake::Stop,
        }
    }

    /// Until every node answered after `since` (or its deadline passed: the view counts it
    /// silent then), or a signal to stop.
    pub(super) async fn answers_since(&self, since: Instant, cfg: &Config, signals: &mut Signals) -> Wake {
        let deadline = tokio::time::Instant::from_std(since + cfg.postgres.connect_timeout);
        loop {
            let fresh = self.latest.lock().expect("latest").values().all(|(_, at)| *at >= since);
            if fresh || tokio::time::Instant::now() >= deadline {
                return Wake::Changed;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                _ = signals.term.recv() => return Wake::Stop,
                _ = signals.int.recv() => return Wake::Stop,
            }
        }
    }

    /// Every node's latest answer; one older than the deadline counts as silence.
    pub(super) fn view(&self, cfg: &Config) -> View {
        let latest = self.latest.lock().expect("latest");
        let deadline = cfg.postgres.connect_timeout;
        let nodes = cfg
            .nodes
            .iter()
            .enumerate()
            .map(|(index, node)| {
                let answer = match latest.get(&index) {
                    Some((answer, at)) if at.elapsed() <= deadline => answer.clone(),
                    Some((_, at)) => Answer::Silent(format!("no answer for {} ms", at.elapsed().as_millis())),
                    None => Answer::Silent("not asked yet".to_string()),
                };
                (*node, answer)
            })
            .collect();
        View { nodes }
    }
}

/// Whether two answers mean the same to a decision (WAL positions move all the time).
fn same_meaning(a: &Answer, b: &Answer) -> bool {
    match (a, b) {
        (Answer::Up(a), Answer::Up(b)) => {
            a.role == b.role
                && a.timeline == b.timeline
                && a.slot.is_some() == b.slot.is_some()
                && a.slot.and_then(|s| s.active_pid).is_some() == b.slot.and_then(|s| s.active_pid).is_some()
        }
        (Answer::Down(_), Answer::Down(_))
        | (Answer::Silent(_), Answer::Silent(_))
        | (Answer::Rejected(_), Answer::Rejected(_)) => true,
        _ => false,
    }
}
