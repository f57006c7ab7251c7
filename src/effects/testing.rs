//! Recording fakes of the adapters, shared by every unit test that drives the handler or
//! the watch loop: the cluster, the nat table and barman in memory, each call recorded as a
//! typed `Call`, the calls named in `failing` failed.

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Mutex;

use anyhow::{Result, anyhow};

use crate::core::config::Node;
use crate::core::config::tests::example;
use crate::core::config::tests::node;
use crate::core::ruleset::Route;
use crate::core::ruleset::sim::Tables;
use crate::core::ruleset::{self, Live, Open, Record, Routing};
use crate::core::view::{Answer, Lsn, NodeState, Role, Slot, View};
use crate::effects::barman::Backup;
use crate::effects::db::Cluster;
use crate::effects::firewall::Firewall;
use crate::effects::nat::NatSwitch;
use crate::effects::state::{Lock, NoRunLock, RunLock};
use Call::*;

/// What the fake was asked to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Switch(u32, Open, u32),
    CreateSlot(u32),
    Terminate(u32, i32),
    DropSlot(u32),
    Advance(u32, u64),
    EmitWal(u32),
    BarmanStop,
    BarmanStart,
    SwitchWal,
}

/// The cluster, the nat table and barman in memory; fails the calls in `failing`.
pub struct Fake {
    calls: Mutex<Vec<Call>>,
    record: Mutex<Option<Record>>,
    view: View,
    failing: Mutex<Vec<Call>>,
    /// How often the nat table was read (through sudo, for real: a root process each).
    pub reads: std::sync::atomic::AtomicUsize,
}

impl Fake {
    pub fn new(record: Option<Record>, view: View) -> Fake {
        Fake {
            calls: Mutex::default(),
            record: Mutex::new(record),
            view,
            failing: Mutex::default(),
            reads: Default::default(),
        }
    }

    pub fn failing(self, calls: &[Call]) -> Fake {
        self.failing.lock().unwrap().extend_from_slice(calls);
        self
    }

    /// From now on, nothing fails.
    pub fn heal(&self) {
        self.failing.lock().unwrap().clear();
    }

    fn call(&self, call: Call) -> Result<()> {
        let fails = self.failing.lock().unwrap().contains(&call);
        self.calls.lock().unwrap().push(call.clone());
        if fails { Err(anyhow!("{call:?}: injected failure")) } else { Ok(()) }
    }

    /// The calls in order, but for the stop of receive-wal, which runs beside the
    /// first steps: it is checked to come before the start, and left out.
    pub fn calls(&self) -> Vec<Call> {
        let calls = self.calls.lock().unwrap().clone();
        let stop = calls.iter().position(|c| *c == BarmanStop);
        let start = calls.iter().position(|c| *c == BarmanStart);
        if let Some(start) = start {
            assert!(stop.is_some_and(|stop| stop < start), "receive-wal started before it was stopped: {calls:?}");
        }
        calls.into_iter().filter(|c| *c != BarmanStop).collect()
    }

    /// The calls so far in order, but for the stop of receive-wal (it runs beside the
    /// first steps, in no set order), and forgets them.
    pub fn take_calls(&self) -> Vec<Call> {
        let calls = std::mem::take(&mut *self.calls.lock().unwrap());
        calls.into_iter().filter(|c| *c != BarmanStop).collect()
    }

    pub fn routing(&self) -> Routing {
        self.record.lock().unwrap().map_or(Routing::Nothing, |r| Routing::To(r.route))
    }
}

impl NatSwitch for Fake {
    fn live(&self) -> Result<Live> {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cfg = example();
        Ok(match *self.record.lock().unwrap() {
            Some(record) => Live::installed(&cfg, record.route),
            None => Live::default(),
        })
    }
    fn recorded(&self) -> Result<Option<Record>> {
        Ok(*self.record.lock().unwrap())
    }
    fn switch(&self, record: Record) -> Result<bool> {
        self.call(Switch(record.route.node.id().into(), record.route.open, record.timeline))?;
        let before = self.record.lock().unwrap().replace(record);
        Ok(before.map(|r| r.route) != Some(record.route))
    }
}

impl Cluster for Fake {
    fn view(&self) -> View {
        self.view.clone()
    }
    fn create_slot(&self, node: Node) -> Result<()> {
        self.call(CreateSlot(node.id().into()))
    }
    fn terminate(&self, node: Node, pid: i32) -> Result<()> {
        self.call(Terminate(node.id().into(), pid))
    }
    fn drop_slot(&self, node: Node) -> Result<()> {
        self.call(DropSlot(node.id().into()))
    }
    fn advance_slot(&self, node: Node, lsn: Lsn) -> Result<()> {
        self.call(Advance(node.id().into(), lsn.0))
    }
    fn emit_wal(&self, node: Node) -> Result<()> {
        self.call(EmitWal(node.id().into()))
    }
}

impl Backup for Fake {
    fn stop_receive_wal(&self) -> Result<()> {
        self.call(BarmanStop)
    }
    fn start_receive_wal(&self) -> Result<()> {
        self.call(BarmanStart)
    }
    fn switch_wal(&self, while_waiting: &mut dyn FnMut()) -> Result<()> {
        while_waiting();
        self.call(SwitchWal)
    }
}

/// The kernel's tables in memory; records every restore and cut, fails those whose
/// description starts with one of `failing`.
pub struct FakeFirewall {
    pub tables: RefCell<Tables>,
    calls: RefCell<Vec<String>>,
    pub failing: Vec<&'static str>,
}

impl FakeFirewall {
    pub fn holding(tables: Tables) -> FakeFirewall {
        FakeFirewall { tables: RefCell::new(tables), calls: RefCell::default(), failing: Vec::new() }
    }
    /// Routed by a complete switch to `route`.
    pub fn routed(route: Route) -> FakeFirewall {
        let cfg = example();
        let text = ruleset::transaction(&cfg, &Live::default(), Some(route)).unwrap();
        FakeFirewall::holding(Tables::default().restore(&text).unwrap())
    }
    fn call(&self, name: String) -> Result<()> {
        let fails = self.failing.iter().any(|f| name.starts_with(f));
        self.calls.borrow_mut().push(name.clone());
        if fails { Err(anyhow!("{name}: injected failure")) } else { Ok(()) }
    }
    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }
}

impl Firewall for FakeFirewall {
    fn save(&self) -> Result<String> {
        Ok(self.tables.borrow().save())
    }
    fn restore(&self, text: &str) -> Result<()> {
        let next = self.tables.borrow().restore(text).map_err(|e| anyhow!(e))?;
        let routed = Live::parse(&example(), &next.save()).routing(&example());
        self.call(format!("restore: {routed}"))?;
        *self.tables.borrow_mut() = next;
        Ok(())
    }
    fn forget(&self, _proxy: Ipv4Addr, port: Option<u16>, node: SocketAddrV4) -> Result<bool> {
        self.call(format!("forget {}{}", node.ip(), port.map(|p| format!(":{p}")).unwrap_or_default()))?;
        Ok(true)
    }
    fn enable_forwarding(&self) -> Result<bool> {
        self.call("forwarding".into()).map(|()| true)
    }
}

/// barman's slot, kept but unused.
pub const IDLE: Option<Slot> = Some(Slot { active_pid: None, restart_lsn: Some(Lsn(0x300_0000)) });

pub fn primary(timeline: u32, slot: Option<Slot>) -> Answer {
    Answer::Up(NodeState { role: Role::Primary, timeline, lsn: Lsn(0x300_0060), slot })
}

pub fn standby(slot: Option<Slot>) -> Answer {
    Answer::Up(NodeState { role: Role::Standby, timeline: 1, lsn: Lsn(0x300_0060), slot })
}

pub fn down() -> Answer {
    Answer::Down("connection refused".into())
}

pub fn rec(id: u32, open: Open, timeline: u32) -> Option<Record> {
    Some(Record { route: Route::new(node(id), open), timeline })
}

/// Who holds the run lock, as `FakeRunLock` answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockState {
    Free,
    /// Another run holds it.
    Held,
    /// It cannot be taken at all (setup never made it).
    Broken,
}

/// The run lock, held or not as the test says.
pub struct FakeRunLock(pub std::rc::Rc<std::cell::Cell<LockState>>);

impl RunLock for FakeRunLock {
    fn try_lock(&self) -> Result<Option<Lock>> {
        match self.0.get() {
            LockState::Free => NoRunLock.try_lock(),
            LockState::Held => Ok(None),
            LockState::Broken => Err(anyhow!("cannot open /var/lib/repmgr-nat/run.lock (has `repmgr-nat setup` run?)")),
        }
    }
}
