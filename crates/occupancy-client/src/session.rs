//! The front end's side of the service: one [`Session`] per front-end
//! process holds the lease, batches writes, and restores its state when the
//! service lost it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::proto::connection_service_client::ConnectionServiceClient;
use crate::proto::{self, operation, Mode};
use crate::{Client, Error};

/// Operations sent in one Apply at most (the service's limit).
const MAX_BATCH: usize = 10_000;
/// How long writes are gathered before they are sent.
const BATCH_WINDOW: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Holding {
    modes: BTreeSet<i32>,
    members: BTreeSet<String>,
}

struct Inner {
    client: Client,
    id: String,
    ttl_ms: u32,
    holdings: Mutex<BTreeMap<(String, String), Holding>>,
    queue: Mutex<Vec<proto::Operation>>,
    sending: tokio::sync::Mutex<()>,
    needs_sync: AtomicBool,
    wake: Notify,
    cancel: CancellationToken,
    resyncs: std::sync::atomic::AtomicU64,
    last_sequence: std::sync::atomic::AtomicU64,
    /// The lease epoch the held state was last known to be in (0: none
    /// seen yet).
    epoch: std::sync::atomic::AtomicU64,
}

/// A front end's session: the lease under which all of its connections'
/// attachments and presence members live.
///
/// Writes ([`attach`](Self::attach), [`detach`](Self::detach),
/// [`enter`](Self::enter), [`leave`](Self::leave)) return at once; they are
/// gathered for a few milliseconds and sent as one `Apply`. The session
/// keeps its own copy of everything it holds and sends KeepAlive every
/// third of its TTL. It follows the service's epoch rule: it remembers the
/// lease epoch of its last `SyncSession` (or first answer), sends it with
/// every batch, and whenever an answer carries another epoch, a batch is
/// refused for its epoch, KeepAlive says the session is unknown, or a
/// write or KeepAlive failed without a known outcome, it re-sends that
/// whole state with `SyncSession` at once. Dropping the session closes it
/// (best effort); call [`close`](Self::close) to wait for it.
pub struct Session {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.inner.id).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Session {
    pub(crate) async fn open(client: Client, id: String, ttl: Duration) -> Result<Session, Error> {
        let ttl_ms = u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX).clamp(1_000, 600_000);
        let inner = Arc::new(Inner {
            client,
            id,
            ttl_ms,
            holdings: Mutex::new(BTreeMap::new()),
            queue: Mutex::new(Vec::new()),
            sending: tokio::sync::Mutex::new(()),
            needs_sync: AtomicBool::new(false),
            wake: Notify::new(),
            cancel: CancellationToken::new(),
            resyncs: std::sync::atomic::AtomicU64::new(0),
            last_sequence: std::sync::atomic::AtomicU64::new(0),
            epoch: std::sync::atomic::AtomicU64::new(0),
        });
        let first = inner.keep_alive().await?;
        inner.epoch.store(first.session_epoch, Ordering::Relaxed);
        tokio::spawn(background(inner.clone()));
        Ok(Session { inner })
    }

    /// The session id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// How many times the session started re-sending its whole state.
    pub fn resyncs(&self) -> u64 {
        self.inner.resyncs.load(Ordering::Relaxed)
    }

    /// The lease epoch the session's state is known to be in (0 before the
    /// first answer that named one).
    pub fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Relaxed)
    }

    /// Number of (connection, channel) attachments held.
    pub fn attachments(&self) -> usize {
        lock(&self.inner.holdings).len()
    }

    fn push(&self, op: operation::Op) {
        lock(&self.inner.queue).push(proto::Operation { op: Some(op) });
        self.inner.wake.notify_one();
    }

    /// Attaches `connection` to `channel` with `modes` (replacing earlier
    /// modes; dropping [`Mode::Presence`] drops its presence members).
    pub fn attach(&self, connection: &str, channel: &str, modes: &[Mode]) {
        let modes_set: BTreeSet<i32> = modes.iter().map(|m| *m as i32).collect();
        {
            let mut h = lock(&self.inner.holdings);
            let e = h.entry((connection.to_string(), channel.to_string())).or_default();
            if !modes_set.contains(&(Mode::Presence as i32)) {
                e.members.clear();
            }
            e.modes = modes_set.clone();
        }
        self.push(operation::Op::Attach(proto::AttachOperation {
            connection_id: connection.to_string(),
            channel: channel.to_string(),
            modes: modes_set.into_iter().collect(),
        }));
    }

    /// Detaches `connection` from `channel` (its presence members go too).
    pub fn detach(&self, connection: &str, channel: &str) {
        lock(&self.inner.holdings).remove(&(connection.to_string(), channel.to_string()));
        self.push(operation::Op::Detach(proto::DetachOperation {
            connection_id: connection.to_string(),
            channel: channel.to_string(),
        }));
    }

    /// Enters `client` into presence on `channel` through `connection`;
    /// false (and nothing sent) unless the connection is attached there
    /// with [`Mode::Presence`].
    pub fn enter(&self, connection: &str, channel: &str, client: &str) -> bool {
        {
            let mut h = lock(&self.inner.holdings);
            match h.get_mut(&(connection.to_string(), channel.to_string())) {
                Some(e) if e.modes.contains(&(Mode::Presence as i32)) => {
                    e.members.insert(client.to_string());
                }
                _ => return false,
            }
        }
        self.push(operation::Op::Enter(proto::PresenceOperation {
            connection_id: connection.to_string(),
            channel: channel.to_string(),
            client_id: client.to_string(),
        }));
        true
    }

    /// Removes the presence member (`client`, `connection`) from `channel`.
    pub fn leave(&self, connection: &str, channel: &str, client: &str) {
        if let Some(e) = lock(&self.inner.holdings).get_mut(&(connection.to_string(), channel.to_string())) {
            e.members.remove(client);
        }
        self.push(operation::Op::Leave(proto::PresenceOperation {
            connection_id: connection.to_string(),
            channel: channel.to_string(),
            client_id: client.to_string(),
        }));
    }

    /// Sends every write made so far and waits for the service to apply
    /// them.
    ///
    /// # Errors
    /// The service's error after retries; the session then re-sends its
    /// whole state as soon as the service answers again.
    pub async fn flush(&self) -> Result<(), Error> {
        self.inner.flush().await?;
        self.inner.repair().await?;
        Ok(())
    }

    /// Re-sends the whole state now (SyncSession).
    ///
    /// # Errors
    /// The service's error after retries.
    pub async fn sync(&self) -> Result<(), Error> {
        self.inner.sync().await
    }

    /// Sends a KeepAlive now; re-sends the whole state if the service no
    /// longer knew the session (or its lease epoch changed, or an earlier
    /// call failed). Returns whether it had to.
    ///
    /// # Errors
    /// The service's error after retries.
    pub async fn keep_alive(&self) -> Result<bool, Error> {
        self.inner.keep_alive_and_repair().await
    }

    /// Closes the session: everything it holds is removed at once.
    ///
    /// # Errors
    /// The service's error after retries.
    pub async fn close(self) -> Result<(), Error> {
        self.inner.cancel.cancel();
        lock(&self.inner.queue).clear();
        lock(&self.inner.holdings).clear();
        self.inner.close().await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.inner.cancel.is_cancelled() {
            return;
        }
        self.inner.cancel.cancel();
        // best effort: close the lease rather than leave it to expire
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let inner = self.inner.clone();
            handle.spawn(async move {
                if let Err(e) = inner.close().await {
                    tracing::warn!(session = %inner.id, cause = %e, "closing a dropped session failed; its lease will expire");
                }
            });
        }
    }
}

impl Inner {
    /// Closes the lease once no write or re-sync is in flight. Called after
    /// `cancel`, so none starts afterwards: a re-sync already under way when
    /// the session was closed would otherwise land after CloseSession and
    /// bring the whole state back under a lease nobody renews.
    async fn close(&self) -> Result<(), Error> {
        let _sending = self.sending.lock().await;
        let id = self.id.clone();
        self.client
            .call(|ch| {
                let id = id.clone();
                async move {
                    ConnectionServiceClient::new(ch)
                        .close_session(proto::CloseSessionRequest { session_id: id })
                        .await?;
                    Ok(())
                }
            })
            .await
    }

    /// Batch sequences from the clock in microseconds, strictly
    /// increasing, so a restarted front end reusing its session id starts
    /// above its earlier batches.
    fn next_sequence(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let mut last = self.last_sequence.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self
                .last_sequence
                .compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(actual) => last = actual,
            }
        }
    }

    async fn keep_alive(&self) -> Result<proto::KeepAliveResponse, Error> {
        let (id, ttl_ms) = (self.id.clone(), self.ttl_ms);
        self.client
            .call(|ch| {
                let id = id.clone();
                async move {
                    Ok(ConnectionServiceClient::new(ch)
                        .keep_alive(proto::KeepAliveRequest { session_id: id, ttl_ms })
                        .await?
                        .into_inner())
                }
            })
            .await
    }

    /// The epoch rule: an answer's epoch other than the one the held state
    /// is in means that state is gone (a first non-zero epoch is taken as
    /// it comes). Returns whether the state must be re-sent.
    fn observe(&self, epoch: u64) -> bool {
        let known = self.epoch.load(Ordering::Relaxed);
        if known == 0 {
            self.epoch.store(epoch, Ordering::Relaxed);
            return false;
        }
        if epoch != known {
            tracing::warn!(session = %self.id, known, epoch, "the session's lease changed, re-sending its state");
            self.needs_sync.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    async fn keep_alive_and_repair(&self) -> Result<bool, Error> {
        let r = match self.keep_alive().await {
            Ok(r) => r,
            Err(e) => {
                // it may have reached the store and opened a new lease
                self.needs_sync.store(true, Ordering::Relaxed);
                return Err(e);
            }
        };
        if r.status == proto::SessionStatus::Unknown as i32 {
            tracing::warn!(session = %self.id, "the service lost this session, re-sending its state");
            self.needs_sync.store(true, Ordering::Relaxed);
        }
        self.observe(r.session_epoch);
        self.repair().await
    }

    /// Re-sends the whole state if something said it may be wrong; returns
    /// whether it did.
    async fn repair(&self) -> Result<bool, Error> {
        if self.needs_sync.load(Ordering::Relaxed) {
            self.sync().await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn flush(&self) -> Result<(), Error> {
        let _sending = self.sending.lock().await;
        if self.cancel.is_cancelled() {
            // closed: CloseSession removes everything, queued writes too
            return Ok(());
        }
        let ops = std::mem::take(&mut *lock(&self.queue));
        for chunk in ops.chunks(MAX_BATCH) {
            // one sequence per batch, kept across retries: a retry of a
            // batch that went through, or a batch stuck behind a replica
            // that died, is never applied twice or after a newer one
            let req = proto::ApplyRequest {
                session_id: self.id.clone(),
                operations: chunk.to_vec(),
                include_metrics: false,
                sequence: self.next_sequence(),
                // never applied to a lease other than the one the held
                // state is in
                session_epoch: self.epoch.load(Ordering::Relaxed),
            };
            let r = self
                .client
                .call(|ch| {
                    let req = req.clone();
                    async move { Ok(ConnectionServiceClient::new(ch).apply(req).await?.into_inner()) }
                })
                .await;
            match r {
                Err(e) => {
                    // the copy of the state is right; the service may not be
                    self.needs_sync.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                Ok(r) if r.epoch_mismatch => {
                    // not applied: the lease it was meant for is gone, and
                    // the state goes with the next SyncSession
                    self.needs_sync.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(r) => {
                    if self.observe(r.session_epoch) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    async fn sync(&self) -> Result<(), Error> {
        let _sending = self.sending.lock().await;
        if self.cancel.is_cancelled() {
            // closed: re-sending would bring back what CloseSession removed
            return Ok(());
        }
        // the held state already includes every queued write
        lock(&self.queue).clear();
        let attachments: Vec<proto::SessionAttachment> = lock(&self.holdings)
            .iter()
            .map(|((conn, ch), h)| proto::SessionAttachment {
                connection_id: conn.clone(),
                channel: ch.clone(),
                modes: h.modes.iter().copied().collect(),
                presence_client_ids: h.members.iter().cloned().collect(),
            })
            .collect();
        self.resyncs.fetch_add(1, Ordering::Relaxed);
        let req = proto::SyncSessionRequest {
            session_id: self.id.clone(),
            attachments,
            ttl_ms: self.ttl_ms,
        };
        let r = self
            .client
            .call(|ch| {
                let req = req.clone();
                async move { Ok(ConnectionServiceClient::new(ch).sync_session(req).await?.into_inner()) }
            })
            .await?;
        self.epoch.store(r.session_epoch, Ordering::Relaxed);
        self.needs_sync.store(false, Ordering::Relaxed);
        Ok(())
    }
}

async fn background(inner: Arc<Inner>) {
    let every = Duration::from_millis(u64::from(inner.ttl_ms) / 3);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            () = inner.cancel.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = inner.keep_alive_and_repair().await {
                    tracing::warn!(session = %inner.id, cause = %e, "keep-alive failed");
                }
            }
            () = inner.wake.notified() => {
                tokio::select! {
                    () = inner.cancel.cancelled() => return,
                    () = tokio::time::sleep(BATCH_WINDOW) => {}
                }
                if let Err(e) = inner.flush().await {
                    tracing::warn!(session = %inner.id, cause = %e, "sending writes failed; will re-send the whole state");
                }
                if let Err(e) = inner.repair().await {
                    tracing::warn!(session = %inner.id, cause = %e, "re-sending the whole state failed; will try again");
                }
            }
        }
    }
}
