//! `check` with two proxy hosts (`proxy.own_address`): keepalived moves `proxy.address`
//! and lowers this host's priority when `repmgr-nat can-serve` fails, conntrackd copies
//! the sessions, and the kernel keeps them across a move (README: Two proxy hosts).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::Line;

/// keepalived's config when its command line names none (`-f`, `--use-file`).
pub const KEEPALIVED_CONF: &str = "/etc/keepalived/keepalived.conf";
const EXAMPLES: &str = "/usr/share/doc/repmgr-nat/examples";
const SYSCTL_FILE: &str = "/etc/sysctl.d/90-repmgr-nat.conf";

/// What the two-proxy checks look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwoProxies {
    /// keepalived and conntrackd in this network namespace: as root only, who alone sees
    /// every process's namespace (a host may run other namespaces' daemons, as the lab does).
    pub daemons: Option<Daemons>,
    /// `/proc/sys/net/netfilter/nf_conntrack_tcp_loose` and `..._be_liberal`, trimmed.
    pub tcp_loose: Result<String, String>,
    pub be_liberal: Result<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Daemons {
    /// None: no keepalived process runs here.
    pub keepalived: Option<Keepalived>,
    /// conntrackd's pid; None: none runs here.
    pub conntrackd: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keepalived {
    pub pid: u32,
    /// The file it reads: `-f`/`--use-file` on its command line, else [`KEEPALIVED_CONF`].
    pub config: PathBuf,
    /// Its text, or why it could not be read.
    pub text: Result<String, String>,
}

/// The file keepalived reads, from its command line (argv, program first).
pub fn keepalived_config(argv: &[String]) -> PathBuf {
    let mut words = argv.iter().skip(1);
    let mut found = None;
    while let Some(word) = words.next() {
        if word == "-f" || word == "--use-file" {
            found = words.next().cloned();
        } else if let Some(path) = word.strip_prefix("--use-file=") {
            found = Some(path.to_string());
        } else if let Some(path) = word.strip_prefix("-f").filter(|p| !p.is_empty() && !word.starts_with("--")) {
            found = Some(path.to_string());
        }
    }
    PathBuf::from(found.unwrap_or_else(|| KEEPALIVED_CONF.to_string()))
}

/// One statement of keepalived's config: its words, and the block it opens.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Stmt {
    pub words: Vec<String>,
    pub block: Vec<Stmt>,
}

/// keepalived's config as statements: `#` and `!` start comments, a word in double
/// quotes is one word, `{ ... }` is the block of the statement before it.
pub fn parse(text: &str) -> Vec<Stmt> {
    let mut tokens: Vec<Option<String>> = Vec::new(); // None: end of line
    for line in text.lines() {
        let mut chars = line.chars().peekable();
        let mut word = String::new();
        let flush = |word: &mut String, tokens: &mut Vec<Option<String>>| {
            if !word.is_empty() {
                tokens.push(Some(std::mem::take(word)));
            }
        };
        while let Some(c) = chars.next() {
            match c {
                '#' | '!' if word.is_empty() => break,
                '"' => {
                    for q in chars.by_ref() {
                        if q == '"' {
                            break;
                        }
                        word.push(q);
                    }
                    tokens.push(Some(std::mem::take(&mut word)));
                }
                '{' | '}' => {
                    flush(&mut word, &mut tokens);
                    tokens.push(Some(c.to_string()));
                }
                c if c.is_whitespace() => flush(&mut word, &mut tokens),
                c => word.push(c),
            }
        }
        flush(&mut word, &mut tokens);
        tokens.push(None);
    }
    let mut at = 0;
    block(&tokens, &mut at)
}

fn block(tokens: &[Option<String>], at: &mut usize) -> Vec<Stmt> {
    let mut stmts = Vec::new();
    let mut current = Stmt::default();
    let end = |current: &mut Stmt, stmts: &mut Vec<Stmt>| {
        if !current.words.is_empty() || !current.block.is_empty() {
            stmts.push(std::mem::take(current));
        }
    };
    while *at < tokens.len() {
        let token = tokens[*at].as_deref();
        *at += 1;
        match token {
            None => end(&mut current, &mut stmts),
            Some("{") => {
                current.block = block(tokens, at);
                end(&mut current, &mut stmts);
            }
            Some("}") => break,
            Some(word) => current.words.push(word.to_string()),
        }
    }
    end(&mut current, &mut stmts);
    stmts
}

fn first(stmt: &Stmt) -> &str {
    stmt.words.first().map(String::as_str).unwrap_or("")
}

/// The names of the `vrrp_script`s that run `repmgr-nat can-serve`.
fn can_serve_scripts(conf: &[Stmt]) -> Vec<String> {
    conf.iter()
        .filter(|s| first(s) == "vrrp_script")
        .filter(|s| {
            s.block.iter().any(|line| {
                first(line) == "script" && {
                    let words: Vec<&str> = line.words[1..].iter().flat_map(|w| w.split_whitespace()).collect();
                    words.first().is_some_and(|p| p.rsplit('/').next() == Some("repmgr-nat"))
                        && words.get(1) == Some(&"can-serve")
                }
            })
        })
        .filter_map(|s| s.words.get(1).cloned())
        .collect()
}

/// The `vrrp_instance`s whose `virtual_ipaddress` holds `address`.
fn instances_of(conf: &[Stmt], address: Ipv4Addr) -> Vec<&Stmt> {
    let (bare, host) = (address.to_string(), format!("{address}/32"));
    conf.iter()
        .filter(|s| first(s) == "vrrp_instance")
        .filter(|s| {
            s.block
                .iter()
                .filter(|l| first(l) == "virtual_ipaddress")
                .any(|l| l.block.iter().any(|a| a.words.first().is_some_and(|w| *w == bare || *w == host)))
        })
        .collect()
}

fn includes(conf: &[Stmt]) -> String {
    let files: Vec<&str> =
        conf.iter().filter(|s| first(s) == "include").filter_map(|s| s.words.get(1)).map(String::as_str).collect();
    match files[..] {
        [] => String::new(),
        _ => format!(" (it includes {}, which check does not read)", files.join(", ")),
    }
}

/// The lines: keepalived runs, moves `proxy.address` and tracks `can-serve`; conntrackd
/// runs; the kernel's conntrack settings.
pub fn lines(proxy: Ipv4Addr, found: &TwoProxies) -> Vec<Line> {
    let mut lines = Vec::new();
    if let Some(daemons) = &found.daemons {
        lines.extend(keepalived_lines(proxy, daemons.keepalived.as_ref()));
        let name = "conntrackd runs here";
        lines.push(match daemons.conntrackd {
            Some(pid) => Line::ok(name, format!("pid {pid}")),
            None => Line::failed(
                name,
                format!(
                    "no conntrackd process in this network namespace: an open session survives a takeover only by \
                     chance; apt-get install conntrackd, copy {EXAMPLES}/conntrackd.conf to \
                     /etc/conntrackd/conntrackd.conf (the own and the peer's address swapped on the other host), \
                     systemctl enable --now conntrackd"
                ),
            ),
        });
    }
    let name = "net.netfilter.nf_conntrack_tcp_be_liberal = 1";
    lines.push(match &found.be_liberal {
        Ok(v) if v == "1" => Line::ok(name, ""),
        Ok(v) => Line::failed(
            name,
            format!(
                "it is {v}: a frozen holder that thaws takes the address back with stale entries, and its sessions \
                 are reset; echo net.netfilter.nf_conntrack_tcp_be_liberal=1 >{SYSCTL_FILE}; sysctl --system"
            ),
        ),
        Err(why) => Line::failed(name, why.clone()),
    });
    let name = "net.netfilter.nf_conntrack_tcp_loose = 1";
    lines.push(match &found.tcp_loose {
        Ok(v) if v == "1" => Line::ok(name, ""),
        Ok(v) => Line::warn(
            name,
            format!(
                "it is {v}: a session conntrackd did not copy is reset at a takeover instead of going on; \
                 sysctl -w net.netfilter.nf_conntrack_tcp_loose=1 (the kernel's default) and remove what sets {v} \
                 under /etc/sysctl.d"
            ),
        ),
        Err(why) => Line::failed(name, why.clone()),
    });
    lines
}

fn keepalived_lines(proxy: Ipv4Addr, keepalived: Option<&Keepalived>) -> Vec<Line> {
    let name = "keepalived runs here";
    let Some(k) = keepalived else {
        return vec![Line::failed(
            name,
            format!(
                "no keepalived process in this network namespace: nothing moves {proxy} (proxy.address) when a host \
                 dies; apt-get install keepalived, copy {EXAMPLES}/keepalived.conf to {KEEPALIVED_CONF} \
                 (unicast_src_ip and unicast_peer swapped on the other host), systemctl enable --now keepalived"
            ),
        )];
    };
    let path = k.config.display();
    let mut lines = vec![Line::ok(name, format!("pid {}, config {path}", k.pid))];
    let moves = format!("keepalived's {path} moves {proxy} (proxy.address)");
    let tracks = format!("keepalived's {path} tracks `repmgr-nat can-serve`");
    let text = match &k.text {
        Ok(text) => text,
        Err(why) => {
            lines.push(Line::failed(moves, format!("cannot read it: {why}")));
            return lines;
        }
    };
    let conf = parse(text);
    let instances = instances_of(&conf, proxy);
    let Some(instance) = instances.first() else {
        lines.push(Line::failed(
            moves,
            format!(
                "no vrrp_instance has {proxy} in its virtual_ipaddress{}: add `{proxy}/32 dev <interface>` there, \
                 as in {EXAMPLES}/keepalived.conf",
                includes(&conf)
            ),
        ));
        return lines;
    };
    let instance_name = instance.words.get(1).cloned().unwrap_or_default();
    lines.push(Line::ok(moves, format!("vrrp_instance {instance_name}")));
    let scripts = can_serve_scripts(&conf);
    let tracked: Vec<String> = instance
        .block
        .iter()
        .filter(|l| first(l) == "track_script")
        .flat_map(|l| l.block.iter().filter_map(|s| s.words.first().cloned()))
        .collect();
    lines.push(match scripts.iter().find(|s| tracked.contains(s)) {
        Some(script) => Line::ok(tracks, format!("vrrp_script {script}")),
        None if scripts.is_empty() => Line::failed(
            tracks,
            format!(
                "no vrrp_script runs `/usr/bin/repmgr-nat can-serve`{}: this host keeps {proxy} while its watch is \
                 dead or its ports misrouted; add the vrrp_script chk_repmgr_nat of {EXAMPLES}/keepalived.conf \
                 and name it in track_script of vrrp_instance {instance_name}",
                includes(&conf)
            ),
        ),
        None => Line::failed(
            tracks,
            format!(
                "vrrp_instance {instance_name} does not name vrrp_script {} in its track_script: the script runs \
                 but changes nothing; add `track_script {{ {} }}` to it",
                scripts[0], scripts[0]
            ),
        ),
    });
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROXY: Ipv4Addr = Ipv4Addr::new(10, 8, 3, 1);

    fn example() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/examples/keepalived.conf")).unwrap()
    }

    fn found(text: Result<String, String>) -> TwoProxies {
        TwoProxies {
            daemons: Some(Daemons {
                keepalived: Some(Keepalived { pid: 40, config: PathBuf::from(KEEPALIVED_CONF), text }),
                conntrackd: Some(41),
            }),
            tcp_loose: Ok("1".into()),
            be_liberal: Ok("1".into()),
        }
    }

    fn text(lines: &[Line]) -> Vec<String> {
        let report = super::super::Report { version: 1, checks: lines.to_vec() };
        report.to_text().lines().map(str::to_string).collect()
    }

    #[test]
    fn the_packaged_example_is_all_ok() {
        assert_eq!(
            text(&lines(PROXY, &found(Ok(example())))),
            [
                "OK  keepalived runs here: pid 40, config /etc/keepalived/keepalived.conf",
                "OK  keepalived's /etc/keepalived/keepalived.conf moves 10.8.3.1 (proxy.address): vrrp_instance repmgr_nat",
                "OK  keepalived's /etc/keepalived/keepalived.conf tracks `repmgr-nat can-serve`: vrrp_script chk_repmgr_nat",
                "OK  conntrackd runs here: pid 41",
                "OK  net.netfilter.nf_conntrack_tcp_be_liberal = 1",
                "OK  net.netfilter.nf_conntrack_tcp_loose = 1",
            ]
        );
    }

    #[test]
    fn the_config_comes_from_the_command_line_or_the_default() {
        let argv = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        assert_eq!(keepalived_config(&argv(&["keepalived", "-n", "-P"])), PathBuf::from(KEEPALIVED_CONF));
        assert_eq!(
            keepalived_config(&argv(&["keepalived", "-n", "-f", "/lab/k.conf", "-p", "x"])),
            PathBuf::from("/lab/k.conf")
        );
        assert_eq!(keepalived_config(&argv(&["keepalived", "--use-file", "/a.conf"])), PathBuf::from("/a.conf"));
        assert_eq!(keepalived_config(&argv(&["keepalived", "--use-file=/b.conf"])), PathBuf::from("/b.conf"));
        assert_eq!(keepalived_config(&argv(&["keepalived", "-f/c.conf"])), PathBuf::from("/c.conf"));
        // a path that is only -f's argument is not taken as an option
        assert_eq!(keepalived_config(&argv(&["/usr/sbin/keepalived", "--dont-fork"])), PathBuf::from(KEEPALIVED_CONF));
    }

    #[test]
    fn comments_quotes_and_one_line_blocks_parse() {
        let conf = parse(
            "vrrp_script s { script \"/usr/bin/repmgr-nat can-serve\" } # comment\n! other\nvrrp_instance i {\n virtual_ipaddress { 10.8.3.1 }\n track_script {\n s weight -50\n }\n}\n",
        );
        assert_eq!(conf.len(), 2, "{conf:?}");
        assert_eq!(conf[0].block[0].words, ["script", "/usr/bin/repmgr-nat can-serve"]);
        assert_eq!(can_serve_scripts(&conf), ["s"]);
        assert_eq!(instances_of(&conf, PROXY).len(), 1);
        let lines = text(&lines(PROXY, &found(Ok(conf_text()))));
        assert!(lines.iter().all(|l| l.starts_with("OK")), "{lines:?}");
    }

    fn conf_text() -> String {
        "vrrp_script s { script \"/usr/bin/repmgr-nat can-serve\" }\nvrrp_instance i {\n virtual_ipaddress { 10.8.3.1 }\n track_script { s }\n}\n".into()
    }

    #[test]
    fn a_config_without_can_serve_or_the_address_is_named() {
        let without = example().replace("/usr/bin/repmgr-nat can-serve", "/usr/local/bin/check-something");
        let got = text(&lines(PROXY, &found(Ok(without))));
        assert!(got[1].starts_with("OK  keepalived's /etc/keepalived/keepalived.conf moves 10.8.3.1"), "{got:?}");
        assert_eq!(
            got[2],
            "FAILED  keepalived's /etc/keepalived/keepalived.conf tracks `repmgr-nat can-serve`: no vrrp_script runs \
             `/usr/bin/repmgr-nat can-serve`: this host keeps 10.8.3.1 while its watch is dead or its ports \
             misrouted; add the vrrp_script chk_repmgr_nat of /usr/share/doc/repmgr-nat/examples/keepalived.conf \
             and name it in track_script of vrrp_instance repmgr_nat"
        );
        let untracked = example().replace("    track_script {\n        chk_repmgr_nat\n    }\n", "");
        let got = text(&lines(PROXY, &found(Ok(untracked))));
        assert!(
            got[2].ends_with(
                "vrrp_instance repmgr_nat does not name vrrp_script chk_repmgr_nat in its track_script: the script \
                 runs but changes nothing; add `track_script { chk_repmgr_nat }` to it"
            ),
            "{got:?}"
        );
        let elsewhere =
            format!("include /etc/keepalived/conf.d/*.conf\n{}", example().replace("10.8.3.1/32", "10.8.3.9/32"));
        let got = text(&lines(PROXY, &found(Ok(elsewhere))));
        assert_eq!(got.len(), 5, "no tracking line without the instance: {got:?}");
        assert_eq!(
            got[1],
            "FAILED  keepalived's /etc/keepalived/keepalived.conf moves 10.8.3.1 (proxy.address): no vrrp_instance has \
             10.8.3.1 in its virtual_ipaddress (it includes /etc/keepalived/conf.d/*.conf, which check does not \
             read): add `10.8.3.1/32 dev <interface>` there, as in /usr/share/doc/repmgr-nat/examples/keepalived.conf"
        );
        let got = text(&lines(PROXY, &found(Err("Permission denied (os error 13)".into()))));
        assert_eq!(
            got[1],
            "FAILED  keepalived's /etc/keepalived/keepalived.conf moves 10.8.3.1 (proxy.address): cannot read it: \
             Permission denied (os error 13)"
        );
    }

    #[test]
    fn missing_daemons_and_kernel_settings_say_what_to_do() {
        let mut facts = found(Ok(example()));
        facts.daemons = Some(Daemons { keepalived: None, conntrackd: None });
        facts.be_liberal = Ok("0".into());
        facts.tcp_loose = Ok("0".into());
        let got = text(&lines(PROXY, &facts));
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(
            got[0].starts_with(
                "FAILED  keepalived runs here: no keepalived process in this network namespace: nothing moves 10.8.3.1"
            ) && got[0].ends_with("systemctl enable --now keepalived"),
            "{got:?}"
        );
        assert!(
            got[1].starts_with("FAILED  conntrackd runs here: no conntrackd process in this network namespace")
                && got[1].ends_with("systemctl enable --now conntrackd"),
            "{got:?}"
        );
        assert_eq!(
            got[2],
            "FAILED  net.netfilter.nf_conntrack_tcp_be_liberal = 1: it is 0: a frozen holder that thaws takes the \
             address back with stale entries, and its sessions are reset; echo \
             net.netfilter.nf_conntrack_tcp_be_liberal=1 >/etc/sysctl.d/90-repmgr-nat.conf; sysctl --system"
        );
        assert!(got[3].starts_with("WARN  net.netfilter.nf_conntrack_tcp_loose = 1: it is 0: "), "{got:?}");
        // as repmgr's OS user: no process lines, the kernel's still
        facts.daemons = None;
        assert_eq!(text(&lines(PROXY, &facts)).len(), 2);
    }
}
