//! The demo (`lab/demo`): the lab up as the README recommends (the boot step, `watch`
//! running, repmgr's events on), clients through the proxy's application port, the primary
//! stopped, repmgrd failing over; then what the clients saw (refused apart from held), when
//! PostgreSQL was ready and when the port opened, the handler runs, `repmgr-nat status`,
//! and the lab down (or left up with --keep). `--events-only` runs without `watch`, and
//! `--handler scripts` with the article's scripts, for comparison.

use std::path::Path;
use std::time::Duration;

use crate::lab::{DB2, Lab, Session};
use crate::samples::{Connects, HELD_MS, Outage};
use crate::{now_ms, pglog, samples};

/// How the proxy follows the primary in the demo.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The README's deployment: `watch` running, events on.
    Watch,
    /// repmgr's events alone.
    EventsOnly,
    /// The article's three scripts.
    Scripts,
}

impl Mode {
    fn describe(self) -> &'static str {
        match self {
            Mode::Watch => "repmgr-nat as the README recommends: the boot step, watch running, repmgr's events on",
            Mode::EventsOnly => "repmgr-nat with repmgr's events alone, no watch (not what the README recommends)",
            Mode::Scripts => "the article's scripts as the event handler",
        }
    }
}

fn say(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

fn secs(ms: u64) -> String {
    format!("+{}.{:03} s", ms / 1000, ms % 1000)
}

pub fn run(handler: &str, events_only: bool, keep: bool) -> Result<(), String> {
    let mode = match (handler, events_only) {
        ("repmgr-nat", false) => Mode::Watch,
        ("repmgr-nat", true) => Mode::EventsOnly,
        ("scripts", _) => Mode::Scripts,
        _ => return Err(format!("--handler must be repmgr-nat or scripts, not {handler}")),
    };
    let session = Session::take();
    say(&format!("lab up: {}", mode.describe()));
    let lab = Lab::up_with(&session, &["--handler", handler], &[]);
    if mode == Mode::Watch {
        print!("{}", lab.ok(&["watch", "start"]));
    }
    let logs = Path::new(&lab.env["LAB_DIR"]).join("logs");
    let (watch_file, connect_file) = (logs.join("demo-watch.txt"), logs.join("demo-connect.txt"));
    say(&format!(
        "clients from the app namespace to {}:{}: one connection at a time every 50 ms (1 s timeout), and a new \
         one begun every 50 ms whatever the others do (5 s connect timeout, as an application's)",
        lab.env["PROXY_IP"], lab.env["APP_PORT"]
    ));
    let watch = lab.client("watch", 50, &[], &watch_file);
    let connect = lab.client("connect", 50, &["--timeout-ms", "5000"], &connect_file);
    std::thread::sleep(Duration::from_secs(3));
    let before = samples::read(&watch_file);
    for s in before.iter().rev().take(3).collect::<Vec<_>>().into_iter().rev() {
        println!("  {} {}", s.at, s.server().unwrap_or("err"));
    }

    say("stopping the primary db1 (pg_ctl stop -m immediate)");
    let t0 = now_ms();
    lab.ok(&["stop", "db1"]);
    print!("{}", lab.ok(&["wait-primary", "db2", "60"]));
    println!("waiting for the handler to finish the failover (repmgrd_failover_promote) ...");
    lab.wait_event("repmgrd_failover_promote", "2", t0, 240);
    std::thread::sleep(Duration::from_secs(2));
    lab.stop(watch);
    lab.stop(connect);

    say("timeline of the one-at-a-time client (T0 = db1 stopped)");
    let probes = samples::read(&watch_file);
    print!("{}", samples::timeline(&probes, t0));

    say("what the application saw");
    let ready = std::fs::read_to_string(&lab.env["DB2_PG_LOG"])
        .ok()
        .and_then(|log| pglog::ready_after(&log, t0))
        .map(|t| t - t0);
    let connects = Connects::of(&samples::read(&connect_file), t0, DB2);
    match ready {
        Some(ms) => println!("  PostgreSQL on db2 ready to accept connections (its log): {}", secs(ms)),
        None => println!("  PostgreSQL on db2: no \"ready to accept connections\" in its log since T0"),
    }
    match (connects.first_on_primary_ms, ready) {
        (Some(open), Some(ready)) => println!(
            "  the application port open to db2 (the first new connection db2 answered at once): {} ({} ms after \
             PostgreSQL was ready)",
            secs(open),
            open as i64 - ready as i64
        ),
        (Some(open), None) => println!("  the application port open to db2: {}", secs(open)),
        (None, _) => println!("  the application port never answered from db2 without a wait"),
    }
    let outage = Outage::of(&probes, t0);
    println!(
        "  one at a time: {} probes since T0, {} refused or timed out, for {} ms in all",
        probes.iter().filter(|s| s.at >= t0).count(),
        probes.iter().filter(|s| s.at >= t0 && !s.ok()).count(),
        outage.refused_ms
    );
    println!(
        "  new connections with a 5 s connect timeout: {} begun since T0, {} failed, {} held (waited {} s or more, \
         then answered), the longest wait {} ms",
        connects.attempts,
        connects.failed,
        connects.held,
        HELD_MS / 1000,
        connects.longest_wait_ms
    );

    say("handler runs since T0 (event, exit code, how long repmgr waited for it)");
    for run in lab.events().iter().filter(|r| r.begin_ms >= t0) {
        let end = run.end.map_or("running".to_string(), |e| format!("exit={} ms={}", e.exit, e.ms));
        let at = (run.begin_ms - t0) as f64 / 1000.0;
        println!("  {at:>+9.3}s  {:<28} node={:<3} from={:<5} {end}", run.event, run.node, run.from);
    }

    say("repmgr-nat status (as postgres, in the proxy namespace)");
    if mode == Mode::Scripts {
        println!("(the article's scripts have no status command)");
    } else {
        let status = lab.repmgr_nat("postgres", &["status"]);
        print!("{}{}", status.stdout, status.stderr);
        println!("(repmgr-nat status exit code: {})", status.code);
    }
    say("cluster");
    print!("{}", lab.lab(&["repmgr", "db2", "cluster", "show"]).stdout);

    if keep {
        say("the lab stays up (not locked: the tests or lab/bench would take it down to build their own)");
        let sh = &lab.env["LAB_SH"];
        println!(
            "  {sh} status                      # nodes, NAT, slots, barman, handler runs\n\
             \x20 {sh} psql proxy-app 'select inet_server_addr()'\n\
             \x20 {sh} rejoin db1                  # bring the old primary back as a standby\n\
             \x20 {sh} events                      # what every handler run printed\n\
             \x20 ip netns exec app bash                # a shell on the client side\n\
             \x20 {sh} down                        # take it all down"
        );
        lab.leave_up();
    } else {
        say("lab down");
    }
    Ok(())
}
