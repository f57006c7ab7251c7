//! A proxy's death: two proxies sharing the address, the holder's link cut.

use super::Report;

impl Report<'_> {
    pub(super) fn proxy_death_table(&mut self) {
        let runs = &self.r.proxy_deaths;
        if runs.is_empty() {
            return;
        }
        self.line("### A proxy's death (two proxies, keepalived + conntrackd, the holder's link cut)");
        self.line("");
        self.line("keepalived and conntrackd from the package's examples (VRRPv3, `advert_int 0.1`); through the shared address: a new connection every 50 ms with a 5 s connect timeout, and one session opened before (a query every 100 ms).");
        self.line("");
        self.line("| run | dead proxy | address on the other | first answer | new connections failed | held (waited ≥ 1 s) | longest wait | session: same connection and backend | its longest wait |");
        self.line("|---|---|---|---|---|---|---|---|---|");
        let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{:.2} s", v as f64 / 1000.0));
        for (n, d) in runs.iter().enumerate() {
            if let Some(why) = &d.failed {
                self.line(format!("| {} | failed: {why} | | | | | | | |", n + 1));
                continue;
            }
            self.line(format!(
                "| {} | {} | {} | {} | {} of {} | {} | {} | {} | {} |",
                n + 1,
                d.dead,
                ms(d.address_ms),
                ms(d.first_answer_ms),
                d.connects.failed,
                d.connects.attempts,
                d.connects.held,
                ms(Some(d.connects.longest_wait_ms)),
                d.session_survived.map_or("-", |s| if s { "yes" } else { "no" }),
                ms(d.session_gap_ms)
            ));
        }
        self.line("");
        let ok: Vec<_> = runs.iter().filter(|d| d.failed.is_none()).collect();
        let failed: usize = ok.iter().map(|d| d.connects.failed).sum();
        let slowest = ok.iter().filter_map(|d| d.first_answer_ms).max();
        let survived = ok.iter().filter(|d| d.session_survived == Some(true)).count();
        let all = !ok.is_empty() && ok.len() == runs.len();
        self.targets.judge(
            "a proxy's death: no new connection fails",
            format!("{failed} failed in {} runs", ok.len()),
            all && failed == 0,
        );
        self.targets.judge(
            "a proxy's death: the address answers again within 0.5 s",
            format!("slowest first answer {}", ms(slowest)),
            all && slowest.is_some_and(|s| s <= 500) && ok.iter().all(|d| d.first_answer_ms.is_some()),
        );
        self.targets.judge(
            "a proxy's death: every established session survives",
            format!("{survived} of {}", ok.len()),
            all && survived == ok.len(),
        );
    }
}
