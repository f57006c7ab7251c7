//! The chaos run's hands: each transition done to the lab with `lab.sh`, every command
//! under a deadline, and the cluster's state observed from the nodes afterwards.

use std::time::Duration;

use serde::Serialize;

use super::schedule::{
    FROZEN_PRIMARY_MS, FROZEN_STANDBY_MS, HOLDER_DOWN_MS, Kind, MEANWHILE_AFTER_MS, Meanwhile, Node, Other,
    PARTITION_MS, State, Transition,
};
use crate::lab::{Lab, poll_until};
use crate::now_ms;

/// A command the schedule ran: what, how long, how it ended (124: killed at its deadline).
#[derive(Clone, Debug, Serialize)]
pub struct CommandRun {
    pub command: String,
    pub at_ms: u64,
    pub ms: u64,
    pub code: i32,
    pub deadline_ms: u64,
    /// The end of what it printed, when it failed.
    pub said: Option<String>,
}

impl CommandRun {
    pub fn failed(&self) -> bool {
        self.code != 0
    }

    pub fn overran(&self) -> bool {
        self.code == 124 || self.ms > self.deadline_ms
    }
}

/// Most commands: a signal, a table flush, a daemon started or stopped.
const QUICK: Duration = Duration::from_secs(15);
/// A promotion seen through `lab.sh wait-primary` (repmgrd promotes within seconds).
const PROMOTION: Duration = Duration::from_secs(35);
/// `repmgr standby switchover`, waits for both nodes included.
const SWITCHOVER: Duration = Duration::from_secs(45);
/// `repmgr standby promote`.
const PROMOTE: Duration = Duration::from_secs(30);
/// A rejoin (pg_rewind, or a fresh clone) until the node streams.
const REJOIN: Duration = Duration::from_secs(90);
/// The boot step: the lock, barman's confirmation (archive_timeout 30 s in the lab), the rest.
const SETUP: Duration = Duration::from_secs(90);

/// Runs the commands of one transition, each under its deadline.
pub struct Hands<'a> {
    pub lab: &'a Lab,
    pub commands: Vec<CommandRun>,
}

impl Hands<'_> {
    fn run(&mut self, limit: Duration, args: &[&str]) -> bool {
        let at = now_ms();
        let run = self.lab.lab_within(limit, args);
        let ms = now_ms() - at;
        let said = (run.code != 0).then(|| {
            let all = format!("{}{}", run.stdout, run.stderr);
            let lines: Vec<&str> = all.lines().collect();
            lines[lines.len().saturating_sub(6)..].join(" | ")
        });
        self.commands.push(CommandRun {
            command: args.join(" "),
            at_ms: at,
            ms,
            code: run.code,
            deadline_ms: limit.as_millis() as u64,
            said,
        });
        run.code == 0
    }

    fn sleep(ms: u64) {
        std::thread::sleep(Duration::from_millis(ms));
    }

    /// Whether repmgrd runs on `node` (its pid file names a live process).
    fn repmgrd_runs(&self, node: Node) -> bool {
        let pidfile = format!("{}/{}/repmgrd.pid", self.lab.env["LAB_DIR"], node.name());
        std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            // SAFETY: signal 0 only checks that the process exists.
            .is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0)
    }

    /// Both tables emptied in one transaction (`iptables-restore` without `--noflush`):
    /// a switch committed between a flush and a chain's deletion cannot make it fail.
    fn flush_tables(&mut self, proxy: &str, conntrack: bool) {
        let mut script = "printf '*nat\\nCOMMIT\\n*filter\\nCOMMIT\\n' | iptables-restore".to_string();
        if conntrack {
            script.push_str(" && conntrack -F");
        }
        self.run(QUICK, &["exec", proxy, "--", "sh", "-c", &script]);
    }

    /// Does `t` to the cluster in `state`: the events dropped around it, a watch down
    /// around it, a momentary fault from another thread while it runs.
    pub fn perform(&mut self, t: Transition, state: State) {
        if t.events_dropped {
            self.run(QUICK, &["events", "drop"]);
        }
        if let Some(Meanwhile::WatchDown { proxy }) = t.meanwhile {
            self.run(QUICK, &["watch", "kill", proxy]);
        }
        let lab = self.lab;
        let momentary = t.meanwhile.filter(|m| !matches!(m, Meanwhile::WatchDown { .. }));
        let during = std::thread::scope(|s| {
            let fault = momentary.map(|m| {
                s.spawn(move || {
                    let mut hands = Hands { lab, commands: Vec::new() };
                    hands.strike(m);
                    hands.commands
                })
            });
            self.transition(t.kind, state);
            fault.map(|f| f.join().expect("the fault meanwhile"))
        });
        self.commands.extend(during.unwrap_or_default());
        self.commands.sort_by_key(|c| c.at_ms);
        if let Some(Meanwhile::WatchDown { proxy }) = t.meanwhile {
            self.run(QUICK, &["watch", "start", proxy]);
        }
        if t.events_dropped {
            self.run(QUICK, &["events", "pass"]);
        }
    }

    /// A momentary fault `MEANWHILE_AFTER_MS` into a transition (from a thread of its own).
    fn strike(&mut self, m: Meanwhile) {
        Self::sleep(MEANWHILE_AFTER_MS);
        match m {
            Meanwhile::TablesFlush { proxy } => self.flush_tables(proxy, false),
            // the old primary gone, receive-wal may have ended already
            Meanwhile::ReceiveWalStop => {
                if !self.receive_wal_stop()
                    && let Some(last) = self.commands.last_mut()
                    && last.said.as_deref().is_some_and(|s| s.contains("no such process"))
                {
                    last.code = 0;
                }
            }
            // around the transition, not during it: `perform`
            Meanwhile::WatchDown { .. } => {}
        }
    }

    fn receive_wal_stop(&mut self) -> bool {
        let server = self.lab.env["BARMAN_SERVER"].clone();
        self.run(QUICK, &["barman", "receive-wal", "--stop", &server])
    }

    fn transition(&mut self, kind: Kind, state: State) {
        let (p, o) = (state.primary, state.primary.other());
        match kind {
            Kind::Failover => {
                self.run(QUICK, &["stop", p.name()]);
                self.run(PROMOTION, &["wait-primary", o.name(), "30"]);
            }
            Kind::Switchover => {
                self.run(SWITCHOVER, &["switchover", o.name()]);
            }
            Kind::Promote => {
                self.run(QUICK, &["repmgrd", "stop", "db1"]);
                self.run(QUICK, &["repmgrd", "stop", "db2"]);
                self.run(QUICK, &["stop", p.name()]);
                self.run(PROMOTE, &["repmgr", o.name(), "standby", "promote"]);
                self.run(PROMOTION, &["wait-primary", o.name(), "30"]);
                // the stopped node's repmgrd starts again with its rejoin
                self.run(QUICK, &["repmgrd", "start", o.name()]);
            }
            Kind::Rejoin { clone } => {
                let mut args = vec!["rejoin", o.name()];
                if clone {
                    args.push("--clone");
                }
                self.run(REJOIN, &args);
                if !self.repmgrd_runs(o) {
                    self.run(QUICK, &["repmgrd", "start", o.name()]);
                }
                // repmgrd must watch the primary before the next failover, or nothing
                // promotes this node
                let at = now_ms();
                let seen = poll_until(Duration::from_secs(30), || {
                    let seen = self.lab.try_sql_in(o.name(), "repmgr", "select repmgr.get_upstream_last_seen()");
                    seen.is_ok_and(|s| s.parse::<i64>().is_ok_and(|s| (0..=2).contains(&s)))
                });
                self.commands.push(CommandRun {
                    command: format!("(wait) repmgrd on {} seeing the primary", o.name()),
                    at_ms: at,
                    ms: now_ms() - at,
                    code: if seen { 0 } else { 124 },
                    deadline_ms: 30_000,
                    said: None,
                });
            }
            Kind::Freeze { node } => {
                let ms = if node == p { FROZEN_PRIMARY_MS } else { FROZEN_STANDBY_MS };
                if self.run(QUICK, &["freeze", node.name()]) {
                    Self::sleep(ms);
                    self.run(QUICK, &["thaw", node.name()]);
                }
            }
            Kind::Partition { node } => {
                self.run(QUICK, &["partition", node.name()]);
                Self::sleep(PARTITION_MS);
                self.run(QUICK, &["heal", node.name()]);
            }
            Kind::ReceiveWalStop => {
                self.receive_wal_stop();
            }
            Kind::TablesFlush { proxy } => self.flush_tables(proxy, false),
            Kind::WatchKill { proxy } => {
                self.run(QUICK, &["watch", "kill", proxy]);
                self.run(QUICK, &["watch", "start", proxy]);
            }
            Kind::ProxyReboot { proxy } => {
                self.run(QUICK, &["watch", "kill", proxy]);
                if proxy == "proxy" {
                    // barman's host: its receive-wal goes with it
                    self.receive_wal_stop();
                }
                self.flush_tables(proxy, true);
                // watch.dir is a tmpfs directory the unit makes again, empty
                let dir = if proxy == "proxy2" { &self.lab.env["WATCH2_DIR"] } else { &self.lab.env["WATCH_DIR"] };
                let dir = dir.clone();
                let remake = format!("rm -rf -- '{dir}' && install -d -o postgres -g postgres -m 0755 '{dir}'");
                self.run(QUICK, &["exec", proxy, "--", "sh", "-c", &remake]);
                let setup = format!("PATH={}", self.lab.env["SYS_PATH"]);
                let bin = self.lab.env["REPMGR_NAT_BIN"].clone();
                self.run(SETUP, &["exec", proxy, "--", "env", "-i", &setup, &bin, "setup"]);
                self.run(QUICK, &["watch", "start", proxy]);
            }
            Kind::HolderDown => {
                let holder = self.lab.vip();
                if holder == "proxy" || holder == "proxy2" {
                    self.run(QUICK, &["proxy-down", &holder]);
                    Self::sleep(HOLDER_DOWN_MS);
                    self.run(QUICK, &["proxy-up", &holder]);
                } else {
                    self.commands.push(CommandRun {
                        command: "vip".into(),
                        at_ms: now_ms(),
                        ms: 0,
                        code: 1,
                        deadline_ms: 0,
                        said: Some(format!("the address is held by {holder:?}, not by one proxy")),
                    });
                }
            }
        }
    }
}

/// A node's answer: whether it is in recovery, and a primary's timeline (from its current
/// WAL file). None: it does not answer.
fn ask(lab: &Lab, node: Node) -> Option<(bool, u32)> {
    let sql = "select pg_is_in_recovery(), case when pg_is_in_recovery() then 0 \
               else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int end";
    let out = lab.try_sql(node.name(), sql).ok()?;
    let (recovery, tl) = out.split_once('|')?;
    Some((recovery == "t", tl.parse().ok()?))
}

/// The cluster as the nodes say it is: the primary on the highest timeline (None: no
/// node, or two on the same timeline), the other a standby, or down (stopped, or a
/// primary on an older timeline: it needs a rejoin).
pub fn observe(lab: &Lab) -> Option<(State, u32)> {
    let answers = [Node::Db1, Node::Db2].map(|n| (n, ask(lab, n)));
    let primaries: Vec<(Node, u32)> =
        answers.iter().filter_map(|(n, a)| a.filter(|(rec, _)| !rec).map(|(_, tl)| (*n, tl))).collect();
    let high = primaries.iter().map(|(_, tl)| *tl).max()?;
    let top: Vec<Node> = primaries.iter().filter(|(_, tl)| *tl == high).map(|(n, _)| *n).collect();
    let [primary] = top[..] else { return None };
    let other = match answers.iter().find(|(n, _)| *n != primary).and_then(|(_, a)| *a) {
        Some((true, _)) => Other::Standby,
        _ => Other::Down,
    };
    Some((State { primary, other }, high))
}
