//! `IntegrationService`: operators manage integration rules, test them
//! against their targets, and look at and replay their dead letters.
//!
//! Handlers convert the request into a [`RuleSpec`](crate::integrations::rule::RuleSpec) (`convert`), let the
//! rule validate itself ([`Rule::create`], [`Rule::updated`]: nothing is
//! stored when a field is bad), and store through the
//! [`IntegrationStore`]. A change answers once this replica's integration
//! source has read it ([`Integrations::rules_changed`]), so every change of
//! a channel after the answer reaches a new rule; other replicas see the
//! store's rules version change.
//!
//! Rules are read-modify-written (update, pause, resume): two operators
//! changing one rule at the same instant keep the last write, as with any
//! configuration API without versions.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use super::auth::principal;
use crate::auth::Op;
use crate::domain::events::wall_ms;
use crate::domain::{ChannelName, InvalidInput, Metrics};
use crate::error::Error;
use crate::integrations::sender::{Outcome, Sender};
use crate::integrations::{limits, payload, Entry, IntegrationStore, Integrations, Kind, Mode, Rule, Staged};
use crate::proto::v1 as pb;

mod convert;

/// Dead letters a ListDeadLetters without a limit returns.
const DEFAULT_DEAD_LETTER_PAGE: usize = 100;

/// The channel a TestRule without one names.
const DEFAULT_TEST_CHANNEL: &str = "test";

/// The queue position of a test event: no real event has it.
const TEST_POSITION: &str = "0-0";

/// gRPC adapter of the integrations API.
pub struct IntegrationApi {
    store: Option<Arc<dyn IntegrationStore>>,
    sender: Sender,
    running: Option<Arc<Integrations>>,
}

impl IntegrationApi {
    /// The service over `store` (`None` when the replica's store keeps no
    /// integrations: every call then answers FAILED_PRECONDITION), sending
    /// test events with `sender`, and telling this replica's `running`
    /// integrations after every change of a rule.
    pub fn new(store: Option<Arc<dyn IntegrationStore>>, sender: Sender, running: Option<Arc<Integrations>>) -> Self {
        Self { store, sender, running }
    }

    /// The store, for a caller who may administer every channel.
    fn admit<T>(&self, req: &Request<T>) -> Result<&dyn IntegrationStore, Status> {
        principal(req)?.check_prefix(Op::Admin, "").map_err(Error::from)?;
        let store = self.store.as_deref().ok_or_else(|| {
            Error::FailedPrecondition(
                "integrations are not available: this service's store keeps no integration rules".into(),
            )
        })?;
        Ok(store)
    }

    async fn changed(&self) {
        if let Some(r) = &self.running {
            r.rules_changed().await;
        }
    }
}

/// The rule `id`, secret included.
///
/// # Errors
/// INVALID_ARGUMENT naming `field` for an empty id, NOT_FOUND for an
/// unknown one, the store's.
async fn find(store: &dyn IntegrationStore, field: &str, id: &str) -> Result<Rule, Error> {
    if id.is_empty() {
        return Err(InvalidInput::new(field, "is required").into());
    }
    let (_, rules) = store.rules().await?;
    rules
        .into_iter()
        .find(|r| r.id == id)
        .ok_or_else(|| Error::NotFound(format!("no integration rule {id:?}")))
}

/// The host of a target URL, for logs: webhook URLs often carry a token
/// in their path or query, which stays out of the log.
fn target_host(url: &str) -> String {
    url.parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_string))
        .unwrap_or_default()
}

/// A rule as answered: without its secret, with its backlog.
async fn answer(store: &dyn IntegrationStore, rule: Rule) -> Result<pb::IntegrationRule, Error> {
    let backlog = store.backlog(&rule.id).await?;
    Ok(convert::rule(rule.redacted(), backlog))
}

impl IntegrationApi {
    /// Sets `paused` on rule `id`.
    async fn set_paused(
        &self,
        store: &dyn IntegrationStore,
        id: &str,
        paused: bool,
    ) -> Result<pb::IntegrationRule, Error> {
        let mut rule = find(store, "id", id).await?;
        if rule.paused != paused {
            rule.paused = paused;
            rule.updated_ms = wall_ms();
            store.put_rule(&rule, false).await?;
            self.changed().await;
            info!(rule = %rule.id, paused, "integration rule paused or resumed");
        }
        answer(store, rule).await
    }
}

#[tonic::async_trait]
impl pb::integration_service_server::IntegrationService for IntegrationApi {
    #[instrument(level = "debug", skip_all)]
    async fn create_rule(
        &self,
        req: Request<pb::CreateRuleRequest>,
    ) -> Result<Response<pb::CreateRuleResponse>, Status> {
        let store = self.admit(&req)?;
        let spec = convert::create_spec(req.into_inner()).map_err(Error::from)?;
        let rule = Rule::create(spec, wall_ms()).map_err(Error::from)?;
        store.put_rule(&rule, true).await?;
        self.changed().await;
        info!(rule = %rule.id, target_host = target_host(&rule.target), "integration rule created");
        // the only answer that carries the secret
        Ok(Response::new(pb::CreateRuleResponse {
            rule: Some(convert::rule(rule, 0)),
        }))
    }

    #[instrument(level = "debug", skip_all, fields(rule = %req.get_ref().id))]
    async fn get_rule(&self, req: Request<pb::GetRuleRequest>) -> Result<Response<pb::GetRuleResponse>, Status> {
        let store = self.admit(&req)?;
        let rule = find(store, "id", &req.get_ref().id).await?;
        Ok(Response::new(pb::GetRuleResponse {
            rule: Some(answer(store, rule).await?),
        }))
    }

    #[instrument(level = "debug", skip_all)]
    async fn list_rules(&self, req: Request<pb::ListRulesRequest>) -> Result<Response<pb::ListRulesResponse>, Status> {
        let store = self.admit(&req)?;
        let (_, rules) = store.rules().await?;
        let mut out = Vec::with_capacity(rules.len());
        for r in rules {
            out.push(answer(store, r).await?);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Response::new(pb::ListRulesResponse { rules: out }))
    }

    #[instrument(level = "debug", skip_all, fields(rule = %req.get_ref().id))]
    async fn update_rule(
        &self,
        req: Request<pb::UpdateRuleRequest>,
    ) -> Result<Response<pb::UpdateRuleResponse>, Status> {
        let store = self.admit(&req)?;
        let r = req.into_inner();
        let current = find(store, "id", &r.id).await?;
        let new_secret = r.secret.is_some();
        let spec = convert::update_spec(r).map_err(Error::from)?;
        let rule = current.updated(spec, wall_ms()).map_err(Error::from)?;
        store.put_rule(&rule, false).await?;
        self.changed().await;
        info!(rule = %rule.id, new_secret, "integration rule updated");
        let backlog = store.backlog(&rule.id).await?;
        let rule = if new_secret { rule } else { rule.redacted() };
        Ok(Response::new(pb::UpdateRuleResponse {
            rule: Some(convert::rule(rule, backlog)),
        }))
    }

    #[instrument(level = "debug", skip_all, fields(rule = %req.get_ref().id))]
    async fn delete_rule(
        &self,
        req: Request<pb::DeleteRuleRequest>,
    ) -> Result<Response<pb::DeleteRuleResponse>, Status> {
        let store = self.admit(&req)?;
        let id = &req.get_ref().id;
        if id.is_empty() {
            return Err(Error::from(InvalidInput::new("id", "is required")).into());
        }
        if !store.delete_rule(id).await? {
            return Err(Error::NotFound(format!("no integration rule {id:?}")).into());
        }
        self.changed().await;
        info!(rule = %id, "integration rule deleted");
        Ok(Response::new(pb::DeleteRuleResponse {}))
    }

    #[instrument(level = "debug", skip_all, fields(rule = %req.get_ref().id))]
    async fn pause_rule(&self, req: Request<pb::PauseRuleRequest>) -> Result<Response<pb::PauseRuleResponse>, Status> {
        let store = self.admit(&req)?;
        let rule = self.set_paused(store, &req.get_ref().id, true).await?;
        Ok(Response::new(pb::PauseRuleResponse { rule: Some(rule) }))
    }

    #[instrument(level = "debug", skip_all, fields(rule = %req.get_ref().id))]
    async fn resume_rule(
        &self,
        req: Request<pb::ResumeRuleRequest>,
    ) -> Result<Response<pb::ResumeRuleResponse>, Status> {
        let store = self.admit(&req)?;
        let rule = self.set_paused(store, &req.get_ref().id, false).await?;
        Ok(Response::new(pb::ResumeRuleResponse { rule: Some(rule) }))
    }

    #[instrument(level = "debug", skip_all, fields(rule = %req.get_ref().id))]
    async fn test_rule(&self, req: Request<pb::TestRuleRequest>) -> Result<Response<pb::TestRuleResponse>, Status> {
        let store = self.admit(&req)?;
        let r = req.into_inner();
        let rule = find(store, "id", &r.id).await?;
        let channel = if r.channel.is_empty() {
            DEFAULT_TEST_CHANNEL.to_string()
        } else {
            r.channel
        };
        let channel = ChannelName::parse("channel", channel).map_err(Error::from)?;
        let entry = Entry {
            id: TEST_POSITION.into(),
            channel: channel.into_string(),
            kind: Kind::Occupancy,
            flip: false,
            metrics: Metrics::default(),
            timestamp_ms: wall_ms(),
        };
        let batch = Staged {
            id: payload::batch_id(&rule.id, &entry),
            entries: vec![entry],
        };
        let batched = matches!(rule.mode, Mode::Batched { .. });
        let body = payload::body(&rule.id, &batch, batched);
        let attempt = self.sender.post(&rule, &batch.id, body).await;
        let (delivered, error) = match attempt.outcome {
            Outcome::Delivered { .. } => (true, String::new()),
            Outcome::Retry { reason, .. } | Outcome::Failed { reason } => (false, reason),
        };
        info!(rule = %rule.id, delivered, status = attempt.status, "integration rule tested");
        Ok(Response::new(pb::TestRuleResponse {
            delivered,
            status_code: attempt.status.map_or(0, u32::from),
            latency_ms: u64::try_from(attempt.latency.as_millis()).unwrap_or(u64::MAX),
            error,
        }))
    }

    #[instrument(level = "debug", skip_all, fields(rule = %req.get_ref().rule_id))]
    async fn list_dead_letters(
        &self,
        req: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let store = self.admit(&req)?;
        let r = req.into_inner();
        let limit = match r.limit as usize {
            0 => DEFAULT_DEAD_LETTER_PAGE,
            n if n > limits::MAX_DEAD_LETTER_PAGE => {
                let max = limits::MAX_DEAD_LETTER_PAGE;
                return Err(Error::from(InvalidInput::new("limit", format!("must be at most {max}, got {n}"))).into());
            }
            n => n,
        };
        let rule = find(store, "rule_id", &r.rule_id).await?;
        let dead = store.dead_letters(&rule.id, limit).await?;
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: dead.into_iter().map(|d| convert::dead_letter(&rule.id, d)).collect(),
        }))
    }

    #[instrument(level = "debug", skip_all, fields(rule = %req.get_ref().rule_id))]
    async fn replay_dead_letters(
        &self,
        req: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        let store = self.admit(&req)?;
        let r = req.into_inner();
        let rule = find(store, "rule_id", &r.rule_id).await?;
        let events = store.replay(&rule.id, &r.batch_ids).await?;
        if events > 0 {
            // the queue grew: the delivery engine has work
            self.changed().await;
        }
        info!(rule = %rule.id, events, "dead letters replayed");
        Ok(Response::new(pb::ReplayDeadLettersResponse { events }))
    }
}
