//! The root-side firewall adapter: the nat table and the connection tracking table of
//! this host. Only `route`, `setup` and `teardown` (as root) use it.

use std::net::Ipv4Addr;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Result, anyhow};

use crate::effects::exec::{self, Cmd};

/// How long to wait for the xtables lock (`iptables-restore -w`), in seconds.
const XTABLES_WAIT: &str = "5";
const TIMEOUT: Duration = Duration::from_secs(15);

pub trait Firewall {
    /// `iptables-save -t nat`.
    fn save(&self) -> Result<String>;
    /// Applies an `iptables-restore --noflush` transaction.
    fn restore(&self, text: &str) -> Result<()>;
    /// Deletes the connection tracking entries of connections to `proxy` that were
    /// forwarded to `node` (on `port` of the proxy, or on any port). Returns false
    /// when there were none.
    fn forget(&self, proxy: Ipv4Addr, port: Option<u16>, node: Ipv4Addr) -> Result<bool>;
    /// Creates a chain in the nat table; an existing chain is success.
    fn new_chain(&self, chain: &str) -> Result<()>;
    /// Appends `-j chain` to a built-in nat chain unless it is there.
    fn add_jump(&self, hook: &str, chain: &str) -> Result<()>;
    /// Deletes one `-j chain` rule from a built-in nat chain.
    fn delete_jump(&self, hook: &str, chain: &str) -> Result<()>;
    /// Flushes and deletes a chain of the nat table; a missing chain is success.
    fn delete_chain(&self, chain: &str) -> Result<()>;
    /// Turns on IPv4 forwarding; returns true if it was off.
    fn enable_forwarding(&self) -> Result<bool>;
}

/// The real thing: iptables-save/-restore and conntrack as processes, chains and jumps
/// through the `iptables` crate.
pub struct Iptables {
    ipt: iptables::IPTables,
}

impl Iptables {
    pub fn new() -> Iptables {
        static PATH: OnceLock<String> = OnceLock::new();
        let path = PATH.get_or_init(|| exec::system_tool("iptables").to_string_lossy().into_owned());
        Iptables {
            // Built directly rather than with `iptables::new`, which would look the
            // binary up on PATH and run `iptables --version` to learn what 1.8 has.
            ipt: iptables::IPTables { cmd: path.as_str(), has_check: true, has_wait: true, is_numeric: true },
        }
    }
}

/// `conntrack -D` for the connections to `proxy` (on `port`, or any port) that were
/// forwarded to `node`.
pub fn forget_cmd(proxy: Ipv4Addr, port: Option<u16>, node: Ipv4Addr) -> Cmd {
    let mut cmd =
        Cmd::new(exec::system_tool("conntrack")).args(["-D", "-p", "tcp", "--orig-dst"]).arg(proxy.to_string());
    if let Some(port) = port {
        cmd = cmd.arg("--orig-port-dst").arg(port.to_string());
    }
    cmd.arg("--reply-src").arg(node.to_string())
}

/// `iptables-restore --noflush -w 5`: replaces the declared chains in one transaction.
pub fn restore_cmd() -> Cmd {
    Cmd::new(exec::system_tool("iptables-restore")).args(["--noflush", "-w", XTABLES_WAIT])
}

fn crate_error(what: String) -> impl FnOnce(Box<dyn std::error::Error>) -> anyhow::Error {
    move |e| anyhow!("{what}: {}", e.to_string().trim())
}

impl Firewall for Iptables {
    fn save(&self) -> Result<String> {
        let cmd = Cmd::new(exec::system_tool("iptables-save")).args(["-t", "nat"]);
        Ok(exec::run(&cmd, None, TIMEOUT)?.stdout)
    }

    fn restore(&self, text: &str) -> Result<()> {
        exec::run(&restore_cmd(), Some(text), TIMEOUT)?;
        Ok(())
    }

    fn forget(&self, proxy: Ipv4Addr, port: Option<u16>, node: Ipv4Addr) -> Result<bool> {
        let cmd = forget_cmd(proxy, port, node);
        let out = exec::run_status(&cmd, None, TIMEOUT)?;
        match out.code() {
            Some(0) => Ok(true),
            // conntrack exits 1 both when nothing matched and on real errors; only its
            // message tells them apart.
            Some(1) if out.stderr.contains(" 0 flow entries") => Ok(false),
            _ => Err(exec::ExecError::Failed { cmd: cmd.to_string(), output: out }.into()),
        }
    }

    fn new_chain(&self, chain: &str) -> Result<()> {
        match self.ipt.new_chain("nat", chain) {
            Ok(()) => Ok(()),
            Err(e) if e.to_string().contains("already exists") => Ok(()),
            Err(e) => Err(crate_error(format!("cannot create chain {chain}"))(e)),
        }
    }

    /// Checks (`iptables -C`) before adding, so a jump that appeared since the caller
    /// looked is not added twice.
    fn add_jump(&self, hook: &str, chain: &str) -> Result<()> {
        let rule = format!("-j {chain}");
        let what = format!("cannot add -A {hook} -j {chain}");
        if self.ipt.exists("nat", hook, &rule).map_err(crate_error(what.clone()))? {
            return Ok(());
        }
        self.ipt.append("nat", hook, &rule).map_err(crate_error(what))
    }

    fn delete_jump(&self, hook: &str, chain: &str) -> Result<()> {
        self.ipt
            .delete("nat", hook, &format!("-j {chain}"))
            .map_err(crate_error(format!("cannot delete -A {hook} -j {chain}")))
    }

    fn delete_chain(&self, chain: &str) -> Result<()> {
        let missing = |e: &dyn std::error::Error| {
            let text = e.to_string();
            text.contains("No chain") || text.contains("does not exist")
        };
        for result in [self.ipt.flush_chain("nat", chain), self.ipt.delete_chain("nat", chain)] {
            match result {
                Ok(()) => {}
                Err(e) if missing(e.as_ref()) => return Ok(()),
                Err(e) => return Err(crate_error(format!("cannot delete chain {chain}"))(e)),
            }
        }
        Ok(())
    }

    fn enable_forwarding(&self) -> Result<bool> {
        const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
        let was = std::fs::read_to_string(PATH).map_err(|e| anyhow!("cannot read {PATH}: {e}"))?;
        if was.trim() == "1" {
            return Ok(false);
        }
        std::fs::write(PATH, "1\n").map_err(|e| anyhow!("cannot write {PATH}: {e}"))?;
        Ok(true)
    }
}
