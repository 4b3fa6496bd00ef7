//! Keeps an [`Authenticator`]'s keys in step with its key file: reloaded
//! when the file changes (checked every second) and on SIGHUP. A file that
//! fails to load leaves the previous keys in force, and the log says why.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Authenticator, KeySet};

/// How often the key file is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What the file looked like when last loaded: its modification time,
/// length and content digest (the digest catches a rewrite within one
/// mtime tick).
#[derive(PartialEq, Eq, Clone, Debug)]
struct Seen(Option<std::time::SystemTime>, [u8; 32]);

fn look(path: &std::path::Path) -> Option<Seen> {
    let meta = std::fs::metadata(path).ok()?;
    let text = std::fs::read(path).ok()?;
    Some(Seen(meta.modified().ok(), super::keys::sha256(&text)))
}

/// Loads the key file once more; on failure the keys in force stay.
/// Returns whether the new keys were taken.
pub fn reload(auth: &Authenticator) -> bool {
    let Some(path) = auth.path() else { return false };
    match KeySet::load(path) {
        Ok(keys) => {
            let (k, s) = keys.counts();
            auth.replace(keys);
            info!(file = %path.display(), keys = k, signers = s, "key file reloaded");
            true
        }
        Err(e) => {
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
    let mut seen = look(&path);
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
                seen = look(&path);
            }
            _ = tick.tick() => {
                let now = look(&path);
                if now.is_some() && now != seen {
                    reload(&auth);
                    seen = now;
                }
            }
        }
    }
}
