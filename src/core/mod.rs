//! The pure core: it decides and renders, and never acts. The configuration, repmgr's
//! events, the view of the cluster, the plan, the rulesets, the status report and the
//! metrics.

pub mod check;
pub mod config;
pub mod event;
pub mod metrics;
pub mod plan;
pub mod receive_wal;
pub mod retry;
pub mod ruleset;
pub mod status;
pub mod view;
pub mod watch_json;
