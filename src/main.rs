//! repmgr-nat: keeps the NAT rules of a PostgreSQL backup/proxy host pointed at the
//! primary of a repmgr cluster, and barman's replication slot on it.
//!
//! The core decides without side effects (`plan`, `ruleset`, `status::assess`); the
//! adapters act (`firewall`, `nat`, `db`, `barman`, `state`); `handler` and `app` tie
//! them together.

mod app;
mod cli;
mod core;
mod effects;
mod exit;
mod handler;
mod logging;
mod watch;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging(&cli);
    match app::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log::error!("{err:#}");
            ExitCode::from(exit::code(&err))
        }
    }
}

fn init_logging(cli: &cli::Cli) {
    logging::init(match (cli.quiet, cli.verbose) {
        (true, _) => log::LevelFilter::Error,
        (false, 0) => log::LevelFilter::Info,
        (false, 1) => log::LevelFilter::Debug,
        (false, _) => log::LevelFilter::Trace,
    });
}
