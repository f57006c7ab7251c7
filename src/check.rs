//! `repmgr-nat check`: gathers what `core::check` judges, through the adapters the other
//! commands use, every probe on a deadline and the slow ones at once. As repmgr's OS user
//! it asks the nodes (with that user's password file) and sudo for itself; as root it
//! asks sudo for that user, barman for its server and reads the whole nat table.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::adapters::{Adapters, Ctx};
use crate::app;
use crate::clock::now_ms;
use crate::core::check::two_proxies::{self, Daemons, Keepalived, TwoProxies};
use crate::core::check::{self, BarmanServer, Facts, Sudo, SudoAnswer};
use crate::core::config::instance::Instance;
use crate::core::config::{self, Config};
use crate::core::ruleset::Live;
use crate::effects::exec::{self, Cmd};
use crate::effects::firewall::{self, Firewall, Iptables};
use crate::effects::nat::{self, NatSwitch, ViaSudo};
use crate::effects::privilege::{self, OsUser};
use crate::effects::state::StateDir;
use crate::effects::{barman, watch_file};
use crate::exit::Exit;

/// How long sudo may take to judge one command line, or systemctl to say a unit's state.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `barman show-server` may take (it asks PostgreSQL too).
const BARMAN_TIMEOUT: Duration = Duration::from_secs(30);

pub fn run(ctx: &Ctx, path: Option<&Path>, json: bool) -> Result<()> {
    let report = report(ctx, path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    match report.failed() {
        0 => Ok(()),
        n => Err(anyhow::anyhow!("check: {n} of {} checks failed", report.checks.len())),
    }
}

/// `check --nagios`: the report as a Nagios plugin prints it, and its state as the exit
/// code. Where there is no report, `main` says UNKNOWN (3) with the reason.
pub fn nagios(instance: &Instance, report: &check::Report) -> Result<()> {
    let name = (*instance != Instance::Default).then(|| instance.name());
    let (text, code) = report.to_nagios(&nagios_service(name));
    print!("{text}");
    match code {
        check::plugin::OK => Ok(()),
        code => Err(Exit::Code(code, text.lines().next().unwrap_or_default().to_string()).into()),
    }
}

/// The service `check --nagios` names: `REPMGR-NAT`, or `REPMGR-NAT NAME` for instance NAME.
pub fn nagios_service(instance: Option<&str>) -> String {
    match instance {
        None => "REPMGR-NAT".to_string(),
        Some(name) => format!("REPMGR-NAT {name}"),
    }
}

/// Everything `check` finds, judged.
pub fn report(ctx: &Ctx, path: Option<&Path>) -> Result<check::Report> {
    let cfg = &ctx.cfg;
    let instance_path = cfg.instance.config_path();
    let path = path.unwrap_or(&instance_path);
    // SAFETY: geteuid cannot fail and has no side effects.
    let uid = unsafe { libc::geteuid() };
    let user = OsUser::named(&cfg.repmgr_user).map_err(|e| format!("{e:#}"));
    let facts = std::thread::scope(|s| {
        let sudo = s.spawn(|| sudo(cfg, ctx.root, user.as_ref(), uid));
        let nodes = s.spawn(|| (!ctx.root).then(|| nodes(ctx)).transpose());
        let barman = s.spawn(|| cfg.barman.as_ref().filter(|_| ctx.root).map(barman_server));
        // as root, one iptables-save: the whole table for the shadowing check, ours read from it
        let nat_save = s.spawn(|| ctx.root.then(|| Iptables.save().map_err(|e| format!("{e:#}"))));
        let live = (!ctx.root).then(|| s.spawn(|| ViaSudo { cfg }.live().map_err(|e| format!("{e:#}"))));
        let state = StateDir::new(&cfg.state.dir);
        // its age is measured when it is read, not once the slower probes are done
        let (report, now_ms) = (watch_file::read(cfg), now_ms());
        let nat_save = nat_save.join().expect("nat");
        let nodes = nodes.join().expect("nodes")?;
        let hosts = nodes.as_ref().map(|nodes| check::repmgr_hosts(cfg, nodes)).unwrap_or_default();
        Ok::<_, anyhow::Error>(Facts {
            config_path: path.to_path_buf(),
            config_trusted: trusted(path),
            sudo: Some(sudo.join().expect("sudo")),
            state: state.check().map_err(|e| format!("{e:#}")),
            torn_down: state.torn_down(),
            watch_running: report.as_ref().is_some_and(|r| watch_file::runs(r.pid)),
            watch: report,
            now_ms,
            resolved: resolve(hosts, cfg.postgres.connect_timeout),
            nodes,
            barman: barman.join().expect("barman"),
            units: units(cfg),
            tools: ["iptables-save", "iptables-restore", "conntrack", "sudo"]
                .map(|tool| (tool.to_string(), exec::system_tool(tool).is_file()))
                .to_vec(),
            forwarding: firewall::forwarding().map_err(|e| format!("{e:#}")),
            live: match (live, &nat_save) {
                (Some(live), _) => live.join().expect("live"),
                (None, Some(save)) => save.clone().map(|text| Live::parse(cfg, &text)),
                (None, None) => unreachable!("as root, the whole table is read"),
            },
            nat_save,
            two_proxies: cfg.own_address.map(|_| two_proxies(ctx.root)),
            instances: app::others(cfg)
                .into_iter()
                .map(|(other, theirs)| {
                    let shares =
                        theirs.map(|theirs| config::instance::collisions(cfg, &theirs)).and_then(|shared| match shared
                            .is_empty()
                        {
                            true => Ok(()),
                            false => {
                                Err(format!("it claims {} too, and is refused until it changes", shared.join(", ")))
                            }
                        });
                    (other.name().to_string(), shares)
                })
                .collect(),
        })
    })?;
    if !ctx.root {
        log::debug!("as root, check also asks barman and reads the whole nat table: sudo repmgr-nat check");
    }
    Ok(check::assess(cfg, &facts))
}

/// Where systemd runs: what `systemctl is-enabled` says of the package's units.
fn units(cfg: &Config) -> Option<Vec<(String, String)>> {
    if !Path::new("/run/systemd/system").is_dir() {
        return None;
    }
    let state = |unit: &str| {
        let cmd = Cmd::new(exec::system_tool("systemctl")).args(["is-enabled", unit]);
        match exec::run_status(&cmd, None, ASK_TIMEOUT) {
            Ok(out) => exec::first_line(&out.stdout).unwrap_or("not installed").to_string(),
            Err(e) => format!("unknown ({e})"),
        }
    };
    let units = ["repmgr-nat-setup", "repmgr-nat-watch"].map(|base| cfg.instance.unit(base));
    Some(units.iter().map(|unit| (unit.to_string(), state(unit))).collect())
}

/// The config file as the root step opens it.
fn trusted(path: &Path) -> Result<(), String> {
    privilege::open_trusted_config(path).map(drop).map_err(|e| format!("{e:#}"))
}

/// sudo's answer for every command line repmgr's OS user runs through it: as root for
/// that user (`sudo -l -U`), as that user for itself (`sudo -l`), all at once.
fn sudo(cfg: &Config, root: bool, user: Result<&OsUser, &String>, uid: u32) -> Result<Sudo, String> {
    let user = match user {
        Err(e) => return Err(format!("{e} (repmgr.user in the config): name the OS user repmgr runs as")),
        Ok(user) if !root && user.uid != uid => {
            return Err(format!(
                "check runs neither as root nor as repmgr.user ({}), whose grants these are: run it as one of them",
                cfg.repmgr_user
            ));
        }
        Ok(user) => user,
    };
    let ask = |cmd: &exec::Cmd| {
        let refused = app::sudo_refusal(root.then_some(user.name.as_str()), cmd)
            .map(|said| if said.is_empty() { "refused".to_string() } else { said });
        let words = cmd.args.strip_prefix(&["-n".to_string()]).unwrap_or(&cmd.args).join(" ");
        SudoAnswer { command: format!("sudo {words}"), refused }
    };
    // the follow last: watch reads the tables without it, so check-config does not ask it
    let mut asked: Vec<(bool, SudoAnswer)> = std::thread::scope(|s| {
        let mut cmds = app::sudo_commands(cfg);
        cmds.push(nat::ViaSudo::route_cmd(cfg, &["--show", "--follow"]));
        let asking: Vec<_> = cmds
            .into_iter()
            .map(|cmd| s.spawn(move || (cmd.args.iter().any(|a| a == nat::INSTALLED_PATH), ask(&cmd))))
            .collect();
        asking.into_iter().map(|t| t.join().expect("sudo -l")).collect()
    });
    let (_, follow) = asked.pop().expect("the follow was asked");
    let (route, barman): (Vec<_>, Vec<_>) = asked.into_iter().partition(|(route, _)| *route);
    Ok(Sudo {
        user: user.name.clone(),
        program: nat::INSTALLED_PATH.to_string(),
        route: route.into_iter().map(|(_, a)| a).collect(),
        barman: barman.into_iter().map(|(_, a)| a).collect(),
        follow,
    })
}

/// Every node's settings, asked as the other commands ask them (this user's password
/// file, `postgres.connect_timeout`).
fn nodes(ctx: &Ctx) -> Result<Vec<(config::Node, Result<check::NodeSettings, crate::core::view::Answer>)>> {
    Ok(Adapters::new(ctx).cluster()?.settings())
}

/// `barman show-server`: `\tkey: value` lines under `Server <name>:`.
fn barman_server(cfg: &config::Barman) -> Result<BarmanServer, String> {
    let cmd = barman::show_server_cmd(cfg);
    let out = exec::run_status(&cmd, None, BARMAN_TIMEOUT).map_err(|e| e.to_string())?;
    let settings: std::collections::BTreeMap<String, String> = out
        .stdout
        .lines()
        .filter_map(|line| line.strip_prefix('\t')?.split_once(": "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    if !out.status.success() || !settings.contains_key("conninfo") {
        let said = out.stdout.lines().chain(out.stderr.lines()).map(str::trim).find(|l| !l.is_empty());
        return Err(format!("{cmd}: {}", said.unwrap_or("no settings printed")));
    }
    let check = barman_check(cfg);
    Ok(BarmanServer { settings, file: check::barman_file(&cfg.server, |p| p.is_file()), check })
}

/// `barman check`: the lines that say FAILED (`\t<what>: FAILED (why)`).
fn barman_check(cfg: &config::Barman) -> Result<Vec<String>, String> {
    let cmd = barman::check_cmd(cfg);
    let out = exec::run_status(&cmd, None, BARMAN_TIMEOUT).map_err(|e| e.to_string())?;
    let failed: Vec<String> =
        out.stdout.lines().map(str::trim).filter(|l| l.contains(": FAILED")).map(str::to_string).collect();
    match (out.status.success(), failed.is_empty()) {
        (false, true) => {
            let said = out.stdout.lines().chain(out.stderr.lines()).map(str::trim).find(|l| !l.is_empty());
            Err(format!("{cmd}: {}", said.unwrap_or("failed")))
        }
        _ => Ok(failed),
    }
}

/// The IPv4 addresses of each host name, all looked up at once within `deadline`: a name
/// not resolved by then has none (its lookup is left to end on its own).
fn resolve(hosts: Vec<String>, deadline: Duration) -> std::collections::BTreeMap<String, Vec<std::net::Ipv4Addr>> {
    use std::net::{SocketAddr, ToSocketAddrs};
    let (tx, rx) = std::sync::mpsc::channel();
    let asked = hosts.len();
    for host in hosts {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let addrs: Vec<std::net::Ipv4Addr> = (host.as_str(), 0)
                .to_socket_addrs()
                .map(|addrs| {
                    addrs
                        .filter_map(|a| match a {
                            SocketAddr::V4(v4) => Some(*v4.ip()),
                            SocketAddr::V6(_) => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            let _ = tx.send((host, addrs));
        });
    }
    let until = std::time::Instant::now() + deadline;
    let mut resolved = std::collections::BTreeMap::new();
    while resolved.len() < asked {
        match rx.recv_timeout(until.saturating_duration_since(std::time::Instant::now())) {
            Ok((host, addrs)) => {
                resolved.insert(host, addrs);
            }
            Err(_) => break,
        }
    }
    resolved
}

/// keepalived, conntrackd (as root) and the kernel's conntrack settings of this network
/// namespace.
fn two_proxies(root: bool) -> TwoProxies {
    let sysctl = |name: &str| {
        let path = format!("/proc/sys/net/netfilter/{name}");
        std::fs::read_to_string(&path)
            .map(|v| v.trim().to_string())
            .map_err(|e| format!("cannot read {path}: {e} (is the nf_conntrack module loaded?)"))
    };
    TwoProxies {
        daemons: root.then(daemons),
        tcp_loose: sysctl("nf_conntrack_tcp_loose"),
        be_liberal: sysctl("nf_conntrack_tcp_be_liberal"),
    }
}

/// The keepalived and conntrackd processes of this network namespace, from /proc (the
/// lowest pid of each: keepalived's children share its command line), and the config
/// keepalived reads, through the process's own root (its mount namespace).
fn daemons() -> Daemons {
    let ours = std::fs::read_link("/proc/self/ns/net").ok();
    let mut found: Vec<(u32, String)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let comm = comm.trim();
            let here = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
            (["keepalived", "conntrackd"].contains(&comm) && here.is_some() && here == ours)
                .then(|| (pid, comm.to_string()))
        })
        .collect();
    found.sort();
    let first = |name: &str| found.iter().find(|(_, comm)| comm == name).map(|(pid, _)| *pid);
    let keepalived = first("keepalived").map(|pid| {
        let argv: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter(|w| !w.is_empty())
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        let config = two_proxies::keepalived_config(&argv);
        let base = if config.is_absolute() { "root" } else { "cwd" };
        let through = Path::new(&format!("/proc/{pid}/{base}")).join(config.strip_prefix("/").unwrap_or(&config));
        let text = read_small(&through).map_err(|e| format!("{}: {e}", config.display()));
        Keepalived { pid, config, text }
    });
    Daemons { keepalived, conntrackd: first("conntrackd") }
}

/// A text file of at most 1 MB.
fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?.take(1 << 20).read_to_string(&mut text)?;
    Ok(text)
}
