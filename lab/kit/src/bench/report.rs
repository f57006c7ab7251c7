//! The benchmark's report, in markdown, rendered from the typed results (nothing here
//! measures). Targets are judged here, once.

use std::fmt::Write;

use super::nat::{Mode, NatResult, SCALE_NODES, SCALE_PORTS};
use super::scenario::{BARMAN_BOUND, ScenarioResult};
use super::{Handler, ProofResult, Results, Scenario};
use crate::stats::Spread;

fn secs(ms: Option<u64>) -> String {
    ms.map_or("-".into(), |ms| format!("{:.2} s", ms as f64 / 1000.0))
}

fn msu(us: f64) -> String {
    format!("{:.1} ms", us / 1000.0)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.3}", a / b),
        _ => "-".into(),
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

/// The targets, judged as the tables are written.
#[derive(Default)]
struct Targets(Vec<(String, String, bool)>);

impl Targets {
    fn judge(&mut self, target: impl Into<String>, measured: impl Into<String>, met: bool) -> &'static str {
        self.0.push((target.into(), measured.into(), met));
        verdict(met)
    }
}

struct Report<'a> {
    r: &'a Results,
    out: String,
    targets: Targets,
}

impl Report<'_> {
    fn line(&mut self, text: impl AsRef<str>) {
        self.out.push_str(text.as_ref());
        self.out.push('\n');
    }

    fn find(&self, handler: Handler, scenario: Scenario) -> Option<&ScenarioResult> {
        self.r.scenarios.iter().find(|s| s.handler == Some(handler) && s.scenario == Some(scenario))
    }

    /// The handlers run, in their order.
    fn handlers(&self) -> Vec<Handler> {
        distinct(self.r.scenarios.iter().filter_map(|s| s.handler))
    }

    /// The scenarios run, in their order.
    fn scenarios(&self) -> Vec<Scenario> {
        distinct(self.r.scenarios.iter().filter_map(|s| s.scenario))
    }

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

    fn failover_table(&mut self) {
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

    fn promotion_table(&mut self) {
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
                self.line(format!(
                    "| {} | {} | {} | {} | {} | {} / {}, {} held (of {}) | {} | {judged} |",
                    scenario.name(),
                    h.title(),
                    secs(Some(ready)),
                    after(open),
                    after(s.first_write_ms),
                    s.connects.failed,
                    s.connects_after_promote.failed,
                    s.connects.held,
                    s.connects.attempts,
                    secs(Some(s.connects.longest_wait_ms)),
                ));
            }
        }
        self.line("");
    }

    fn runs_list(&mut self) {
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

    fn nat(&self, mode: Mode) -> Option<&NatResult> {
        self.r.nat.iter().find(|n| n.mode == Some(mode))
    }

    fn median(&self, mode: Mode) -> Option<f64> {
        self.nat(mode)?.alone.map(|s| s.median)
    }

    fn nat_table(&mut self) {
        if self.r.nat.is_empty() {
            return;
        }
        let n = self.r.meta.switches;
        self.line(format!("### NAT switch alone ({n} switches alternating db2/db1, after one warm-up switch)"));
        self.line("");
        self.line("| switch | median | p90 | min-max | median under the connect loop | processes per switch (execve) | connects refused during the switches (tight loop through the app port) | median / scripts as root / like-for-like |");
        self.line("|---|---|---|---|---|---|---|---|");
        let base = self.median(Mode::ScriptsRoot);
        for mode in Mode::ALL {
            let Some(r) = self.nat(mode) else { continue };
            if let Some(why) = &r.failed {
                self.line(format!("| {} | failed: {why} | | | | | | |", mode.title()));
                continue;
            }
            let like =
                if matches!(mode, Mode::ScriptsSudo | Mode::RnatSudo) { self.median(Mode::ScriptsSudo) } else { base };
            let spread = |s: &Option<Spread>| {
                s.map_or(("-".into(), "-".into(), "-".into()), |s| {
                    (msu(s.median), msu(s.p90), format!("{}-{}", msu(s.min), msu(s.max)))
                })
            };
            let (median, p90, range) = spread(&r.alone);
            let window = r.window.as_ref().map_or("-".into(), |w| {
                format!(
                    "{} of {} ({:.0}/s); {} windows, {:.1} ms per switch, longest {:.1} ms; {} timed out",
                    w.refused,
                    w.attempts,
                    w.per_second,
                    w.windows,
                    w.total_window_ms / n as f64,
                    w.longest_window_ms,
                    w.other
                )
            });
            self.line(format!(
                "| {} | {median} | {p90} | {range} | {} | {} ({}) | {window} | {} / {} |",
                mode.title(),
                r.loaded.map_or("-".into(), |s| msu(s.median)),
                r.execs.map_or("?".into(), |e| e.to_string()),
                r.programs.join(", "),
                ratio(r.alone.map(|s| s.median), base),
                ratio(r.alone.map(|s| s.median), like),
            ));
        }
        for mode in [Mode::RnatSudo, Mode::RnatRoot] {
            let results = self.r;
            let Some(r) = results.nat.iter().find(|n| n.mode == Some(mode)) else { continue };
            let title = mode.title().split(" (").next().unwrap_or_default().to_string();
            let median = r.alone.map(|s| s.median);
            if let Some(base) = base {
                self.targets.judge(
                    format!("NAT switch <= half the scripts' (median, scripts as root): {title}"),
                    format!("{} vs {} / 2", median.map_or("-".into(), msu), msu(base)),
                    median.is_some_and(|m| m <= base / 2.0),
                );
            }
            let window = r.window.as_ref();
            self.targets.judge(
                format!("no window without a rule: {title}"),
                format!(
                    "{} refused of {} connects during {n} switches",
                    window.map_or(0, |w| w.refused),
                    window.map_or(0, |w| w.attempts)
                ),
                window.is_some_and(|w| w.refused == 0 && w.attempts > 0),
            );
            if let (Some((rules, rv)), Some((cut, cv))) = (&r.step_rules, &r.step_cut) {
                self.line("");
                self.line(format!("{title}, its own log of each step in the timing pass (ms:how often): rule change (iptables-restore) median {rules} ms ({rv}); cutting connections (conntrack) median {cut} ms ({cv})."));
            }
        }
        if let (Some(like), Some(m)) = (self.median(Mode::ScriptsSudo), self.median(Mode::RnatSudo)) {
            self.targets.judge(
                "NAT switch <= half the scripts' (median, both through sudo as postgres, as their handlers run it)",
                format!("{} vs {} / 2", msu(m), msu(like)),
                m <= like / 2.0,
            );
        }
        self.line("");
    }

    fn proof_table(&mut self) {
        if self.r.proofs.is_empty() {
            return;
        }
        self.line("### barman's proof (each on a freshly built lab, events + watch)");
        self.line("");
        self.line("A writer inserts through the application port every 20 ms; a base backup taken before the scenario is restored with `barman recover --target-tli latest` after it, into a scratch instance, and compared row by row with what the writer was told was committed.");
        self.line("");
        self.line("| scenario | rows attempted | acknowledged | rows in the restore | acknowledged but missing | rows nobody wrote | result |");
        self.line("|---|---|---|---|---|---|---|");
        for p in &self.r.proofs {
            let row = match &p.comparison {
                Some(c) => format!(
                    "{} | {} | {} | {} | {} | **{}**",
                    c.attempted,
                    c.acknowledged,
                    c.rows,
                    c.missing.len(),
                    c.invented.len(),
                    if c.holds_everything() { "every acknowledged commit restored" } else { "LOST COMMITS" }
                ),
                None => format!("| | | | | failed: {}", p.failed.clone().unwrap_or_default()),
            };
            self.targets.judge(
                format!("barman restores every acknowledged commit: {}", p.title),
                proof_brief(p),
                p.comparison.as_ref().is_some_and(|c| c.holds_everything()),
            );
            self.out.push_str(&format!("| {} | {row} |\n", p.title));
        }
        self.line("");
    }

    fn soak_table(&mut self) {
        let Some(s) = self.r.soak.clone() else { return };
        self.line("### watch over time (one lab, two nodes)");
        self.line("");
        if let Some(why) = &s.failed {
            self.line(format!("Failed: {why}"));
        }
        self.line("| phase | length | watch CPU (% of one core) | RSS start / largest / end | passes |");
        self.line("|---|---|---|---|---|");
        for (name, cost) in [("idle (no change)", &s.idle), ("writes (about 1 MB of rows a second)", &s.load)] {
            if let Some(c) = cost {
                self.line(format!(
                    "| {name} | {:.0} min | {:.2} % | {} / {} / {} kB | {} ({:.1}/s) |",
                    c.seconds / 60.0,
                    c.cpu_percent,
                    c.rss_start_kb,
                    c.rss_max_kb,
                    c.rss_end_kb,
                    c.passes,
                    c.passes as f64 / c.seconds
                ));
            }
        }
        let mb = |b: u64| format!("{:.1} MB", b as f64 / 1048576.0);
        self.line("");
        self.line(format!(
            "WAL kept on the standby under writes: the primary wrote {}; barman's slot on the standby kept at most {} beyond the standby's replay position ({} on average, sampled every 10 s); the standby's pg_wal held at most {} ({} at the end).",
            mb(s.wal_written),
            mb(s.standby_slot_max),
            mb(s.standby_slot_mean),
            mb(s.standby_pg_wal_max),
            mb(s.standby_pg_wal_end)
        ));
        self.line("");
    }

    fn scaling_table(&mut self) {
        if self.r.scaling.is_empty() {
            return;
        }
        self.line(format!(
            "### repmgr-nat's switch by cluster size (as root, throwaway namespace, {} switches each; median)",
            self.r.meta.switches
        ));
        self.line("");
        let heads: Vec<String> = SCALE_PORTS.iter().map(|p| p.to_string()).collect();
        self.line(format!("| nodes \\ application ports | {} |", heads.join(" | ")));
        self.line(format!("|---|{}", "---|".repeat(SCALE_PORTS.len())));
        for nodes in SCALE_NODES {
            let mut row = format!("| {nodes} |");
            for ports in SCALE_PORTS {
                let cell = match self.r.scaling.iter().find(|s| s.nodes == nodes && s.ports == ports) {
                    None => "not run".into(),
                    Some(s) => match (&s.failed, s.switch) {
                        (Some(why), _) => format!("failed: {why}"),
                        (None, Some(sw)) => format!(
                            "{} (p90 {}; {} rules, {} processes)",
                            msu(sw.median),
                            msu(sw.p90),
                            s.rules,
                            s.execs
                        ),
                        (None, None) => "-".into(),
                    },
                };
                row.push_str(&format!(" {cell} |"));
            }
            self.line(row);
        }
        self.line("");
    }
}

fn distinct<T: PartialEq>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut seen = Vec::new();
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    seen
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

pub fn proof_brief(p: &ProofResult) -> String {
    match &p.comparison {
        Some(c) => format!(
            "{} attempted, {} acknowledged, {} rows restored, {} missing, {} invented",
            c.attempted,
            c.acknowledged,
            c.rows,
            c.missing.len(),
            c.invented.len()
        ),
        None => format!("failed: {}", p.failed.clone().unwrap_or_default()),
    }
}

pub fn render(results: &Results) -> String {
    let m = &results.meta;
    let mut r = Report { r: results, out: String::new(), targets: Targets::default() };
    let took = (m.ended_ms.saturating_sub(m.started_ms)) / 1000;
    let date = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{}", m.started_ms / 1000), "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    r.line(format!("## Results of {date}"));
    r.line("");
    r.line(format!("Machine: {}.", m.machine));
    r.line(format!("Versions: {}.", m.versions));
    r.line(format!("repmgr-nat: {}.", m.commit));
    r.line(format!("Command: `{}`; it took {} min {} s.", m.command, took / 60, took % 60));
    let phase = if m.phase == "off" {
        "as soon as each lab was up".to_string()
    } else {
        format!("at second {} of a minute (barman's cron runs at second 0)", m.phase)
    };
    r.line(format!("T0 {phase}; {} switches per NAT measurement.", m.switches));
    r.line("");
    r.failover_table();
    r.runs_list();
    r.promotion_table();
    r.nat_table();
    r.proof_table();
    r.soak_table();
    r.scaling_table();
    r.line("### Targets (repmgr-nat)");
    r.line("");
    r.line("| target | measured | result |");
    r.line("|---|---|---|");
    for (target, measured, met) in std::mem::take(&mut r.targets.0) {
        r.line(format!("| {target} | {measured} | **{}** |", verdict(met)));
    }
    r.out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole benchmark run's results (lab/kit at 50b8914, BENCHMARKS.md's "after" run),
    /// rendered again: the report is a function of the results alone.
    #[test]
    fn renders_a_recorded_run_as_recorded() {
        let results: Results = serde_json::from_str(include_str!("testdata/results.json")).unwrap();
        let expected = include_str!("testdata/report.md");
        let got = render(&results);
        if got != expected {
            let at = got.lines().zip(expected.lines()).position(|(a, b)| a != b).unwrap_or(0);
            panic!(
                "line {}: got\n{}\nexpected\n{}",
                at + 1,
                got.lines().nth(at).unwrap_or(""),
                expected.lines().nth(at).unwrap_or("")
            );
        }
    }
}
