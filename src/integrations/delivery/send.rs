//! One batch's requests, from the first attempt until it is delivered,
//! dead or abandoned: retries with backoff and jitter, the retention, and
//! the dead letters.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::domain::events::wall_ms;
use crate::integrations::limits;
use crate::integrations::payload;
use crate::integrations::rule::{Mode, Rule};
use crate::integrations::sender::{Outcome, Sender};
use crate::integrations::store::{DeadLetter, IntegrationStore, Staged};

/// How a send task ended.
pub(super) enum Ended {
    /// Answered 2xx: the worker records it (it knows whether the batch is
    /// at the queue's front) and the channels are free.
    Delivered,
    /// Given up to the dead letters: the channels are free.
    Settled,
    /// Cancelled (lease lost, shutdown): the batch stays staged for the
    /// next holder.
    Abandoned,
}

/// One batch's requests until it is delivered, dead or abandoned.
pub(super) struct Send {
    pub(super) rule: Arc<Rule>,
    pub(super) store: Arc<dyn IntegrationStore>,
    pub(super) sender: Sender,
    pub(super) cancel: CancellationToken,
}

/// The wait before retry `n` (0-based): ×√2 from the first backoff, up to
/// the longest, with ±20 % jitter so retries of many batches spread out.
pub fn backoff(n: u32) -> Duration {
    let base = limits::FIRST_BACKOFF_MS as f64 * std::f64::consts::SQRT_2.powi(n.min(40) as i32);
    let capped = base.min(limits::MAX_BACKOFF_MS as f64);
    let jitter = 0.8 + 0.4 * rand::random::<f64>();
    Duration::from_millis((capped * jitter) as u64)
}

impl Send {
    pub(super) async fn run(&self, batch: &Staged) -> Ended {
        let batched = matches!(self.rule.mode, Mode::Batched { .. });
        let body = payload::body(&self.rule.id, batch, batched);
        let oldest = batch
            .entries
            .iter()
            .map(|e| e.timestamp_ms)
            .min()
            .unwrap_or_else(wall_ms);
        let deadline = oldest + self.rule.retention_ms as i64;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let attempt = tokio::select! {
                () = self.cancel.cancelled() => return Ended::Abandoned,
                a = self.sender.post(&self.rule, &batch.id, body.clone()) => a,
            };
            let m = crate::integrations::metrics::metrics();
            let reason = match attempt.outcome {
                Outcome::Delivered { .. } => {
                    m.request("delivered");
                    let now = wall_ms();
                    m.delivered(
                        batch
                            .entries
                            .iter()
                            .map(|e| Duration::from_millis(u64::try_from(now - e.timestamp_ms).unwrap_or(0))),
                    );
                    return Ended::Delivered;
                }
                Outcome::Failed { reason } => {
                    m.request("failed");
                    return self.bury(batch, reason, attempts).await;
                }
                Outcome::Retry { reason, after } => {
                    m.request("retry");
                    let wait = backoff(attempts - 1).max(after.unwrap_or_default());
                    if wall_ms() + wait.as_millis() as i64 > deadline {
                        return self.bury(batch, reason, attempts).await;
                    }
                    tokio::select! {
                        () = self.cancel.cancelled() => return Ended::Abandoned,
                        () = tokio::time::sleep(wait) => {}
                    }
                    reason
                }
            };
            debug!(rule = %self.rule.id, batch = %batch.id, %reason, attempts, "integration delivery: retrying");
        }
    }

    async fn bury(&self, batch: &Staged, reason: String, attempts: u32) -> Ended {
        warn!(rule = %self.rule.id, batch = %batch.id, %reason, attempts, "integration delivery: to the dead letters");
        crate::integrations::metrics::metrics().dead();
        let dead = DeadLetter {
            batch: batch.clone(),
            reason,
            attempts,
            dead_ms: wall_ms(),
        };
        self.persist(&dead).await
    }

    /// Moves the batch to the dead letters, trying until that works or
    /// the worker is cancelled.
    async fn persist(&self, dead: &DeadLetter) -> Ended {
        let mut wait = Duration::from_millis(50);
        loop {
            match self.store.kill(&self.rule.id, dead).await {
                Ok(()) => return Ended::Settled,
                Err(e) => debug!(rule = %self.rule.id, cause = %e, "integration delivery: cannot record a dead letter"),
            }
            tokio::select! {
                () = self.cancel.cancelled() => return Ended::Abandoned,
                () = tokio::time::sleep(wait) => wait = (wait * 2).min(Duration::from_secs(2)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_by_root_two_and_is_capped() {
        let b0 = backoff(0).as_millis();
        assert!((800..=1_200).contains(&b0), "{b0}");
        let b2 = backoff(2).as_millis();
        assert!((1_600..=2_400).contains(&b2), "{b2}");
        let late = backoff(30).as_millis();
        assert!((48_000..=72_000).contains(&late), "{late}");
    }
}
