//! barman's WAL archive: segment file names, timeline histories, and the one definition of
//! "no gap": every timeline's segments contiguous, and at each timeline switch the old
//! timeline reaching the switch point and the new one starting at or before it.

use std::path::Path;

/// Segments are 16 MB (the lab's and PostgreSQL's default).
pub const SEGMENT: u64 = 16 << 20;

/// A WAL segment: timeline and segment number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Wal {
    pub timeline: u32,
    pub segment: u64,
}

impl Wal {
    /// A segment file name (`000000020000000000000004`, maybe with a suffix).
    pub fn parse(name: &str) -> Option<Wal> {
        let base = name.split('.').next()?;
        if base.len() != 24 || !base.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let timeline = u32::from_str_radix(&base[0..8], 16).ok()?;
        let log = u64::from_str_radix(&base[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&base[16..24], 16).ok()?;
        Some(Wal { timeline, segment: log * 0x100 + seg })
    }
}

/// An LSN written as `X/Y`.
pub fn lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// The switch point of a timeline history file (`<parent tli>\t<lsn>\t<reason>` lines):
/// where the newest timeline branched off.
pub fn switch_point(history: &str) -> Option<u64> {
    history.lines().rev().find(|l| !l.trim().is_empty() && !l.starts_with('#'))?.split_whitespace().nth(1).and_then(lsn)
}

/// What barman's archive (its `wals` directory) holds: the segments, sorted, and each
/// timeline's switch point (from `<tli>.history`).
#[derive(Debug, Default)]
pub struct Archive {
    pub wals: Vec<Wal>,
    pub switches: Vec<(u32, u64)>,
}

impl Archive {
    pub fn read(wals_dir: &Path) -> Result<Archive, String> {
        let list = |dir: &Path| -> Result<Vec<String>, String> {
            let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            Ok(entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        };
        let mut archive = Archive::default();
        for name in list(wals_dir)? {
            let path = wals_dir.join(&name);
            if path.is_dir() {
                archive.wals.extend(list(&path)?.iter().filter_map(|f| Wal::parse(f)));
            } else if let Some(tli) = name.strip_suffix(".history").and_then(|t| u32::from_str_radix(t, 16).ok()) {
                let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let at = switch_point(&text).ok_or(format!("{}: no switch point in {text:?}", path.display()))?;
                archive.switches.push((tli, at));
            }
        }
        archive.wals.sort();
        archive.wals.dedup();
        archive.switches.sort();
        Ok(archive)
    }

    fn segments(&self, timeline: u32) -> Vec<u64> {
        self.wals.iter().filter(|w| w.timeline == timeline).map(|w| w.segment).collect()
    }

    pub fn has_timeline(&self, timeline: u32) -> bool {
        self.wals.iter().any(|w| w.timeline == timeline)
    }

    /// One line describing the archive, or what is wrong with it.
    pub fn continuity(&self) -> Result<String, String> {
        let mut timelines: Vec<u32> = self.wals.iter().map(|w| w.timeline).collect();
        timelines.dedup();
        let mut parts = Vec::new();
        for &tli in &timelines {
            let segs = self.segments(tli);
            parts.push(format!("tl{tli} {}..{} ({})", segs[0], segs[segs.len() - 1], segs.len()));
        }
        let desc = parts.join(", ");
        let Some(&first) = timelines.first() else { return Err("no WAL in barman's archive".into()) };
        for &tli in &timelines {
            let segs = self.segments(tli);
            if let Some(w) = segs.windows(2).find(|w| w[1] != w[0] + 1) {
                return Err(format!("{desc}: timeline {tli} has a gap after segment {}", w[0]));
            }
            if tli == first {
                continue;
            }
            let Some(&(_, at)) = self.switches.iter().find(|(t, _)| *t == tli) else {
                return Err(format!("{desc}: no {tli:08X}.history"));
            };
            let switch = at / SEGMENT;
            let parent = self.segments(tli - 1);
            if parent.last().is_none_or(|last| last + 1 < switch) {
                return Err(format!(
                    "{desc}: timeline {} ends before the switch to {tli} in segment {switch}",
                    tli - 1
                ));
            }
            if segs[0] > switch {
                return Err(format!("{desc}: timeline {tli} starts after its switch in segment {switch}"));
            }
        }
        Ok(desc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(names: &[&str], switches: &[(u32, &str)]) -> Archive {
        Archive {
            wals: names.iter().filter_map(|n| Wal::parse(n)).collect(),
            switches: switches.iter().map(|(t, l)| (*t, lsn(l).unwrap())).collect(),
        }
    }

    #[test]
    fn names_and_lsns_are_read() {
        assert_eq!(Wal::parse("00000002000000010000000A.partial"), Some(Wal { timeline: 2, segment: 0x10A }));
        assert_eq!(Wal::parse("00000002.history"), None);
        assert_eq!(lsn("0/4000060"), Some(0x4000060));
        assert_eq!(switch_point("1\t0/4000060\tno recovery target specified\n"), Some(0x4000060));
    }

    // recorded: barman's archive after an automatic failover in the lab
    #[test]
    fn a_failover_archive_without_a_gap() {
        let a = archive(
            &[
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000003",
                "000000020000000000000004",
            ],
            &[(2, "0/4000060")],
        );
        assert_eq!(a.continuity(), Ok("tl1 1..3 (3), tl2 4..4 (1)".into()));
        assert!(a.has_timeline(2) && !a.has_timeline(3));
    }

    #[test]
    fn gaps_are_named() {
        let gap = archive(&["000000010000000000000001", "000000010000000000000003"], &[]);
        assert!(gap.continuity().unwrap_err().contains("timeline 1 has a gap after segment 1"));
        let early = archive(&["000000010000000000000001", "000000020000000000000004"], &[(2, "0/4000060")]);
        assert!(early.continuity().unwrap_err().contains("timeline 1 ends before the switch to 2 in segment 4"));
        let late = archive(&["000000010000000000000003", "000000020000000000000005"], &[(2, "0/4000060")]);
        assert!(late.continuity().unwrap_err().contains("timeline 2 starts after its switch"));
        let no_history = archive(&["000000010000000000000003", "000000020000000000000004"], &[]);
        assert!(no_history.continuity().unwrap_err().contains("no 00000002.history"));
        assert!(archive(&[], &[]).continuity().is_err());
    }
}
