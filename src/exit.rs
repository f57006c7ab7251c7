//! Exit codes, and the error types that select them. Anything else that goes wrong
//! exits 1.
//!
//! | code | meaning                                                                  |
//! |------|--------------------------------------------------------------------------|
//! | 0    | done, or nothing to do (an ignored event, rules already right)          |
//! | 1    | a step failed (node unreachable, iptables, barman, lock timeout, ...);  |
//! |      | `check`: a check failed                                                  |
//! | 2    | bad input: command line, config, unknown node id, malformed event       |
//! | 3    | refused: the cluster contradicts the request (nothing changed)          |
//! | 4    | `status`: the nodes, the rules and the record do not agree              |
//!
//! `check --nagios` exits as a Nagios plugin does instead: 0 OK, 1 WARNING, 2 CRITICAL,
//! 3 UNKNOWN (it could not check).

use std::fmt;

pub const FAILED: u8 = 1;
pub const BAD_INPUT: u8 = 2;
pub const REFUSED: u8 = 3;
pub const INCONSISTENT: u8 = 4;

/// An error that selects an exit code other than 1.
#[derive(Debug)]
pub enum Exit {
    /// Bad input: nothing was looked at or changed.
    BadInput(String),
    /// The cluster contradicts the request: nothing was changed.
    Refused(String),
    /// `status` found disagreement.
    Inconsistent(String),
    /// A code another program's convention sets (`check --nagios`: a plugin's state).
    Code(u8, String),
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::BadInput(why) | Exit::Refused(why) | Exit::Inconsistent(why) | Exit::Code(_, why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Exit {}

/// The exit code for an error, from the first `Exit` in its chain.
pub fn code(err: &anyhow::Error) -> u8 {
    match err.chain().find_map(|cause| cause.downcast_ref::<Exit>()) {
        Some(Exit::BadInput(_)) => BAD_INPUT,
        Some(Exit::Refused(_)) => REFUSED,
        Some(Exit::Inconsistent(_)) => INCONSISTENT,
        Some(Exit::Code(code, _)) => *code,
        None => FAILED,
    }
}

/// Whether the error carries an exit code of another program's convention (`Exit::Code`).
pub fn is_code(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| matches!(cause.downcast_ref::<Exit>(), Some(Exit::Code(..))))
}

/// The failure of a child repmgr-nat (the root step through sudo, setup's cluster part),
/// keeping the exit code it chose: a refusal stays a refusal.
pub fn of_child(code: Option<i32>, err: anyhow::Error) -> anyhow::Error {
    let why = format!("{err:#}");
    match code.and_then(|c| u8::try_from(c).ok()) {
        Some(BAD_INPUT) => Exit::BadInput(why).into(),
        Some(REFUSED) => Exit::Refused(why).into(),
        _ => err,
    }
}

/// Any error as bad input (exit 2), on one line.
pub fn bad_input(e: anyhow::Error) -> anyhow::Error {
    Exit::BadInput(format!("{e:#}")).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_marker_anywhere_in_the_chain_picks_the_code() {
        let refused: anyhow::Error = Exit::Refused("node 2 is in recovery".into()).into();
        assert_eq!(code(&refused.context("event")), REFUSED);
        let bad = Err::<(), _>(Exit::BadInput("unknown node id 7".into())).context("route").unwrap_err();
        assert_eq!(code(&bad), BAD_INPUT);
        assert_eq!(code(&anyhow::anyhow!("iptables-restore failed")), FAILED);
        assert_eq!(code(&Exit::Inconsistent("ports point at node 1".into()).into()), INCONSISTENT);
    }

    #[test]
    fn a_child_keeps_its_exit_code() {
        assert_eq!(code(&of_child(Some(3), anyhow::anyhow!("sudo route 2 failed"))), REFUSED);
        assert_eq!(code(&of_child(Some(2), anyhow::anyhow!("sudo route 7 failed"))), BAD_INPUT);
        assert_eq!(code(&of_child(Some(1), anyhow::anyhow!("sudo: a password is required"))), FAILED);
        assert_eq!(code(&of_child(None, anyhow::anyhow!("killed"))), FAILED);
    }
}
