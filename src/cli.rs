// The command line, as clap parses it. `main` turns it into validated settings.
//
// The man pages and the shell completions are rendered from the same definitions
// (`generate`).

use std::path::PathBuf;

use clap::{ArgAction, Parser, Subcommand};

use crate::core::ruleset::Open;

/// Keeps the NAT rules of a PostgreSQL backup/proxy host pointed at the primary (not in
/// recovery, highest timeline) of a repmgr or Patroni cluster, and barman's replication
/// slot on it.
#[derive(Parser, Debug)]
#[command(name = "repmgr-nat", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// Config file (not accepted by `route` through sudo)
    #[arg(long, global = true, value_name = "PATH", env = "REPMGR_NAT_CONFIG")]
    pub config: Option<PathBuf>,

    /// Which of this host's clusters: /etc/repmgr-nat/NAME.toml (without it,
    /// /etc/repmgr-nat.toml)
    #[arg(long, global = true, value_name = "NAME", env = "REPMGR_NAT_INSTANCE", conflicts_with = "config")]
    pub instance: Option<String>,

    /// Print what would be done (rulesets, SQL, commands) and change nothing
    #[arg(long, global = true)]
    pub dry_run: bool,

    /// Log more (-v debug, -vv trace)
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Log errors only
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Handle a repmgr event: event_notification_command = 'repmgr-nat event %n %e %s'
    Event {
        /// repmgr's %n: the node the event is about
        #[arg(allow_hyphen_values = true)]
        node_id: String,
        /// repmgr's %e: the event name
        #[arg(allow_hyphen_values = true)]
        event: String,
        /// repmgr's %s: 1 if the action succeeded, 0 if not (default 1)
        #[arg(allow_hyphen_values = true)]
        success: Option<String>,
    },
    /// At boot, as root: turn on forwarding, create the chains and jumps where missing,
    /// point them at the live primary (or the route recorded before when no node answers)
    Setup,
    /// Repair after a failover repmgr-nat did not see: ask every node, route to the
    /// legitimate primary (the highest timeline), take the slot off the standbys
    Reconcile {
        /// Route to this node, which must be a primary, even when another node claims a
        /// timeline as high or the record names a higher one (a rebuilt cluster)
        #[arg(long, value_name = "NODE_ID")]
        primary: Option<String>,
        /// The cluster part of setup (which runs it as repmgr's OS user): refuse nothing,
        /// and when no node answers at all, restore the route recorded before, unverified
        #[arg(long, conflicts_with = "primary")]
        boot: bool,
    },
    /// The service (as repmgr's OS user): ask every node every watch.interval_ms and
    /// converge whenever the primary, the rules, the slot or barman disagree
    Watch,
    /// Show the nodes, the rules and the recorded route; exit 4 when they disagree
    Status {
        /// Print JSON
        #[arg(long)]
        json: bool,
        /// Every instance of this host, one after the other; exit 4 when any disagrees
        #[arg(long)]
        all: bool,
    },
    /// As root: remove the chains and every rule that jumps to them; no switch puts them
    /// back until setup
    Teardown,
    /// Check the whole deployment, one line per check (OK, or FAILED with what to
    /// change); exit 1 when any failed. As repmgr's OS user it asks the nodes; as root
    /// it asks barman and reads the whole nat table: run it both ways
    Check {
        /// Print JSON
        #[arg(long, conflicts_with = "nagios")]
        json: bool,
        /// Print and exit as a Nagios plugin: a first line with the state, what failed and
        /// the counts; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (it could not check)
        #[arg(long)]
        nagios: bool,
    },
    /// As root: read the config as the root step does and ask sudo whether it admits every
    /// command repmgr's OS user runs through it; asks no node, reads no table (the package
    /// runs it before restarting watch on an upgrade)
    CheckConfig,
    /// The instances configured on this host, a name a line: `default` (/etc/repmgr-nat.toml)
    /// first, then each /etc/repmgr-nat/NAME.toml (any user; the package's scripts use it)
    Instances,
    /// For keepalived's vrrp_script (any user that reads the config and watch.dir, no
    /// sudo): exit 0 when this proxy host can serve, 1 when its watch is not running or
    /// its application ports have missed the legitimate primary for 2 s
    CanServe,
    /// As root (sudo): switch the chains to a configured node; the one privileged step
    Route {
        /// A node id from the root-owned config
        #[arg(required_unless_present = "show", allow_hyphen_values = true)]
        node_id: Option<String>,
        /// Which proxy ports forward to the node
        #[arg(long, value_enum, required_unless_present = "show")]
        ports: Option<Open>,
        /// The timeline of the primary the route is for, recorded with it
        #[arg(long, value_name = "TIMELINE", requires = "ports", allow_hyphen_values = true)]
        timeline: Option<String>,
        /// Print what the chains hold now (iptables-save lines), change nothing
        #[arg(long, conflicts_with_all = ["node_id", "ports", "timeline"])]
        show: bool,
        /// With --show: stay, and print them again whenever the tables change and every
        /// few seconds, until the reader goes (what watch reads instead of asking again)
        #[arg(long, conflicts_with_all = ["node_id", "ports", "timeline"])]
        follow: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn route_takes_a_node_and_ports_or_show() {
        let cli = Cli::try_parse_from(["repmgr-nat", "route", "2", "--ports", "barman"]).unwrap();
        assert!(
            matches!(cli.command, Command::Route { node_id: Some(ref n), ports: Some(Open::Barman), timeline: None, show: false, follow: false } if n == "2")
        );
        assert!(Cli::try_parse_from(["repmgr-nat", "route", "--show"]).is_ok());
        assert!(Cli::try_parse_from(["repmgr-nat", "route", "--show", "--follow"]).is_ok());
        assert!(Cli::try_parse_from(["repmgr-nat", "route", "2", "--ports", "all", "--follow"]).is_err());
        assert!(Cli::try_parse_from(["repmgr-nat", "route", "2"]).is_err());
        assert!(Cli::try_parse_from(["repmgr-nat", "route", "2", "--ports", "everything"]).is_err());
        assert!(Cli::try_parse_from(["repmgr-nat", "route", "2", "--ports", "all", "--show"]).is_err());
        assert!(Cli::try_parse_from(["repmgr-nat", "route", "2", "--ports", "all", "10.0.0.1"]).is_err());
        assert!(Cli::try_parse_from(["repmgr-nat", "route", "2", "--ports", "all", "--timeline", "3"]).is_ok());
        assert!(Cli::try_parse_from(["repmgr-nat", "route", "--show", "--timeline", "3"]).is_err());
        let cli = Cli::try_parse_from(["repmgr-nat", "--instance", "two", "route", "2", "--ports", "all"]).unwrap();
        assert_eq!(cli.instance.as_deref(), Some("two"));
        assert!(Cli::try_parse_from(["repmgr-nat", "--instance", "two", "--config", "/x", "status"]).is_err());
    }

    #[test]
    fn event_arguments_reach_validation_as_text() {
        let cli = Cli::try_parse_from(["repmgr-nat", "event", "-1", "standby_promote", "1"]).unwrap();
        assert!(matches!(cli.command, Command::Event { ref node_id, .. } if node_id == "-1"));
        let cli = Cli::try_parse_from(["repmgr-nat", "event", "2", "node_rejoin"]).unwrap();
        assert!(matches!(cli.command, Command::Event { success: None, .. }));
    }
}
