//! The barman adapter: barman runs as its own OS user through `sudo -n -u`, with the
//! server name validated by the config so it can never be taken for an option.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::config;
use crate::exec::{self, Cmd, ExecError};

pub trait Backup {
    /// Stops receive-wal; not running is success.
    fn stop_receive_wal(&self) -> Result<()>;
    /// Starts receive-wal now rather than at the next cron run (`barman cron` starts
    /// it in the background, exactly as the cron job would).
    fn start_receive_wal(&self) -> Result<()>;
    /// Forces a WAL switch on the primary and waits until barman has archived that
    /// WAL file: proof that barman streams from the new primary.
    fn switch_wal(&self) -> Result<()>;
}

/// `sudo -n -u barman /usr/bin/barman ARGS...`: the form sudoers.d/repmgr-nat allows.
fn command<'s>(cfg: &config::Barman, args: impl IntoIterator<Item = &'s str>) -> Cmd {
    Cmd::new(exec::system_tool("sudo")).args(["-n", "-u", &cfg.user]).arg(cfg.command.to_string_lossy()).args(args)
}

pub fn stop_cmd(cfg: &config::Barman) -> Cmd {
    command(cfg, ["receive-wal", "--stop", &cfg.server])
}

pub fn cron_cmd(cfg: &config::Barman) -> Cmd {
    command(cfg, ["cron"])
}

pub fn switch_cmd(cfg: &config::Barman) -> Cmd {
    let timeout = format!("--archive-timeout={}", cfg.archive_timeout);
    command(cfg, ["switch-wal", "--force", "--archive", &timeout, &cfg.server])
}

/// The longest the three commands may take together; the run lock must outlast it.
pub fn worst_case(cfg: &config::Barman) -> Duration {
    STOP_TIMEOUT + CRON_TIMEOUT + switch_timeout(cfg)
}

const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Includes the retries while another `barman cron` holds barman's cron lock.
const CRON_TIMEOUT: Duration = Duration::from_secs(15);

fn switch_timeout(cfg: &config::Barman) -> Duration {
    Duration::from_secs(u64::from(cfg.archive_timeout) + 10)
}

pub struct Barman<'a> {
    cfg: &'a config::Barman,
}

impl<'a> Barman<'a> {
    pub fn new(cfg: &'a config::Barman) -> Barman<'a> {
        Barman { cfg }
    }

    fn run(&self, cmd: &Cmd, timeout: Duration) -> Result<exec::Output> {
        let started = Instant::now();
        let out = exec::run_status(cmd, None, timeout)?;
        log::info!(
            "barman: {} exited {} ({} ms)",
            cmd.args[3..].join(" "),
            out.code().map_or("on a signal".to_string(), |c| c.to_string()),
            started.elapsed().as_millis()
        );
        log::debug!("barman said: {}", out.stdout.trim().replace('\n', " | "));
        Ok(out)
    }
}

fn said(out: &exec::Output, text: &str) -> bool {
    out.stdout.contains(text) || out.stderr.contains(text)
}

fn failed(cmd: &Cmd, output: exec::Output) -> anyhow::Error {
    ExecError::Failed { cmd: cmd.to_string(), output }.into()
}

impl Backup for Barman<'_> {
    fn stop_receive_wal(&self) -> Result<()> {
        let cmd = stop_cmd(self.cfg);
        let out = self.run(&cmd, STOP_TIMEOUT)?;
        let not_running = format!("no such process for server {}", self.cfg.server);
        if out.status.success() || said(&out, &not_running) { Ok(()) } else { Err(failed(&cmd, out)) }
    }

    /// barman's own cron job may hold the server's cron lock for a moment; then our run
    /// only says "Another cron process is already running" and starts nothing, so it is
    /// tried again.
    fn start_receive_wal(&self) -> Result<()> {
        let cmd = cron_cmd(self.cfg);
        let deadline = Instant::now() + CRON_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let out = self.run(&cmd, left.max(Duration::from_secs(1)))?;
            if !out.status.success() {
                return Err(failed(&cmd, out));
            }
            if !said(&out, "Another cron process is already running") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{cmd}: another barman cron held the cron lock for {} s", CRON_TIMEOUT.as_secs());
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn switch_wal(&self) -> Result<()> {
        let cmd = switch_cmd(self.cfg);
        let out = self.run(&cmd, switch_timeout(self.cfg))?;
        if out.status.success() { Ok(()) } else { Err(failed(&cmd, out)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::example;

    #[test]
    fn commands_match_the_sudoers_grant() {
        let cfg = example();
        let sudo = exec::system_tool("sudo");
        assert_eq!(
            stop_cmd(&cfg.barman).to_string(),
            format!("{} -n -u barman /usr/bin/barman receive-wal --stop main_backup", sudo.display())
        );
        assert_eq!(
            switch_cmd(&cfg.barman).args,
            [
                "-n",
                "-u",
                "barman",
                "/usr/bin/barman",
                "switch-wal",
                "--force",
                "--archive",
                "--archive-timeout=90",
                "main_backup"
            ]
        );
        assert_eq!(cron_cmd(&cfg.barman).args, ["-n", "-u", "barman", "/usr/bin/barman", "cron"]);
    }
}
