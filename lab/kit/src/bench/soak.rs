//! The soak: watch on a steady two-node cluster, first idle, then under a write load;
//! watch's CPU and memory in each phase, and the WAL barman's slot keeps on the standby
//! while barman streams from the primary.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::attempt;
use crate::lab::{Lab, Session};

/// What watch cost over a phase.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Cost {
    pub seconds: f64,
    /// CPU time (user + system) over wall time, percent of one core.
    pub cpu_percent: f64,
    /// The same with the processes watch started: those it waited for (`sudo repmgr-nat
    /// route --show`: sudo, the root step, iptables-save) and those still running (`sudo
    /// repmgr-nat route --show --follow` and the iptables-save it waits for). None in runs
    /// from before it was measured.
    #[serde(default)]
    pub cpu_with_children_percent: Option<f64>,
    pub rss_start_kb: u64,
    pub rss_max_kb: u64,
    pub rss_end_kb: u64,
    pub passes: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Soak {
    pub idle: Option<Cost>,
    pub load: Option<Cost>,
    /// WAL written on the primary during the load phase, bytes.
    pub wal_written: u64,
    /// WAL barman's slot on the standby keeps beyond the standby's replay position
    /// (sampled every 10 s), bytes: the largest and the mean.
    pub standby_slot_max: u64,
    pub standby_slot_mean: u64,
    /// The standby's pg_wal directory, bytes: the largest and at the end.
    pub standby_pg_wal_max: u64,
    pub standby_pg_wal_end: u64,
    pub failed: Option<String>,
}

impl Soak {
    pub fn brief(&self) -> String {
        let mb = |b: u64| format!("{:.1} MB", b as f64 / 1048576.0);
        match (&self.failed, &self.idle) {
            (Some(why), _) => format!("FAILED: {why}"),
            (None, Some(idle)) => format!(
                "watch idle {:.2} % CPU, {} kB RSS; under writes the standby's slot kept at most {} of {} written",
                idle.cpu_percent,
                idle.rss_max_kb,
                mb(self.standby_slot_max),
                mb(self.wal_written)
            ),
            (None, None) => "nothing measured".into(),
        }
    }
}

/// A process's CPU time (clock ticks: its own utime + stime; and its children's: cutime +
/// cstime, those it waited for, and its running descendants') and its VmRSS (kB).
struct Usage {
    own: u64,
    children: u64,
    rss_kb: u64,
}

fn usage(pid: u32) -> Option<Usage> {
    let (_, own, children) = stat(pid)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(Usage { own, children: children + descendants(pid), rss_kb })
}

/// A process's parent, its CPU time and that of the children it waited for (clock ticks).
fn stat(pid: u32) -> Option<(u32, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((number(1)? as u32, number(11)? + number(12)?, number(13)? + number(14)?))
}

/// The CPU time of `pid`'s descendants still running (with the children they waited for).
fn descendants(pid: u32) -> u64 {
    let procs: Vec<(u32, (u32, u64, u64))> =
        crate::lab::pids().into_iter().filter_map(|p| Some((p, stat(p)?))).collect();
    let mut tree = vec![pid];
    let mut ticks = 0;
    // parents before children is not promised by /proc's order: repeat until nothing joins
    loop {
        let joined: Vec<&(u32, (u32, u64, u64))> =
            procs.iter().filter(|(p, (parent, ..))| tree.contains(parent) && !tree.contains(p)).collect();
        if joined.is_empty() {
            return ticks;
        }
        for (p, (_, own, children)) in joined {
            tree.push(*p);
            ticks += own + children;
        }
    }
}

/// Watches watch for `length`, calling `each` with the second it is in, about once a
/// second.
fn phase(lab: &Lab, length: Duration, mut each: impl FnMut(u64)) -> Cost {
    let pid: u32 =
        std::fs::read_to_string(&lab.env["WATCH_PID"]).ok().and_then(|p| p.trim().parse().ok()).expect("watch's pid");
    // SAFETY: sysconf has no memory preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let before = usage(pid).expect("watch is running");
    let passes0 = lab.watch_passes();
    let start = Instant::now();
    let mut rss_max = before.rss_kb;
    while start.elapsed() < length {
        let second = start.elapsed().as_secs();
        each(second);
        rss_max = rss_max.max(usage(pid).expect("watch still running").rss_kb);
        std::thread::sleep(Duration::from_secs(second + 1).saturating_sub(start.elapsed()));
    }
    let after = usage(pid).expect("watch still running");
    let seconds = start.elapsed().as_secs_f64();
    let percent = |ticks: u64| ticks as f64 / hz / seconds * 100.0;
    let own = after.own - before.own;
    Cost {
        seconds,
        cpu_percent: percent(own),
        cpu_with_children_percent: Some(percent(own + after.children - before.children)),
        rss_start_kb: before.rss_kb,
        rss_max_kb: rss_max.max(after.rss_kb),
        rss_end_kb: after.rss_kb,
        passes: lab.watch_passes() - passes0,
    }
}

fn number(lab: &Lab, target: &str, sql: &str) -> u64 {
    lab.sql(target, sql).parse::<f64>().map_or(0, |v| v.max(0.0) as u64)
}

pub fn run(session: &Session, length: Duration, dir: &Path) -> Soak {
    let mut soak = Soak::default();
    let logs = dir.join("lab-logs");
    let outcome = attempt(|| {
        let lab = Lab::up_with(session, &[], &[("LAB_SAVE_LOGS", &logs.to_string_lossy())]);
        lab.ok(&["watch", "start"]);
        lab.wait_until("watch's slot on the standby", Duration::from_secs(30), || {
            lab.slot_active("db2") == Some(false)
        });
        soak.idle = Some(phase(&lab, length, |_| {}));

        // about 1 MB of rows a second on the primary, committed as the application would
        let start_lsn = lab.sql("db1", "select pg_current_wal_lsn()");
        let load = "insert into writes (payload) select repeat('x', 900) from generate_series(1, 1000)";
        let (mut samples, mut pg_wal) = (Vec::new(), 0u64);
        let kept = "select coalesce(pg_wal_lsn_diff(pg_last_wal_replay_lsn(), restart_lsn), 0) \
                    from pg_replication_slots where slot_name = 'barman'";
        let waldir = "select sum(size) from pg_ls_waldir()";
        soak.load = Some(phase(&lab, length, |second| {
            lab.ok(&["psql", "-d", "app", "db1", load]);
            if second % 10 == 9 {
                samples.push(number(&lab, "db2", kept));
                pg_wal = number(&lab, "db2", waldir);
                soak.standby_pg_wal_max = soak.standby_pg_wal_max.max(pg_wal);
            }
        }));
        soak.wal_written = number(&lab, "db1", &format!("select pg_wal_lsn_diff(pg_current_wal_lsn(), '{start_lsn}')"));
        soak.standby_slot_max = samples.iter().copied().max().unwrap_or(0);
        soak.standby_slot_mean = samples.iter().sum::<u64>() / samples.len().max(1) as u64;
        soak.standby_pg_wal_end = pg_wal;
    });
    soak.failed = outcome.err();
    super::save(&dir.join("soak.json"), &soak);
    soak
}
