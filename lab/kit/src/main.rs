//! lab-kit: the lab's clients, its readers of logs, the benchmark and the demo, as one
//! command (`lab-kit help`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use lab_kit::{bench, chaos, clients, demo, events, fake_node, samples};

#[derive(Parser)]
#[command(name = "lab-kit", about = "The repmgr-nat lab's clients, log readers, benchmark and demo")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A client that plays the application (run it in the app namespace: `lab.sh probe`)
    Probe {
        #[command(subcommand)]
        kind: Probe,
    },
    /// watch's metrics (`GET /metrics`); run it in the proxy namespace
    Metrics {
        #[arg(long, default_value = "127.0.0.1:9721")]
        addr: SocketAddr,
    },
    /// A man in the middle that asks for the password in clear
    Impostor {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        cert: String,
        #[arg(long)]
        key: String,
    },
    /// A fake node: accepts the login, answers every query with a row of the wrong shape
    FakeNode {
        #[arg(long)]
        listen: String,
    },
    /// A client's output as a timeline, and what the application saw from T0 on
    Timeline {
        file: PathBuf,
        /// T0, unix ms (default: the first attempt)
        #[arg(long)]
        since_ms: Option<u64>,
    },
    /// The handler runs of an events log, one line each
    Events {
        file: PathBuf,
        /// Only runs begun at or after this (unix ms)
        #[arg(long, default_value_t = 0)]
        since_ms: u64,
        /// Only the last N
        #[arg(long)]
        last: Option<usize>,
    },
    /// Timed NAT switches (the benchmark runs it in the proxy namespace)
    Switches {
        #[arg(long)]
        count: usize,
        /// ID=ADDRESS, at least two; the first is switched to once before counting
        #[arg(long = "target", required = true, num_args = 1)]
        targets: Vec<String>,
        /// One command of a switch, `{id}` and `{ip}` replaced; words split at spaces
        #[arg(long = "run", required = true, num_args = 1)]
        commands: Vec<String>,
    },
    /// The benchmark (lab/bench)
    Bench(bench::Args),
    /// The chaos run (lab/chaos): a seeded schedule of transitions, the invariants checked
    Chaos(chaos::Args),
    /// The report of a finished benchmark again, from its results.json
    BenchReport { dir: PathBuf },
    /// The demo (lab/demo)
    Demo {
        /// Leave the lab up afterwards
        #[arg(long)]
        keep: bool,
        #[arg(long, default_value = "repmgr-nat")]
        handler: String,
        /// repmgr's events alone, no watch (for comparison; not what the README recommends)
        #[arg(long)]
        events_only: bool,
    },
}

#[derive(Subcommand)]
enum Probe {
    /// Every interval a new connection and `inet_server_addr()`, one at a time
    Watch(clients::Opts),
    /// One connection, a query every interval, a new one after an error
    Hold(clients::Opts),
    /// Inserts until COUNT commits were acknowledged
    Write {
        #[command(flatten)]
        opts: clients::Opts,
        #[arg(long)]
        count: u64,
    },
    /// A new connection every interval, overlapping, each waiting up to the timeout
    Connect(clients::Opts),
    /// New TCP connections as fast as they go, closed with a reset; a summary at SIGTERM
    Tcp {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        pause_ms: u64,
    },
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Cmd::Probe { kind } => {
            clients::stop_on_signals();
            match kind {
                Probe::Watch(o) => clients::watch(&o),
                Probe::Hold(o) => clients::hold(&o),
                Probe::Write { opts, count } => clients::write(&opts, count)?,
                Probe::Connect(o) => clients::connect(&o),
                Probe::Tcp { addr, pause_ms } => clients::tcp(addr, Duration::from_millis(pause_ms)),
            }
            Ok(())
        }
        Cmd::Metrics { addr } => {
            print!("{}", clients::scrape(addr)?);
            Ok(())
        }
        Cmd::Impostor { listen, cert, key } => clients::impostor(&listen, &cert, &key),
        Cmd::FakeNode { listen } => {
            let listener = std::net::TcpListener::bind(&listen).map_err(|e| format!("{listen}: {e}"))?;
            println!("{} listening {listen}", lab_kit::now_ms());
            fake_node::serve(listener, &mut |said| println!("{} {said}", lab_kit::now_ms()));
            Ok(())
        }
        Cmd::Timeline { file, since_ms } => {
            let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let samples = samples::parse(&text)?;
            let t0 = since_ms.or(samples.first().map(|s| s.at)).ok_or("no attempts in the file")?;
            print!("{}", samples::timeline(&samples, t0));
            Ok(())
        }
        Cmd::Events { file, since_ms, last } => {
            let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let runs: Vec<_> = events::parse(&text)?.into_iter().filter(|r| r.begin_ms >= since_ms).collect();
            for run in &runs[runs.len().saturating_sub(last.unwrap_or(runs.len()))..] {
                println!("{}", run.summary());
            }
            Ok(())
        }
        Cmd::Switches { count, targets, commands } => {
            let targets = targets
                .iter()
                .map(|t| {
                    t.split_once('=')
                        .map(|(i, a)| (i.to_string(), a.to_string()))
                        .ok_or(format!("--target {t}: ID=ADDRESS"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if targets.len() < 2 {
                return Err("at least two --target".into());
            }
            bench::switches(count, &targets, &commands)
        }
        Cmd::Bench(args) => {
            bench::run(args, std::env::args().skip(1).collect::<Vec<_>>().join(" ").replacen("bench", "lab/bench", 1))
        }
        Cmd::BenchReport { dir } => bench::report_again(&dir),
        Cmd::Chaos(args) => chaos::run(args),
        Cmd::Demo { keep, handler, events_only } => demo::run(&handler, events_only, keep),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab-kit: {e}");
            ExitCode::FAILURE
        }
    }
}
