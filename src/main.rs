//! repmgr-nat: keeps the NAT rules of a PostgreSQL backup/proxy host pointed at the
//! primary of a repmgr or Patroni cluster, and barman's replication slot on it.
//!
//! The core decides without side effects (`plan`, `ruleset`, `status::assess`); the
//! adapters act (`firewall`, `nat`, `db`, `barman`, `state`), built in one place from the
//! validated context (`adapters`); `handler` and `app` tie them together.

mod adapters;
mod app;
mod check;
mod cli;
mod clock;
mod core;
mod effects;
mod exit;
mod generate;
mod handler;
mod logging;
mod manual;
mod watch;

use std::process::ExitCode;

use clap::Parser;

use crate::core::config::instance::Instance;

fn main() -> ExitCode {
    // the packaging's step, kept out of the command line users see (and its completions)
    if std::env::args_os().nth(1).is_some_and(|arg| arg == "generate") {
        return generate::main();
    }
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => err.exit(), // --help, --version
        Err(err) => {
            // one line, like every other refusal; clap's usage follows on --help
            let text = err.to_string();
            let line = text.lines().next().unwrap_or("error: bad command line").trim_start_matches("error: ");
            logging::init(log::LevelFilter::Error);
            log::error!("{line}");
            // `check --nagios`: a plugin that cannot check is UNKNOWN
            if std::env::args_os().any(|arg| arg == "--nagios") {
                return unknown(&check::nagios_service(None), line);
            }
            return ExitCode::from(exit::BAD_INPUT);
        }
    };
    init_logging(&cli);
    let nagios = matches!(cli.command, cli::Command::Check { nagios: true, .. })
        .then(|| check::nagios_service(cli.instance.as_deref().filter(|name| Instance::parse(name).is_ok())));
    match app::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log::error!("{err:#}");
            match nagios {
                // whatever kept it from checking (a bad name, a config it cannot read)
                Some(service) if !exit::is_code(&err) => unknown(&service, &format!("{err:#}")),
                _ => ExitCode::from(exit::code(&err)),
            }
        }
    }
}

/// A Nagios plugin that could not check: UNKNOWN, on stdout.
fn unknown(service: &str, why: &str) -> ExitCode {
    print!("{}", core::check::nagios_unknown(service, why));
    ExitCode::from(core::check::plugin::UNKNOWN)
}

fn init_logging(cli: &cli::Cli) {
    logging::init(match (cli.quiet, cli.verbose) {
        (true, _) => log::LevelFilter::Error,
        (false, 0) => log::LevelFilter::Info,
        (false, 1) => log::LevelFilter::Debug,
        (false, _) => log::LevelFilter::Trace,
    });
}
