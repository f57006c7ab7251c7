//! Running child processes: always without a shell, with every argument passed as-is,
//! with a minimal environment of our own (nothing of the caller's reaches iptables or
//! sudo), with a deadline, and with an error that says which command failed and what it
//! printed.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// Directories searched for the system tools repmgr-nat runs (iptables, conntrack,
/// sudo). `PATH` is not used: a caller's environment must not choose what root runs.
const SYSTEM_DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];
const SYSTEM_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// After its deadline a child gets SIGTERM (which sudo passes on to its command), then
/// this long to exit before SIGKILL.
const GRACE: Duration = Duration::from_secs(2);
/// How often `run_watching` calls its `tick` while the child runs.
const TICK: Duration = Duration::from_millis(10);

/// Finds a system tool by name in the fixed system directories.
pub fn system_tool(name: &str) -> PathBuf {
    SYSTEM_DIRS
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from(format!("/usr/sbin/{name}")))
}

/// A command line: a program and its arguments, and what it gets in its environment
/// besides `PATH` and `LC_ALL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmd {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Run in a process group of its own.
    pub own_group: bool,
}

impl Cmd {
    pub fn new(program: impl Into<PathBuf>) -> Cmd {
        Cmd { program: program.into(), args: Vec::new(), env: Vec::new(), own_group: false }
    }

    /// In a process group of its own: signals sent to its caller's group (a terminal's
    /// ^C or ^Z, which sudo's pty monitor passes on with killpg) do not reach it.
    pub fn own_group(mut self) -> Cmd {
        self.own_group = true;
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Cmd {
        self.env.push((key.to_string(), value.into()));
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Cmd {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Cmd {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
}

/// Shell-quoted, for logs and `--dry-run` only: nothing is ever run through a shell.
impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quote = |s: &str| {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b)) {
                s.to_string()
            } else {
                format!("'{}'", s.replace('\'', r"'\''"))
            }
        };
        write!(f, "{}", quote(&self.program.to_string_lossy()))?;
        for arg in &self.args {
            write!(f, " {}", quote(arg))?;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

#[derive(Debug)]
pub enum ExecError {
    Spawn { cmd: String, error: std::io::Error },
    Timeout { cmd: String, after: Duration },
    Failed { cmd: String, output: Output },
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecError::Spawn { cmd, error } => write!(f, "cannot run {cmd}: {error}"),
            ExecError::Timeout { cmd, after } => write!(f, "{cmd} did not finish within {} s; killed", after.as_secs()),
            ExecError::Failed { cmd, output } => {
                let status = match output.code() {
                    Some(code) => format!("exit code {code}"),
                    None => "killed by a signal".to_string(),
                };
                let said = last_line(&output.stderr).or_else(|| last_line(&output.stdout));
                match said {
                    Some(line) => write!(f, "{cmd} failed ({status}): {line}"),
                    None => write!(f, "{cmd} failed ({status})"),
                }
            }
        }
    }
}

impl ExecError {
    /// The exit code of a child that ran and failed.
    pub fn code(&self) -> Option<i32> {
        match self {
            ExecError::Failed { output, .. } => output.code(),
            _ => None,
        }
    }
}

impl std::error::Error for ExecError {}

/// The last line of `text` that says anything, trimmed.
pub fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rfind(|l| !l.is_empty())
}

/// The first line of `text` that says anything, trimmed.
pub fn first_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|l| !l.is_empty())
}

/// Runs `cmd` to completion, feeding `stdin`; a non-zero exit is an error.
pub fn run(cmd: &Cmd, stdin: Option<&str>, timeout: Duration) -> Result<Output, ExecError> {
    let output = run_status(cmd, stdin, timeout)?;
    if output.status.success() { Ok(output) } else { Err(ExecError::Failed { cmd: cmd.to_string(), output }) }
}

/// Runs `cmd` to completion and returns its output whatever its exit code.
pub fn run_status(cmd: &Cmd, stdin: Option<&str>, timeout: Duration) -> Result<Output, ExecError> {
    run_watching(cmd, stdin, timeout, &mut || {})
}

/// Like `run_status`, calling `tick` every few milliseconds while the child runs.
pub fn run_watching(
    cmd: &Cmd,
    stdin: Option<&str>,
    timeout: Duration,
    tick: &mut dyn FnMut(),
) -> Result<Output, ExecError> {
    let name = cmd.to_string();
    log::debug!("run: {name}");
    let mut child = command(cmd)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| ExecError::Spawn { cmd: name.clone(), error })?;

    // Feed and drain on threads so a child writing more than a pipe holds cannot block.
    let feeder = stdin.map(|text| {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let text = text.to_string();
        thread::spawn(move || {
            let _ = pipe.write_all(text.as_bytes());
        })
    });
    let stdout = drain(child.stdout.take().expect("stdout is piped"));
    let stderr = drain(child.stderr.take().expect("stderr is piped"));

    // A thread blocks in wait(2), so the exit is noticed the moment it happens; this one
    // keeps the deadline and calls `tick` in between.
    let pid = child.id() as libc::pid_t;
    let (done, exited) = mpsc::channel();
    thread::spawn(move || {
        let _ = done.send(child.wait());
    });
    let deadline = Instant::now() + timeout;
    let mut terminated = false;
    let status = loop {
        let limit = if terminated { deadline + GRACE } else { deadline };
        match exited.recv_timeout(limit.saturating_duration_since(Instant::now()).min(TICK)) {
            Ok(Ok(status)) if terminated => {
                log::debug!("{name} ended after SIGTERM: {status}");
                return Err(ExecError::Timeout { cmd: name, after: timeout });
            }
            Ok(Ok(status)) => break status,
            Ok(Err(error)) => return Err(ExecError::Spawn { cmd: name, error }),
            Err(RecvTimeoutError::Timeout) if Instant::now() < limit => tick(),
            Err(RecvTimeoutError::Timeout) => {
                // SAFETY: kill(2) on our own child's pid; it has not been reaped, since
                // the thread that reaps it has not reported.
                unsafe { libc::kill(pid, if terminated { libc::SIGKILL } else { libc::SIGTERM }) };
                if terminated {
                    let _ = exited.recv();
                    return Err(ExecError::Timeout { cmd: name, after: timeout });
                }
                terminated = true;
            }
            Err(RecvTimeoutError::Disconnected) => {
                let error = std::io::Error::other("the thread waiting for it stopped");
                return Err(ExecError::Spawn { cmd: name, error });
            }
        }
    };
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    Ok(Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() })
}

/// Starts `cmd` in a process group of its own, with no input and its output discarded
/// (or written to `output`), and does not wait for it: it outlives this program (and
/// holds nothing of repmgr's or ssh's open, so neither waits for it). A thread reaps it
/// should it end while this program runs.
pub fn spawn_detached(cmd: &Cmd, output: Option<&Path>) -> Result<u32, ExecError> {
    log::debug!("start: {cmd}");
    let spawn_error = |error| ExecError::Spawn { cmd: cmd.to_string(), error };
    let (stdout, stderr) = match output {
        Some(path) => {
            let file = std::fs::File::create(path).map_err(spawn_error)?;
            (Stdio::from(file.try_clone().map_err(spawn_error)?), Stdio::from(file))
        }
        None => (Stdio::null(), Stdio::null()),
    };
    let mut child = command(&cmd.clone().own_group())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(spawn_error)?;
    let pid = child.id();
    thread::spawn(move || child.wait());
    Ok(pid)
}

/// Starts `cmd` with nothing on its input and its output piped to us, and does not wait
/// for it: for a child that keeps writing (`route --show --follow`). The caller reads
/// its output and reaps it.
pub fn spawn_piped(cmd: &Cmd) -> Result<std::process::Child, ExecError> {
    log::debug!("start: {cmd}");
    command(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| ExecError::Spawn { cmd: cmd.to_string(), error })
}

/// The process `cmd` describes: its arguments, our environment and its own, its own
/// process group if it asks for one.
fn command(cmd: &Cmd) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(&cmd.program);
    if cmd.own_group {
        command.process_group(0);
    }
    command
        .args(&cmd.args)
        .env_clear()
        .env("PATH", SYSTEM_PATH)
        .env("LC_ALL", "C")
        .envs(cmd.env.iter().map(|(k, v)| (k, v)));
    command
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_for_reading_only() {
        let cmd = Cmd::new("/usr/bin/barman").args(["switch-wal", "--archive-timeout=90", "main backup", "it's"]);
        assert_eq!(cmd.to_string(), r"/usr/bin/barman switch-wal --archive-timeout=90 'main backup' 'it'\''s'");
    }

    #[test]
    fn the_child_gets_our_environment_not_the_callers() {
        let out = run(&Cmd::new("/usr/bin/env"), None, Duration::from_secs(5)).unwrap();
        let mut lines: Vec<&str> = out.stdout.lines().collect();
        lines.sort();
        assert_eq!(lines, ["LC_ALL=C", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
    }

    #[test]
    fn arguments_reach_the_child_unchanged() {
        let tricky = "$(touch /nonexistent); `id` 'x' \"y\" *";
        let out = run(&Cmd::new("/bin/echo").arg(tricky), None, Duration::from_secs(5)).unwrap();
        assert_eq!(out.stdout, format!("{tricky}\n"));
    }

    #[test]
    fn feeds_stdin_and_reports_failures_with_what_the_child_said() {
        let out = run(&Cmd::new("/bin/cat"), Some("ruleset\n"), Duration::from_secs(5)).unwrap();
        assert_eq!(out.stdout, "ruleset\n");
        let err = run(
            &Cmd::new("/bin/sh").args(["-c", "echo first >&2; echo 'no such chain' >&2; exit 3"]),
            None,
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/bin/sh -c 'echo first >&2; echo '\\''no such chain'\\'' >&2; exit 3' failed (exit code 3): no such chain"
        );
    }

    #[test]
    fn kills_a_child_past_its_deadline() {
        let err = run(&Cmd::new("/bin/sleep").arg("5"), None, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
    }

    #[test]
    fn a_child_ignoring_sigterm_is_killed_after_the_grace() {
        let cmd = Cmd::new("/bin/sh").args(["-c", "trap '' TERM; sleep 30"]);
        let err = run(&cmd, None, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
    }

    #[test]
    fn tick_runs_while_the_child_runs() {
        let mut ticks = 0;
        run_watching(&Cmd::new("/bin/sleep").arg("0.2"), None, Duration::from_secs(5), &mut || ticks += 1).unwrap();
        assert!(ticks > 0);
    }

    #[test]
    fn a_child_of_its_own_group_is_out_of_reach_of_ours() {
        // field 5 of /proc/self/stat: the process group
        let group = |stat: &str| stat.rsplit(") ").next().unwrap().split(' ').nth(2).unwrap().to_string();
        let ours = group(&std::fs::read_to_string("/proc/self/stat").unwrap());
        let cmd = Cmd::new("/bin/cat").arg("/proc/self/stat");
        assert_eq!(group(&run(&cmd, None, Duration::from_secs(5)).unwrap().stdout), ours);
        let out = run(&cmd.own_group(), None, Duration::from_secs(5)).unwrap().stdout;
        let pid = out.split(' ').next().unwrap();
        assert_eq!(group(&out), pid, "not the leader of a group of its own");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = run(&Cmd::new("/nonexistent/tool"), None, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().starts_with("cannot run /nonexistent/tool: "), "{err}");
    }

    #[test]
    fn large_output_does_not_block() {
        let out = run(
            &Cmd::new("/bin/sh").args(["-c", "head -c 1000000 /dev/zero | tr '\\0' x"]),
            None,
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.stdout.len(), 1_000_000);
    }
}
