//! The service's one error type, and the one place that picks gRPC status
//! codes and HTTP statuses (with the JSON error body) for it.

use crate::auth::AuthError;
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
    /// The caller is unknown (UNAUTHENTICATED) or may not do this
    /// (PERMISSION_DENIED); nothing was changed.
    #[error(transparent)]
    Auth(#[from] AuthError),
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
            // logged and counted where refused (`crate::auth`); the message
            // names the key id and channel, never a secret
            Error::Auth(e) if e.is_unauthenticated() => tonic::Status::unauthenticated(e.to_string()),
            Error::Auth(e) => tonic::Status::permission_denied(e.to_string()),
            Error::NotFound(msg) => tonic::Status::not_found(msg),
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
            // the same split as gRPC: unknown caller 401, known but not
            // allowed 403; the message names the key id, never a secret
            Error::Auth(e) if e.is_unauthenticated() => {
                http_error(S::UNAUTHORIZED, "UNAUTHENTICATED", &e.to_string(), None)
            }
            Error::Auth(e) => http_error(S::FORBIDDEN, "PERMISSION_DENIED", &e.to_string(), None),
            Error::NotFound(msg) => http_error(S::NOT_FOUND, "NOT_FOUND", &msg, None),
            Error::Unavailable(cause) => {
                // debug, as for gRPC: the health probe logs the outage once
                tracing::debug!(%cause, "store unavailable");
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

pub use crate::domain::limits::MAX_REQUEST_BYTES;

/// Gives a request refused for its size the code the gRPC spec gives a
/// message over the limit, RESOURCE_EXHAUSTED, with a message naming the
/// limit. The decoder (tonic) answers such a request OUT_OF_RANGE before
/// any handler runs, in the response's headers (a trailers-only answer),
/// so this runs on every response as a layer of the server; anything else
/// passes unchanged.
pub fn name_over_limit<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let headers = resp.headers_mut();
    let over = tonic::Status::from_header_map(headers).is_some_and(|s| {
        s.code() == tonic::Code::OutOfRange && s.message().contains("decoded message length too large")
    });
    if over {
        use crate::domain::limits::MAX_BATCH;
        let mib = MAX_REQUEST_BYTES >> 20;
        let status = tonic::Status::resource_exhausted(format!(
            "request message too large: the limit is {MAX_REQUEST_BYTES} bytes ({mib} MiB) per message; \
             split the batch (at most {MAX_BATCH} operations and {mib} MiB per Apply)"
        ));
        if status.add_header(headers).is_err() {
            tracing::error!("could not rewrite the status of an oversized request");
        }
    }
    resp
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
        let s: tonic::Status = Error::from(AuthError::Expired("k".into())).into();
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        assert!(s.message().contains("expired"));
        let s: tonic::Status = Error::from(AuthError::Denied {
            key: "k".into(),
            op: crate::auth::Op::Read,
            channel: "rooms:1".into(),
        })
        .into();
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
        assert!(s.message().contains("rooms:1"));
    }

    #[test]
    fn http_statuses() {
        use axum::response::IntoResponse;
        let r = Error::from(InvalidInput::new("limit", "too big")).into_response();
        assert_eq!(r.status(), 400);
        assert_eq!(Error::NotFound("x".into()).into_response().status(), 404);
        assert_eq!(
            Error::from(AuthError::Expired("k".into())).into_response().status(),
            401
        );
        let denied = AuthError::Denied {
            key: "k".into(),
            op: crate::auth::Op::Read,
            channel: "rooms:1".into(),
        };
        assert_eq!(Error::from(denied).into_response().status(), 403);
        assert_eq!(Error::Unavailable("x".into()).into_response().status(), 503);
        assert_eq!(Error::Internal("x".into()).into_response().status(), 500);
    }

    #[test]
    fn an_oversized_request_answers_resource_exhausted_naming_the_limit() {
        let decoder = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 6000000 bytes, the limit is: 4194304 bytes",
        );
        let resp = name_over_limit(decoder.into_http::<()>());
        let s = tonic::Status::from_header_map(resp.headers()).unwrap();
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert!(s.message().contains("4194304 bytes"), "{s:?}");
        // other answers pass unchanged
        let other = tonic::Status::out_of_range("something else");
        let resp = name_over_limit(other.into_http::<()>());
        let s = tonic::Status::from_header_map(resp.headers()).unwrap();
        assert_eq!((s.code(), s.message()), (tonic::Code::OutOfRange, "something else"));
        let ok = name_over_limit(http::Response::new(()));
        assert!(tonic::Status::from_header_map(ok.headers()).is_none());
    }
}
