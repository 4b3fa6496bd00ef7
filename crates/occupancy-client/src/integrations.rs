//! Integration rules (occupancy events pushed to webhooks) through the
//! service's `IntegrationService`: thin methods on [`Client`] over the
//! generated client, for operators' tools. Every call needs a credential
//! with `admin` on every channel when the service enforces keys.
//!
//! Reads, updates, deletes, pauses and replays are retried like every
//! other call (they are idempotent: a replay retried after it went
//! through finds nothing left to replay). Creating a rule and sending a
//! test event are not: they are tried once, so a lost answer never makes
//! two rules or two test requests.

use std::time::Duration;

use tonic::Status;

use crate::proto::integration_service_client::IntegrationServiceClient;
use crate::{proto, AuthChannel, Client, Error};

/// How much longer than the request timeout a test send may take: the
/// service waits for the target for up to the rule's timeout (at most
/// 60 s).
const TEST_SEND_ALLOWANCE: Duration = Duration::from_secs(60);

impl Client {
    /// The raw integrations client on the current endpoint.
    pub fn integration_service(&self) -> IntegrationServiceClient<AuthChannel> {
        IntegrationServiceClient::new(self.channel().1)
    }

    /// Runs `f` once on the current endpoint within `timeout`; a transient
    /// failure moves later calls to the next endpoint.
    async fn call_once<T, Fut>(
        &self,
        timeout: Duration,
        f: impl FnOnce(IntegrationServiceClient<AuthChannel>) -> Fut,
    ) -> Result<T, Error>
    where
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let (i, ch) = self.channel();
        let r = match tokio::time::timeout(timeout, f(IntegrationServiceClient::new(ch))).await {
            Ok(r) => r,
            Err(_) => Err(Status::deadline_exceeded("no answer within the request timeout")),
        };
        r.map_err(|s| {
            if crate::transient(&s) {
                self.fail_over(i);
            }
            Error::from(s)
        })
    }

    /// Creates a rule; the answer is the only one that carries its
    /// signing secret. Tried once (see the module docs).
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming the bad field; the service's error.
    pub async fn create_rule(&self, req: proto::CreateRuleRequest) -> Result<proto::IntegrationRule, Error> {
        self.call_once(self.request_timeout(), |mut c| async move {
            Ok(c.create_rule(req).await?.into_inner().rule.unwrap_or_default())
        })
        .await
    }

    /// One rule, without its secret.
    ///
    /// # Errors
    /// NOT_FOUND for an unknown id; the service's error after retries.
    pub async fn get_rule(&self, id: &str) -> Result<proto::IntegrationRule, Error> {
        let req = proto::GetRuleRequest { id: id.to_string() };
        self.call(|ch| {
            let req = req.clone();
            async move {
                Ok(IntegrationServiceClient::new(ch)
                    .get_rule(req)
                    .await?
                    .into_inner()
                    .rule
                    .unwrap_or_default())
            }
        })
        .await
    }

    /// Every rule, by id, without secrets.
    ///
    /// # Errors
    /// The service's error after retries.
    pub async fn list_rules(&self) -> Result<Vec<proto::IntegrationRule>, Error> {
        self.call(|ch| async move {
            Ok(IntegrationServiceClient::new(ch)
                .list_rules(proto::ListRulesRequest {})
                .await?
                .into_inner()
                .rules)
        })
        .await
    }

    /// Changes the fields set in `req`.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming the bad field, NOT_FOUND; the service's
    /// error after retries.
    pub async fn update_rule(&self, req: proto::UpdateRuleRequest) -> Result<proto::IntegrationRule, Error> {
        self.call(|ch| {
            let req = req.clone();
            async move {
                Ok(IntegrationServiceClient::new(ch)
                    .update_rule(req)
                    .await?
                    .into_inner()
                    .rule
                    .unwrap_or_default())
            }
        })
        .await
    }

    /// Deletes a rule with its queue and dead letters.
    ///
    /// # Errors
    /// NOT_FOUND for an unknown id (also when a retry follows a delete
    /// that went through); the service's error after retries.
    pub async fn delete_rule(&self, id: &str) -> Result<(), Error> {
        let req = proto::DeleteRuleRequest { id: id.to_string() };
        self.call(|ch| {
            let req = req.clone();
            async move {
                IntegrationServiceClient::new(ch).delete_rule(req).await?;
                Ok(())
            }
        })
        .await
    }

    /// Pauses (`true`) or resumes (`false`) a rule.
    ///
    /// # Errors
    /// NOT_FOUND for an unknown id; the service's error after retries.
    pub async fn set_rule_paused(&self, id: &str, paused: bool) -> Result<proto::IntegrationRule, Error> {
        let id = id.to_string();
        self.call(|ch| {
            let id = id.clone();
            async move {
                let mut c = IntegrationServiceClient::new(ch);
                let rule = if paused {
                    c.pause_rule(proto::PauseRuleRequest { id }).await?.into_inner().rule
                } else {
                    c.resume_rule(proto::ResumeRuleRequest { id }).await?.into_inner().rule
                };
                Ok(rule.unwrap_or_default())
            }
        })
        .await
    }

    /// Sends one signed test event for `channel` (empty: `test`) to the
    /// rule's target and answers what the target did. Tried once, and
    /// allowed the rule's own timeout beyond the request timeout.
    ///
    /// # Errors
    /// NOT_FOUND for an unknown id; the service's error. A target that
    /// fails is not an error: see the answer's `error`.
    pub async fn test_rule(&self, id: &str, channel: &str) -> Result<proto::TestRuleResponse, Error> {
        let req = proto::TestRuleRequest {
            id: id.to_string(),
            channel: channel.to_string(),
        };
        self.call_once(self.request_timeout() + TEST_SEND_ALLOWANCE, |mut c| async move {
            Ok(c.test_rule(req).await?.into_inner())
        })
        .await
    }

    /// Up to `limit` (0: 100; at most 1,000) of a rule's dead letters,
    /// oldest first.
    ///
    /// # Errors
    /// NOT_FOUND for an unknown rule; the service's error after retries.
    pub async fn dead_letters(&self, rule_id: &str, limit: u32) -> Result<Vec<proto::DeadLetter>, Error> {
        let req = proto::ListDeadLettersRequest {
            rule_id: rule_id.to_string(),
            limit,
        };
        self.call(|ch| {
            let req = req.clone();
            async move {
                Ok(IntegrationServiceClient::new(ch)
                    .list_dead_letters(req)
                    .await?
                    .into_inner()
                    .dead_letters)
            }
        })
        .await
    }

    /// Queues the events of the named dead letters (all of them when
    /// `batch_ids` is empty) again: the number of events queued.
    ///
    /// # Errors
    /// NOT_FOUND for an unknown rule; the service's error after retries.
    pub async fn replay_dead_letters(&self, rule_id: &str, batch_ids: &[String]) -> Result<u64, Error> {
        let req = proto::ReplayDeadLettersRequest {
            rule_id: rule_id.to_string(),
            batch_ids: batch_ids.to_vec(),
        };
        self.call(|ch| {
            let req = req.clone();
            async move {
                Ok(IntegrationServiceClient::new(ch)
                    .replay_dead_letters(req)
                    .await?
                    .into_inner()
                    .events)
            }
        })
        .await
    }
}
