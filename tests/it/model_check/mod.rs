//! Model-based test: concurrent writers drive several replicas sharing one
//! Redis with random batches, duplicated and retried requests, resumes,
//! closes and lease expiries; then every channel's metrics, every
//! ListChannels page and every live subscriber's last event are compared
//! with the reference model, exactly.
//!
//! Writers follow the documented front-end rule: each remembers its
//! sessions' lease epochs, sends them with every batch, and re-sends a
//! session's whole state (SyncSession) when an answer carries another
//! epoch, a batch is refused for its epoch, or KeepAlive says UNKNOWN.
//!
//! The seed is printed and can be replayed with `OCCUPANCY_MODEL_SEED`;
//! `OCCUPANCY_MODEL_OPS` sets steps per writer (default 250; the long
//! mode in TESTING.md uses 25,000).

mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use occupancy::proto::v1 as pb;
use rand::Rng;

pub use self::writer::drive;
use self::writer::lazy;
use crate::model::Model;
use crate::support::sub::Sub;
use crate::support::{Harness, ReadClient, TestServer, WriteClient};

/// How a drive runs.
#[derive(Debug, Clone)]
pub struct Drive {
    pub seed: u64,
    pub writers: usize,
    pub ops_per_writer: usize,
    pub channels: usize,
    /// Let leases run out now and then (needs the servers' TTL short).
    pub expiries: bool,
}

/// What a drive did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Report {
    pub operations: usize,
    pub requests: usize,
    pub retries: usize,
    pub duplicates: usize,
    pub resumes: usize,
    pub closes: usize,
    pub expiries: usize,
    pub status_mismatches: usize,
    pub already_applied: usize,
    /// SyncSessions sent because the epoch rule said a session's state
    /// was gone (or an answer disagreed with the model).
    pub syncs: usize,
    /// SyncSessions sent after a resume opened a session's first lease
    /// (see `Writer::run`).
    pub resume_syncs: usize,
}

impl Report {
    fn add(&mut self, o: &Report) {
        self.operations += o.operations;
        self.requests += o.requests;
        self.retries += o.retries;
        self.duplicates += o.duplicates;
        self.resumes += o.resumes;
        self.closes += o.closes;
        self.expiries += o.expiries;
        self.status_mismatches += o.status_mismatches;
        self.already_applied += o.already_applied;
        self.syncs += o.syncs;
        self.resume_syncs += o.resume_syncs;
    }
}

pub fn seed() -> u64 {
    std::env::var("OCCUPANCY_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random())
}

pub fn ops_per_writer(default: usize) -> usize {
    std::env::var("OCCUPANCY_MODEL_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Compares every channel's metrics, a full ListChannels walk and the
/// app-wide totals, on each replica, with the model; returns the number of
/// mismatches.
pub async fn check(urls: &[String], model: &Model, universe: &[String]) -> usize {
    let mut mismatches = 0;
    for url in urls {
        let mut r = ReadClient::new(lazy(url));
        for ch in universe {
            let got = r
                .get_occupancy(pb::GetOccupancyRequest { channel: ch.clone() })
                .await
                .expect("get")
                .into_inner();
            let m = got.channel.unwrap().status.unwrap().occupancy.unwrap().metrics.unwrap();
            let got = crate::fixture::arr(&m);
            let want = model.metrics(ch);
            if got != want {
                eprintln!("mismatch on {url} {ch}: got {got:?}, model {want:?}");
                mismatches += 1;
            }
        }
        let fx = crate::fixture::Fx {
            r: r.clone(),
            w: WriteClient::new(lazy(url)),
        };
        let listed = fx.list_all("", 7).await;
        if listed != model.active() {
            eprintln!("list mismatch on {url}: got {listed:?}, model {:?}", model.active());
            mismatches += 1;
        }
        // the app-wide totals, kept incrementally by the store, against
        // the model's sums over its active channels
        let stats = r
            .get_stats(pb::GetStatsRequest {})
            .await
            .expect("stats")
            .into_inner()
            .stats
            .unwrap_or_default();
        let active = model.active();
        let sum = |i: usize| active.iter().map(|ch| u64::from(model.metrics(ch)[i])).sum::<u64>();
        let want = (active.len() as u64, sum(0), sum(4));
        let got = (stats.active_channels, stats.connections, stats.presence_members);
        if got != want {
            eprintln!("totals mismatch on {url}: got {got:?}, model {want:?}");
            mismatches += 1;
        }
    }
    mismatches
}

/// Compares each subscriber's newest event per channel with the model.
pub async fn check_subscribers(subs: &mut [Sub], model: &Model) -> usize {
    let mut mismatches = 0;
    for sub in subs.iter_mut() {
        let latest: HashMap<String, [u32; 9]> = sub.settle(Duration::from_millis(700)).await;
        for (ch, got) in &latest {
            if *got != model.metrics(ch) {
                eprintln!(
                    "subscriber mismatch on {ch}: got {got:?}, model {:?}",
                    model.metrics(ch)
                );
                mismatches += 1;
            }
        }
        for ch in model.active() {
            if ch.starts_with("ch:") && !latest.contains_key(&ch) {
                eprintln!("subscriber never heard of active {ch}");
                mismatches += 1;
            }
        }
    }
    mismatches
}

pub fn universe(d: &Drive) -> Vec<String> {
    let mut u: Vec<String> = (0..d.channels).map(|i| format!("ch:{i:02}")).collect();
    for w in 0..d.writers {
        for s in 0..2 {
            u.push(format!("marker:w{w}-s{s}"));
        }
    }
    u
}

/// Prints the seed if the test fails, so it can be replayed.
pub struct SeedGuard(pub u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("model test failed; replay with OCCUPANCY_MODEL_SEED={}", self.0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_three_replicas_match_the_model() {
    writers_match_the_model(Harness::redis(Duration::from_millis(1_500))).await;
}

/// The same on in-memory partitions behind the partition router.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_three_replicas_of_partitions_match_the_model() {
    writers_match_the_model(Harness::partitioned(Duration::from_millis(1_500))).await;
}

/// The same on a Redis Cluster (three primaries, a replica each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_three_replicas_of_a_cluster_match_the_model() {
    writers_match_the_model(Harness::cluster(Duration::from_secs(3))).await;
}

async fn writers_match_the_model(h: Harness) {
    let d = Drive {
        seed: seed(),
        writers: 4,
        ops_per_writer: ops_per_writer(250),
        channels: 12,
        expiries: true,
    };
    let _guard = SeedGuard(d.seed);
    eprintln!(
        "model test seed {} ({} writers x {} steps)",
        d.seed, d.writers, d.ops_per_writer
    );
    let servers: Vec<TestServer> = futures::future::join_all((0..3).map(|_| h.server())).await;
    let urls: Vec<String> = servers.iter().map(TestServer::url).collect();
    let mut subs = Vec::new();
    for s in &servers {
        let mut sub = crate::support::sub::subscribe(
            s,
            pb::SubscribeOccupancyRequest {
                prefix: "ch:".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        // nothing is active yet: no snapshot events
        sub.quiet_for(Duration::from_millis(100)).await;
        subs.push(sub);
    }
    let model = Arc::new(Mutex::new(Model::with_partitions(h.partitions())));
    let report = drive(&urls, &d, model.clone()).await;
    let model = model.lock().unwrap().clone();
    let mismatches = check(&urls, &model, &universe(&d)).await;
    let sub_mismatches = check_subscribers(&mut subs, &model).await;
    eprintln!(
        "model test: {report:?}, replicas 3, mismatches {mismatches}, subscriber mismatches {sub_mismatches}, active channels {}",
        model.active().len()
    );
    assert_eq!(report.status_mismatches, 0, "operation results disagree with the model");
    assert_eq!(report.syncs, 0, "the epoch rule raised a false alarm");
    assert_eq!(mismatches, 0, "metrics or pages disagree with the model");
    assert_eq!(sub_mismatches, 0, "subscribers disagree with the model");
    assert!(report.operations >= d.writers * d.ops_per_writer / 2);
    // closing every session brings every count back to zero, exactly
    let fx = crate::fixture::Fx::new(&servers[0]).await;
    let mut model = model;
    for w in 0..d.writers {
        for s in 0..2 {
            let session = format!("w{w}-s{s}");
            fx.close(&session).await;
            model.expire(&session);
        }
    }
    assert!(model.active().is_empty());
    assert_eq!(fx.list_all("", 100).await, Vec::<String>::new());
    assert_eq!(check_subscribers(&mut subs, &model).await, 0, "subscribers end on zero");
}
