//! The adapters: everything that touches the world (the nat table, the nodes, barman, the
//! state directory, child processes, the metrics listener), each behind a small trait
//! where the core's plans reach it, so that unit tests run against recording fakes.

pub mod barman;
pub mod db;
pub mod dryrun;
pub mod exec;
pub mod exporter;
pub mod firewall;
pub mod follow;
pub mod nat;
pub mod pgpass;
pub mod privilege;
pub mod state;
#[cfg(test)]
pub mod testing;
pub mod watch_file;
