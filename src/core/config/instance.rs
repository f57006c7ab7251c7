//! Instances: one cluster each, behind the same proxy host. The default instance is
//! `/etc/repmgr-nat.toml` with the names it always had; a named one is
//! `/etc/repmgr-nat/<name>.toml`, whose chains, state and watch directories default to
//! names of its own. Two instances may share nothing that would let one change the
//! other's rules, record or barman (`collisions`).

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::{Config, DEFAULT_PATH, State, quoted};

/// Where the named instances' configs live: `<DIR>/<name>.toml`.
pub const DIR: &str = "/etc/repmgr-nat";

/// The longest instance name: `repmgr_<name>_hold` must fit iptables' 28 characters.
const MAX_NAME: usize = 16;

#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Instance {
    /// `/etc/repmgr-nat.toml`: a host with one cluster, as before instances.
    #[default]
    Default,
    /// `/etc/repmgr-nat/<name>.toml`.
    Named(String),
}

impl Instance {
    /// `--instance NAME`: 1 to 16 lower-case letters, digits, `_` and `-`, starting with a
    /// letter or digit; never a path. `default` is the default instance's label.
    pub fn parse(text: &str) -> Result<Instance> {
        let ok = (1..=MAX_NAME).contains(&text.len())
            && text.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            bail!(
                "instance {} is not a name of 1 to {MAX_NAME} lower-case letters, digits, _ and - (starting with a \
                 letter or digit)",
                quoted(text)
            );
        }
        if text == "default" {
            bail!("instance \"default\" is the one in {DEFAULT_PATH}: leave --instance out for it");
        }
        Ok(Instance::Named(text.to_string()))
    }

    /// The instance's label in metrics (`cluster="..."`) and messages.
    pub fn name(&self) -> &str {
        match self {
            Instance::Default => "default",
            Instance::Named(name) => name,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        match self {
            Instance::Default => PathBuf::from(DEFAULT_PATH),
            Instance::Named(name) => PathBuf::from(format!("{DIR}/{name}.toml")),
        }
    }

    /// A chain's default name: `repmgr_<role>`, or `repmgr_<name>_<role>`.
    pub fn chain(&self, role: &str) -> String {
        match self {
            Instance::Default => format!("repmgr_{role}"),
            Instance::Named(name) => format!("repmgr_{name}_{role}"),
        }
    }

    /// `base`, or `base/instances/<name>` (inside the default's directory, so that one
    /// purge removes them all, and under a name no file of the default's can take).
    pub fn dir(&self, base: &str) -> String {
        match self {
            Instance::Default => base.to_string(),
            Instance::Named(name) => format!("{base}/instances/{name}"),
        }
    }

    /// A unit of this instance: `repmgr-nat-watch.service`, or the template's
    /// `repmgr-nat-watch@<name>.service`.
    pub fn unit(&self, base: &str) -> String {
        match self {
            Instance::Default => format!("{base}.service"),
            Instance::Named(name) => format!("{base}@{name}.service"),
        }
    }

    /// What a command line that runs repmgr-nat for this instance says first.
    pub fn args(&self) -> Vec<String> {
        match self {
            Instance::Default => Vec::new(),
            Instance::Named(name) => vec!["--instance".to_string(), name.clone()],
        }
    }

    /// The instance a config file in `DIR` is, from its file name (`two.toml`): None for
    /// any other file there (a CA certificate, an editor's backup).
    pub fn of_file(file_name: &str) -> Option<Instance> {
        Instance::parse(file_name.strip_suffix(".toml")?).ok()
    }
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "instance {}", self.name())
    }
}

/// What `a` and `b`, two instances' configs, both claim: a chain, a proxy address and
/// port, a node, barman's server, a state or watch directory, a metrics address. Any of
/// these shared would let one instance switch, record or stop what is the other's.
pub fn collisions(a: &Config, b: &Config) -> Vec<String> {
    let mut found = Vec::new();
    let chains = |c: &Config| [c.nat.dnat_chain.clone(), c.nat.snat_chain.clone(), c.nat.hold_chain.clone()];
    for chain in chains(a) {
        if chains(b).contains(&chain) {
            found.push(format!("chain {chain}"));
        }
    }
    let listens = |c: &Config| {
        let ports: Vec<u16> = c.ports.barman.into_iter().chain(c.ports.app.iter().copied()).collect();
        let addresses: Vec<_> = std::iter::once(c.proxy).chain(c.own_address).collect();
        addresses
            .into_iter()
            .flat_map(move |addr| ports.clone().into_iter().map(move |p| (addr, p)))
            .collect::<Vec<_>>()
    };
    let theirs = listens(b);
    for (addr, port) in listens(a) {
        if theirs.contains(&(addr, port)) {
            found.push(format!("proxy port {addr}:{port}"));
        }
    }
    for node in &a.nodes {
        if b.nodes.iter().any(|n| n.addr == node.addr) && a.ports.postgres == b.ports.postgres {
            found.push(format!("node address {}:{}", node.addr, a.ports.postgres));
        }
    }
    if let (Some(x), Some(y)) = (&a.barman, &b.barman)
        && x.server == y.server
    {
        found.push(format!("barman server {}", x.server));
    }
    if a.state.dir == b.state.dir {
        found.push(format!("state.dir {}", a.state.dir.display()));
    }
    if a.watch.dir == b.watch.dir {
        found.push(format!("watch.dir {}", a.watch.dir.display()));
    }
    if let (Some(x), Some(y)) = (a.watch.metrics, b.watch.metrics)
        && x.port() == y.port()
    {
        found.push(format!("watch.metrics port {}", x.port()));
    }
    found
}

/// Whether a record in `a`'s state directory is `a`'s, beside `b`: the directory is not
/// `b`'s too, or, when both name it (a config copied from the other), it is the one `a`'s
/// instance has by default, or else `a` is the default instance and the directory is not
/// `b`'s own default. A copy of the default's config cannot take over its record, whatever
/// directory the default names.
pub fn owns_state_dir(a: &Config, b: &Config) -> bool {
    let own_default = |c: &Config| c.state.dir == Path::new(&c.instance.dir(State::DIR));
    a.state.dir != b.state.dir || own_default(a) || (a.instance == Instance::Default && !own_default(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::tests::EXAMPLE;

    #[test]
    fn a_name_is_never_a_path_nor_the_default() {
        assert_eq!(Instance::parse("two").unwrap(), Instance::Named("two".into()));
        assert_eq!(Instance::parse("eu-west_2").unwrap().name(), "eu-west_2");
        for bad in ["", "Two", "../etc", "a/b", "two.toml", "-x", "_x", "default", "a234567890123456x", "a b"] {
            assert!(Instance::parse(bad).is_err(), "{bad:?} was taken");
        }
        // the longest name still makes a chain iptables takes
        let longest = Instance::parse("a234567890123456").unwrap();
        assert_eq!(longest.chain("hold").len(), 28);
    }

    #[test]
    fn the_default_instance_keeps_every_name_it_had() {
        let default = Instance::Default;
        assert_eq!(default.config_path(), PathBuf::from("/etc/repmgr-nat.toml"));
        assert_eq!(default.chain("dnat"), "repmgr_dnat");
        assert_eq!(default.dir("/var/lib/repmgr-nat"), "/var/lib/repmgr-nat");
        assert!(default.args().is_empty());
        let two = Instance::Named("two".into());
        assert_eq!(two.config_path(), PathBuf::from("/etc/repmgr-nat/two.toml"));
        assert_eq!(two.chain("snat"), "repmgr_two_snat");
        assert_eq!(two.dir("/run/repmgr-nat"), "/run/repmgr-nat/instances/two");
        assert_eq!(two.args(), ["--instance", "two"]);
        assert_eq!(default.unit("repmgr-nat-watch"), "repmgr-nat-watch.service");
        assert_eq!(two.unit("repmgr-nat-watch"), "repmgr-nat-watch@two.service");
        assert_eq!(Instance::of_file("two.toml"), Some(two));
        assert_eq!(Instance::of_file("ca.crt"), None);
        assert_eq!(Instance::of_file("two.toml~"), None);
    }

    /// `text` as instance two's config, unchanged.
    fn second_verbatim(text: &str) -> Config {
        Config::parse_instance(text, &Instance::Named("two".into())).unwrap()
    }

    /// The example as a second cluster's, every default its own, and `extra` after it.
    fn second(extra: &str) -> Config {
        let text = EXAMPLE
            .replace("[state]\ndir = \"/var/lib/repmgr-nat\"\n", "")
            .replace("10.8.1.1", "10.8.5.1")
            .replace("10.8.2.1", "10.8.6.1")
            .replace("54321", "55431")
            .replace("54322", "55432")
            .replace("main_backup", "other_backup");
        Config::parse_instance(&format!("{text}\n{extra}"), &Instance::Named("two".into())).unwrap()
    }

    #[test]
    fn a_second_instance_with_its_own_defaults_collides_with_nothing() {
        let default = Config::parse(EXAMPLE).unwrap();
        let two = second("");
        assert_eq!(two.nat.dnat_chain, "repmgr_two_dnat");
        assert_eq!(two.state.dir, PathBuf::from("/var/lib/repmgr-nat/instances/two"));
        assert_eq!(two.watch.metrics, None, "a named instance chooses its own metrics port");
        assert_eq!(collisions(&default, &two), Vec::<String>::new());
    }

    /// The example copied verbatim as instance two names the default's state directory:
    /// the record there stays the default's, so the copy is the newcomer, refused alone.
    #[test]
    fn a_copied_config_never_owns_the_state_directory_it_copied() {
        let default = Config::parse(EXAMPLE).unwrap();
        let copy = second_verbatim(EXAMPLE);
        assert_eq!(copy.state.dir, default.state.dir);
        assert!(owns_state_dir(&default, &copy));
        assert!(!owns_state_dir(&copy, &default));
        // the other way round: the default pointed at instance two's own directory
        let two = second("");
        let text = EXAMPLE.replace("/var/lib/repmgr-nat\"", "/var/lib/repmgr-nat/instances/two\"");
        let pointed = Config::parse(&text).unwrap();
        assert!(owns_state_dir(&two, &pointed) && !owns_state_dir(&pointed, &two));
        // a directory of each: each owns its own
        assert!(owns_state_dir(&default, &two) && owns_state_dir(&two, &default));
        // the default in a directory of its choice, copied verbatim: still the default's
        let text = EXAMPLE.replace("/var/lib/repmgr-nat\"", "/srv/nat-state\"");
        let (custom, copy) = (Config::parse(&text).unwrap(), second_verbatim(&text));
        assert!(owns_state_dir(&custom, &copy) && !owns_state_dir(&copy, &custom));
        // two named instances in one directory neither has by default: neither
        let three = Config::parse_instance(&text, &Instance::Named("three".into())).unwrap();
        assert!(!owns_state_dir(&copy, &three) && !owns_state_dir(&three, &copy));
    }

    #[test]
    fn what_two_instances_both_claim_is_named() {
        let default = Config::parse(EXAMPLE).unwrap();
        let cases = [
            ("[nat]\ndnat_chain = \"repmgr_dnat\"", "chain repmgr_dnat"),
            ("[state]\ndir = \"/var/lib/repmgr-nat\"", "state.dir /var/lib/repmgr-nat"),
            ("[watch]\ndir = \"/run/repmgr-nat\"", "watch.dir /run/repmgr-nat"),
            ("[watch]\nmetrics = \"0.0.0.0:9721\"", "watch.metrics port 9721"),
        ];
        for (extra, named) in cases {
            assert_eq!(collisions(&default, &second(extra)), [named], "{extra}");
        }
        let shared = |from: &str, to: &str| {
            let text = EXAMPLE.replace(from, to);
            collisions(&default, &Config::parse_instance(&text, &Instance::Named("two".into())).unwrap())
        };
        let everything = shared("main_backup", "main_backup");
        assert!(everything.contains(&"proxy port 10.8.3.1:54322".to_string()), "{everything:?}");
        assert!(everything.contains(&"node address 10.8.1.1:5432".to_string()), "{everything:?}");
        assert!(everything.contains(&"barman server main_backup".to_string()), "{everything:?}");
    }
}
