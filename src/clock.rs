//! The clocks: the wall clock in the unit every file and metric of repmgr-nat keeps time
//! in, and the `Clock` seam through which `watch`'s policy reads both clocks, so that its
//! tests set the time instead of waiting for it.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    ms_since_epoch(SystemTime::now())
}

/// `at`, in milliseconds since the Unix epoch (0 before it).
pub fn ms_since_epoch(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub trait Clock {
    /// The monotonic clock: deadlines, backoffs, durations.
    fn now(&self) -> Instant;
    /// The wall clock, in milliseconds since the Unix epoch: what files and metrics show.
    fn now_ms(&self) -> u64;
}

/// The system's clocks.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

/// A clock that moves only when told to (from any thread: a fake adapter may move it).
#[cfg(test)]
pub struct FakeClock {
    start: Instant,
    elapsed_ns: std::sync::atomic::AtomicU64,
}

#[cfg(test)]
impl FakeClock {
    pub fn new() -> FakeClock {
        FakeClock { start: Instant::now(), elapsed_ns: Default::default() }
    }

    pub fn advance(&self, by: std::time::Duration) {
        self.elapsed_ns.fetch_add(by.as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn elapsed(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.elapsed_ns.load(std::sync::atomic::Ordering::Relaxed))
    }
}

#[cfg(test)]
impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.start + self.elapsed()
    }
    /// 2026-11-21 05:23:43 UTC, and what has elapsed since.
    fn now_ms(&self) -> u64 {
        1_795_238_623_000 + self.elapsed().as_millis() as u64
    }
}
