//! The repmgr-nat lab's own tools: the clients that play the application, the parsers of
//! what the lab writes (the events log, the clients' output, PostgreSQL's log, barman's
//! WAL archive), the measures taken from them, the harness that drives `lab/lab.sh`, and
//! the benchmark and the demo built on them. The integration tests (`tests/`) use the
//! same harness and the same measures; each format has one parser here and each measure
//! one definition, with tests on recorded samples.

pub mod barman;
pub mod bench;
pub mod chaos;
pub mod clients;
pub mod demo;
pub mod events;
pub mod fake_node;
pub mod lab;
pub mod pglog;
pub mod proof;
pub mod samples;
pub mod series;
pub mod stats;
pub mod wal;
pub mod writes;

pub use lab::Lab;

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
