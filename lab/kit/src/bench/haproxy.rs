//! The anchor beside the NAT on Patroni (issue 21): HAProxy as Patroni ships it for this
//! very job, in the proxy's namespace beside repmgr-nat's rules, so one failover is measured
//! through both ports at once (same T0, same ready line, same clients). Its config is
//! Patroni's own example, read from Debian's patroni package (`EXAMPLE`, the same file as
//! `haproxy.cfg` at the root of zalando/patroni), with only its addresses and ports made
//! the lab's: every timeout, check and option as shipped.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::lab::{DB1, DB2, Lab, PROXY, terminate};

/// HAProxy's port for the cluster (Patroni's example listens on 5000), on the proxy's
/// address; the NAT's application port stays 54322.
pub const PORT: u16 = 54330;
/// The example's port for the cluster, which becomes PORT.
const EXAMPLE_PORT: &str = "5000";
/// Patroni's REST API on every node (lab/lib/patroni.sh: PATRONI_PORT): the health check.
const PATRONI_PORT: u16 = 8008;
/// The example's stats listener, kept on its port (its page tells which server is up).
const STATS_PORT: u16 = 7000;
/// The example's cluster section.
const SECTION: &str = "batman";
/// Its row in the report, beside the NAT's.
pub const TITLE: &str = "HAProxy (Patroni's haproxy.cfg) on Patroni, same run";
const EXAMPLE: &str = "/usr/share/doc/patroni/examples/haproxy.cfg";
const BIN: &str = "/usr/sbin/haproxy";

/// Patroni's example with the lab's addresses: each `bind *:P` on the proxy's address
/// (the cluster's 5000 as PORT), one `server` line per node in the example's order,
/// named as the example names them (`postgresql_<address>_<port>`), on PostgreSQL's port
/// 5432 with the check on Patroni's port; every other line as shipped.
pub fn config(example: &str, nodes: &[&str]) -> Result<String, String> {
    let mut nodes = nodes.iter();
    let mut out = String::new();
    for line in example.lines() {
        let indent = &line[..line.len() - line.trim_start().len()];
        let words: Vec<&str> = line.split_whitespace().collect();
        let line = match words.as_slice() {
            ["bind", at] => {
                let port = at.strip_prefix("*:").ok_or_else(|| format!("{EXAMPLE}: unexpected {line:?}"))?;
                let port = if port == EXAMPLE_PORT { PORT.to_string() } else { port.to_string() };
                format!("{indent}bind {PROXY}:{port}")
            }
            ["server", _, _, options @ ..] => {
                let node = nodes.next().ok_or_else(|| format!("{EXAMPLE}: more servers than the lab's nodes"))?;
                let mut options: Vec<String> = options.iter().map(|w| w.to_string()).collect();
                let check_port = options.iter().position(|w| w == "port").map(|i| i + 1);
                if let Some(port) = check_port.and_then(|i| options.get_mut(i)) {
                    *port = PATRONI_PORT.to_string();
                }
                format!("{indent}server {} {node}:5432 {}", server_name(node), options.join(" "))
            }
            _ => line.to_string(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    match nodes.next() {
        Some(_) => Err(format!("{EXAMPLE}: fewer servers than the lab's nodes")),
        None => Ok(out),
    }
}

/// A node's server name, as the example names its servers.
fn server_name(node: &str) -> String {
    format!("postgresql_{node}_5432")
}

/// The cluster section's servers from the stats page's CSV (`/;csv`): name, status (UP,
/// DOWN, "UP 1/2", ...) and the seconds since its last change.
pub fn servers(csv: &str) -> Vec<(String, String, u64)> {
    let mut lines = csv.lines().skip_while(|l| !l.starts_with("# "));
    let Some(header) = lines.next() else { return Vec::new() };
    let columns: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let at = |name: &str| columns.iter().position(|c| *c == name);
    let (Some(px), Some(sv), Some(status), Some(lastchg)) = (at("pxname"), at("svname"), at("status"), at("lastchg"))
    else {
        return Vec::new();
    };
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > lastchg && f[px] == SECTION && f[sv] != "FRONTEND" && f[sv] != "BACKEND")
        .map(|f| (f[sv].to_string(), f[status].to_string(), f[lastchg].parse().unwrap_or(0)))
        .collect()
}

/// HAProxy running in the proxy's namespace (as root, in the foreground: its pid is the
/// child's); stopped by that pid when this goes, a failed scenario included.
pub struct Haproxy {
    child: Child,
}

impl Haproxy {
    /// Writes the config into `dir` (haproxy.cfg, kept with the run's raw measurements),
    /// starts HAProxy (its output in haproxy.log) and waits until its checks agree with the
    /// cluster: db1 up, db2 down (every server starts up until its checks fail).
    pub fn start(dir: &Path) -> Haproxy {
        let example = std::fs::read_to_string(EXAMPLE).unwrap_or_else(|e| panic!("{EXAMPLE}: {e} (lab.sh deps)"));
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config(&example, &[DB1, DB2]).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{}: {e}", cfg.display()));
        let log = File::create(dir.join("haproxy.log")).expect("haproxy.log");
        let child = Command::new("ip")
            .args(["netns", "exec", "proxy", BIN, "-db", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("haproxy.log"))
            .stderr(log)
            .spawn()
            .expect("cannot start ip netns exec proxy haproxy");
        let haproxy = Haproxy { child };
        let expected = [(server_name(DB1), "UP"), (server_name(DB2), "DOWN")];
        let agrees = || {
            let now = haproxy.servers();
            expected.iter().all(|(name, status)| now.iter().any(|(n, s, _)| n == name && s == status))
        };
        assert!(
            crate::lab::poll_until(Duration::from_secs(30), agrees),
            "HAProxy's checks did not mark db1 up and db2 down within 30 s: {:?}",
            haproxy.servers()
        );
        haproxy
    }

    /// The servers as HAProxy's stats page shows them now (empty when it does not answer).
    pub fn servers(&self) -> Vec<(String, String, u64)> {
        let get =
            format!("exec 3<>/dev/tcp/{PROXY}/{STATS_PORT} && printf 'GET /;csv HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3");
        let out = Command::new("ip").args(["netns", "exec", "proxy", "timeout", "3", "bash", "-c", &get]).output();
        out.map(|o| servers(&String::from_utf8_lossy(&o.stdout))).unwrap_or_default()
    }

    /// The application's connection string through HAProxy's port instead of the NAT's.
    pub fn conninfo(lab: &Lab) -> String {
        let nat = &lab.env["APP_CONNINFO"];
        let port = format!("port={}", lab.env["APP_PORT"]);
        assert!(nat.contains(&port), "APP_CONNINFO has no {port}: {nat}");
        nat.replace(&port, &format!("port={PORT}"))
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Patroni's example as Debian's patroni 3.0.2 ships it (and zalando/patroni's root).
    const SHIPPED: &str = "global
    maxconn 100

defaults
    log global
    mode tcp
    retries 2
    timeout client 30m
    timeout connect 4s
    timeout server 30m
    timeout check 5s

listen stats
    mode http
    bind *:7000
    stats enable
    stats uri /

listen batman
    bind *:5000
    option httpchk
    http-check expect status 200
    default-server inter 3s fall 3 rise 2 on-marked-down shutdown-sessions
    server postgresql_127.0.0.1_5432 127.0.0.1:5432 maxconn 100 check port 8008
    server postgresql_127.0.0.1_5433 127.0.0.1:5433 maxconn 100 check port 8009
";

    #[test]
    fn only_the_addresses_and_ports_change() {
        let cfg = config(SHIPPED, &[DB1, DB2]).unwrap();
        let changed: Vec<(&str, &str)> = SHIPPED.lines().zip(cfg.lines()).filter(|(a, b)| a != b).collect();
        assert_eq!(
            changed,
            [
                ("    bind *:7000", "    bind 198.51.100.3:7000"),
                ("    bind *:5000", "    bind 198.51.100.3:54330"),
                (
                    "    server postgresql_127.0.0.1_5432 127.0.0.1:5432 maxconn 100 check port 8008",
                    "    server postgresql_198.51.100.11_5432 198.51.100.11:5432 maxconn 100 check port 8008"
                ),
                (
                    "    server postgresql_127.0.0.1_5433 127.0.0.1:5433 maxconn 100 check port 8009",
                    "    server postgresql_198.51.100.12_5432 198.51.100.12:5432 maxconn 100 check port 8008"
                ),
            ]
        );
        assert_eq!(cfg.lines().count(), SHIPPED.lines().count());
    }

    #[test]
    fn a_server_per_node_exactly() {
        assert!(config(SHIPPED, &[DB1]).is_err());
        assert!(config(SHIPPED, &[DB1, DB2, "198.51.100.13"]).is_err());
    }

    #[test]
    fn reads_the_servers_from_the_stats_csv() {
        let csv = "HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n\
            # pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime\n\
            stats,FRONTEND,,,1,1,100,1,0,0,0,0,0,,,,,OPEN,,,,,,,\n\
            batman,FRONTEND,,,0,0,100,0,0,0,0,0,0,,,,,OPEN,,,,,,,\n\
            batman,postgresql_198.51.100.11_5432,0,0,0,0,100,0,0,0,,0,,0,0,0,0,UP,1,1,0,0,0,12,0\n\
            batman,postgresql_198.51.100.12_5432,0,0,0,0,100,0,0,0,,0,,0,0,0,0,DOWN,1,1,0,3,1,9,9\n\
            batman,BACKEND,0,0,0,0,10,0,0,0,0,0,,0,0,0,0,UP,1,1,0,,0,12,0\n";
        assert_eq!(
            servers(csv),
            [
                ("postgresql_198.51.100.11_5432".to_string(), "UP".to_string(), 12),
                ("postgresql_198.51.100.12_5432".to_string(), "DOWN".to_string(), 9)
            ]
        );
        assert!(servers("").is_empty());
    }
}
