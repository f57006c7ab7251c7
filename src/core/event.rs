//! repmgr events as `event_notification_command` passes them (`%n %e %s`).

use anyhow::{Result, bail};

use crate::core::config::{NodeId, quoted};

/// What an event means for the NAT rules and the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `%n` is the new primary: the ports and barman's slot follow it.
    Promote,
    /// `%n` is (again) a standby: it must not keep barman's slot.
    Standby,
    /// Nothing to do.
    Other,
}

pub fn classify(event: &str) -> Kind {
    match event {
        "primary_register" | "standby_promote" | "repmgrd_failover_promote" | "standby_switchover" => Kind::Promote,
        "standby_register"
        | "standby_follow"
        | "repmgrd_failover_follow"
        | "repmgrd_standby_reconnect"
        | "node_rejoin" => Kind::Standby,
        _ => Kind::Other,
    }
}

/// What an event says about a node, for the plan to check against the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The node is the new primary.
    Promote(NodeId),
    /// The node is a standby.
    Standby(NodeId),
}

impl Claim {
    pub fn node(self) -> NodeId {
        match self {
            Claim::Promote(node) | Claim::Standby(node) => node,
        }
    }
}

/// What an event asks for, decided before anything is looked at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Triage {
    /// Nothing to do; `warn` when repmgr reported a failure.
    Ignore {
        why: String,
        warn: bool,
    },
    Act(Claim),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub node: NodeId,
    pub name: String,
    pub kind: Kind,
    /// repmgr's `%s`: false when the action the event reports failed.
    pub success: bool,
}

/// Whether `name` can be a repmgr event's name: `a-z 0-9 _`, 1 to 64 of them.
pub fn well_formed_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Event {
    /// Validates the arguments repmgr passed. `success` is optional (`%n %e` as in the
    /// article's repmgr.conf line); absent means the event succeeded.
    pub fn parse(node: &str, name: &str, success: Option<&str>) -> Result<Event> {
        let node = NodeId::parse(node).map_err(|e| anyhow::anyhow!("malformed event: {e}"))?;
        if !well_formed_name(name) {
            bail!("malformed event: event name {} is not a repmgr event name", quoted(name));
        }
        let success = match success {
            None | Some("1") => true,
            Some("0") => false,
            Some(other) => bail!("malformed event: success {} is neither 1 nor 0", quoted(other)),
        };
        Ok(Event { node, name: name.to_string(), kind: classify(name), success })
    }

    pub fn triage(&self) -> Triage {
        match (self.kind, self.success) {
            (Kind::Other, _) => Triage::Ignore { why: "not an event repmgr-nat acts on".into(), warn: false },
            (_, false) => Triage::Ignore { why: "repmgr reports it failed (success 0); ignored".into(), warn: true },
            (Kind::Promote, true) => Triage::Act(Claim::Promote(self.node)),
            (Kind::Standby, true) => Triage::Act(Claim::Standby(self.node)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_every_event_repmgr_sends() {
        for e in ["primary_register", "standby_promote", "repmgrd_failover_promote", "standby_switchover"] {
            assert_eq!(classify(e), Kind::Promote, "{e}");
        }
        for e in [
            "standby_register",
            "standby_follow",
            "repmgrd_failover_follow",
            "repmgrd_standby_reconnect",
            "node_rejoin",
        ] {
            assert_eq!(classify(e), Kind::Standby, "{e}");
        }
        for e in [
            "standby_clone",
            "standby_unregister",
            "primary_unregister",
            "repmgrd_start",
            "repmgrd_shutdown",
            "repmgrd_failover_abort",
            "repmgrd_upstream_disconnect",
            "child_node_disconnect",
            "cluster_created",
            "witness_register",
        ] {
            assert_eq!(classify(e), Kind::Other, "{e}");
        }
    }

    #[test]
    fn failed_and_other_events_are_ignored_before_anything_is_asked() {
        let triage_of = |name: &str, success: &str| Event::parse("2", name, Some(success)).unwrap().triage();
        assert_eq!(triage_of("standby_promote", "1"), Triage::Act(Claim::Promote(NodeId::new(2))));
        assert_eq!(triage_of("node_rejoin", "1"), Triage::Act(Claim::Standby(NodeId::new(2))));
        for (name, success, warn) in
            [("standby_promote", "0", true), ("standby_follow", "0", true), ("repmgrd_start", "1", false)]
        {
            let Triage::Ignore { warn: warned, .. } = triage_of(name, success) else {
                panic!("{name} {success} not ignored")
            };
            assert_eq!(warned, warn, "{name} {success}");
        }
    }

    #[test]
    fn parses_what_repmgr_passes() {
        let e = Event::parse("2", "standby_promote", Some("1")).unwrap();
        assert_eq!(
            e,
            Event { node: NodeId::new(2), name: "standby_promote".into(), kind: Kind::Promote, success: true }
        );
        assert!(!Event::parse("2", "standby_promote", Some("0")).unwrap().success);
        assert!(Event::parse("1", "node_rejoin", None).unwrap().success);
    }

    #[test]
    fn rejects_malformed_events_with_one_line() {
        let cases = [
            ("x", "standby_promote", Some("1"), "malformed event: node id \"x\" is not a positive integer"),
            ("", "standby_promote", Some("1"), "malformed event: node id \"\""),
            ("1", "", Some("1"), "malformed event: event name \"\""),
            ("1", "standby_promote; rm -rf /", Some("1"), "malformed event: event name"),
            ("1", "--config", Some("1"), "malformed event: event name"),
            ("1", "standby_promote", Some("yes"), "malformed event: success \"yes\" is neither 1 nor 0"),
        ];
        for (node, name, success, expected) in cases {
            let err = format!("{:#}", Event::parse(node, name, success).unwrap_err());
            assert!(err.starts_with(expected), "expected {expected:?}, got {err:?}");
        }
    }
}
