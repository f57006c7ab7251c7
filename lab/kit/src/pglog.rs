//! PostgreSQL's log as the lab writes it (`log_line_prefix = '%m [%p] %q%u@%d '`): when a
//! promotion ended, by PostgreSQL's own clock.

/// "2026-11-21 18:07:23.985 UTC" -> unix time in milliseconds.
pub fn utc_ms(date: &str, time: &str) -> Option<u64> {
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, ms) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, min, s) = (t.next()??, t.next()??, t.next()??);
    // days from the civil date (Howard Hinnant's algorithm)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + min * 60 + s;
    u64::try_from(secs * 1000 + ms.parse::<i64>().ok()?).ok()
}

/// The first "database system is ready to accept connections" (a primary's, not a
/// standby's read-only one) logged at or after `since` (unix ms).
pub fn ready_after(log: &str, since: u64) -> Option<u64> {
    log.lines()
        .filter(|l| l.ends_with("LOG:  database system is ready to accept connections"))
        .filter_map(|l| {
            let mut w = l.split(' ');
            utc_ms(w.next()?, w.next()?)
        })
        .find(|&t| t >= since)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_the_ready_line() {
        assert_eq!(utc_ms("1970-01-02", "00:00:01.5"), Some(86_401_005));
        assert_eq!(utc_ms("2026-11-21", "18:07:23.985"), Some(1_795_284_443_985));
        let log = "\
2026-11-21 18:07:23.985 UTC [4687] LOG:  database system is ready to accept connections
2026-11-21 18:07:26.999 UTC [4870] LOG:  database system is ready to accept read-only connections
2026-11-21 18:09:01.120 UTC [4870] LOG:  selected new timeline ID: 2
2026-11-21 18:09:01.250 UTC [4870] LOG:  database system is ready to accept connections
";
        assert_eq!(ready_after(log, 1_795_284_443_000), Some(1_795_284_443_985));
        assert_eq!(ready_after(log, 1_795_284_444_000), Some(1_795_284_541_250));
        assert_eq!(ready_after(log, 1_795_284_542_000), None);
    }
}
