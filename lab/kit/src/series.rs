//! Scrapes of watch's metrics turned into promtool's `input_series` on a 1 s grid, so the
//! alerting rules the package ships can be tested on what a real watch exported.

use std::collections::BTreeMap;

/// The labels Prometheus adds to every scraped series (the rules expect the job's name).
pub const JOB: &str = "repmgr-nat";
pub const INSTANCE: &str = "proxy:9721";

/// One scrape: when it ended (unix ms) and the body, or None when it failed (`up` 0).
pub type Scrape = (u64, Option<String>);

/// The series of one exposition text (`name{labels} value`), comments left out, each with
/// the job's and the instance's labels added.
pub fn parse(text: &str) -> Vec<(String, String)> {
    exposed(text).into_iter().map(|(series, value)| (labelled(&series), value)).collect()
}

/// The series of one exposition text as written there, and their values.
pub fn exposed(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let (series, rest) = match line.rfind('}') {
                Some(end) => (&line[..=end], &line[end + 1..]),
                None => line.split_once(' ')?,
            };
            let value = rest.split_whitespace().next()?;
            Some((series.to_string(), value.to_string()))
        })
        .collect()
}

/// A series as one instance's watch exports it, its `cluster` label (always the first)
/// left out: `name{cluster="default",node="1"}` is `name{node="1"}`.
pub fn without_cluster(series: &str) -> String {
    let Some((name, labels)) = series.strip_suffix('}').and_then(|s| s.split_once('{')) else {
        return series.to_string();
    };
    let rest = match labels.strip_prefix("cluster=\"").and_then(|l| l.split_once('"')) {
        Some((_, rest)) => rest.trim_start_matches(','),
        None => labels,
    };
    if rest.is_empty() { name.to_string() } else { format!("{name}{{{rest}}}") }
}

fn labelled(series: &str) -> String {
    let ours = format!("job=\"{JOB}\",instance=\"{INSTANCE}\"");
    match series.strip_suffix('}').and_then(|s| s.split_once('{')) {
        Some((name, "")) => format!("{name}{{{ours}}}"),
        Some((name, labels)) => format!("{name}{{{ours},{labels}}}"),
        None => format!("{series}{{{ours}}}"),
    }
}

/// Every series of `scrapes` with one value a second from `start_ms` for `seconds` seconds:
/// at each second the last scrape at or before it (`_` before the first, and for a series
/// that scrape lacks), and `up` 1 or 0.
pub fn grid(scrapes: &[Scrape], start_ms: u64, seconds: u64) -> BTreeMap<String, Vec<String>> {
    let mut scrapes: Vec<&Scrape> = scrapes.iter().collect();
    scrapes.sort_by_key(|(at, _)| *at);
    let parsed: Vec<(u64, Option<BTreeMap<String, String>>)> =
        scrapes.iter().map(|(at, body)| (*at, body.as_deref().map(|b| parse(b).into_iter().collect()))).collect();
    let mut names: Vec<String> =
        parsed.iter().filter_map(|(_, s)| s.as_ref()).flat_map(|s| s.keys().cloned()).collect();
    names.sort();
    names.dedup();
    let up = labelled("up");
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for k in 0..seconds {
        let at = start_ms + k * 1000;
        let last = parsed.iter().rev().find(|(t, _)| *t <= at);
        let value = |name: &str| -> String {
            match last {
                Some((_, Some(series))) => series.get(name).cloned().unwrap_or_else(|| "_".into()),
                _ => "_".into(),
            }
        };
        out.entry(up.clone()).or_default().push(match last {
            None => "_".into(),
            Some((_, Some(_))) => "1".into(),
            Some((_, None)) => "0".into(),
        });
        for name in &names {
            out.entry(name.clone()).or_default().push(value(name));
        }
    }
    out
}

/// promtool's `input_series` lines (indented for a test of `interval: 1s`).
pub fn input_series(grid: &BTreeMap<String, Vec<String>>) -> String {
    grid.iter()
        .map(|(series, values)| format!("      - series: '{series}'\n        values: '{}'\n", values.join(" ")))
        .collect()
}

/// The series named `name` (any labels) held at their first value all through: what the
/// scrapes would have shown had it never changed.
pub fn freeze(grid: &mut BTreeMap<String, Vec<String>>, name: &str) {
    for (series, values) in grid.iter_mut() {
        if !series.starts_with(&format!("{name}{{")) {
            continue;
        }
        if let Some(first) = values.iter().find(|v| *v != "_").cloned() {
            values.iter_mut().for_each(|v| *v = first.clone());
        }
    }
}

/// The alerts a rules file defines (`- alert: Name` lines).
pub fn alert_names(rules: &str) -> Vec<String> {
    rules.lines().filter_map(|l| l.trim().strip_prefix("- alert:")).map(|n| n.trim().to_string()).collect()
}

/// A `promtool test rules` file: `rules` evaluated every second over `grid`, expecting
/// none of `alerts` to fire at `eval_s` seconds.
pub fn none_fire(rules: &str, grid: &BTreeMap<String, Vec<String>>, eval_s: u64, alerts: &[String]) -> String {
    let expected: String =
        alerts.iter().map(|a| format!("      - {{eval_time: {eval_s}s, alertname: {a}}}\n")).collect();
    format!(
        "rule_files: ['{rules}']\nevaluation_interval: 1s\ntests:\n  - interval: 1s\n    input_series:\n{}    \
         alert_rule_test:\n{expected}",
        input_series(grid)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "# HELP repmgr_nat_primary_node_id the legitimate primary\n\
        # TYPE repmgr_nat_primary_node_id gauge\n\
        repmgr_nat_primary_node_id 1\n\
        repmgr_nat_primary_state{state=\"legit\"} 1\n\
        repmgr_nat_switch_latency_seconds_bucket{le=\"+Inf\"} 0\n";

    #[test]
    fn the_cluster_label_is_left_out_for_lookups() {
        assert_eq!(without_cluster("repmgr_nat_passes_total{cluster=\"default\"}"), "repmgr_nat_passes_total");
        assert_eq!(without_cluster("repmgr_nat_node_up{cluster=\"two\",node=\"1\"}"), "repmgr_nat_node_up{node=\"1\"}");
        assert_eq!(without_cluster("repmgr_nat_node_up{node=\"1\"}"), "repmgr_nat_node_up{node=\"1\"}");
        assert_eq!(without_cluster("up"), "up");
    }

    #[test]
    fn an_exposition_gets_the_jobs_labels() {
        assert_eq!(
            parse(SCRAPE),
            [
                ("repmgr_nat_primary_node_id{job=\"repmgr-nat\",instance=\"proxy:9721\"}".to_string(), "1".to_string()),
                (
                    "repmgr_nat_primary_state{job=\"repmgr-nat\",instance=\"proxy:9721\",state=\"legit\"}".to_string(),
                    "1".to_string()
                ),
                (
                    "repmgr_nat_switch_latency_seconds_bucket{job=\"repmgr-nat\",instance=\"proxy:9721\",le=\"+Inf\"}"
                        .to_string(),
                    "0".to_string()
                ),
            ]
        );
    }

    #[test]
    fn a_frozen_series_keeps_its_first_value_and_the_test_file_expects_no_alert() {
        let later = SCRAPE.replace("repmgr_nat_primary_node_id 1", "repmgr_nat_primary_node_id 2");
        let mut grid = grid(&[(1_000, Some(SCRAPE.to_string())), (2_000, Some(later))], 500, 3);
        freeze(&mut grid, "repmgr_nat_primary_node_id");
        // before the first scrape too: the route as it was
        assert_eq!(grid[&labelled("repmgr_nat_primary_node_id")].join(" "), "1 1 1");
        let rules = "groups:\n  - name: x\n    rules:\n      - alert: A\n        expr: up == 0\n      - alert: B\n";
        let alerts = alert_names(rules);
        assert_eq!(alerts, ["A", "B"]);
        let file = none_fire("/r.yml", &grid, 1, &alerts);
        assert!(
            file.starts_with("rule_files: ['/r.yml']\nevaluation_interval: 1s\ntests:\n  - interval: 1s\n"),
            "{file}"
        );
        assert!(
            file.ends_with(
                "    alert_rule_test:\n      - {eval_time: 1s, alertname: A}\n      - {eval_time: 1s, alertname: B}\n"
            ),
            "{file}"
        );
    }

    #[test]
    fn the_grid_holds_the_last_scrape_of_each_second() {
        let later = SCRAPE.replace("repmgr_nat_primary_node_id 1", "repmgr_nat_primary_node_id 2");
        let scrapes = vec![(1_500, Some(SCRAPE.to_string())), (2_900, None), (3_100, Some(later))];
        let grid = grid(&scrapes, 1_000, 5);
        let of = |name: &str| grid[&labelled(name)].join(" ");
        assert_eq!(of("up"), "_ 1 0 1 1");
        assert_eq!(of("repmgr_nat_primary_node_id"), "_ 1 _ 2 2");
        let yaml = input_series(&grid);
        assert!(
            yaml.contains(
                "      - series: 'up{job=\"repmgr-nat\",instance=\"proxy:9721\"}'\n        values: '_ 1 0 1 1'\n"
            ),
            "{yaml}"
        );
    }
}
