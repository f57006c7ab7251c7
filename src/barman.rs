//! The barman adapter: barman runs as its own OS user through `sudo -n -u`, with the
//! server name validated by the config so it can never be taken for an option.

use std::time::Duration;

use anyhow::Result;

use crate::config;
use crate::exec::{self, Cmd};

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

pub struct Barman<'a> {
    cfg: &'a config::Barman,
    dry_run: bool,
}

impl<'a> Barman<'a> {
    pub fn new(cfg: &'a config::Barman, dry_run: bool) -> Barman<'a> {
        Barman { cfg, dry_run }
    }

    /// `sudo -n -u barman /usr/bin/barman ARGS...`: the form sudoers.d/repmgr-nat allows.
    pub fn command<'s>(&self, args: impl IntoIterator<Item = &'s str>) -> Cmd {
        Cmd::new(exec::system_tool("sudo"))
            .args(["-n", "-u", &self.cfg.user])
            .arg(self.cfg.command.to_string_lossy())
            .args(args)
    }

    fn stop_cmd(&self) -> Cmd {
        self.command(["receive-wal", "--stop", &self.cfg.server])
    }

    fn switch_cmd(&self) -> Cmd {
        let timeout = format!("--archive-timeout={}", self.cfg.archive_timeout);
        self.command(["switch-wal", "--force", "--archive", &timeout, &self.cfg.server])
    }

    fn run(&self, cmd: &Cmd, timeout: Duration) -> Result<Option<exec::Output>> {
        if self.dry_run {
            println!("{cmd}");
            return Ok(None);
        }
        let out = exec::run_status(cmd, None, timeout)?;
        log::debug!("{cmd}: {}", out.stdout.trim().replace('\n', " | "));
        Ok(Some(out))
    }
}

impl Backup for Barman<'_> {
    fn stop_receive_wal(&self) -> Result<()> {
        let cmd = self.stop_cmd();
        let Some(out) = self.run(&cmd, Duration::from_secs(30))? else { return Ok(()) };
        let not_running = format!("no such process for server {}", self.cfg.server);
        if out.status.success() || out.stdout.contains(&not_running) || out.stderr.contains(&not_running) {
            Ok(())
        } else {
            Err(exec::ExecError::Failed { cmd: cmd.to_string(), output: out }.into())
        }
    }

    fn start_receive_wal(&self) -> Result<()> {
        let cmd = self.command(["cron"]);
        success(&cmd, self.run(&cmd, Duration::from_secs(60))?)
    }

    fn switch_wal(&self) -> Result<()> {
        let cmd = self.switch_cmd();
        let timeout = Duration::from_secs(u64::from(self.cfg.archive_timeout) + 30);
        success(&cmd, self.run(&cmd, timeout)?)
    }
}

fn success(cmd: &Cmd, out: Option<exec::Output>) -> Result<()> {
    match out {
        Some(out) if !out.status.success() => Err(exec::ExecError::Failed { cmd: cmd.to_string(), output: out }.into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::example;

    #[test]
    fn commands_match_the_sudoers_grant() {
        let cfg = example();
        let barman = Barman::new(&cfg.barman, true);
        assert_eq!(
            barman.stop_cmd().to_string(),
            format!("{} -n -u barman /usr/bin/barman receive-wal --stop main_backup", exec::system_tool("sudo").display())
        );
        assert_eq!(
            barman.switch_cmd().args,
            ["-n", "-u", "barman", "/usr/bin/barman", "switch-wal", "--force", "--archive", "--archive-timeout=90", "main_backup"]
        );
        assert_eq!(barman.command(["cron"]).args, ["-n", "-u", "barman", "/usr/bin/barman", "cron"]);
    }
}
