//! What the lab's clients print (`lab-kit probe ...`), one line per attempt, and what is
//! measured from it. The only parser of that format and the only definition of each
//! measure: the tests, the benchmark and the demo all read them from here.
//!
//! ```text
//! <ms> ok <server address> [key=value ...]
//! <ms> err [key=value ...] <short reason>
//! # <comment>
//! ```
//!
//! `<ms>` is when the attempt began (unix time in milliseconds). Keys: `conn` (hold: the
//! connection that answered), `id` and `seq` (write: the row and the attempt), `ms` (how
//! long the attempt took: write, connect), `recovery` and `tl` (connect: whether the node
//! was in recovery, a primary's timeline).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Ok { server: String },
    Err { reason: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub at: u64,
    pub outcome: Outcome,
    pub fields: BTreeMap<String, String>,
}

impl Sample {
    pub fn ok(&self) -> bool {
        matches!(self.outcome, Outcome::Ok { .. })
    }

    pub fn server(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Ok { server } => Some(server),
            Outcome::Err { .. } => None,
        }
    }

    pub fn field<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.fields.get(key)?.parse().ok()
    }

    /// When the attempt ended: its start plus `ms`, or its start when it has none.
    pub fn ended(&self) -> u64 {
        self.at + self.field::<u64>("ms").unwrap_or(0)
    }
}

fn key_value(word: &str) -> Option<(&str, &str)> {
    let (k, v) = word.split_once('=')?;
    (!k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')).then_some((k, v))
}

/// The samples a client has written to `path` so far: its complete lines (none while the
/// file does not exist yet). A complete line that is no sample is a broken client: it
/// panics, naming the file, rather than look like a client that has not answered.
pub fn read(path: &std::path::Path) -> Vec<Sample> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    parse(complete).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The samples of a client's output, sorted by when each attempt began (a client whose
/// attempts overlap prints them as they end). Comments are skipped; any other line that
/// fits no form is an error.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let bad = || format!("client output: cannot read {line:?}");
        let mut words = line.split(' ');
        let at = words.next().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
        let mut fields = BTreeMap::new();
        let outcome = match words.next() {
            Some("ok") => {
                let server = words.next().ok_or_else(bad)?.to_string();
                for word in words {
                    let (k, v) = key_value(word).ok_or_else(bad)?;
                    fields.insert(k.to_string(), v.to_string());
                }
                Outcome::Ok { server }
            }
            Some("err") => {
                let mut rest: Vec<&str> = words.collect();
                while let Some((k, v)) = rest.first().and_then(|w| key_value(w)) {
                    fields.insert(k.to_string(), v.to_string());
                    rest.remove(0);
                }
                Outcome::Err { reason: rest.join(" ") }
            }
            _ => return Err(bad()),
        };
        samples.push(Sample { at, outcome, fields });
    }
    samples.sort_by_key(|s| s.at);
    Ok(samples)
}

/// What the application saw through the port around T0, from a client that makes one
/// attempt at a time (`probe watch`): every time is in ms relative to T0.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Outage {
    pub probes: usize,
    /// The first failed attempt at or after T0 (0: one was failing at T0).
    pub first_err_ms: Option<u64>,
    /// The first answer after that failure (None: none came).
    pub first_ok_ms: Option<u64>,
    /// The first answer after the last failure: the outage's end. None with no failure.
    pub back_ms: Option<u64>,
    /// Some failure and no answer after the last one.
    pub not_recovered: bool,
    /// Time the port failed at or after T0: each failed attempt counts until the next one.
    pub refused_ms: u64,
    /// Separate runs of failures.
    pub interruptions: usize,
    /// The server of the last answer.
    pub answered_at_end: Option<String>,
}

impl Outage {
    pub fn of(samples: &[Sample], t0: u64) -> Outage {
        let rel = |t: u64| t.saturating_sub(t0);
        let mut out = Outage { probes: samples.len(), ..Outage::default() };
        let (mut first_err, mut last_err, mut in_run) = (None, None, false);
        for (i, s) in samples.iter().enumerate() {
            if s.ok() {
                in_run = false;
                continue;
            }
            let next = samples.get(i + 1).map_or(s.at, |n| n.at);
            if next < t0 {
                continue;
            }
            first_err.get_or_insert(i);
            last_err = Some(i);
            out.refused_ms += next - s.at.max(t0);
            if !in_run {
                out.interruptions += 1;
            }
            in_run = true;
        }
        let first_ok_from = |from: usize| samples[from..].iter().find(|s| s.ok()).map(|s| rel(s.at));
        if let (Some(fe), Some(le)) = (first_err, last_err) {
            out.first_err_ms = Some(rel(samples[fe].at));
            out.first_ok_ms = first_ok_from(fe);
            out.back_ms = first_ok_from(le);
            out.not_recovered = out.back_ms.is_none();
        }
        out.answered_at_end = samples.iter().rev().find_map(|s| s.server().map(str::to_string));
        out
    }
}

/// An attempt that took this long was held: its SYN was dropped and sent again (Linux
/// waits 1 s before the first retransmission); one that was not held takes milliseconds.
pub const HELD_MS: u64 = 1000;

/// New connections with a long connect timeout, one begun every interval whether the
/// last one ended or not (`probe connect`), from T0 on: what a client with that timeout
/// saw, and when the port opened on the new primary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Connects {
    pub attempts: usize,
    pub failed: usize,
    /// Attempts that were held (took HELD_MS or more) and then answered.
    pub held: usize,
    /// The longest an attempt waited for its answer.
    pub longest_wait_ms: u64,
    /// When the first attempt that `primary` answered without being held began, relative
    /// to T0: the port was open to it then.
    pub first_on_primary_ms: Option<u64>,
}

impl Connects {
    pub fn of(samples: &[Sample], t0: u64, primary: &str) -> Connects {
        let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= t0).collect();
        let wait = |s: &Sample| s.ended() - s.at;
        Connects {
            attempts: after.len(),
            failed: after.iter().filter(|s| !s.ok()).count(),
            held: after.iter().filter(|s| s.ok() && wait(s) >= HELD_MS).count(),
            longest_wait_ms: after.iter().map(|s| wait(s)).max().unwrap_or(0),
            first_on_primary_ms: after
                .iter()
                .find(|s| s.server() == Some(primary) && wait(s) < HELD_MS)
                .map(|s| s.at - t0),
        }
    }
}

/// The longest time between two answers of a held session (`probe hold`), from its last
/// answer before T0 on: how long it waited across T0. None without an answer before T0.
pub fn longest_gap_across(samples: &[Sample], t0: u64) -> Option<u64> {
    let from = samples.iter().rposition(|s| s.at < t0 && s.ok())?;
    let answers: Vec<u64> = samples[from..].iter().filter(|s| s.ok()).map(|s| s.at).collect();
    answers.windows(2).map(|w| w[1] - w[0]).max()
}

/// When the first write `primary` acknowledged came back (begun at or after T0), relative
/// to T0.
pub fn first_ack_on(samples: &[Sample], t0: u64, primary: &str) -> Option<u64> {
    samples.iter().filter(|s| s.at >= t0 && s.server() == Some(primary)).map(|s| s.ended() - t0).min()
}

/// A human timeline: runs of the same outcome (and server), then the measures.
pub fn timeline(samples: &[Sample], t0: u64) -> String {
    let rel = |t: u64| {
        let d = t as i64 - t0 as i64;
        format!("{}{}.{:03}s", if d < 0 { "-" } else { "+" }, d.unsigned_abs() / 1000, d.unsigned_abs() % 1000)
    };
    let mut out = String::new();
    let mut i = 0;
    while i < samples.len() {
        let key = |s: &Sample| (s.ok(), s.server().map(str::to_string));
        let j = samples[i..].iter().position(|s| key(s) != key(&samples[i])).map_or(samples.len(), |k| i + k);
        let what = samples[i].server().map_or("err".to_string(), |s| format!("ok   {s}"));
        out.push_str(&format!(
            "  {:>10} .. {:>10}  {what:<22} {:>5} probes\n",
            rel(samples[i].at),
            rel(samples[j - 1].at),
            j - i
        ));
        let mut reasons: Vec<(&str, usize)> = Vec::new();
        for s in &samples[i..j] {
            if let Outcome::Err { reason } = &s.outcome {
                match reasons.iter_mut().find(|(r, _)| r == reason) {
                    Some((_, n)) => *n += 1,
                    None => reasons.push((reason, 1)),
                }
            }
        }
        for (reason, n) in reasons {
            out.push_str(&format!("{:>30}{n} x {reason}\n", ""));
        }
        i = j;
    }
    let o = Outage::of(samples, t0);
    let secs = |ms: Option<u64>| ms.map_or("-".to_string(), |ms| format!("{}.{:03} s", ms / 1000, ms % 1000));
    match o.back_ms {
        None if !o.not_recovered => out.push_str("no failure since T0\n"),
        _ => out.push_str(&format!(
            "first failure {} after T0; answers again {} after T0{}; failing {} in all, {} interruption(s)\n",
            secs(o.first_err_ms),
            secs(o.back_ms),
            if o.not_recovered { " (not recovered)" } else { "" },
            secs(Some(o.refused_ms)),
            o.interruptions
        )),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_complete_lines_of_a_file_being_written() {
        let path = std::env::temp_dir().join(format!("lab-kit-samples-{}", std::process::id()));
        std::fs::write(&path, "# lab-kit probe write pid=1\n1000 ok 198.51.100.11 id=1 seq=1\n1020 ok 198.5").unwrap();
        let read = read(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].server(), Some("198.51.100.11"));
        assert!(super::read(std::path::Path::new("/nonexistent/samples")).is_empty());
    }

    fn samples(text: &str) -> Vec<Sample> {
        parse(text).unwrap()
    }

    #[test]
    fn lines_of_every_client_are_read() {
        let s = samples(
            "# lab-kit probe write pid=42\n\
             1000 ok 198.51.100.11 id=7 seq=3 ms=12\n\
             1050 err wait=5001 timeout after 5000 ms\n\
             1100 err db error: FATAL 57P01: terminating connection\n\
             1150 ok 198.51.100.12 conn=2\n",
        );
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].server(), Some("198.51.100.11"));
        assert_eq!(s[0].field::<i64>("id"), Some(7));
        assert_eq!(s[0].ended(), 1012);
        assert_eq!(s[1].outcome, Outcome::Err { reason: "timeout after 5000 ms".into() });
        assert_eq!(s[1].field::<u64>("wait"), Some(5001));
        assert_eq!(s[2].fields.len(), 0, "db error: is no key");
        assert!(parse("1000 maybe x").is_err());
        assert!(parse("1000 ok 1.2.3.4 junk").is_err());
    }

    #[test]
    fn overlapping_attempts_are_sorted_by_their_start() {
        let s = samples("2000 ok a ms=10\n1000 ok a ms=1500\n");
        assert_eq!(s[0].at, 1000);
    }

    // recorded: the article's scripts, automatic failover (port open, closed, open again)
    const FLAP: &str = "\
900 ok 198.51.100.11
950 ok 198.51.100.11
1000 err connection refused
1050 err connection refused
1100 ok 198.51.100.12
1150 err connection refused
1200 err connection refused
1250 ok 198.51.100.12
1300 ok 198.51.100.12
";

    #[test]
    fn outage_measures_from_t0() {
        let o = Outage::of(&samples(FLAP), 1000);
        assert_eq!(o.first_err_ms, Some(0));
        assert_eq!(o.first_ok_ms, Some(100));
        assert_eq!(o.back_ms, Some(250));
        assert_eq!(o.refused_ms, 200);
        assert_eq!(o.interruptions, 2);
        assert!(!o.not_recovered);
        assert_eq!(o.answered_at_end.as_deref(), Some("198.51.100.12"));
        assert_eq!(o.probes, 9);
    }

    #[test]
    fn a_failure_running_at_t0_counts_from_t0() {
        let o = Outage::of(&samples("900 err x\n1100 ok b\n"), 1000);
        assert_eq!((o.first_err_ms, o.refused_ms, o.back_ms), (Some(0), 100, Some(100)));
        let o = Outage::of(&samples("900 err x\n950 ok a\n1100 ok b\n"), 1000);
        assert_eq!((o.first_err_ms, o.back_ms, o.interruptions), (None, None, 0), "ended before T0");
    }

    #[test]
    fn no_answer_after_the_last_failure_is_not_recovered() {
        let o = Outage::of(&samples("1000 ok a\n1050 err x\n1100 err x\n"), 1000);
        assert!(o.not_recovered);
        assert_eq!(o.back_ms, None);
        assert_eq!(o.refused_ms, 50, "the last failure counts until itself");
    }

    #[test]
    fn connects_count_failures_held_attempts_and_when_the_port_opened() {
        let s = samples("950 ok a ms=5\n1000 ok a ms=4\n1025 ok b ms=1010\n1050 err ms=5000 timeout\n1075 ok b ms=6\n");
        let c = Connects::of(&s, 1000, "b");
        assert_eq!(
            c,
            Connects { attempts: 4, failed: 1, held: 1, longest_wait_ms: 5000, first_on_primary_ms: Some(75) }
        );
        assert_eq!(first_ack_on(&s, 1000, "b"), Some(81), "1075 + 6 ends before 1025 + 1010");
    }

    #[test]
    fn a_held_session_waits_from_its_last_answer_before_t0() {
        let s = samples("800 ok a conn=1\n900 ok a conn=1\n1000 ok a conn=1\n1640 ok a conn=1\n1740 ok a conn=1\n");
        assert_eq!(longest_gap_across(&s, 950), Some(640), "900's answer, then 1000, then 1640");
        assert_eq!(longest_gap_across(&s, 1700), Some(100));
        assert_eq!(longest_gap_across(&s, 500), None, "no answer before T0");
    }

    #[test]
    fn the_timeline_shows_runs_and_the_measures() {
        let text = timeline(&samples(FLAP), 1000);
        assert!(text.contains("-0.100s ..    -0.050s  ok   198.51.100.11"), "{text}");
        assert!(text.contains("2 x connection refused"), "{text}");
        assert!(text.contains("answers again 0.250 s after T0; failing 0.200 s in all, 2 interruption(s)"), "{text}");
    }
}
