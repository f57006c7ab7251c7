//! The chaos run's checks that read the clients' histories (pure, tested on recorded
//! samples): a connection through the application port that landed on a wrong node, and
//! how long the application had no primary to write to.

use crate::samples::Sample;

/// A primary's timeline as a `probe connect` answer gives it (None: a standby, or no answer).
fn primary_timeline(s: &Sample) -> Option<u32> {
    (s.ok() && s.field::<String>("recovery").as_deref() == Some("f")).then(|| s.field("tl")).flatten()
}

/// Every answer through the application port from a wrong node: a standby, or a primary
/// whose timeline is below one that a node had already answered with (to a client asking
/// the nodes directly, or through the port) before the connection began. Each with its
/// evidence.
pub fn wrong_nodes(app: &[Sample], nodes: &[&[Sample]]) -> Vec<(u64, String)> {
    // (when it was known, the timeline): answers as they ended
    let mut known: Vec<(u64, u32)> = nodes
        .iter()
        .flat_map(|n| n.iter())
        .chain(app.iter())
        .filter_map(|s| primary_timeline(s).map(|tl| (s.ended(), tl)))
        .collect();
    known.sort();
    let highest_before = |t: u64| known.iter().take_while(|(at, _)| *at < t).map(|(_, tl)| *tl).max();
    let mut wrong = Vec::new();
    for s in app.iter().filter(|s| s.ok()) {
        let server = s.server().unwrap_or("?");
        match s.field::<String>("recovery").as_deref() {
            Some("t") => wrong.push((s.at, format!("a connection begun at {} landed on {server}, a standby", s.at))),
            Some("f") => {
                let tl = s.field::<u32>("tl").unwrap_or(0);
                if let Some(high) = highest_before(s.at).filter(|h| *h > tl) {
                    wrong.push((
                        s.at,
                        format!(
                            "a connection begun at {} landed on {server}, a primary on timeline {tl}, when a primary \
                             on timeline {high} had answered already",
                            s.at
                        ),
                    ));
                }
            }
            _ => wrong.push((s.at, format!("an answer from {server} that says neither its role nor its timeline"))),
        }
    }
    wrong
}

/// The longest time in [from, to) the writer had no acknowledged commit: between two
/// acknowledgements (when each came back), the first one before `from` counting. The
/// writer commits every 20 ms, so a steady cluster shows a few tens of ms.
pub fn without_primary_ms(writes: &[Sample], from: u64, to: u64) -> u64 {
    let mut acks: Vec<u64> = writes.iter().filter(|s| s.ok()).map(Sample::ended).collect();
    acks.sort();
    let start = acks.iter().rposition(|&t| t < from).map_or(from, |i| acks[i]);
    let mut last = start;
    let mut longest = 0;
    for &t in acks.iter().filter(|&&t| t >= from && t < to) {
        longest = longest.max(t - last);
        last = t;
    }
    // still without at the end of the window
    longest.max(to.saturating_sub(last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::parse;

    #[test]
    fn a_standby_or_an_older_timeline_is_a_wrong_node() {
        let nodes = parse(
            "1000 ok 198.51.100.11 ms=5 recovery=f tl=1\n\
             1000 ok 198.51.100.12 ms=5 recovery=t tl=0\n\
             3000 ok 198.51.100.12 ms=5 recovery=f tl=2\n\
             3200 ok 198.51.100.11 ms=5 recovery=f tl=1\n",
        )
        .unwrap();
        let app = parse(
            "1100 ok 198.51.100.11 ms=4 recovery=f tl=1\n\
             2990 ok 198.51.100.11 ms=40 recovery=f tl=1\n\
             3100 ok 198.51.100.11 ms=4 recovery=f tl=1\n\
             3150 err ms=1000 timeout\n\
             3300 ok 198.51.100.12 ms=1100 recovery=f tl=2\n\
             3400 ok 198.51.100.12 ms=3 recovery=t tl=0\n",
        )
        .unwrap();
        let wrong = wrong_nodes(&app, &[&nodes]);
        let at: Vec<u64> = wrong.iter().map(|w| w.0).collect();
        // 2990 began before db2's timeline 2 was seen; 3100 after
        assert_eq!(at, [3100, 3400], "{wrong:?}");
        assert!(wrong[0].1.contains("a primary on timeline 1, when a primary on timeline 2 had answered"), "{wrong:?}");
        assert!(wrong[1].1.contains("a standby"), "{wrong:?}");
    }

    #[test]
    fn without_primary_is_the_longest_wait_for_an_acknowledgement() {
        let writes = parse(
            "# lab-kit probe write pid=1\n\
             1000 ok 198.51.100.11 id=1 seq=1 ms=2\n\
             1020 ok 198.51.100.11 id=2 seq=2 ms=2\n\
             1040 err sent=no connection refused\n\
             1100 err timeout after 1000 ms (commit not acknowledged)\n\
             2500 ok 198.51.100.12 id=3 seq=5 ms=10\n\
             2520 ok 198.51.100.12 id=4 seq=6 ms=2\n",
        )
        .unwrap();
        assert_eq!(without_primary_ms(&writes, 1030, 3000), 2510 - 1022);
        // nothing acknowledged after the window began: until its end
        assert_eq!(without_primary_ms(&writes, 2600, 4000), 4000 - 2522);
        assert_eq!(without_primary_ms(&writes, 1000, 1021), 1021 - 1002);
    }
}
