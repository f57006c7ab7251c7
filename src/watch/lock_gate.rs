//! The run lock as `watch` takes it before it acts: never waiting (the run that holds it
//! does the work), and after another run held it, not on answers that may predate what
//! that run did.

use std::time::Instant;

use crate::effects::state::{Lock, RunLock};

pub(super) struct LockGate {
    lock: Box<dyn RunLock>,
    /// Why the run lock cannot be taken, as last said.
    problem: Option<String>,
    /// Another run held the run lock: what it did may be missing from the answers of the
    /// passes until it ended.
    contended: bool,
    /// The next pass waits for answers asked after this (another run just ended).
    pub(super) fresh_after: Option<Instant>,
}

impl LockGate {
    pub(super) fn new(lock: Box<dyn RunLock>) -> LockGate {
        LockGate { lock, problem: None, contended: false, fresh_after: None }
    }

    /// The run lock, to act on this pass's answers. None when another run holds it (that
    /// run does the work), when another run held it since (this pass's answers may predate
    /// its work: the next pass decides, on answers asked after it ended, so the two never
    /// do the same step twice), or when it cannot be taken at all (said once, not every
    /// pass: nothing can act until `setup` makes it right).
    pub(super) fn take(&mut self, now: Instant) -> Option<Lock> {
        let (lock, problem) = match self.lock.try_lock() {
            Ok(lock) => (lock, None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        if problem != self.problem {
            match &problem {
                Some(why) => log::error!("watch: cannot take the run lock, so cannot act: {why}"),
                None => log::info!("watch: the run lock can be taken again"),
            }
            self.problem = problem.clone();
        }
        match lock {
            None if problem.is_none() => {
                self.contended = true;
                None
            }
            Some(_) if std::mem::take(&mut self.contended) => {
                self.fresh_after = Some(now);
                None
            }
            lock => lock,
        }
    }
}
