//! Logging of a failing dependency (Redis) by background loops that retry
//! many times a second: one line when it starts failing, a summary at most
//! once a minute while it keeps failing, one line when it works again.
//! Without it an outage of ten seconds printed dozens of identical lines
//! per replica.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// How often a continuing outage is summed up.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// The failure state of one kind of background work, possibly split in
/// parts that fail and recover apart (the event readers' shards): the
/// outage starts when the first part fails and ends when the last one
/// recovers.
#[derive(Debug)]
pub struct OutageLog {
    what: &'static str,
    summary_every: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    failing: BTreeSet<u32>,
    since: Option<Instant>,
    failures: u64,
    summarised: Option<Instant>,
    failures_at_summary: u64,
}

impl OutageLog {
    /// A log for `what` (e.g. "session reaper"), summing up every
    /// [`SUMMARY_EVERY`].
    pub fn new(what: &'static str) -> Self {
        Self::with_summary_every(what, SUMMARY_EVERY)
    }

    /// A log summing up every `every`.
    pub fn with_summary_every(what: &'static str, every: Duration) -> Self {
        Self {
            what,
            summary_every: every,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Part `part` failed with `cause`. Returns whether a line was logged.
    pub fn failed(&self, part: u32, cause: &dyn Display) -> bool {
        let mut s = self.lock();
        let now = Instant::now();
        s.failures += 1;
        s.failing.insert(part);
        match (s.since, s.summarised) {
            (None, _) => {
                s.since = Some(now);
                s.summarised = Some(now);
                s.failures_at_summary = s.failures;
                warn!(what = self.what, %cause, "redis unavailable, retrying (next report in a minute unless it recovers)");
                true
            }
            (Some(since), Some(last)) if now.duration_since(last) >= self.summary_every => {
                s.summarised = Some(now);
                let recent = s.failures - s.failures_at_summary;
                s.failures_at_summary = s.failures;
                warn!(
                    what = self.what,
                    %cause,
                    failing_for = ?now.duration_since(since),
                    failed_attempts = recent,
                    "redis still unavailable"
                );
                true
            }
            _ => false,
        }
    }

    /// Part `part` works (again). Returns whether a line was logged (the
    /// last failing part recovered).
    pub fn recovered(&self, part: u32) -> bool {
        let mut s = self.lock();
        if !s.failing.remove(&part) || !s.failing.is_empty() {
            return false;
        }
        let Some(since) = s.since.take() else { return false };
        info!(
            what = self.what,
            outage = ?since.elapsed(),
            failed_attempts = s.failures,
            "redis available again"
        );
        *s = State::default();
        true
    }

    /// Whether any part is failing.
    pub fn failing(&self) -> bool {
        !self.lock().failing.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_change_and_a_summary_per_period() {
        let log = OutageLog::with_summary_every("test", Duration::from_millis(50));
        assert!(!log.recovered(0), "nothing to recover from");
        assert!(log.failed(0, &"refused"));
        assert!(!log.failed(0, &"refused"));
        assert!(!log.failed(1, &"refused"));
        assert!(log.failing());
        std::thread::sleep(Duration::from_millis(60));
        assert!(log.failed(1, &"refused"), "a summary after the period");
        assert!(!log.failed(0, &"refused"));
        assert!(!log.recovered(0), "shard 1 still fails");
        assert!(log.recovered(1));
        assert!(!log.failing());
        assert!(log.failed(0, &"again"), "a new outage is logged again");
    }
}
