//! The `webhooks` scenario: what integration rules cost the write path,
//! and how fast their events reach a target.
//!
//! One run: the `apply` scenario's load with no rules; then rules created
//! straight in Redis (as a replica would store them), every one over every
//! channel, batched, sending to a [`Receiver`] in this process; the same
//! load again with the rules active, its sessions closed when it stops (so
//! every channel it wrote ends empty); then the receiver counts until the
//! queues are drained, and each rule's last event of each channel must
//! match the store: a lost last change (a vacated channel never told) fails
//! the scenario. The rules are deleted at the end, whatever happened, so
//! later scenarios (and the footprint) see none.
//!
//! Rules are written to Redis rather than through a replica's API so the
//! scenario needs nothing beyond the store's own protocol; replicas pick
//! them up at their next rules poll, which is why the scenario first waits
//! until every rule delivers.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use occupancy::domain::ChannelName;
use occupancy::integrations::{IntegrationStore, Rule, RuleSpec};
use occupancy::proto::v1 as pb;
use occupancy::store::{RedisConfig, RedisStore, Store};
use pb::connection_service_client::ConnectionServiceClient;

use crate::load::{conn, Credential, Load};
use crate::procfs;
use crate::receiver::Receiver;
use crate::writes::{apply_load, close_apply_sessions};

/// The scenario's own options (the load's are [`Load`]).
#[derive(clap::Args, Clone)]
pub(crate) struct Webhooks {
    /// Operations per Apply batch (as `apply`).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Channels written (as `apply`).
    #[arg(long, default_value_t = 10_000)]
    channels: usize,
    /// The Redis behind the service, where the rules are created (the
    /// replicas' default key prefix).
    #[arg(long)]
    redis_url: String,
    /// Rules, each over every channel.
    #[arg(long, default_value_t = 10)]
    rules: usize,
    /// Most events per request of each rule.
    #[arg(long, default_value_t = 1_000)]
    max_events: u32,
    /// Least time between two requests of a rule, ms.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// A replica's HTTP side, whose `/metrics` give the events enqueued
    /// and delivered; repeatable: give every replica on the Redis, as any
    /// of them may enqueue a change.
    #[arg(long = "metrics")]
    metrics: Vec<String>,
    /// `KEY_ID:SECRET` sent to the `/metrics` of replicas that check
    /// credentials.
    #[arg(long)]
    metrics_key: Option<String>,
    /// Longest wait for the queues to drain after the load.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
}

/// No event for this long after the load means the queues are empty: a
/// rule sends at least every `interval_ms` while it has events, and the
/// workers poll every 100 ms at most.
const QUIET: Duration = Duration::from_secs(2);

/// Longest wait for every rule's first delivery.
const FLOWING_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait, after the drain, for the last events to match the store.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the scenario (see the module docs) and prints its `RESULT` line.
pub(crate) async fn webhooks(load: Load, opts: Webhooks) -> anyhow::Result<()> {
    let store = RedisStore::new(RedisConfig::new(opts.redis_url.clone()))?;
    let rules = store
        .integrations()
        .context("the Redis store keeps no integration rules in this build")?;
    let (_, existing) = rules.rules().await?;
    anyhow::ensure!(
        existing.is_empty(),
        "{} integration rules exist already: the run without rules would not be one",
        existing.len()
    );
    let mut without = apply_load(&load, opts.batch, opts.channels, "-wh0").await?;
    // empty before any rule exists: no lease of this load runs out later,
    // in the measured part
    close_apply_sessions(&load).await?;
    let receiver = Receiver::start()?;
    let mut ids = Vec::new();
    let measured = async {
        for i in 0..opts.rules {
            ids.push(create_rule(&*rules, &opts, &receiver, i).await?);
        }
        with_rules(&load, &opts, &receiver, &ids, &store).await
    }
    .await;
    // whatever happened, leave no rule behind
    let mut deleted = Ok(());
    for id in &ids {
        if let Err(e) = rules.delete_rule(id).await {
            deleted = Err(e).with_context(|| format!("delete rule {id}"));
        }
    }
    let (mut with, fields) = measured?;
    deleted?;
    let (r0, r1) = (without.rate(), with.rate());
    println!(
        "RESULT scenario=webhooks rules={n} apply_without={r0:.0} apply_with_{n}_rules={r1:.0} ratio={:.3} \
         p50_ms_without={:.3} p50_ms_with={:.3} p99_ms_without={:.3} p99_ms_with={:.3}{fields} batch={} channels={} \
         max_events={} interval_ms={}{}{}",
        r1 / r0,
        without.p(0.5),
        with.p(0.5),
        without.p(0.99),
        with.p(0.99),
        opts.batch,
        opts.channels,
        opts.max_events,
        opts.interval_ms,
        without.cpu_fields("without"),
        with.cpu_fields("with"),
        n = opts.rules,
    );
    Ok(())
}

/// Stores rule `i`: every channel, occupancy events, batched, to the
/// receiver.
async fn create_rule(
    rules: &dyn IntegrationStore,
    opts: &Webhooks,
    receiver: &Receiver,
    i: usize,
) -> anyhow::Result<String> {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let rule = Rule::create(
        RuleSpec {
            description: Some(format!("occupancy-bench webhooks {i}")),
            target: Some(receiver.url()),
            channels: Some(vec!["*".into()]),
            events: Some(vec!["channel.occupancy".into()]),
            mode: Some("batched".into()),
            max_events: Some(opts.max_events),
            interval_ms: Some(opts.interval_ms),
            ..RuleSpec::default()
        },
        now_ms,
    )?;
    rules.put_rule(&rule, true).await?;
    Ok(rule.id)
}

/// Waits until every rule delivers, runs the load again and waits for the
/// queues to drain: the load's stats and the result line's delivery
/// fields.
async fn with_rules(
    load: &Load,
    opts: &Webhooks,
    receiver: &Receiver,
    ids: &[String],
    store: &dyn Store,
) -> anyhow::Result<(crate::load::Stats, String)> {
    let (flowing, probe) = wait_flowing(&load.url, receiver, ids).await?;
    let replicas = Replicas::new(opts)?;
    let before = receiver.events();
    let m0 = replicas.totals().await?;
    // closing the probe's session makes one event per rule: closed after
    // both counts are taken, it is in both the enqueued and the received
    // figures (closed before, it could be enqueued before the first and
    // received after the second)
    probe.await?;
    let with = apply_load(load, opts.batch, opts.channels, "-wh1").await?;
    let stop = Instant::now();
    let at_stop = receiver.events();
    let m_stop = replicas.totals().await?;
    // every channel the load wrote empties now; its events are part of
    // the drain
    close_apply_sessions(load).await?;

    // the drain: until nothing arrives for QUIET, with the CPU the watched
    // processes spend on it
    let cpu = (!load.cpu_of.is_empty())
        .then(|| procfs::Window::start(&load.cpu_of))
        .transpose()?;
    let mut drained = true;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let last = receiver.last_event().map_or(stop, |t| t.max(stop));
        if last.elapsed() >= QUIET {
            break;
        }
        if stop.elapsed() >= opts.drain_timeout {
            drained = false;
            break;
        }
    }
    let cpu = cpu.map(procfs::Window::end).transpose()?.unwrap_or_default();
    let end = receiver.last_event().map_or(stop, |t| t.max(stop));
    let at_end = receiver.events();
    let m_end = replicas.totals().await?;

    let drain = end - stop;
    let during = at_stop - before;
    let after = at_end - at_stop;
    let during_per_s = during as f64 / with.elapsed.as_secs_f64();
    let drain_per_s = if drain.is_zero() {
        0.0
    } else {
        after as f64 / drain.as_secs_f64()
    };
    // the drain shows what delivery does when it has the machine; with
    // less than half a second of backlog it kept up with the load, whose
    // rate is then the figure
    let (delivered_per_s, basis) = if drain >= Duration::from_millis(500) {
        (drain_per_s, "drain")
    } else {
        (during_per_s, "load")
    };
    // what the replicas had enqueued by the end of the load, less what had
    // arrived: a lower bound, as their sources may still be behind
    let backlog = match (&m0, &m_stop) {
        (Some(a), Some(b)) => (b.enqueued - a.enqueued).saturating_sub(during).to_string(),
        _ => "-".into(),
    };
    let mut f = format!(
        " delivered_per_s={delivered_per_s:.0} delivered_basis={basis} during_load_per_s={during_per_s:.0} \
         drain_per_s={drain_per_s:.0} drain_s={:.2} drained={} backlog_at_stop_min={} received={} requests={} \
         repeats={} bad_bodies={} flowing_s={:.2}",
        drain.as_secs_f64(),
        if drained { "yes" } else { "no" },
        backlog,
        at_end - before,
        receiver.requests(),
        receiver.repeats(),
        receiver.bad(),
        flowing.as_secs_f64(),
    );
    if let (Some(m0), Some(m)) = (&m0, &m_end) {
        let enqueued = m.enqueued - m0.enqueued;
        f.push_str(&format!(
            " enqueued={enqueued} delivered_metric={} missing={} source_gaps={} source_coalesced={} dead_letters={}",
            m.delivered - m0.delivered,
            enqueued.saturating_sub(at_end - before),
            m.gaps - m0.gaps,
            m.coalesced - m0.coalesced,
            m.dead - m0.dead,
        ));
    }
    let (stale, compared) = stale_channels(store, receiver).await?;
    f.push_str(&format!(" compared_channels={compared} stale_channels={stale}"));
    anyhow::ensure!(
        !drained || stale == 0,
        "after the drain, {stale} of {compared} (rule, channel) pairs last delivered a connection count that is not the store's"
    );
    // CPU of each watched process per event delivered in the drain
    let per_event: Vec<(String, Duration)> = cpu.into_iter().map(|(n, t)| (format!("{n}_drain"), t)).collect();
    if after > 0 {
        f.push_str(&procfs::per_op(&per_event, after));
    }
    Ok((with, f))
}

/// (rule, channel) pairs whose last delivered connection count is not the
/// store's, once they settle (at most [`SETTLE_TIMEOUT`]); and how many
/// pairs were compared.
async fn stale_channels(store: &dyn Store, receiver: &Receiver) -> anyhow::Result<(usize, usize)> {
    let start = Instant::now();
    loop {
        let last = receiver.last_connections();
        let names: BTreeSet<&str> = last.values().flat_map(|m| m.keys().map(String::as_str)).collect();
        let names = names
            .into_iter()
            .map(|n| ChannelName::parse("channel", n).map_err(|e| anyhow::anyhow!("{e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut now: HashMap<&str, u32> = HashMap::new();
        for chunk in names.chunks(1_000) {
            for (n, m) in chunk.iter().zip(store.get(chunk).await?) {
                now.insert(n.as_str(), m.connections);
            }
        }
        let compared = last.values().map(HashMap::len).sum();
        let stale = last
            .values()
            .flat_map(|m| m.iter())
            .filter(|(ch, c)| now.get(ch.as_str()) != Some(*c))
            .count();
        if stale == 0 || start.elapsed() >= SETTLE_TIMEOUT {
            return Ok((stale, compared));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Changes a probe channel until every rule has delivered an event: the
/// replicas read rules on a poll, and a change made before they did is
/// not enqueued. Returns how long that took, and the close of the probe's
/// session, for the caller to run.
async fn wait_flowing(
    url: &str,
    receiver: &Receiver,
    ids: &[String],
) -> anyhow::Result<(Duration, impl std::future::Future<Output = anyhow::Result<()>>)> {
    let run = std::process::id();
    let mut c = ConnectionServiceClient::new(conn(url, &Credential::default()).await?);
    let (session_id, connection_id, channel) = (format!("wh-{run}"), format!("wh-{run}"), format!("webhooks:{run}"));
    let start = Instant::now();
    let mut attached = false;
    while !ids.iter().all(|id| receiver.rule_events(id) > 0) {
        anyhow::ensure!(
            start.elapsed() < FLOWING_TIMEOUT,
            "no delivery from {} of {} rules within {FLOWING_TIMEOUT:?}: do the replicas run integrations?",
            ids.iter().filter(|id| receiver.rule_events(id) == 0).count(),
            ids.len()
        );
        if attached {
            c.detach(pb::DetachRequest {
                session_id: session_id.clone(),
                connection_id: connection_id.clone(),
                channel: channel.clone(),
            })
            .await?;
        } else {
            c.attach(pb::AttachRequest {
                session_id: session_id.clone(),
                connection_id: connection_id.clone(),
                channel: channel.clone(),
                modes: vec![pb::Mode::Subscribe as i32],
            })
            .await?;
        }
        attached = !attached;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = start.elapsed();
    let close = async move {
        c.close_session(pb::CloseSessionRequest { session_id }).await?;
        Ok(())
    };
    Ok((took, close))
}

/// Integration counters summed over the replicas' `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    enqueued: u64,
    delivered: u64,
    gaps: u64,
    coalesced: u64,
    dead: u64,
}

/// The replicas' HTTP sides, for their integration counters.
struct Replicas {
    client: reqwest::Client,
    urls: Vec<String>,
    key: Option<String>,
}

impl Replicas {
    fn new(opts: &Webhooks) -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?,
            urls: opts.metrics.clone(),
            key: opts.metrics_key.clone(),
        })
    }

    /// The counters now; `None` when no replica was given.
    async fn totals(&self) -> anyhow::Result<Option<Totals>> {
        if self.urls.is_empty() {
            return Ok(None);
        }
        let mut t = Totals::default();
        for url in &self.urls {
            let mut req = self.client.get(format!("{}/metrics", url.trim_end_matches('/')));
            if let Some(k) = &self.key {
                req = req.bearer_auth(k);
            }
            let text = req
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .with_context(|| format!("scrape {url}/metrics"))?
                .text()
                .await?;
            t.enqueued += counter(&text, "occupancy_webhook_events_enqueued_total", url)?;
            t.delivered += counter(&text, "occupancy_webhook_events_delivered_total", url)?;
            t.gaps += counter(&text, "occupancy_webhook_source_gaps_total", url)?;
            t.coalesced += counter(&text, "occupancy_webhook_source_coalesced_total", url)?;
            t.dead += counter(&text, "occupancy_webhook_dead_letters_total", url)?;
        }
        Ok(Some(t))
    }
}

/// The value of an unlabelled counter in a Prometheus text exposition.
fn counter(text: &str, name: &str, url: &str) -> anyhow::Result<u64> {
    text.lines()
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some(name)).then(|| parts.next()).flatten()
        })
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .with_context(|| format!("no {name} in {url}/metrics"))
}
