//! barman's proof: every acknowledged commit in a restore, scenario by scenario.

use super::Report;
use crate::bench::ProofResult;

impl Report<'_> {
    pub(super) fn proof_table(&mut self) {
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
