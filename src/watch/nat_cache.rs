//! The nat table as watch last knew it. Reading it goes through sudo, so watch follows
//! it instead (`route --show --follow`, see `effects::follow`): root writes a reading
//! whenever the tables change, and a pass takes the latest one taken after what it knew.
//! While the feed is missing, ended or silent, a pass reuses a reading younger than
//! `Watch::NAT_EVERY` and reads through sudo otherwise, and the feed is started again
//! after `RESTART`. An action forgets what was known; watch's own switch sets it, as of
//! when the switch returned (`Timed`): a change after it, while the action's later steps
//! run, is root's next reading and newer.

use std::cell::Cell;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::clock::Clock;
use crate::core::config::{Config, Watch};
use crate::core::ruleset::{Live, Record, Routing};
use crate::effects::follow::Feed;
use crate::effects::nat::NatSwitch;

/// A feed that ended or fell silent is started again this long after; twice as long after
/// each one in a row that never gave a reading (sudo refuses it: each refusal is a line in
/// the auth log), up to `RESTART_MAX`.
const RESTART: Duration = Duration::from_secs(30);
const RESTART_MAX: Duration = Duration::from_secs(3600);

/// When a feed is started while there is none.
#[derive(Default)]
enum Start {
    #[default]
    Now,
    /// After one ended or could not start.
    After(Instant),
    /// Where there is none to have (root reads the tables directly).
    Never,
}

#[derive(Default)]
pub(super) struct NatCache {
    /// The route, whether everything else of ours is in place, and when it was read (by
    /// watch, or by root for the feed) or set.
    read: Option<(Routing, bool, Instant)>,
    /// When what was known was last forgotten: a reading taken before it is not used.
    forgotten: Option<Instant>,
    feed: Option<Box<dyn Feed>>,
    /// The feed has given a reading.
    heard: bool,
    /// Feeds in a row that ended or could not start without a reading.
    unheard: u32,
    /// When to start a feed while there is none.
    start: Start,
    /// What was last said about the feed's trouble, said again only when it changes.
    said: Option<String>,
}

impl NatCache {
    /// The route and whether everything else is in place, as of `now`.
    pub(super) fn get(&mut self, cfg: &Config, nat: &dyn NatSwitch, now: Instant) -> Result<(Routing, bool)> {
        if let Some((live, taken)) = self.following(nat, now).and_then(|feed| feed.latest()) {
            self.take(cfg, &live, taken);
            if let Some((routing, in_place, _)) = &self.read {
                return Ok((routing.clone(), *in_place));
            }
        } else if let Some((routing, in_place, at)) = &self.read
            && now.duration_since(*at) < Watch::NAT_EVERY
        {
            return Ok((routing.clone(), *in_place));
        }
        let live = nat.live()?;
        let (routing, in_place) = (live.routing(cfg), live.in_place(cfg));
        self.read = Some((routing.clone(), in_place, now));
        Ok((routing, in_place))
    }

    /// Keeps `live`, taken at `taken`, unless what is known (or was forgotten) is newer.
    fn take(&mut self, cfg: &Config, live: &Live, taken: Instant) {
        let newer_than = self.read.as_ref().map(|(_, _, at)| *at).or(self.forgotten);
        if newer_than.is_none_or(|known| taken > known) {
            self.read = Some((live.routing(cfg), live.in_place(cfg), taken));
        }
    }

    /// The feed if it can be trusted at `now`, started (again) when it is time.
    fn following(&mut self, nat: &dyn NatSwitch, now: Instant) -> Option<&dyn Feed> {
        // heard first: a feed that gave a reading and ended since the last pass was heard
        self.hear();
        if let Some(why) = self.feed.as_ref().and_then(|feed| feed.trouble(now)) {
            self.unheard = if self.heard { 0 } else { self.unheard + 1 };
            (self.feed, self.heard) = (None, false);
            self.retry(format!("the rules' feed {why}"), now);
        }
        let due = match self.start {
            Start::Now => true,
            Start::After(at) => now >= at,
            Start::Never => false,
        };
        if self.feed.is_none() && due {
            match nat.follow() {
                Ok(Some(feed)) => self.feed = Some(feed),
                Ok(None) => self.start = Start::Never,
                Err(e) => {
                    self.unheard += 1;
                    self.retry(format!("cannot start the rules' feed: {e:#}"), now);
                }
            }
        }
        self.hear();
        self.feed.as_deref()
    }

    /// Notes the feed's first reading.
    fn hear(&mut self) {
        if !self.heard && self.feed.as_ref().is_some_and(|feed| feed.latest().is_some()) {
            log::info!("watch: following the tables (route --show --follow): a reading whenever they change");
            (self.heard, self.said, self.unheard) = (true, None, 0);
        }
    }

    /// Says why there is no feed (once while it stays the same), and when the next starts.
    fn retry(&mut self, why: String, now: Instant) {
        let after = RESTART.saturating_mul(1 << self.unheard.saturating_sub(1).min(7)).min(RESTART_MAX);
        self.start = Start::After(now + after);
        if self.said.as_ref() != Some(&why) {
            log::warn!(
                "watch: {why}: reading the rules through sudo twice a second, another feed in {} s",
                after.as_secs()
            );
            self.said = Some(why);
        }
    }

    /// Read the table again next time: something switched it, or may have.
    pub(super) fn forget(&mut self, now: Instant) {
        self.read = None;
        self.forgotten = Some(now);
    }

    /// When what is known was read or set.
    #[cfg(test)]
    pub(super) fn known_at(&self) -> Option<Instant> {
        self.read.as_ref().map(|(_, _, at)| *at)
    }

    /// What the table holds since `at`, known without reading it: when watch's own last
    /// switch returned. A reading taken after it (a flush while the steps after the switch
    /// still ran) is newer, and taken.
    pub(super) fn set(&mut self, routing: Routing, in_place: bool, at: Instant) {
        self.read = Some((routing, in_place, at));
    }
}

/// A switch that notes when its last switch returned, for `NatCache::set`.
pub(super) struct Timed<'a> {
    pub(super) inner: &'a dyn NatSwitch,
    pub(super) clock: &'a dyn Clock,
    pub(super) switched: Cell<Option<Instant>>,
}

impl NatSwitch for Timed<'_> {
    fn live(&self) -> Result<Live> {
        self.inner.live()
    }

    fn recorded(&self) -> Result<Option<Record>> {
        self.inner.recorded()
    }

    fn switch(&self, record: Record) -> Result<bool> {
        let changed = self.inner.switch(record)?;
        self.switched.set(Some(self.clock.now()));
        Ok(changed)
    }

    fn follow(&self) -> Result<Option<Box<dyn Feed>>> {
        self.inner.follow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::core::config::tests::{example, node};
    use crate::core::ruleset::{Open, Route};
    use crate::effects::testing::{Fake, rec};
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::sync::atomic::Ordering;

    /// A feed as a test feeds it: the latest reading, and its trouble.
    #[derive(Default)]
    struct Fed {
        latest: Option<(Live, Instant)>,
        trouble: Option<String>,
    }

    struct FakeFeed(Rc<RefCell<Fed>>);

    impl Feed for FakeFeed {
        fn latest(&self) -> Option<(Live, Instant)> {
            self.0.borrow().latest.clone()
        }
        fn trouble(&self, _: Instant) -> Option<String> {
            self.0.borrow().trouble.clone()
        }
    }

    /// The table as `Fake` holds it, with a feed whose readings the test writes.
    struct Followed {
        fake: Fake,
        fed: Rc<RefCell<Fed>>,
        started: RefCell<u32>,
    }

    impl Followed {
        fn routed_to_1() -> Followed {
            let fake = Fake::new(rec(1, Open::All, 1), Default::default());
            Followed { fake, fed: Default::default(), started: RefCell::new(0) }
        }

        /// The table's reads through sudo since the last call.
        fn reads(&self) -> usize {
            self.fake.reads.swap(0, Ordering::Relaxed)
        }
    }

    impl NatSwitch for Followed {
        fn live(&self) -> Result<Live> {
            self.fake.live()
        }
        fn recorded(&self) -> Result<Option<crate::core::ruleset::Record>> {
            self.fake.recorded()
        }
        fn switch(&self, record: crate::core::ruleset::Record) -> Result<bool> {
            self.fake.switch(record)
        }
        fn follow(&self) -> Result<Option<Box<dyn Feed>>> {
            *self.started.borrow_mut() += 1;
            Ok(Some(Box::new(FakeFeed(Rc::clone(&self.fed)))))
        }
    }

    fn routed(id: u32) -> Routing {
        Routing::To(Route::new(node(id), Open::All))
    }

    fn installed(id: u32) -> Live {
        Live::installed(&example(), Route::new(node(id), Open::All))
    }

    #[test]
    fn with_a_feed_a_pass_reads_nothing_and_takes_only_readings_newer_than_what_it_knew() {
        let (cfg, nat, mut cache, t0) = (example(), Followed::routed_to_1(), NatCache::default(), Instant::now());
        let reads = || nat.reads();
        // no reading from the feed yet: read through sudo
        assert_eq!(cache.get(&cfg, &nat, t0).unwrap(), (routed(1), true));
        assert_eq!(reads(), 1);
        nat.fed.borrow_mut().latest = Some((installed(1), t0 + Duration::from_millis(10)));
        for after in [100, 1000, 60_000] {
            assert_eq!(cache.get(&cfg, &nat, t0 + Duration::from_millis(after)).unwrap(), (routed(1), true));
        }
        assert_eq!(reads(), 0, "the feed's reading, however old: it says when the tables change");
        // someone flushes the table: root's next reading says so
        nat.fed.borrow_mut().latest = Some((Live::default(), t0 + Duration::from_secs(61)));
        assert_eq!(cache.get(&cfg, &nat, t0 + Duration::from_secs(61)).unwrap(), (Routing::Nothing, false));
        // watch switches to node 2; a reading root took before that arrives late
        let switched = t0 + Duration::from_secs(62);
        cache.set(routed(2), true, switched);
        nat.fed.borrow_mut().latest = Some((Live::default(), switched - Duration::from_millis(1)));
        assert_eq!(cache.get(&cfg, &nat, switched).unwrap(), (routed(2), true), "an older reading is not taken");
        nat.fed.borrow_mut().latest = Some((installed(2), switched + Duration::from_millis(5)));
        assert_eq!(cache.get(&cfg, &nat, switched + Duration::from_millis(10)).unwrap(), (routed(2), true));
        // forgotten (another run held the lock): read through sudo unless root read since
        cache.forget(switched + Duration::from_millis(20));
        assert_eq!(cache.get(&cfg, &nat, switched + Duration::from_millis(30)).unwrap(), (routed(1), true));
        assert_eq!((reads(), *nat.started.borrow()), (1, 1));
    }

    #[test]
    fn a_feed_in_trouble_is_dropped_the_table_read_twice_a_second_and_a_feed_started_later() {
        let (cfg, nat, mut cache, t0) = (example(), Followed::routed_to_1(), NatCache::default(), Instant::now());
        let reads = || nat.reads();
        nat.fed.borrow_mut().latest = Some((installed(1), t0));
        assert_eq!(cache.get(&cfg, &nat, t0 + Duration::from_millis(1)).unwrap(), (routed(1), true));
        assert_eq!(reads(), 0);
        nat.fed.borrow_mut().trouble = Some("ended (exit status: 1): sudo: a password is required".into());
        // (after the last pass, reads through sudo): a reading younger than NAT_EVERY is kept
        let passes = [(1, 0), (100, 0), (400, 1), (500, 1)];
        let mut at = t0 + Duration::from_millis(1);
        for (i, (after, expected)) in passes.into_iter().enumerate() {
            at += Duration::from_millis(after);
            cache.get(&cfg, &nat, at).unwrap();
            assert_eq!(reads(), expected, "pass {i}");
        }
        assert_eq!(*nat.started.borrow(), 1, "not started again before RESTART");
        nat.fed.borrow_mut().trouble = None;
        cache.get(&cfg, &nat, at + RESTART).unwrap();
        assert_eq!((*nat.started.borrow(), reads()), (2, 0), "a new feed, its reading taken");
    }

    /// A feed sudo refuses ends at once, again and again: started again after 30 s, then
    /// twice as long each time, up to an hour; one that gives a reading starts over.
    #[test]
    fn a_feed_that_never_gives_a_reading_is_tried_less_and_less_often() {
        let (cfg, nat, mut cache, t0) = (example(), Followed::routed_to_1(), NatCache::default(), Instant::now());
        nat.fed.borrow_mut().trouble = Some("ended (exit status: 1): sudo: a password is required".into());
        let started = || *nat.started.borrow();
        let mut at = t0;
        cache.get(&cfg, &nat, at).unwrap();
        let mut waits = Vec::new();
        for _ in 0..9 {
            let before = started();
            let from = at;
            while started() == before {
                at += Duration::from_secs(1);
                cache.get(&cfg, &nat, at).unwrap();
            }
            // a pass (1 s) sees it end, then it waits
            waits.push((at - from).as_secs() - 1);
        }
        assert_eq!(waits, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        // the sudoers file fixed: the next feed gives a reading, and the count starts over
        nat.fed.borrow_mut().trouble = None;
        nat.fed.borrow_mut().latest = Some((installed(1), at));
        at += Duration::from_secs(3600);
        cache.get(&cfg, &nat, at).unwrap();
        nat.fed.borrow_mut().trouble = Some("ended (exit status: 0)".into());
        let before = started();
        cache.get(&cfg, &nat, at + Duration::from_secs(1)).unwrap();
        cache.get(&cfg, &nat, at + Duration::from_secs(1) + RESTART).unwrap();
        assert_eq!(started(), before + 1, "30 s after a feed that was heard");
        // feeds that each give a reading and end before the next pass sees them: heard,
        // so 30 s every time
        let mut at = at + Duration::from_secs(1) + RESTART;
        for i in 0..3 {
            // started at `at` without a reading; one comes and it ends before the next pass
            *nat.fed.borrow_mut() = Fed { latest: Some((installed(1), at)), trouble: Some("ended".into()) };
            let before = started();
            cache.get(&cfg, &nat, at + Duration::from_secs(1)).unwrap();
            *nat.fed.borrow_mut() = Fed::default();
            cache.get(&cfg, &nat, at + Duration::from_secs(1) + RESTART).unwrap();
            assert_eq!(started(), before + 1, "restart {i}: 30 s");
            at += Duration::from_secs(1) + RESTART;
        }
    }

    /// watch's own switch known from when it returned, not from when the steps after it
    /// ended: a flush in between, which root's feed reports, is taken.
    #[test]
    fn what_a_switch_left_is_known_from_when_it_returned() {
        let (cfg, nat, mut cache, clock) = (example(), Followed::routed_to_1(), NatCache::default(), FakeClock::new());
        let timed = Timed { inner: &nat, clock: &clock, switched: Cell::new(None) };
        timed.live().unwrap();
        assert_eq!(timed.switched.get(), None, "a reading is no switch");
        clock.advance(Duration::from_millis(40));
        timed.switch(rec(2, Open::All, 2).unwrap()).unwrap();
        let returned = timed.switched.get().expect("noted");
        assert_eq!(returned, clock.now());
        // barman's steps take 2 s more; a flush 0.1 s after the switch is root's latest
        clock.advance(Duration::from_secs(2));
        cache.set(routed(2), true, returned);
        nat.fed.borrow_mut().latest = Some((Live::default(), returned + Duration::from_millis(100)));
        assert_eq!(cache.get(&cfg, &nat, clock.now()).unwrap(), (Routing::Nothing, false));
    }
}
