//! The root-side firewall adapter: this host's tables (read with `iptables-save`,
//! changed only by `iptables-restore --noflush` transactions that `ruleset` renders) and
//! its connection tracking table. Only `route`, `setup` and `teardown` (as root) use it.
//! Every process runs through `exec`: no shell, an environment of its own, a deadline, a
//! process group of its own (a caller's terminal signals never reach it mid-switch); the
//! xtables lock is waited for `XTABLES_WAIT` seconds at most.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::{Result, anyhow};

use crate::effects::exec::{self, Cmd};

/// How long to wait for the xtables lock (`iptables-restore -w`), in seconds.
const XTABLES_WAIT: &str = "5";
const TIMEOUT: Duration = Duration::from_secs(15);

pub trait Firewall {
    /// `iptables-save`: every table.
    fn save(&self) -> Result<String>;
    /// Applies an `iptables-restore --noflush` transaction.
    fn restore(&self, text: &str) -> Result<()>;
    /// Deletes the connection tracking entries of connections to `proxy` that were
    /// forwarded to `node`'s PostgreSQL (on `port` of the proxy, or on any port). Returns
    /// false when there were none.
    fn forget(&self, proxy: Ipv4Addr, port: Option<u16>, node: SocketAddrV4) -> Result<bool>;
    /// Turns on IPv4 forwarding; returns true if it was off.
    fn enable_forwarding(&self) -> Result<bool>;
}

/// The real thing: iptables-save, iptables-restore and conntrack as processes.
pub struct Iptables;

/// `conntrack -D` for the connections to `proxy` (on `port`, or any port) that were
/// forwarded to `node`'s address and PostgreSQL port: never another cluster's, whose
/// PostgreSQL may run on the same host on another port behind the same proxy address.
pub fn forget_cmd(proxy: Ipv4Addr, port: Option<u16>, node: SocketAddrV4) -> Cmd {
    let mut cmd = Cmd::new(exec::system_tool("conntrack"))
        .own_group()
        .args(["-D", "-p", "tcp", "--orig-dst"])
        .arg(proxy.to_string());
    if let Some(port) = port {
        cmd = cmd.arg("--orig-port-dst").arg(port.to_string());
    }
    cmd.arg("--reply-src").arg(node.ip().to_string()).arg("--reply-port-src").arg(node.port().to_string())
}

/// `iptables-restore --noflush -w 5`: replaces the declared chains in one transaction.
pub fn restore_cmd() -> Cmd {
    Cmd::new(exec::system_tool("iptables-restore")).own_group().args(["--noflush", "-w", XTABLES_WAIT])
}

impl Firewall for Iptables {
    fn save(&self) -> Result<String> {
        let cmd = Cmd::new(exec::system_tool("iptables-save")).own_group();
        Ok(exec::run(&cmd, None, TIMEOUT)?.stdout)
    }

    fn restore(&self, text: &str) -> Result<()> {
        exec::run(&restore_cmd(), Some(text), TIMEOUT)?;
        Ok(())
    }

    fn forget(&self, proxy: Ipv4Addr, port: Option<u16>, node: SocketAddrV4) -> Result<bool> {
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

    fn enable_forwarding(&self) -> Result<bool> {
        if forwarding()? {
            return Ok(false);
        }
        std::fs::write(IP_FORWARD, "1\n").map_err(|e| anyhow!("cannot write {IP_FORWARD}: {e}"))?;
        Ok(true)
    }
}

/// Whether the iptables in use is iptables-nft, whose every change the kernel notifies
/// (`iptables-save --version` says `(nf_tables)`), not the legacy one.
pub fn notifies() -> bool {
    let cmd = Cmd::new(exec::system_tool("iptables-save")).own_group().arg("--version");
    exec::run(&cmd, None, TIMEOUT).is_ok_and(|out| out.stdout.contains("(nf_tables)"))
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Whether this network namespace forwards IPv4 (anyone may read it).
pub fn forwarding() -> Result<bool> {
    let now = std::fs::read_to_string(IP_FORWARD).map_err(|e| anyhow!("cannot read {IP_FORWARD}: {e}"))?;
    Ok(now.trim() == "1")
}
