//! Refusing calls while this replica lays out the state otherwise than
//! the replicas before it (the partition count or the event shard count
//! recorded in Redis differs from its own).
//!
//! Why: the health check finds the disagreement and reports NOT_SERVING,
//! but a caller that does not watch health (a front end connected
//! straight to the replica) would still be served, and a write under
//! another layout lands where no other replica reads it: acknowledged,
//! yet invisible. Every call of such a replica answers FAILED_PRECONDITION
//! with the health check's reason instead, until a health check finds the
//! layouts agreeing again. The check costs a call one atomic read. The
//! health check runs as the replica starts, so only calls that reach it
//! before the first check has answered can be served under another
//! layout; their front ends re-sync once the replica runs with the right
//! count (their sessions are then unknown to the recorded layout).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// What the health checks of a replica's stores (one per partition, all
/// sharing one gate) last found wrong with the layout, by partition.
#[derive(Debug, Default)]
pub(super) struct Gate {
    refused: AtomicBool,
    why: Mutex<BTreeMap<usize, String>>,
}

impl Gate {
    /// Ok, or the reason the layout is refused.
    pub(super) fn check(&self) -> Result<()> {
        if !self.refused.load(Ordering::Acquire) {
            return Ok(());
        }
        let why = self.why.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match why.values().next() {
            Some(reason) => Err(Error::FailedPrecondition(reason.clone())),
            None => Ok(()),
        }
    }

    /// Records what partition `partition`'s layout checks answered: a
    /// disagreement (FAILED_PRECONDITION) refuses calls, an agreement lifts
    /// that partition's refusal; any other failure (Redis unreachable)
    /// says nothing about the layout and changes nothing.
    pub(super) fn observe(&self, partition: usize, checked: &Result<()>) {
        let mut why = self.why.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match checked {
            Ok(()) => {
                why.remove(&partition);
            }
            Err(Error::FailedPrecondition(reason)) => {
                why.insert(partition, reason.clone());
            }
            Err(_) => return,
        }
        self.refused.store(!why.is_empty(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disagreement_refuses_calls_until_every_partition_agrees_again() {
        let gate = Gate::default();
        assert!(gate.check().is_ok());
        gate.observe(0, &Err(Error::FailedPrecondition("16 partitions recorded".into())));
        gate.observe(3, &Ok(()));
        assert!(
            matches!(gate.check(), Err(Error::FailedPrecondition(r)) if r == "16 partitions recorded"),
            "another partition agreeing does not lift partition 0's refusal"
        );
        gate.observe(0, &Err(Error::Unavailable("down".into())));
        assert!(
            gate.check().is_err(),
            "an unreachable Redis says nothing about the layout"
        );
        gate.observe(0, &Ok(()));
        assert!(gate.check().is_ok());
    }
}
