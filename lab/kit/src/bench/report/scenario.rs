//! The failover scenarios' tables: what the application saw, how long repmgr waited,
//! barman afterwards, and from PostgreSQL's promotion to the application; then every
//! handler run, scenario by scenario.

use std::fmt::Write;

use super::{Report, ratio, secs};
use crate::bench::haproxy;
use crate::bench::scenario::{BARMAN_BOUND, Port, ScenarioResult};
use crate::bench::{Handler, Scenario};

impl Report<'_> {
    /// One row of the failover table: a cell per handler from `cell`, the ratio of
    /// repmgr-nat (events) to the scripts from `value`, and a target.
    fn row(
        &mut self,
        scenario: Scenario,
        label: &str,
        measure: &str,
        cell: impl Fn(&ScenarioResult) -> String,
        value: impl Fn(&ScenarioResult) -> Option<f64>,
        target: String,
    ) {
        let mut text = format!("| {label} | {measure} |");
        for h in self.handlers() {
            let c = match self.find(h, scenario) {
                None => "-".to_string(),
                Some(s) if !s.failed.is_empty() && s.outage.probes == 0 => format!("failed: {}", s.failed.join("; ")),
                Some(s) => cell(s),
            };
            text.push_str(&format!(" {c} |"));
        }
        let v = |h| self.find(h, scenario).and_then(&value);
        text.push_str(&format!(" {} | {target} |", ratio(v(Handler::RepmgrNat), v(Handler::Scripts))));
        self.line(text);
    }

    pub(super) fn failover_table(&mut self) {
        let handlers = self.handlers();
        let heads: Vec<&str> = handlers.iter().map(|h| h.title()).collect();
        self.line("### Failover scenarios (each on a freshly built lab; ratio = repmgr-nat (events) / scripts; targets judged for repmgr-nat (events))");
        self.line("");
        self.line(format!(
            "| scenario | measure (from T0: the stop, or the command's start) | {} | ratio | target |",
            heads.join(" | ")
        ));
        self.line(format!("|---|---|{}---|---|", "---|".repeat(handlers.len())));
        for scenario in self.scenarios() {
            let rnat = self.find(Handler::RepmgrNat, scenario).cloned();
            let mut label = scenario.title().to_string();
            if scenario.promotes() {
                self.row(
                    scenario,
                    &label,
                    "promotion: repmgr's `standby_promote` event began",
                    |s| secs(s.promotion_ms),
                    |_| None,
                    String::new(),
                );
                label.clear();
                let target = match &rnat {
                    Some(s) => match (s.outage.back_ms, s.promotion_ms) {
                        (Some(back), Some(p)) => {
                            let v = self.targets.judge(
                                format!("application outage <= promotion + 1 s: {}", scenario.name()),
                                format!("back after {}, promotion {}", secs(Some(back)), secs(Some(p))),
                                back <= p + 1000,
                            );
                            format!("<= promotion + 1 s = {}: **{v}**", secs(Some(p + 1000)))
                        }
                        (None, _) if s.outage.first_err_ms.is_none() && s.outage.probes > 0 => {
                            self.targets.judge(
                                format!("application outage <= promotion + 1 s: {}", scenario.name()),
                                "no refusal",
                                true,
                            );
                            "<= promotion + 1 s: **met**".into()
                        }
                        _ => {
                            self.targets.judge(
                                format!("application outage <= promotion + 1 s: {}", scenario.name()),
                                "no measurement",
                                false,
                            );
                            "<= promotion + 1 s: **missed** (no measurement)".into()
                        }
                    },
                    None => String::new(),
                };
                self.row(
                    scenario,
                    "",
                    "application answers again: first answer after the last refusal",
                    back,
                    back_value,
                    target,
                );
            } else {
                self.row(
                    scenario,
                    &label,
                    "application answers again: first answer after the last refusal",
                    back,
                    back_value,
                    String::new(),
                );
                label.clear();
            }
            self.row(
                scenario,
                &label,
                "first answer after the first refusal",
                |s| secs(s.outage.first_ok_ms),
                |_| None,
                String::new(),
            );
            let target = match (&rnat, scenario) {
                (Some(s), Scenario::Duplicate) => {
                    let v = self.targets.judge(
                        "duplicate promote event: 0 s outage",
                        format!(
                            "refused for {} ({} interruptions)",
                            secs(Some(s.outage.refused_ms)),
                            s.outage.interruptions
                        ),
                        s.outage.refused_ms == 0 && s.outage.probes > 0,
                    );
                    format!("0 s: **{v}**")
                }
                _ => String::new(),
            };
            self.row(
                scenario,
                "",
                "application port refused in total (interruptions)",
                |s| format!("{} ({})", secs(Some(s.outage.refused_ms)), s.outage.interruptions),
                |s| Some(s.outage.refused_ms as f64),
                target,
            );
            let target = match rnat.as_ref().map(|s| s.longest_wait().map(|(ms, e)| (ms, e.to_string()))) {
                Some(Some((ms, event))) => {
                    let v = self.targets.judge(
                        format!("repmgr waits <= ~2 s per event: {}", scenario.name()),
                        format!("longest {} ({event})", secs(Some(ms))),
                        ms <= 2000,
                    );
                    format!("<= 2 s: **{v}**")
                }
                Some(None) => {
                    self.targets.judge(
                        format!("repmgr waits <= ~2 s per event: {}", scenario.name()),
                        "no handler run measured",
                        false,
                    );
                    "<= 2 s: **missed**".into()
                }
                None => String::new(),
            };
            self.row(
                scenario,
                "",
                "repmgr waited for the handler, longest event",
                |s| s.longest_wait().map_or("-".into(), |(ms, e)| format!("{} ({e})", secs(Some(ms)))),
                |s| s.longest_wait().map(|(ms, _)| ms as f64),
                target,
            );
            self.row(
                scenario,
                "",
                &format!(
                    "barman check all OK (within {} s) / WAL archive without a gap (after a forced switch)",
                    BARMAN_BOUND.as_secs()
                ),
                |s| {
                    let ok = s.barman_ok_after_s.map_or("no".into(), |t| format!("yes (after {t:.2} s)"));
                    format!("{ok} / {}", if s.wal.is_some() { "yes" } else { "no" })
                },
                |_| None,
                String::new(),
            );
        }
        self.line("");
    }

    pub(super) fn promotion_table(&mut self) {
        self.line("### From PostgreSQL's promotion to the application");
        self.line("");
        self.line("Times after PostgreSQL's own \"database system is ready to accept connections\" on the new primary. Port open: the first new connection (one begun every 25 ms, 5 s connect timeout) that the new primary answered without being held (held: its SYN dropped while no rule forwarded, answered after a retransmission, 1 s or more), by when it began. First write: the first insert the new primary acknowledged (one every 20 ms), by when the acknowledgement came. Failed and held: new connections with a 5 s connect timeout, since T0; failed, since repmgr-nat's promote path began (with watch: when PostgreSQL was ready; on events alone: repmgr's `standby_promote` event, before which nothing told repmgr-nat).");
        self.line("");
        self.line("| scenario | handler | ready (after T0) | port open (after ready) | first write acknowledged (after ready) | connects failed since T0 / since the promote path began, held (of all) | longest wait for a connection | target: open <= 0.2 s after ready; 0 failed since the promote path began |");
        self.line("|---|---|---|---|---|---|---|---|");
        for scenario in self.scenarios().into_iter().filter(|s| s.promotes()) {
            for h in self.handlers() {
                let Some(s) = self.find(h, scenario).cloned() else { continue };
                let Some(ready) = s.ready_ms else {
                    self.line(format!("| {} | {} | no ready line | | | | | |", scenario.name(), h.title()));
                    continue;
                };
                let after =
                    |t: Option<u64>| t.map_or("-".into(), |t| format!("{:+.3} s", (t as f64 - ready as f64) / 1000.0));
                let open = s.connects.first_on_primary_ms;
                let judged = if h == Handler::Scripts {
                    String::new()
                } else {
                    let a = self.targets.judge(
                        format!(
                            "application port open <= 0.2 s after PostgreSQL is ready: {}, {}",
                            scenario.name(),
                            h.name()
                        ),
                        after(open),
                        open.is_some_and(|o| o <= ready + 200),
                    );
                    let b = self.targets.judge(
                        format!(
                            "no failed connection (5 s timeout) once the promote path began: {}, {}",
                            scenario.name(),
                            h.name()
                        ),
                        format!("{} failed", s.connects_after_promote.failed),
                        s.connects_after_promote.failed == 0 && s.connects_after_promote.attempts > 0,
                    );
                    format!("**{a}** / **{b}**")
                };
                let nat = Port {
                    connects: s.connects.clone(),
                    connects_after_promote: s.connects_after_promote.clone(),
                    first_write_ms: s.first_write_ms,
                };
                self.promotion_row(scenario, h.title(), ready, &nat, &judged);
                if let Some(haproxy) = &s.haproxy {
                    self.promotion_row(scenario, haproxy::TITLE, ready, haproxy, "");
                }
            }
        }
        self.line("");
    }

    /// One row of the promotion table: what the clients saw through one port.
    fn promotion_row(&mut self, scenario: Scenario, title: &str, ready: u64, port: &Port, judged: &str) {
        let after = |t: Option<u64>| t.map_or("-".into(), |t| format!("{:+.3} s", (t as f64 - ready as f64) / 1000.0));
        self.line(format!(
            "| {} | {title} | {} | {} | {} | {} / {}, {} held (of {}) | {} | {judged} |",
            scenario.name(),
            secs(Some(ready)),
            after(port.connects.first_on_primary_ms),
            after(port.first_write_ms),
            port.connects.failed,
            port.connects_after_promote.failed,
            port.connects.held,
            port.connects.attempts,
            secs(Some(port.connects.longest_wait_ms)),
        ));
    }

    pub(super) fn runs_list(&mut self) {
        self.line("Handler runs since T0 (when each began, how long repmgr waited for it):");
        self.line("");
        for s in self.r.scenarios.clone() {
            let (Some(h), Some(sc)) = (s.handler, s.scenario) else { continue };
            let mut text = format!("- {}, {} (T0 at second {}):", sc.name(), h.name(), s.t0_second);
            if s.runs.is_empty() {
                text.push_str(" no handler run;");
            }
            for r in &s.runs {
                let waited = r.waited_ms.map_or("(still running)".into(), |ms| secs(Some(ms)));
                let exit = r.exit.map_or("-".into(), |e| e.to_string());
                let at = format!("{:.2} s", r.at_ms as f64 / 1000.0);
                let _ = write!(text, " `{}` (node {}) at {at}, repmgr waited {waited}, exit {exit};", r.event, r.node);
            }
            if let Some((ms, exit)) = s.command {
                let _ = write!(text, " the command took {} (exit {exit});", secs(Some(ms)));
            }
            let _ = write!(text, " WAL: {}", s.wal.clone().or(s.wal_gap.clone()).unwrap_or_default());
            if !s.failed.is_empty() {
                let _ = write!(text, "; **failed: {}**", s.failed.join("; "));
            }
            for note in &s.notes {
                let _ = write!(text, "; {note}");
            }
            self.line(text);
        }
        self.line("");
    }
}

fn back(s: &ScenarioResult) -> String {
    match (s.outage.first_err_ms, s.outage.back_ms) {
        (None, _) => "no refusal".into(),
        (Some(_), None) => "not recovered".into(),
        (Some(_), Some(b)) => secs(Some(b)),
    }
}

fn back_value(s: &ScenarioResult) -> Option<f64> {
    if s.outage.first_err_ms.is_none() { Some(0.0) } else { s.outage.back_ms.map(|b| b as f64) }
}
