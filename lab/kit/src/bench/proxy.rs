//! A proxy's death (issue 15): two proxies share the address (`lab.sh up --proxies 2`,
//! keepalived and conntrackd from the package's examples), and the one that holds it loses
//! its link. What the application saw through the address: new connections (5 s connect
//! timeout, one every 50 ms), a session opened before, and when the address and the first
//! answer came back.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{attempt, say};
use crate::lab::{DB1, PROXY, Session};
use crate::samples::{self, Connects, Sample};
use crate::{Lab, now_ms};

#[derive(Debug, Serialize, Deserialize)]
pub struct ProxyDeath {
    /// The proxy whose link went down (the holder: keepalived's choice at start).
    pub dead: String,
    /// From the death to the address on the other proxy's interface.
    pub address_ms: Option<u64>,
    /// From the death to the first answer of a new connection begun after it.
    pub first_answer_ms: Option<u64>,
    pub connects: Connects,
    /// The session opened before answered on the same connection and backend, no error.
    pub session_survived: Option<bool>,
    /// Its longest wait between two answers, from its last before the death on.
    pub session_gap_ms: Option<u64>,
    pub failed: Option<String>,
}

impl ProxyDeath {
    pub fn brief(&self) -> String {
        if let Some(e) = &self.failed {
            return format!("failed: {e}");
        }
        let ms = |v: Option<u64>| v.map_or("-".into(), |v| format!("{v} ms"));
        format!(
            "{} down: address after {}, first answer after {}, {} of {} new connections failed, longest wait {} ms, session survived: {:?} (gap {})",
            self.dead,
            ms(self.address_ms),
            ms(self.first_answer_ms),
            self.connects.failed,
            self.connects.attempts,
            self.connects.longest_wait_ms,
            self.session_survived,
            ms(self.session_gap_ms)
        )
    }
}

pub fn run(session: &Session, runs: usize, dir: &Path) -> Vec<ProxyDeath> {
    (1..=runs)
        .map(|n| {
            let dir = dir.join(format!("run{n}"));
            std::fs::create_dir_all(&dir).expect("the run's directory");
            say(&format!("proxy death {n}/{runs} (fresh lab, two proxies) ..."));
            let result = attempt(|| one(session, &dir)).unwrap_or_else(|e| ProxyDeath {
                dead: String::new(),
                address_ms: None,
                first_answer_ms: None,
                connects: Connects::default(),
                session_survived: None,
                session_gap_ms: None,
                failed: Some(e),
            });
            say(&format!("proxy death {n}/{runs}: {}", result.brief()));
            result
        })
        .collect()
}

fn holds_address(proxy: &str) -> bool {
    Command::new("ip")
        .args(["-n", proxy, "-o", "-4", "addr", "show", "dev", "eth0"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" {PROXY}/")))
}

fn one(session: &Session, dir: &Path) -> ProxyDeath {
    let logs = dir.join("lab-logs");
    let lab = Lab::up_with(session, &["--proxies", "2"], &[("LAB_SAVE_LOGS", &logs.to_string_lossy())]);
    let dead = lab.vip();
    let survivor = match dead.as_str() {
        "proxy" => "proxy2",
        "proxy2" => "proxy",
        held => panic!("the address is held by {held:?}"),
    };
    let (held_file, connects_file) = (dir.join("hold.txt"), dir.join("connect.txt"));
    let held = lab.client("hold", 100, &["--timeout-ms", "5000"], &held_file);
    lab.wait_samples("the session answering", &held_file, |s| s.iter().any(Sample::ok));
    let connects = lab.client("connect", 50, &["--timeout-ms", "5000"], &connects_file);
    std::thread::sleep(Duration::from_secs(2));

    let t0 = now_ms();
    lab.ok(&["proxy-down", &dead]);
    let started = Instant::now();
    let mut address_ms = None;
    while started.elapsed() < Duration::from_secs(10) {
        if holds_address(survivor) {
            address_ms = Some(started.elapsed().as_millis() as u64);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_secs(6));
    lab.stop(held);
    lab.stop(connects);
    lab.ok(&["proxy-up", &dead]);

    let connected = samples::read(&connects_file);
    let held = samples::read(&held_file);
    let (before, after): (Vec<&Sample>, Vec<&Sample>) = held.iter().partition(|s| s.at < t0);
    let key = |s: &Sample| (s.field::<u64>("conn"), s.field::<u64>("pid"));
    let last = before.iter().rev().find(|s| s.ok());
    let survived = last.map(|l| !after.is_empty() && after.iter().all(|s| s.ok() && key(s) == key(l)));
    let gap = samples::longest_gap_across(&held, t0);
    ProxyDeath {
        dead,
        address_ms,
        first_answer_ms: samples::first_ack_on(&connected, t0, DB1),
        connects: Connects::of(&connected, t0, DB1),
        session_survived: survived,
        session_gap_ms: gap,
        failed: None,
    }
}
