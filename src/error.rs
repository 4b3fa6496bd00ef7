//! The service's one error type, and the one place that picks gRPC status
//! codes for it.

use crate::domain::InvalidInput;

/// Everything that can go wrong while serving a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A request field is invalid; nothing was changed.
    #[error(transparent)]
    InvalidInput(#[from] InvalidInput),
    /// The request is valid but the state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A limit was reached (channels per connection).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The store cannot be reached in time (timeouts, refused or dropped
    /// connections, a loading or read-only Redis).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or an unexpected store reply.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidInput(e) => tonic::Status::invalid_argument(e.to_string()),
            Error::FailedPrecondition(msg) => tonic::Status::failed_precondition(msg),
            Error::ResourceExhausted(msg) => tonic::Status::resource_exhausted(msg),
            Error::Unavailable(cause) => {
                // debug, not warn: during an outage every call fails the
                // same way, and the health probe logs the outage once
                tracing::debug!(%cause, "store unavailable");
                let mut status = tonic::Status::unavailable("occupancy store unavailable, retry later");
                // tells clients the service itself answered (it is reachable;
                // its Redis is not)
                status.metadata_mut().insert(
                    occupancy_client::STORE_UNAVAILABLE_METADATA,
                    tonic::metadata::MetadataValue::from_static("1"),
                );
                status
            }
            Error::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                tonic::Status::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let s: tonic::Status = Error::from(InvalidInput::new("channel", "must not be empty")).into();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().contains("channel"));
        let s: tonic::Status = Error::Unavailable("x".into()).into();
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(occupancy_client::Error::from(s).is_store_unavailable());
        let s: tonic::Status = Error::Internal("secret detail".into()).into();
        assert_eq!(s.code(), tonic::Code::Internal);
        assert!(!s.message().contains("secret"));
    }
}
