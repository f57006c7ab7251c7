//! `--dry-run`: the real adapters answer every question (roles, slots, rules) and these
//! print every change instead of making it: the ruleset transaction, the conntrack
//! commands, the SQL with its parameters and the barman commands.

use std::cell::RefCell;
use std::net::Ipv4Addr;

use anyhow::Result;

use crate::effects::barman::{self, Backup};
use crate::core::config::{self, Config, NodeId};
use crate::effects::db::{self, Cluster};
use crate::effects::firewall::{self, Firewall};
use crate::effects::nat::{Nat, ViaSudo};
use crate::core::plan::{Answers, NodeView};
use crate::effects::privilege;
use crate::core::ruleset::{self, Live, Route, Routing};

pub struct PrintNat<'a> {
    pub cfg: &'a Config,
    pub real: &'a dyn Nat,
    /// What the chains would hold after the switches printed so far.
    pub after: RefCell<Option<Route>>,
}

impl<'a> PrintNat<'a> {
    pub fn new(cfg: &'a Config, real: &'a dyn Nat) -> PrintNat<'a> {
        PrintNat { cfg, real, after: RefCell::new(None) }
    }
}

impl Nat for PrintNat<'_> {
    fn live(&self) -> Result<Live> {
        self.real.live()
    }

    fn switch(&self, route: Route) -> Result<bool> {
        let cfg = self.cfg;
        let before = match *self.after.borrow() {
            Some(printed) => Routing::To(printed),
            None => self.real.live()?.routing(cfg),
        };
        *self.after.borrow_mut() = Some(route);
        if before == Routing::To(route) {
            println!("# the chains already hold {route}");
            return Ok(false);
        }
        if !privilege::is_root() {
            println!("{}", ViaSudo::route_cmd(&[&route.node.to_string(), "--ports", &route.open.to_string()]));
            println!("# which runs as root:");
        }
        print!("{} <<EOF\n{}EOF\n", firewall::restore_cmd(), ruleset::restore_text(cfg, route));
        for (node, port) in ruleset::cuts(cfg, &before, route) {
            println!("{}", firewall::forget_cmd(cfg.proxy, port, cfg.node(node)?));
        }
        Ok(true)
    }
}

/// For `setup` and `teardown`: reads the nat table, prints the iptables commands.
pub struct PrintFirewall<'a>(pub &'a dyn Firewall);

impl Firewall for PrintFirewall<'_> {
    fn save(&self) -> Result<String> {
        self.0.save()
    }
    fn restore(&self, text: &str) -> Result<()> {
        print!("{} <<EOF\n{text}EOF\n", firewall::restore_cmd());
        Ok(())
    }
    fn forget(&self, proxy: Ipv4Addr, port: Option<u16>, node: Ipv4Addr) -> Result<bool> {
        println!("{}", firewall::forget_cmd(proxy, port, node));
        Ok(true)
    }
    fn new_chain(&self, chain: &str) -> Result<()> {
        println!("iptables -t nat -N {chain}");
        Ok(())
    }
    fn add_jump(&self, hook: &str, chain: &str) -> Result<()> {
        println!("iptables -t nat -A {hook} -j {chain}");
        Ok(())
    }
    fn delete_jump(&self, hook: &str, chain: &str) -> Result<()> {
        println!("iptables -t nat -D {hook} -j {chain}");
        Ok(())
    }
    fn delete_chain(&self, chain: &str) -> Result<()> {
        println!("iptables -t nat -F {chain}\niptables -t nat -X {chain}");
        Ok(())
    }
    fn enable_forwarding(&self) -> Result<bool> {
        println!("sysctl -w net.ipv4.ip_forward=1");
        Ok(false)
    }
}

pub struct PrintCluster<'a> {
    pub cfg: &'a Config,
    pub real: &'a dyn Cluster,
}

impl PrintCluster<'_> {
    fn sql(&self, node: NodeId, sql: &str, param: &str) -> Result<()> {
        println!("node {node} ({}): {sql};  -- $1 = {param}", self.cfg.node(node)?);
        Ok(())
    }
}

impl Cluster for PrintCluster<'_> {
    fn inspect(&self, node: NodeId) -> Result<NodeView> {
        self.real.inspect(node)
    }
    fn inspect_all(&self) -> Answers {
        self.real.inspect_all()
    }
    fn create_slot(&self, node: NodeId) -> Result<()> {
        self.sql(node, db::CREATE_SLOT_SQL, &format!("'{}'", self.cfg.barman.slot))
    }
    fn terminate(&self, node: NodeId, pid: i32) -> Result<()> {
        self.sql(node, db::TERMINATE_SQL, &pid.to_string())
    }
    fn drop_slot(&self, node: NodeId) -> Result<()> {
        self.sql(node, db::DROP_SLOT_SQL, &format!("'{}'", self.cfg.barman.slot))
    }
    fn emit_wal(&self, node: NodeId) -> Result<()> {
        let every = crate::handler::NUDGE_EVERY.as_millis();
        println!(
            "node {node} ({}): {};  -- every {every} ms while barman waits",
            self.cfg.node(node)?,
            db::EMIT_WAL_SQL
        );
        Ok(())
    }
}

pub struct PrintBackup<'a>(pub &'a config::Barman);

impl Backup for PrintBackup<'_> {
    fn stop_receive_wal(&self) -> Result<()> {
        println!("{}", barman::stop_cmd(self.0));
        Ok(())
    }
    fn start_receive_wal(&self) -> Result<()> {
        println!("{} &", barman::start_cmd(self.0));
        Ok(())
    }
    fn switch_wal(&self, while_waiting: &mut dyn FnMut()) -> Result<()> {
        println!("{}", barman::switch_cmd(self.0));
        while_waiting();
        Ok(())
    }
}
