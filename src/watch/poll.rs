//! Asking the nodes: one task per node keeps that node's latest answer, and a pass reads
//! them all at once. A frozen node delays only its own task.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::Notify;

use crate::core::config::{Config, Node, Watch};
use crate::core::view::{Answer, View};
use crate::effects::db::Pool;

/// How long after a node's deadline the first pass waits for its first answer.
const FIRST_SLACK: Duration = Duration::from_secs(1);

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

    /// Until SIGTERM or SIGINT.
    pub(super) async fn stop(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// What a poller asks: the pool, in production.
pub(super) trait Asker: Send + Sync + 'static {
    fn answer(&self, node: Node) -> Pin<Box<dyn Future<Output = Answer> + Send + '_>>;
    /// Notified when the kept connection to `node` ends.
    fn ended(&self, node: Node) -> Arc<Notify>;
}

/// The nodes asked over the pool's connections, each within its deadline.
pub(super) struct Asking {
    pub(super) cfg: Arc<Config>,
    pub(super) pool: Arc<Pool>,
}

impl Asker for Asking {
    fn answer(&self, node: Node) -> Pin<Box<dyn Future<Output = Answer> + Send + '_>> {
        Box::pin(self.pool.answer(&self.cfg, node))
    }

    fn ended(&self, node: Node) -> Arc<Notify> {
        self.pool.ended(node)
    }
}

/// The latest answer of each node, kept fresh by one task per node.
pub(super) struct Pollers {
    latest: Arc<Mutex<BTreeMap<usize, (Answer, Instant)>>>,
    changed: Arc<Notify>,
    pub(super) hurry: Arc<AtomicBool>,
    /// How many times a node's task ended (it never should) and was started again.
    pub(super) restarts: Arc<AtomicU64>,
}

impl Pollers {
    /// One task per node, each watched by one that starts it again, after a pause of one
    /// interval, whenever it ends (a panic, say): no node is ever left unasked.
    pub(super) fn start(rt: &tokio::runtime::Runtime, cfg: &Config, asker: Arc<dyn Asker>) -> Pollers {
        let pollers = Pollers {
            latest: Arc::default(),
            changed: Arc::new(Notify::new()),
            hurry: Arc::new(AtomicBool::new(true)),
            restarts: Arc::default(),
        };
        let cfg = Arc::new(cfg.clone());
        for index in 0..cfg.nodes.len() {
            let poller = Poller {
                index,
                cfg: Arc::clone(&cfg),
                asker: Arc::clone(&asker),
                latest: Arc::clone(&pollers.latest),
                changed: Arc::clone(&pollers.changed),
                hurry: Arc::clone(&pollers.hurry),
            };
            let restarts = Arc::clone(&pollers.restarts);
            rt.spawn(async move {
                let poller = Arc::new(poller);
                loop {
                    let why = match tokio::spawn(Arc::clone(&poller).run()).await {
                        Ok(()) => "ended".to_string(),
                        Err(e) if e.is_panic() => format!("panicked: {}", panic_text(e.into_panic())),
                        // the runtime shuts down
                        Err(_) => return,
                    };
                    restarts.fetch_add(1, Ordering::Relaxed);
                    let node = poller.cfg.nodes[index];
                    log::error!("watch: the task asking node {} {why}; starting it again", node.id());
                    tokio::time::sleep(poller.cfg.watch.interval).await;
                }
            });
        }
        pollers
    }

    /// Until every node answered once, at most a node's deadline (and a little more: a
    /// node not asked by then counts as silent), or a signal to stop.
    pub(super) async fn first_answers(&self, cfg: &Config, stop: impl Future<Output = ()>) -> Wake {
        let deadline = tokio::time::Instant::now() + cfg.postgres.connect_timeout + FIRST_SLACK;
        tokio::pin!(stop);
        while lock(&self.latest).len() < cfg.nodes.len() {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = self.changed.notified() => {}
                _ = &mut stop => return Wake::Stop,
            }
        }
        Wake::Changed
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
            let fresh = lock(&self.latest).values().all(|(_, at)| *at >= since);
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
        let latest = lock(&self.latest);
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

/// One node's task: asks, keeps the answer, waits for the next tick.
struct Poller {
    index: usize,
    cfg: Arc<Config>,
    asker: Arc<dyn Asker>,
    latest: Arc<Mutex<BTreeMap<usize, (Answer, Instant)>>>,
    changed: Arc<Notify>,
    hurry: Arc<AtomicBool>,
}

impl Poller {
    async fn run(self: Arc<Self>) {
        let node = self.cfg.nodes[self.index];
        let ended = self.asker.ended(node);
        loop {
            let started = tokio::time::Instant::now();
            let answer = self.asker.answer(node).await;
            let differs = {
                let mut latest = lock(&self.latest);
                let differs = latest.get(&self.index).is_none_or(|(old, _)| !same_meaning(old, &answer));
                if differs {
                    let took = started.elapsed().as_millis();
                    log::debug!("watch: node {} now {} (asked in {took} ms)", node.id(), answer.describe());
                }
                latest.insert(self.index, (answer, Instant::now()));
                differs
            };
            if differs {
                self.changed.notify_one();
            }
            let every = if self.hurry.load(Ordering::Relaxed) {
                Watch::HURRY.min(self.cfg.watch.interval)
            } else {
                self.cfg.watch.interval
            };
            // the next tick, or at once when the kept connection ends (a node that
            // shuts down closes it before it refuses new ones)
            tokio::select! {
                _ = tokio::time::sleep_until(started + every) => {}
                _ = ended.notified() => {}
            }
        }
    }
}

/// The latest answers, even after a task panicked (none does while it holds them).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a panic said, when it said it with text.
fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => payload.downcast_ref::<&str>().map_or("(no message)".to_string(), |s| s.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::tests::EXAMPLE;
    use crate::effects::db;

    /// Node 1's first question panics (as a row of the wrong shape once did); every other
    /// one is answered "down". Node 2 never answers, when `mute`.
    #[derive(Default)]
    struct Fake {
        asked: AtomicU64,
        mute: bool,
    }

    impl Asker for Fake {
        fn answer(&self, node: Node) -> Pin<Box<dyn Future<Output = Answer> + Send + '_>> {
            let first =
                node.id() == crate::core::config::NodeId::new(1) && self.asked.fetch_add(1, Ordering::Relaxed) == 0;
            let mute = self.mute && node.id() == crate::core::config::NodeId::new(2);
            Box::pin(async move {
                assert!(!first, "error retrieving column 1");
                if mute {
                    std::future::pending::<()>().await;
                }
                Answer::Down("refused".into())
            })
        }

        fn ended(&self, _node: Node) -> Arc<Notify> {
            Arc::new(Notify::new())
        }
    }

    fn cfg() -> Config {
        Config::parse(&EXAMPLE.replace("dbname = \"postgres\"", "dbname = \"postgres\"\nconnect_timeout = 1")).unwrap()
    }

    #[test]
    fn a_task_that_panics_is_started_again_and_its_node_asked() {
        let (cfg, rt) = (cfg(), db::runtime().unwrap());
        let pollers = Pollers::start(&rt, &cfg, Arc::new(Fake::default()));
        let wake = rt.block_on(pollers.first_answers(&cfg, std::future::pending()));
        assert_eq!(wake, Wake::Changed);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !matches!(pollers.view(&cfg).nodes[0].1, Answer::Down(_)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(matches!(pollers.view(&cfg).nodes[0].1, Answer::Down(_)), "node 1 is never asked again");
        assert_eq!(pollers.restarts.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_first_pass_waits_for_a_mute_node_no_longer_than_its_deadline() {
        let (cfg, rt) = (cfg(), db::runtime().unwrap());
        let pollers = Pollers::start(&rt, &cfg, Arc::new(Fake { mute: true, ..Fake::default() }));
        let started = Instant::now();
        assert_eq!(rt.block_on(pollers.first_answers(&cfg, std::future::pending())), Wake::Changed);
        assert!(started.elapsed() < cfg.postgres.connect_timeout + FIRST_SLACK + Duration::from_millis(500));
        assert!(matches!(pollers.view(&cfg).nodes[1].1, Answer::Silent(_)), "{:?}", pollers.view(&cfg));
        // and a signal to stop ends the wait at once
        let started = Instant::now();
        assert_eq!(rt.block_on(pollers.first_answers(&cfg, async {})), Wake::Stop);
        assert!(started.elapsed() < Duration::from_millis(100));
    }
}
