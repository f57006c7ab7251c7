//! Exit codes, and the error types that select them. Anything else that goes wrong
//! exits 1.
//!
//! | code | meaning                                                                  |
//! |------|--------------------------------------------------------------------------|
//! | 0    | done, or nothing to do (an ignored event, rules already right)          |
//! | 1    | a step failed (node unreachable, iptables, barman, lock timeout, ...)   |
//! | 2    | bad input: command line, config, unknown node id, malformed event       |
//! | 3    | refused: the cluster contradicts the request (nothing changed)          |
//! | 4    | `status`: the nodes, the rules and the record do not agree              |

use std::fmt;

pub const FAILED: u8 = 1;
pub const BAD_INPUT: u8 = 2;
pub const REFUSED: u8 = 3;
pub const INCONSISTENT: u8 = 4;

macro_rules! marker {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug)]
        pub struct $name(pub String);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::error::Error for $name {}
    };
}

marker!(BadInput, "Bad input: nothing was looked at or changed.");
marker!(Refused, "The cluster contradicts the request: nothing was changed.");
marker!(Inconsistent, "`status` found disagreement.");

/// The exit code for an error, from the first marker in its chain.
pub fn code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<BadInput>() {
            return BAD_INPUT;
        }
        if cause.is::<Refused>() {
            return REFUSED;
        }
        if cause.is::<Inconsistent>() {
            return INCONSISTENT;
        }
    }
    FAILED
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_marker_anywhere_in_the_chain_picks_the_code() {
        let refused: anyhow::Error = Refused("node 2 is in recovery".into()).into();
        assert_eq!(code(&refused.context("event")), REFUSED);
        let bad = Err::<(), _>(BadInput("unknown node id 7".into())).context("route").unwrap_err();
        assert_eq!(code(&bad), BAD_INPUT);
        assert_eq!(code(&anyhow::anyhow!("iptables-restore failed")), FAILED);
        assert_eq!(code(&Inconsistent("ports point at node 1".into()).into()), INCONSISTENT);
    }
}
