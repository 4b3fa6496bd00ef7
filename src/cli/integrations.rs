//! `occupancy integrations …`: integration rules (occupancy events pushed
//! to webhooks) for operators: create, list, get, update, delete, pause,
//! resume, test, and the dead letters (`deliveries`, `replay`). Every
//! command needs a credential with `admin` on every channel when the
//! service enforces keys.
//!
//! Flags follow the rule's fields; durations are humantime (`500ms`,
//! `5s`, `2m`), as elsewhere. `--timeout` stays the call's bound, as in
//! every client subcommand; the rule's per-request timeout is
//! `--webhook-timeout`.

use std::collections::HashMap;
use std::time::Duration;

use clap::{Args, Subcommand};
use occupancy_client::proto;

use super::{client, fail, Target};

mod print;

/// `occupancy integrations`.
#[derive(Debug, Clone, Args)]
pub struct IntegrationsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: IntegrationsCommand,
}

/// The `integrations` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum IntegrationsCommand {
    /// Create a rule; prints it with its signing secret, shown this once.
    Create(CreateArgs),
    /// List every rule (without secrets), with its backlog.
    List(ListRulesArgs),
    /// Print one rule (without its secret), with its backlog.
    Get(RuleArgs),
    /// Change the fields given; the others keep their values. A list
    /// given (--channel, --event, --category, --header) replaces the
    /// rule's whole list.
    Update(UpdateArgs),
    /// Delete a rule with its queue and dead letters.
    Delete(RuleArgs),
    /// Stop a rule: changes are no longer queued for it, nothing is sent.
    Pause(RuleArgs),
    /// Start a paused rule again.
    Resume(RuleArgs),
    /// Send one signed test event to the rule's target now and print what
    /// it answered (exit 1 when it did not answer 2xx).
    Test(TestArgs),
    /// List a rule's dead letters: batches that could not be delivered.
    Deliveries(DeliveriesArgs),
    /// Queue dead letters' events again (all of them, or the batch ids
    /// given).
    Replay(ReplayArgs),
}

/// The fields of a rule, as `create` and `update` take them.
#[derive(Debug, Clone, Args)]
pub struct RuleFlags {
    /// Where events are POSTed: an http:// or https:// URL (required on
    /// create).
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    /// Channel pattern: `*` (every channel, the default), `rooms:*` (a
    /// prefix) or an exact name; repeat for several.
    #[arg(long = "channel", value_name = "PATTERN")]
    pub channels: Vec<String>,
    /// Event to send: channel.occupancy (the default), channel.occupied or
    /// channel.vacated; repeat for several.
    #[arg(long = "event", value_name = "NAME")]
    pub events: Vec<String>,
    /// Send occupancy events only when this metric changed
    /// (`connections`, `presenceMembers`, ...); repeat for several.
    #[arg(long = "category", value_name = "METRIC")]
    pub categories: Vec<String>,
    /// Send batches of events (at most one request per --interval).
    #[arg(long)]
    pub batched: bool,
    /// Batched mode: most events per request (1 to 1000; default 1000).
    #[arg(long, value_name = "N")]
    pub max_events: Option<u32>,
    /// Batched mode: least time between requests (10ms to 60s; default 1s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// Coalesce a channel's occupancy events closer together than this to
    /// the latest (up to 60s; default 0, none).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub debounce: Option<Duration>,
    /// How long a channel.vacated event waits; re-occupation within it
    /// cancels it (up to 10m; default 5s; 0s sends at once).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub vacated_delay: Option<Duration>,
    /// Extra request header, NAME=VALUE; repeat for several.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Signing secret, `whsec_` and base64 of 16 to 64 bytes (default on
    /// create: a new random one). Arguments show in process lists.
    #[arg(long, value_name = "SECRET")]
    pub secret: Option<String>,
    /// How long undelivered events are retried before they become dead
    /// letters (1s to 24h; default 5m).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub retention: Option<Duration>,
    /// Bound on each webhook request (100ms to 60s; default 10s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub webhook_timeout: Option<Duration>,
    /// Single mode: requests in flight at once (1 to 64; default 8).
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,
    /// Free text for operators.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
}

/// `occupancy integrations create`.
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub rule: RuleFlags,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: Target,
}

/// `occupancy integrations update`.
#[derive(Debug, Clone, Args)]
pub struct UpdateArgs {
    /// The rule's id.
    pub id: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub rule: RuleFlags,
    /// Send one request per event again (leave batched mode).
    #[arg(long, conflicts_with_all = ["batched", "max_events", "interval"])]
    pub single: bool,
    /// Remove every extra header.
    #[arg(long, conflicts_with = "headers")]
    pub clear_headers: bool,
    /// Send occupancy events on every change again.
    #[arg(long, conflicts_with = "categories")]
    pub clear_categories: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: Target,
}

/// `occupancy integrations list`.
#[derive(Debug, Clone, Args)]
pub struct ListRulesArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: Target,
}

/// A command on one rule.
#[derive(Debug, Clone, Args)]
pub struct RuleArgs {
    /// The rule's id.
    pub id: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: Target,
}

/// `occupancy integrations test`.
#[derive(Debug, Clone, Args)]
pub struct TestArgs {
    /// The rule's id.
    pub id: String,
    /// The channel the test event names.
    #[arg(long, default_value = "test")]
    pub channel: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: Target,
}

/// `occupancy integrations deliveries`.
#[derive(Debug, Clone, Args)]
pub struct DeliveriesArgs {
    /// The rule's id.
    pub id: String,
    /// Most dead letters to print, oldest first (at most 1000).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: Target,
}

/// `occupancy integrations replay`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// The rule's id.
    pub id: String,
    /// Dead letters to send again, by batch id; none for all of them.
    pub batch_ids: Vec<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: Target,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn mode(batched: bool, single: bool) -> i32 {
    let m = if batched {
        proto::DeliveryMode::Batched
    } else if single {
        proto::DeliveryMode::Single
    } else {
        proto::DeliveryMode::Unspecified
    };
    m as i32
}

fn create_request(f: RuleFlags) -> proto::CreateRuleRequest {
    proto::CreateRuleRequest {
        description: f.description.unwrap_or_default(),
        target: f.target.unwrap_or_default(),
        channels: f.channels,
        events: f.events,
        categories: f.categories,
        mode: mode(f.batched, false),
        max_events: f.max_events,
        interval_ms: f.interval.map(ms),
        debounce_ms: f.debounce.map(ms),
        vacated_delay_ms: f.vacated_delay.map(ms),
        headers: f.headers.into_iter().collect(),
        secret: f.secret,
        retention_ms: f.retention.map(ms),
        timeout_ms: f.webhook_timeout.map(ms),
        concurrency: f.concurrency,
    }
}

fn update_request(a: UpdateArgs) -> proto::UpdateRuleRequest {
    let f = a.rule;
    let list = |v: Vec<String>| (!v.is_empty()).then_some(proto::StringList { values: v });
    let categories = if a.clear_categories {
        Some(proto::StringList::default())
    } else {
        list(f.categories)
    };
    let headers = (a.clear_headers || !f.headers.is_empty()).then(|| proto::HeaderMap {
        values: f.headers.into_iter().collect::<HashMap<_, _>>(),
    });
    proto::UpdateRuleRequest {
        id: a.id,
        description: f.description,
        target: f.target,
        channels: list(f.channels),
        events: list(f.events),
        categories,
        mode: mode(f.batched, a.single),
        max_events: f.max_events,
        interval_ms: f.interval.map(ms),
        debounce_ms: f.debounce.map(ms),
        vacated_delay_ms: f.vacated_delay.map(ms),
        headers,
        secret: f.secret,
        retention_ms: f.retention.map(ms),
        timeout_ms: f.webhook_timeout.map(ms),
        concurrency: f.concurrency,
    }
}

/// `occupancy integrations …`: returns the exit code.
pub async fn integrations(args: IntegrationsArgs) -> i32 {
    use IntegrationsCommand as C;
    let target = match &args.command {
        C::Create(a) => &a.target,
        C::Update(a) => &a.target,
        C::List(a) => &a.target,
        C::Get(a) | C::Delete(a) | C::Pause(a) | C::Resume(a) => &a.target,
        C::Test(a) => &a.target,
        C::Deliveries(a) => &a.target,
        C::Replay(a) => &a.target,
    }
    .clone();
    let c = match client(&target) {
        Ok(c) => c,
        Err(e) => return fail(&e, &target),
    };
    let json = target.json;
    let done = match args.command {
        C::Create(a) => c.create_rule(create_request(a.rule)).await.map(|r| {
            print::rule(&r, json);
            0
        }),
        C::Update(a) => c.update_rule(update_request(a)).await.map(|r| {
            print::rule(&r, json);
            0
        }),
        C::List(_) => c.list_rules().await.map(|rules| {
            print::rules(&rules, json);
            0
        }),
        C::Get(a) => c.get_rule(&a.id).await.map(|r| {
            print::rule(&r, json);
            0
        }),
        C::Pause(a) => c.set_rule_paused(&a.id, true).await.map(|r| {
            print::rule(&r, json);
            0
        }),
        C::Resume(a) => c.set_rule_paused(&a.id, false).await.map(|r| {
            print::rule(&r, json);
            0
        }),
        C::Delete(a) => c.delete_rule(&a.id).await.map(|()| {
            print::deleted(&a.id, json);
            0
        }),
        C::Test(a) => c
            .test_rule(&a.id, &a.channel)
            .await
            .map(|t| i32::from(!print::tested(&t, json))),
        C::Deliveries(a) => c.dead_letters(&a.id, a.limit).await.map(|dead| {
            print::dead_letters(&dead, json);
            0
        }),
        C::Replay(a) => c.replay_dead_letters(&a.id, &a.batch_ids).await.map(|n| {
            print::replayed(n, json);
            0
        }),
    };
    done.unwrap_or_else(|e| fail(&e, &target))
}
