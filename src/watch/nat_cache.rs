//! The nat table as the last pass read it: reading it goes through sudo, so a pass reuses
//! a reading younger than `Watch::NAT_EVERY`; an action forgets it.

use std::time::Instant;

use anyhow::Result;

use crate::core::config::{Config, Watch};
use crate::core::ruleset::Routing;
use crate::effects::nat::NatSwitch;

#[derive(Default)]
pub(super) struct NatCache {
    /// The route, whether everything else of ours is in place, and when it was read.
    read: Option<(Routing, bool, Instant)>,
}

impl NatCache {
    /// The route and whether everything else is in place, read again when older than
    /// `Watch::NAT_EVERY` at `now`.
    pub(super) fn get(&mut self, cfg: &Config, nat: &dyn NatSwitch, now: Instant) -> Result<(Routing, bool)> {
        match &self.read {
            Some((routing, in_place, at)) if now.duration_since(*at) < Watch::NAT_EVERY => {
                Ok((routing.clone(), *in_place))
            }
            _ => {
                let live = nat.live()?;
                let (routing, in_place) = (live.routing(cfg), live.in_place(cfg));
                self.read = Some((routing.clone(), in_place, now));
                Ok((routing, in_place))
            }
        }
    }

    /// Read the table again next time: something switched it, or may have.
    pub(super) fn forget(&mut self) {
        self.read = None;
    }

    /// What the table holds now, known without reading it (watch's own switch).
    pub(super) fn set(&mut self, routing: Routing, in_place: bool, now: Instant) {
        self.read = Some((routing, in_place, now));
    }
}
