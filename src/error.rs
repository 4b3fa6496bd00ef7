//! The service's one error type, and the one place that picks gRPC status
//! codes and HTTP statuses (with the JSON error body) for it.

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
    /// Nothing is served at this address (HTTP routes).
    #[error("{0}")]
    NotFound(String),
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
            Error::NotFound(msg) => tonic::Status::not_found(msg),
            Error::Unavailable(cause) => {
                tracing::warn!(%cause, "store unavailable");
                tonic::Status::unavailable("occupancy store unavailable, retry later")
            }
            Error::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                tonic::Status::internal("internal error")
            }
        }
    }
}

/// The JSON body of every HTTP error:
/// `{"error": {"code", "statusCode", "message", "field"?}}`, where `code` is
/// the stable name of the gRPC status the same failure gets
/// (`INVALID_ARGUMENT`, ...), and `field` names the bad parameter.
pub fn http_error(
    status: axum::http::StatusCode,
    code: &str,
    message: &str,
    field: Option<&str>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut error = serde_json::json!({
        "code": code,
        "statusCode": status.as_u16(),
        "message": message,
    });
    if let Some(f) = field {
        error["field"] = serde_json::Value::from(f);
    }
    (status, axum::Json(serde_json::json!({ "error": error }))).into_response()
}

impl axum::response::IntoResponse for Error {
    fn into_response(self) -> axum::response::Response {
        use axum::http::StatusCode as S;
        match self {
            Error::InvalidInput(e) => http_error(S::BAD_REQUEST, "INVALID_ARGUMENT", &e.to_string(), Some(&e.field)),
            Error::FailedPrecondition(msg) => http_error(S::CONFLICT, "FAILED_PRECONDITION", &msg, None),
            Error::ResourceExhausted(msg) => http_error(S::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED", &msg, None),
            Error::NotFound(msg) => http_error(S::NOT_FOUND, "NOT_FOUND", &msg, None),
            Error::Unavailable(cause) => {
                tracing::warn!(%cause, "store unavailable");
                http_error(
                    S::SERVICE_UNAVAILABLE,
                    "UNAVAILABLE",
                    "occupancy store unavailable, retry later",
                    None,
                )
            }
            Error::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                http_error(S::INTERNAL_SERVER_ERROR, "INTERNAL", "internal error", None)
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
        let s: tonic::Status = Error::Internal("secret detail".into()).into();
        assert_eq!(s.code(), tonic::Code::Internal);
        assert!(!s.message().contains("secret"));
    }

    #[test]
    fn http_statuses() {
        use axum::response::IntoResponse;
        let r = Error::from(InvalidInput::new("limit", "too big")).into_response();
        assert_eq!(r.status(), 400);
        assert_eq!(Error::NotFound("x".into()).into_response().status(), 404);
        assert_eq!(Error::Unavailable("x".into()).into_response().status(), 503);
        assert_eq!(Error::Internal("x".into()).into_response().status(), 500);
    }
}
