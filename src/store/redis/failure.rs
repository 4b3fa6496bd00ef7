//! How Redis failures become the service's errors: which ones mean Redis
//! cannot be used now (UNAVAILABLE, worth retrying) and which are faults
//! (INTERNAL); and the time bound on every call.

use std::time::{Duration, Instant};

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::error::{Error, Result};

/// Whether a Redis error means Redis cannot be used now, rather than a
/// fault: timeouts, refused or dropped connections, a Redis loading,
/// failing over or read-only, a cluster slot that is moving or has no
/// reachable primary (the cluster client follows MOVED and ASK itself; one
/// that still reaches a caller means the slot map is settling), a
/// transaction (MULTI) that Redis refused as a whole for one of those
/// (EXECABORT: on a cluster, its slot moved or lost its primary while the
/// transaction was queued), and a wrong ACL user or password (Redis
/// cannot be used until the configuration or Redis is fixed; the log names
/// the cause).
pub fn is_unavailable(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::Server(ServerErrorKind::ExecAbort) => e
            .clone()
            .into_server_errors()
            .is_some_and(|errs| errs.iter().any(|(_, s)| s.kind().is_some_and(unavailable_kind))),
        ErrorKind::Server(kind) => unavailable_kind(kind),
        ErrorKind::AuthenticationFailed | ErrorKind::ClusterConnectionNotFound => true,
        _ => e.is_timeout() || e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped(),
    }
}

/// The error replies of Redis that mean it cannot be used now.
fn unavailable_kind(kind: ServerErrorKind) -> bool {
    matches!(
        kind,
        ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::Moved
            | ServerErrorKind::Ask
    )
}

impl From<RedisError> for Error {
    fn from(e: RedisError) -> Self {
        if is_unavailable(&e) {
            Error::Unavailable(e.to_string())
        } else {
            Error::Internal(format!("redis: {e}"))
        }
    }
}

/// Runs a Redis call of kind `call` within `limit`, recording its time
/// and failure (`telemetry::store`); no answer in time is UNAVAILABLE.
pub(super) async fn within<T>(
    call: &'static str,
    limit: Duration,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T> {
    let start = Instant::now();
    let r = match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(Error::from),
        Err(_) => Err(Error::Unavailable(format!("no answer from redis within {limit:?}"))),
    };
    let failed = r.as_ref().err().map(|e| matches!(e, Error::Unavailable(_)));
    crate::telemetry::store().redis_call(call, start.elapsed(), failed);
    r
}
