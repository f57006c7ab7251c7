//! Backing off: a failed action is not tried again at once, and each failure in a row
//! doubles the wait, up to a minute.

use std::time::{Duration, Instant};

/// The longest pause between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// `base` doubled with every failure, at most `MAX_BACKOFF`.
pub fn backoff(base: Duration, failures: u32) -> Duration {
    base.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(MAX_BACKOFF)
}

/// Failures in a row, and when the next attempt may be made.
#[derive(Debug, Default)]
pub struct Retry {
    failures: u32,
    not_before: Option<Instant>,
}

impl Retry {
    /// Whether an attempt may be made at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|at| now >= at)
    }

    pub fn succeeded(&mut self) {
        *self = Retry::default();
    }

    /// Another failure at `now`: the wait before the next attempt, which is then ready.
    pub fn failed(&mut self, base: Duration, now: Instant) -> Duration {
        self.failures += 1;
        let wait = backoff(base, self.failures);
        self.not_before = Some(now + wait);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let base = Duration::from_millis(250);
        assert_eq!(backoff(base, 1), base);
        assert_eq!(backoff(base, 2), base * 2);
        assert_eq!(backoff(base, 5), base * 16);
        assert_eq!(backoff(base, 40), MAX_BACKOFF);
    }

    #[test]
    fn a_failure_waits_its_backoff_and_a_success_forgets_the_failures() {
        let (base, t0) = (Duration::from_millis(250), Instant::now());
        let mut retry = Retry::default();
        assert!(retry.ready(t0));
        assert_eq!(retry.failed(base, t0), base);
        assert!(!retry.ready(t0 + base - Duration::from_millis(1)));
        assert!(retry.ready(t0 + base));
        assert_eq!(retry.failed(base, t0 + base), base * 2);
        assert!(!retry.ready(t0 + base * 2));
        retry.succeeded();
        assert!(retry.ready(t0));
        assert_eq!(retry.failed(base, t0), base, "failures in a row only");
    }
}
