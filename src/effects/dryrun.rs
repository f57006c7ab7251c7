//! `--dry-run`: the real adapters answer every question (roles, slots, rules) and these
//! print every change instead of making it: the ruleset transaction, the conntrack
//! commands, the SQL with its parameters and the barman commands.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Mutex;

use anyhow::Result;

use crate::core::config::{self, Barman, Config, Node};
use crate::core::ruleset::{self, Live, Record};
use crate::core::view::{Lsn, View};
use crate::effects::barman::{self, Backup};
use crate::effects::db::{self, Cluster};
use crate::effects::firewall::{self, Firewall};
use crate::effects::nat::{self, NatSwitch, ViaSudo};

/// Where the printing adapters print: stdout, or a buffer a test reads.
pub enum Sink {
    Stdout,
    #[cfg_attr(not(test), expect(dead_code, reason = "the golden test of the dry-run output reads it"))]
    Capture(Mutex<String>),
}

impl Sink {
    #[cfg(test)]
    pub fn capture() -> Sink {
        Sink::Capture(Mutex::new(String::new()))
    }

    fn say(&self, text: &str) {
        match self {
            Sink::Stdout => println!("{text}"),
            Sink::Capture(buffer) => {
                let mut buffer = buffer.lock().expect("sink");
                buffer.push_str(text);
                buffer.push('\n');
            }
        }
    }

    #[cfg(test)]
    pub fn captured(&self) -> String {
        match self {
            Sink::Stdout => String::new(),
            Sink::Capture(buffer) => buffer.lock().expect("sink").clone(),
        }
    }
}

pub struct PrintNat<'a> {
    pub cfg: &'a Config,
    pub real: &'a dyn NatSwitch,
    /// Whether the switch would go through sudo (this run is not root's).
    pub via_sudo: bool,
    pub out: &'a Sink,
    /// What the chains would hold after the switches printed so far.
    after: Mutex<Option<Record>>,
}

impl<'a> PrintNat<'a> {
    pub fn new(cfg: &'a Config, real: &'a dyn NatSwitch, via_sudo: bool, out: &'a Sink) -> PrintNat<'a> {
        PrintNat { cfg, real, via_sudo, out, after: Mutex::new(None) }
    }
}

impl NatSwitch for PrintNat<'_> {
    fn live(&self) -> Result<Live> {
        self.real.live()
    }

    fn recorded(&self) -> Result<Option<Record>> {
        self.real.recorded()
    }

    fn follow(&self) -> Result<Option<Box<dyn crate::effects::follow::Feed>>> {
        self.real.follow()
    }

    fn switch(&self, record: Record) -> Result<bool> {
        let cfg = self.cfg;
        let route = record.route;
        let printed = *self.after.lock().expect("after");
        let live = match printed {
            Some(printed) => Live::installed(cfg, printed.route),
            None => self.real.live()?,
        };
        // what the root step would do, refusal included
        let switch = ruleset::switch(cfg, &live, route).map_err(nat::refused)?;
        *self.after.lock().expect("after") = Some(record);
        if self.via_sudo {
            self.out.say(&format!("{}\n# which runs as root:", ViaSudo::switch_cmd(self.cfg, record)));
        }
        match &switch.restore {
            Some(text) => self.out.say(&format!("{} <<EOF\n{text}EOF", firewall::restore_cmd())),
            None => self.out.say(&format!("# the tables hold {route} already")),
        }
        for (node, port) in &switch.cuts {
            self.out.say(&firewall::forget_cmd(cfg.proxy, *port, cfg.postgres_addr(*node)).to_string());
        }
        self.out.say(&format!("# and records {record}"));
        Ok(switch.changed)
    }
}

/// For `setup` and `teardown`: reads the nat table, prints the iptables commands.
pub struct PrintFirewall<'a> {
    pub real: &'a dyn Firewall,
    pub out: &'a Sink,
}

impl Firewall for PrintFirewall<'_> {
    fn save(&self) -> Result<String> {
        self.real.save()
    }
    fn restore(&self, text: &str) -> Result<()> {
        self.out.say(&format!("{} <<EOF\n{text}EOF", firewall::restore_cmd()));
        Ok(())
    }
    fn forget(&self, proxy: Ipv4Addr, port: Option<u16>, node: SocketAddrV4) -> Result<bool> {
        self.out.say(&firewall::forget_cmd(proxy, port, node).to_string());
        Ok(true)
    }
    fn enable_forwarding(&self) -> Result<bool> {
        self.out.say("sysctl -w net.ipv4.ip_forward=1");
        Ok(false)
    }
}

pub struct PrintCluster<'a> {
    pub cfg: &'a Config,
    pub real: &'a dyn Cluster,
    pub out: &'a Sink,
}

impl PrintCluster<'_> {
    fn sql(&self, node: Node, sql: &str, param: &str) -> Result<()> {
        self.out.say(&format!("node {} ({}): {sql};  -- $1 = {param}", node.id(), node.addr()));
        Ok(())
    }
}

impl Cluster for PrintCluster<'_> {
    fn view(&self) -> View {
        self.real.view()
    }
    fn create_slot(&self, node: Node) -> Result<()> {
        self.sql(node, db::CREATE_SLOT_SQL, &format!("'{}'", self.cfg.slot()?))
    }
    fn terminate(&self, node: Node, pid: i32) -> Result<()> {
        self.sql(node, db::TERMINATE_SQL, &pid.to_string())
    }
    fn drop_slot(&self, node: Node) -> Result<()> {
        self.sql(node, db::DROP_SLOT_SQL, &format!("'{}'", self.cfg.slot()?))
    }
    fn advance_slot(&self, node: Node, lsn: Lsn) -> Result<()> {
        self.out.say(&format!(
            "node {} ({}): {};  -- $1 = '{}', $2 = '{lsn}'",
            node.id(),
            node.addr(),
            db::ADVANCE_SLOT_SQL,
            self.cfg.slot()?
        ));
        Ok(())
    }
    fn emit_wal(&self, node: Node) -> Result<()> {
        let every = Barman::NUDGE_EVERY.as_millis();
        self.out.say(&format!(
            "node {} ({}): {};  -- every {every} ms while barman waits",
            node.id(),
            node.addr(),
            db::EMIT_WAL_SQL
        ));
        Ok(())
    }
}

/// barman's commands. The stop runs beside the first steps of a real run; it is printed
/// where the restart begins, so that the output does not depend on thread timing.
pub struct PrintBackup<'a> {
    pub cfg: &'a config::Barman,
    pub out: &'a Sink,
}

impl Backup for PrintBackup<'_> {
    fn stop_receive_wal(&self) -> Result<()> {
        Ok(())
    }
    fn start_receive_wal(&self) -> Result<()> {
        self.out.say(&format!("{}  # begun beside the steps before", barman::stop_cmd(self.cfg)));
        self.out.say(&format!("{} &", barman::start_cmd(self.cfg)));
        Ok(())
    }
    fn switch_wal(&self, while_waiting: &mut dyn FnMut()) -> Result<()> {
        self.out.say(&barman::switch_cmd(self.cfg).to_string());
        while_waiting();
        Ok(())
    }
}
