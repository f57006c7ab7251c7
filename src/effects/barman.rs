//! The barman adapter: barman runs as its own OS user through `sudo -n -u`, with the
//! server name validated by the config so it can never be taken for an option.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::core::config;
use crate::effects::exec::{self, Cmd, ExecError};

pub trait Backup {
    /// Stops receive-wal; not running is success.
    fn stop_receive_wal(&self) -> Result<()>;
    /// Starts receive-wal in the background now, rather than at the next cron run.
    fn start_receive_wal(&self) -> Result<()>;
    /// Forces a WAL switch on the primary and waits until barman has archived that
    /// WAL file: proof that barman streams from the new primary. `while_waiting` is
    /// called every few milliseconds until then.
    fn switch_wal(&self, while_waiting: &mut dyn FnMut()) -> Result<()>;
}

/// `sudo -n -u barman /usr/bin/barman ARGS...`: the form sudoers.d/repmgr-nat allows.
fn command<'s>(cfg: &config::Barman, args: impl IntoIterator<Item = &'s str>) -> Cmd {
    Cmd::new(exec::system_tool("sudo")).args(["-n", "-u", &cfg.user]).arg(cfg.command.to_string_lossy()).args(args)
}

pub fn stop_cmd(cfg: &config::Barman) -> Cmd {
    command(cfg, ["receive-wal", "--stop", &cfg.server])
}

/// Runs in the foreground until stopped; started detached.
pub fn start_cmd(cfg: &config::Barman) -> Cmd {
    command(cfg, ["receive-wal", &cfg.server])
}

pub fn switch_cmd(cfg: &config::Barman) -> Cmd {
    let timeout = format!("--archive-timeout={}", cfg.archive_timeout);
    command(cfg, ["switch-wal", "--force", "--archive", &timeout, &cfg.server])
}

/// `barman show-server <server>`: its settings, for `check` (run as root, who may run
/// anything as barman).
pub fn show_server_cmd(cfg: &config::Barman) -> Cmd {
    command(cfg, ["show-server", &cfg.server])
}

/// `barman check <server>`, for `check`.
pub fn check_cmd(cfg: &config::Barman) -> Cmd {
    command(cfg, ["check", &cfg.server])
}

pub struct BarmanCli<'a> {
    cfg: &'a config::Barman,
    /// Where the receive-wal this starts writes what it prints (nowhere if none).
    output: Option<PathBuf>,
}

impl<'a> BarmanCli<'a> {
    pub fn new(cfg: &'a config::Barman) -> BarmanCli<'a> {
        BarmanCli { cfg, output: None }
    }

    /// Keeps what every receive-wal this starts prints in `path` (replaced at each start).
    pub fn receive_wal_output(self, path: PathBuf) -> BarmanCli<'a> {
        BarmanCli { output: Some(path), ..self }
    }

    fn run(&self, cmd: &Cmd, timeout: Duration, while_waiting: &mut dyn FnMut()) -> Result<exec::Output> {
        let started = Instant::now();
        let out = exec::run_watching(cmd, None, timeout, while_waiting)?;
        log::info!(
            "barman: {} exited {} ({} ms)",
            cmd.args[4..].join(" "),
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

impl Backup for BarmanCli<'_> {
    fn stop_receive_wal(&self) -> Result<()> {
        let cmd = stop_cmd(self.cfg);
        let out = self.run(&cmd, config::Barman::STOP_TIMEOUT, &mut || {})?;
        let not_running = format!("no such process for server {}", self.cfg.server);
        if out.status.success() || said(&out, &not_running) { Ok(()) } else { Err(failed(&cmd, out)) }
    }

    /// barman's receive-wal takes a lock of its own: if barman's cron started one in the
    /// meantime, this one exits at once and the running one streams. `switch_wal` is what
    /// confirms that one does.
    fn start_receive_wal(&self) -> Result<()> {
        let cmd = start_cmd(self.cfg);
        let pid = exec::spawn_detached(&cmd, self.output.as_deref())?;
        log::info!("barman: started receive-wal {} in the background (pid {pid})", self.cfg.server);
        Ok(())
    }

    fn switch_wal(&self, while_waiting: &mut dyn FnMut()) -> Result<()> {
        let cmd = switch_cmd(self.cfg);
        let out = self.run(&cmd, self.cfg.switch_timeout(), while_waiting)?;
        if out.status.success() { Ok(()) } else { Err(failed(&cmd, out)) }
    }
}

/// A proxy without barman (no `[barman]` section): the plan never asks it for anything,
/// and would be told so if it did.
pub struct NoBarman;

impl NoBarman {
    fn refuse(&self) -> Result<()> {
        anyhow::bail!("no [barman] section: this proxy does not run barman")
    }
}

impl Backup for NoBarman {
    fn stop_receive_wal(&self) -> Result<()> {
        self.refuse()
    }
    fn start_receive_wal(&self) -> Result<()> {
        self.refuse()
    }
    fn switch_wal(&self, _while_waiting: &mut dyn FnMut()) -> Result<()> {
        self.refuse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::tests::example;

    #[test]
    fn commands_match_the_sudoers_grant() {
        let cfg = example();
        let sudo = exec::system_tool("sudo");
        assert_eq!(
            stop_cmd(cfg.barman.as_ref().unwrap()).to_string(),
            format!("{} -n -u barman /usr/bin/barman receive-wal --stop main_backup", sudo.display())
        );
        assert_eq!(
            switch_cmd(cfg.barman.as_ref().unwrap()).args,
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
        assert_eq!(
            start_cmd(cfg.barman.as_ref().unwrap()).args,
            ["-n", "-u", "barman", "/usr/bin/barman", "receive-wal", "main_backup"]
        );
    }
}
