//! watch over time: its cost idle and under writes, and the WAL kept on the standby.

use super::Report;

impl Report<'_> {
    pub(super) fn soak_table(&mut self) {
        let Some(s) = self.r.soak.clone() else { return };
        self.line("### watch over time (one lab, two nodes)");
        self.line("");
        if let Some(why) = &s.failed {
            self.line(format!("Failed: {why}"));
        }
        self.line(
            "| phase | length | watch CPU (% of one core) | with the processes it runs (route --show --follow, or sudo route --show) | RSS start / largest / end | passes |",
        );
        self.line("|---|---|---|---|---|---|");
        for (name, cost) in [("idle (no change)", &s.idle), ("writes (about 1 MB of rows a second)", &s.load)] {
            if let Some(c) = cost {
                self.line(format!(
                    "| {name} | {:.0} min | {:.2} % | {} | {} / {} / {} kB | {} ({:.1}/s) |",
                    c.seconds / 60.0,
                    c.cpu_percent,
                    c.cpu_with_children_percent.map_or("-".to_string(), |p| format!("{p:.2} %")),
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
}
