//! The model test's writers: each drives random Apply batches, duplicates,
//! retries, resumes, closes and lease expiries over every replica,
//! following the front-end epoch rule, and records what the model says
//! each operation should answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use occupancy::proto::v1 as pb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::{Channel, Endpoint};

use super::{Drive, Report};
use crate::model::{Model, Op};
use crate::support::{wire, ReadClient, WriteClient};

pub fn lazy(url: &str) -> Channel {
    Endpoint::from_shared(url.to_string())
        .expect("url")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

struct Writer {
    id: usize,
    rng: StdRng,
    clients: Vec<(WriteClient, ReadClient)>,
    model: Arc<Mutex<Model>>,
    channels: usize,
    report: Report,
    sequence: u64,
    /// Per session: the lease epoch its state is known to be in (0: none).
    epochs: HashMap<String, u64>,
}

impl Writer {
    fn session(&self, s: usize) -> String {
        format!("w{}-s{s}", self.id)
    }

    fn random_op(&mut self) -> Op {
        let conn = format!("w{}-c{}", self.id, self.rng.random_range(0..6));
        let channel = format!("ch:{:02}", self.rng.random_range(0..self.channels));
        let client = ["alice", "bob", "carol", "dave"][self.rng.random_range(0..4)].to_string();
        match self.rng.random_range(0..10) {
            0..=3 => Op::Attach {
                conn,
                channel,
                modes: self.rng.random_range(0..64),
            },
            4..=5 => Op::Detach { conn, channel },
            6..=8 => Op::Enter { conn, channel, client },
            _ => Op::Leave { conn, channel, client },
        }
    }

    /// The epoch rule for an answer of `session`: true when its state is
    /// gone and must be re-sent (a first non-zero epoch is taken as it
    /// comes).
    fn observe(&mut self, session: &str, epoch: u64) -> bool {
        let known = self.epochs.entry(session.to_string()).or_insert(0);
        if *known == 0 {
            *known = epoch;
            return false;
        }
        epoch != *known
    }

    /// Sends an Apply, retrying on other replicas until one answers
    /// (bounded), and maybe sending it again (a duplicate).
    /// Results per operation, or None when a retry found the batch already
    /// applied (its results were lost with the replica that applied it) or
    /// the batch was refused for its epoch; and whether the session's state
    /// must be re-sent (once the caller has added the batch to it).
    async fn apply(&mut self, session: &str, ops: &[Op]) -> (Option<Vec<pb::OperationResult>>, bool) {
        // one sequence per batch, kept across retries and duplicates
        self.sequence += 1;
        let known = self.epochs.get(session).copied().unwrap_or(0);
        let req = pb::ApplyRequest {
            session_id: session.to_string(),
            operations: ops.iter().map(|o| pb::Operation { op: Some(wire::op(o)) }).collect(),
            include_metrics: false,
            sequence: self.sequence,
            session_epoch: known,
        };
        let mut replica = self.rng.random_range(0..self.clients.len());
        let mut result = None;
        let mut resync = false;
        for attempt in 0..200 {
            self.report.requests += 1;
            match self.clients[replica].0.apply(req.clone()).await {
                Ok(r) => {
                    let r = r.into_inner();
                    if r.epoch_mismatch {
                        // the lease it was built for is gone (the store
                        // lost it): not applied
                        assert!(r.results.is_empty());
                        resync = true;
                        result = Some(None);
                    } else if r.already_applied {
                        // a retry of a batch that went through before the
                        // replica answering it died
                        self.report.already_applied += 1;
                        assert!(attempt > 0, "a first send cannot be a repeat");
                        resync = self.observe(session, r.session_epoch);
                        result = Some(None);
                    } else {
                        resync = self.observe(session, r.session_epoch);
                        result = Some(Some(r.results));
                    }
                    break;
                }
                Err(status) => {
                    assert!(
                        matches!(
                            status.code(),
                            tonic::Code::Unavailable
                                | tonic::Code::Unknown
                                | tonic::Code::Cancelled
                                | tonic::Code::DeadlineExceeded
                        ),
                        "unexpected error {status:?}"
                    );
                    self.report.retries += 1;
                    replica = (replica + 1) % self.clients.len();
                    tokio::time::sleep(Duration::from_millis(10 * (attempt % 10 + 1))).await;
                }
            }
        }
        let results = result.expect("no replica answered in 200 attempts");
        if self.rng.random_bool(0.1) {
            // the client did not see the answer and sends it again: the
            // service must not apply it twice
            self.report.duplicates += 1;
            let other = (replica + 1) % self.clients.len();
            self.report.requests += 1;
            let known = self.epochs.get(session).copied().unwrap_or(0);
            if let Ok(r) = self.clients[other].0.apply(req).await {
                let r = r.into_inner();
                if r.already_applied || r.epoch_mismatch {
                    assert!(r.results.is_empty());
                } else if r.session_epoch != 0 && (known == 0 || r.session_epoch == known) {
                    panic!("a duplicate was applied again: {r:?}");
                } else if r.session_epoch != 0 {
                    // applied to a lease opened since (the store lost the
                    // one it was sent for): the state is re-sent anyway
                    resync = true;
                }
                // epoch 0: it left the session holding nothing, as the
                // first send did
            }
        }
        (results, resync)
    }

    /// Re-sends the session's whole state, as the model holds it.
    async fn sync(&mut self, session: &str) {
        let holdings = self.model.lock().unwrap().holdings(session);
        let req = pb::SyncSessionRequest {
            session_id: session.to_string(),
            attachments: wire::holdings(&holdings),
            ttl_ms: 0,
        };
        self.report.syncs += 1;
        for i in 0..200 {
            let n = self.clients.len();
            if let Ok(r) = self.clients[i % n].0.sync_session(req.clone()).await {
                self.epochs.insert(session.to_string(), r.into_inner().session_epoch);
                return;
            }
            tokio::time::sleep(Duration::from_millis(10 * (i as u64 % 10 + 1))).await;
        }
        panic!("sync failed 200 times");
    }

    async fn keep_alive(&mut self, session: &str, ttl_ms: u32) {
        for i in 0..200 {
            let n = self.clients.len();
            let c = &mut self.clients[i % n].0;
            if let Ok(r) = c
                .keep_alive(pb::KeepAliveRequest {
                    session_id: session.to_string(),
                    ttl_ms,
                })
                .await
            {
                let r = r.into_inner();
                let known = self.epochs.get(session).copied().unwrap_or(0);
                let unknown = r.status == pb::SessionStatus::Unknown as i32;
                if (unknown && known != 0) || self.observe(session, r.session_epoch) {
                    self.sync(session).await;
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(10 * (i as u64 % 10 + 1))).await;
        }
        panic!("keep-alive failed 200 times");
    }

    async fn marker_connections(&mut self, channel: &str) -> Option<u32> {
        let i = self.rng.random_range(0..self.clients.len());
        let r = self.clients[i]
            .1
            .get_occupancy(pb::GetOccupancyRequest {
                channel: channel.to_string(),
            })
            .await
            .ok()?;
        Some(r.into_inner().channel?.status?.occupancy?.metrics?.connections)
    }

    async fn run(mut self, steps: usize, expiries: bool) -> Report {
        let mut since_keepalive = 0;
        for _ in 0..steps {
            since_keepalive += 1;
            if since_keepalive >= 10 {
                since_keepalive = 0;
                for s in 0..2 {
                    let name = self.session(s);
                    self.keep_alive(&name, 0).await;
                }
            }
            let s = self.rng.random_range(0..2);
            let session = self.session(s);
            let roll = self.rng.random_range(0..100);
            if roll < 2 {
                // close a session: everything it owns goes at once
                self.report.closes += 1;
                for i in 0..200 {
                    let n = self.clients.len();
                    let c = &mut self.clients[i % n].0;
                    if c.close_session(pb::CloseSessionRequest {
                        session_id: session.clone(),
                    })
                    .await
                    .is_ok()
                    {
                        break;
                    }
                }
                self.model.lock().unwrap().expire(&session);
                // the front end closed it: nothing held, no lease
                self.epochs.insert(session.clone(), 0);
                continue;
            }
            if roll < 4 && expiries {
                // let the lease run out: mark the session, stop writing for
                // it, and wait until its marker is gone
                self.report.expiries += 1;
                let marker = format!("marker:{session}");
                let op = Op::Attach {
                    conn: format!("{session}-marker"),
                    channel: marker.clone(),
                    modes: 0,
                };
                let (_, resync) = self.apply(&session, std::slice::from_ref(&op)).await;
                self.model.lock().unwrap().apply(&session, &op);
                if resync {
                    self.sync(&session).await;
                }
                let other = self.session(1 - s);
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    self.keep_alive(&other, 0).await;
                    if self.marker_connections(&marker).await == Some(0) {
                        break;
                    }
                    assert!(Instant::now() < deadline, "{session} did not expire within 30 s");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                self.model.lock().unwrap().expire(&session);
                // the front end let it run out on purpose: nothing held
                self.epochs.insert(session.clone(), 0);
                continue;
            }
            let n = if roll < 80 { self.rng.random_range(1..=8) } else { 1 };
            let ops: Vec<Op> = (0..n).map(|_| self.random_op()).collect();
            let mut resumed = false;
            {
                let m = self.model.lock().unwrap();
                for op in &ops {
                    let conn = match op {
                        Op::Attach { conn, .. }
                        | Op::Detach { conn, .. }
                        | Op::Enter { conn, .. }
                        | Op::Leave { conn, .. } => conn,
                    };
                    let owner = m.holdings(&self.session(1 - s)).iter().any(|h| &h.0 == conn);
                    if owner {
                        self.report.resumes += 1;
                        resumed = true;
                    }
                }
            }
            let first_lease = self.epochs.get(&session).copied().unwrap_or(0) == 0;
            let (results, mut resync) = self.apply(&session, &ops).await;
            // A resume that opened the session's first lease took over, in
            // the model, whatever the other session held of the connection;
            // if that session's state was lost meanwhile (not noticed by it
            // yet), the service holds less. The front end re-sends its state
            // to be sure (a resume there re-attaches every channel anyway).
            let resume_sync = !resync && resumed && first_lease && self.epochs.get(&session).copied().unwrap_or(0) != 0;
            {
                let mut m = self.model.lock().unwrap();
                for (i, op) in ops.iter().enumerate() {
                    let accepted = m.apply(&session, op);
                    if let Some(r) = results.as_ref().and_then(|r| r.get(i)) {
                        if r.status == pb::OperationStatus::AlreadyApplied as i32 {
                            // its partition had applied it before the
                            // replica answering the first send died; its
                            // result went with that answer
                            assert!(m.partitions() > 1, "only partitions answer ALREADY_APPLIED");
                            self.report.already_applied += 1;
                        } else if accepted != (r.status == pb::OperationStatus::Ok as i32) {
                            self.report.status_mismatches += 1;
                            // an answer the front end did not expect: its
                            // view and the service's differ, so it re-sends
                            // its state (as the proto suggests on drift)
                            resync = true;
                        }
                    }
                }
            }
            if resync {
                self.sync(&session).await;
            } else if resume_sync {
                self.sync(&session).await;
                self.report.syncs -= 1;
                self.report.resume_syncs += 1;
            }
            self.report.operations += n;
        }
        // one KeepAlive round (with the epoch rule) that also holds the
        // leases through the checks that follow
        for s in 0..2 {
            let session = self.session(s);
            self.keep_alive(&session, 60_000).await;
        }
        self.report
    }
}

/// Runs the writers against `urls` and returns what they did.
pub async fn drive(urls: &[String], d: &Drive, model: Arc<Mutex<Model>>) -> Report {
    let mut tasks = Vec::new();
    for w in 0..d.writers {
        let clients = urls
            .iter()
            .map(|u| {
                let ch = lazy(u);
                (WriteClient::new(ch.clone()), ReadClient::new(ch))
            })
            .collect();
        let writer = Writer {
            id: w,
            rng: StdRng::seed_from_u64(d.seed.wrapping_add(w as u64 * 7919)),
            clients,
            model: model.clone(),
            channels: d.channels,
            report: Report::default(),
            sequence: 0,
            epochs: HashMap::new(),
        };
        tasks.push(tokio::spawn(writer.run(d.ops_per_writer, d.expiries)));
    }
    let mut total = Report::default();
    for t in tasks {
        total.add(&t.await.expect("writer panicked"));
    }
    total
}
