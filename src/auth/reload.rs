//! Keeps an [`Authenticator`]'s keys in step with its key file: reloaded
//! when the file changes (checked every second) and on SIGHUP. A file that
//! fails to load leaves the previous keys in force, and the log says why.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Authenticator, KeySet};

/// How often the key file is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The digest of the file's text now, if it can be read.
fn look(path: &std::path::Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|text| super::keys::sha256(&text))
}

/// Loads the key file once more; on failure the keys in force stay.
/// Returns whether the new keys were taken.
pub fn reload(auth: &Authenticator) -> bool {
    let Some(path) = auth.path() else { return false };
    match KeySet::load(path) {
        Ok((keys, digest)) => {
            let (k, s) = keys.counts();
            auth.replace(keys);
            auth.set_loaded(digest);
            auth.counters().reloads.fetch_add(1, Ordering::Relaxed);
            info!(file = %path.display(), keys = k, signers = s, "key file reloaded");
            true
        }
        Err(e) => {
            auth.counters().reload_failures.fetch_add(1, Ordering::Relaxed);
            warn!(cause = %e, "key file not reloaded; the previous keys stay in force");
            false
        }
    }
}

/// Watches the key file until `cancel`: reloads on change and on SIGHUP.
pub async fn watch(auth: Arc<Authenticator>, cancel: CancellationToken) {
    let Some(path) = auth.path().map(std::path::Path::to_path_buf) else {
        return;
    };
    // compared with the text the keys in force came from, so a change
    // made between loading and this task starting is not missed; a bad
    // text is tried once, not every second
    let mut tried = auth.loaded();
    #[cfg(unix)]
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(cause = %e, "cannot listen for SIGHUP; the key file is still reloaded on change");
            None
        }
    };
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        tokio::select! {
            () = cancel.cancelled() => return,
            () = hangup => {
                info!("SIGHUP: reloading the key file");
                reload(&auth);
                tried = look(&path);
            }
            _ = tick.tick() => {
                let now = look(&path);
                if now.is_some() && now != auth.loaded() && now != tried {
                    reload(&auth);
                    tried = now;
                }
            }
        }
    }
}
