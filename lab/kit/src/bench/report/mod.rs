//! The benchmark's report, in markdown, rendered from the typed results (nothing here
//! measures). Targets are judged here, once, as the tables are written: the failover
//! scenarios' in `scenario`, the NAT switch's in `nat`, barman's proof in `proof`, watch
//! over time in `soak`; this file has what they share and puts the report together.

use super::scenario::ScenarioResult;
use super::{Handler, Results, Scenario};

mod nat;
mod proof;
mod proxy;
mod scenario;
mod soak;
pub use proof::proof_brief;

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
    if !results.scenarios.is_empty() {
        r.failover_table();
        r.runs_list();
        r.promotion_table();
    }
    r.nat_table();
    r.proof_table();
    r.soak_table();
    r.scaling_table();
    r.proxy_death_table();
    if let Some(chaos) = &results.chaos {
        r.line(chaos.report.trim_end());
        r.line("");
    }
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
