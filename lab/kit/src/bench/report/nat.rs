//! The NAT switch's tables: alone, under a connect loop and against the scripts, and by
//! cluster size.

use super::{Report, msu, ratio};
use crate::bench::nat::{Mode, NatResult, SCALE_INSTANCES, SCALE_NODES, SCALE_PORTS, ScaleResult};
use crate::stats::Spread;

impl Report<'_> {
    fn nat(&self, mode: Mode) -> Option<&NatResult> {
        self.r.nat.iter().find(|n| n.mode == Some(mode))
    }

    fn median(&self, mode: Mode) -> Option<f64> {
        self.nat(mode)?.alone.map(|s| s.median)
    }

    pub(super) fn nat_table(&mut self) {
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

    pub(super) fn scaling_table(&mut self) {
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
                let found = self.r.scaling.iter().find(|s| s.nodes == nodes && s.ports == ports && s.instances == 1);
                row.push_str(&format!(" {} |", scale_cell(found)));
            }
            self.line(row);
        }
        self.line("");
        if self.r.scaling.iter().any(|s| s.instances > 1) {
            self.line("The same switch (2 nodes, 1 application port) with other instances configured beside it:");
            self.line("");
            let heads: Vec<String> = SCALE_INSTANCES.iter().map(|n| n.to_string()).collect();
            self.line(format!("| instances configured | {} |", heads.join(" | ")));
            self.line(format!("|---|{}", "---|".repeat(SCALE_INSTANCES.len())));
            let cells: Vec<String> = SCALE_INSTANCES
                .iter()
                .map(|n| {
                    let found = self.r.scaling.iter().find(|s| s.nodes == 2 && s.ports == 1 && s.instances == *n);
                    scale_cell(found)
                })
                .collect();
            self.line(format!("| switch | {} |", cells.join(" | ")));
            self.line("");
        }
    }
}

fn scale_cell(found: Option<&ScaleResult>) -> String {
    match found {
        None => "not run".into(),
        Some(s) => match (&s.failed, s.switch) {
            (Some(why), _) => format!("failed: {why}"),
            (None, Some(sw)) => {
                format!("{} (p90 {}; {} rules, {} processes)", msu(sw.median), msu(sw.p90), s.rules, s.execs)
            }
            (None, None) => "-".into(),
        },
    }
}
