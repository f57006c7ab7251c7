//! The events log, written by the lab's event crossing (`lab/lib/lab-event.sh`), one line
//! per thing a handler run did:
//!
//! ```text
//! <ms> <id> begin node=N event=E success=S from=NS handler=H [proxy=P]
//! <ms> <id> out <a line the handler printed>
//! <ms> <id> warn <what the crossing noticed>
//! <ms> <id> end exit=RC ms=DURATION
//! ```
//!
//! `<ms>` is the unix time in milliseconds, `<id>` the crossing's pid (with two proxies,
//! `proxy=` names the one that ran it, and the second's id is `<pid>-2`). This is the only
//! parser of that format.

use serde::Serialize;

/// One handler run: what repmgr sent, and how it ended (None: still running).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventRun {
    pub id: String,
    pub begin_ms: u64,
    pub node: String,
    pub event: String,
    pub success: String,
    pub from: String,
    /// The proxy namespace that ran it ("" with one proxy).
    pub proxy: String,
    pub end: Option<End>,
    pub output: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct End {
    pub exit: i32,
    /// How long repmgr waited for the handler.
    pub ms: u64,
}

impl EventRun {
    /// One line: `<begin ms> <id> node=N event=E success=S from=NS exit=RC ms=D` (or
    /// `running`).
    pub fn summary(&self) -> String {
        let end = match self.end {
            Some(End { exit, ms }) => format!("exit={exit} ms={ms}"),
            None => "running".to_string(),
        };
        format!(
            "{} {} node={} event={} success={} from={} {end}",
            self.begin_ms, self.id, self.node, self.event, self.success, self.from
        )
    }

    /// How it ended (None: still running).
    pub fn exit(&self) -> Option<i32> {
        self.end.map(|e| e.exit)
    }

    pub fn is(&self, event: &str, node: Option<&str>, since_ms: u64) -> bool {
        self.begin_ms >= since_ms && self.event == event && node.is_none_or(|n| n == self.node)
    }
}

/// Every run in the log, in the order they began. Lines of a run that began before the
/// log was read from are skipped; a line that fits no form is an error.
pub fn parse(text: &str) -> Result<Vec<EventRun>, String> {
    let mut runs: Vec<EventRun> = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let bad = || format!("events log: cannot read {line:?}");
        let mut words = line.splitn(4, ' ');
        let (Some(ms), Some(id), Some(kind)) = (words.next(), words.next(), words.next()) else {
            return Err(bad());
        };
        let ms: u64 = ms.parse().map_err(|_| bad())?;
        let rest = words.next().unwrap_or("");
        // the newest run of that id that has not ended (a pid may come back in a long log)
        let open = runs.iter_mut().rev().find(|r| r.id == id && r.end.is_none());
        match kind {
            "begin" => {
                let field = |key: &str| {
                    rest.split(' ').find_map(|w| w.strip_prefix(key)?.strip_prefix('=')).unwrap_or("").to_string()
                };
                runs.push(EventRun {
                    id: id.to_string(),
                    begin_ms: ms,
                    node: field("node"),
                    event: field("event"),
                    success: field("success"),
                    from: field("from"),
                    proxy: field("proxy"),
                    end: None,
                    output: Vec::new(),
                });
            }
            "out" | "warn" => {
                if let Some(run) = open {
                    run.output.push(rest.to_string());
                }
            }
            "end" => {
                let value = |key: &str| rest.split(' ').find_map(|w| w.strip_prefix(key)?.strip_prefix('='));
                let exit = value("exit").and_then(|v| v.parse().ok()).ok_or_else(bad)?;
                let took = value("ms").and_then(|v| v.parse().ok()).ok_or_else(bad)?;
                if let Some(run) = open {
                    run.end = Some(End { exit, ms: took });
                }
            }
            _ => return Err(bad()),
        }
    }
    Ok(runs)
}

/// The newest finished run of `event` (for `node`, when given) begun at or after `since_ms`.
pub fn finished<'a>(runs: &'a [EventRun], event: &str, node: Option<&str>, since_ms: u64) -> Option<&'a EventRun> {
    runs.iter().rev().find(|r| r.end.is_some() && r.is(event, node, since_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    // recorded by the lab (a failover with repmgr-nat, shortened)
    const LOG: &str = "\
1795284444437 4758 begin node=1 event=primary_register success=1 from=db1 handler=repmgr-nat
1795284444599 4758 out 2026-11-21T18:07:24.599Z repmgr-nat[4765] INFO: node 1 primary_register: create slot on node 1 (25 ms)
1795284445888 4758 out 2026-11-21T18:07:25.882Z repmgr-nat[4765] INFO: node 1 primary_register: done in 1308 ms
1795284445893 4758 end exit=0 ms=1456
1795284449498 5165 begin node=2 event=repmgrd_shutdown success=1 from=db2 handler=repmgr-nat
1795284449512 5181 begin node=1 event=repmgrd_shutdown success=1 from=db1 handler=repmgr-nat
1795284449547 5165 end exit=0 ms=49
1795284449600 5200 begin node=2 event=standby_promote success=1 from=db2 handler=repmgr-nat
1795284449601 5200 out dropped: the event command failed before reaching the proxy (lab.sh events drop)
1795284449601 5200 end exit=255 ms=1
";

    #[test]
    fn runs_are_read_with_their_output_and_end() {
        let runs = parse(LOG).unwrap();
        assert_eq!(runs.len(), 4);
        assert_eq!(runs[0].event, "primary_register");
        assert_eq!(runs[0].output.len(), 2);
        assert_eq!(runs[0].end, Some(End { exit: 0, ms: 1456 }));
        assert_eq!(runs[2].end, None, "5181 never ended");
        assert_eq!(runs[2].summary(), "1795284449512 5181 node=1 event=repmgrd_shutdown success=1 from=db1 running");
        assert_eq!(
            runs[3].summary(),
            "1795284449600 5200 node=2 event=standby_promote success=1 from=db2 exit=255 ms=1"
        );
    }

    #[test]
    fn finished_finds_the_newest_run_since() {
        let runs = parse(LOG).unwrap();
        assert_eq!(finished(&runs, "repmgrd_shutdown", None, 0).unwrap().id, "5165");
        assert!(finished(&runs, "repmgrd_shutdown", Some("1"), 0).is_none(), "still running");
        assert!(finished(&runs, "primary_register", Some("1"), 1795284444438).is_none(), "began before");
        assert_eq!(finished(&runs, "standby_promote", Some("2"), 0).unwrap().end.unwrap().exit, 255);
    }

    #[test]
    fn a_line_of_no_known_form_is_an_error() {
        assert!(parse("1795284444437 4758 bogus x").is_err());
        assert!(parse("x 4758 begin node=1").is_err());
        assert!(parse("1795284444437 4758 end exit=zero ms=1").is_err());
    }

    #[test]
    fn a_pid_that_comes_back_starts_a_new_run() {
        let log = "1 7 begin node=1 event=a success=1 from=db1 handler=h\n2 7 end exit=0 ms=1\n\
                   3 7 begin node=1 event=b success=1 from=db1 handler=h\n4 7 end exit=3 ms=1\n";
        let runs = parse(log).unwrap();
        assert_eq!(runs[0].end.unwrap().exit, 0);
        assert_eq!(runs[1].end.unwrap().exit, 3);
    }
}
