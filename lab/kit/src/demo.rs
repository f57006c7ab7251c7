//! The demo (`lab/demo`): the lab up, a client querying through the proxy's application
//! port every 50 ms, the primary stopped, repmgrd failing over; then what the client saw,
//! the handler runs, `repmgr-nat status`, and the lab down (or left up with --keep).

use std::time::Duration;

use crate::lab::{Lab, Session};
use crate::{now_ms, samples};

fn say(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

pub fn run(handler: &str, keep: bool) -> Result<(), String> {
    if handler != "repmgr-nat" && handler != "scripts" {
        return Err(format!("--handler must be repmgr-nat or scripts, not {handler}"));
    }
    let session = Session::take();
    say(&format!("lab up (handler: {handler})"));
    let lab = Lab::up_with(&session, &["--handler", handler], &[]);
    let file = std::path::Path::new(&lab.env["LAB_DIR"]).join("logs/demo-watch.txt");
    say(&format!(
        "client: a new connection to {}:{} every 50 ms, from the app namespace",
        lab.env["PROXY_IP"], lab.env["APP_PORT"]
    ));
    let client = lab.client("watch", 50, &[], &file);
    std::thread::sleep(Duration::from_secs(3));
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    for line in text.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev() {
        println!("{line}");
    }

    say("stopping the primary db1 (pg_ctl stop -m immediate)");
    let t0 = now_ms();
    lab.ok(&["stop", "db1"]);
    print!("{}", lab.ok(&["wait-primary", "db2", "60"]));
    println!("waiting for the handler to finish the failover (repmgrd_failover_promote) ...");
    lab.wait_event("repmgrd_failover_promote", "2", t0, 240);
    std::thread::sleep(Duration::from_secs(2));
    lab.stop(client);

    say("timeline (T0 = db1 stopped)");
    let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
    print!("{}", samples::timeline(&samples::parse(&text)?, t0));

    say("handler runs since T0 (event, exit code, how long repmgr waited for it)");
    for run in lab.events().iter().filter(|r| r.begin_ms >= t0) {
        let end = run.end.map_or("running".to_string(), |e| format!("exit={} ms={}", e.exit, e.ms));
        let at = (run.begin_ms - t0) as f64 / 1000.0;
        println!("  {at:>+9.3}s  {:<28} node={:<3} from={:<5} {end}", run.event, run.node, run.from);
    }

    say("repmgr-nat status (as postgres, in the proxy namespace)");
    if handler == "repmgr-nat" {
        let status = lab.repmgr_nat("postgres", &["status"]);
        print!("{}{}", status.stdout, status.stderr);
        println!("(repmgr-nat status exit code: {})", status.code);
    } else {
        println!("(handler scripts: the article's scripts have no status command)");
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
