//! The service's one error type, and the one place that picks gRPC status
//! codes and HTTP statuses (with the JSON error body) for it.

use axum::http::StatusCode;

use crate::auth::AuthError;
use crate::domain::{InvalidInput, OpStatus};
use crate::proto::v1 as pb;

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
    /// The token a stream was opened with expired: the stream ends, and the
    /// client subscribes again with a fresh token, missing nothing.
    #[error("token expired: subscribe again with a fresh token and resume_from set to the last event id")]
    StreamExpired,
    /// Nothing is served at this address (HTTP routes).
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not with this method (HTTP routes).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The replica is shutting down: open streams end so clients go on
    /// elsewhere.
    #[error("server shutting down; reconnect with resume_from")]
    ShuttingDown,
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

/// What the client is told when the store is unavailable (the cause stays
/// in the replica's log).
const STORE_UNAVAILABLE: &str = "occupancy store unavailable, retry later";

impl Error {
    /// The gRPC code and the HTTP status this error is answered with: the
    /// one place both are chosen.
    pub fn codes(&self) -> (tonic::Code, StatusCode) {
        use tonic::Code as C;
        match self {
            Error::InvalidInput(_) => (C::InvalidArgument, StatusCode::BAD_REQUEST),
            Error::FailedPrecondition(_) => (C::FailedPrecondition, StatusCode::CONFLICT),
            Error::ResourceExhausted(_) => (C::ResourceExhausted, StatusCode::TOO_MANY_REQUESTS),
            // unknown caller 401, known but not allowed 403
            Error::Auth(e) if e.is_unauthenticated() => (C::Unauthenticated, StatusCode::UNAUTHORIZED),
            Error::Auth(_) => (C::PermissionDenied, StatusCode::FORBIDDEN),
            Error::StreamExpired => (C::Unauthenticated, StatusCode::UNAUTHORIZED),
            Error::NotFound(_) => (C::NotFound, StatusCode::NOT_FOUND),
            Error::MethodNotAllowed(_) => (C::Unimplemented, StatusCode::METHOD_NOT_ALLOWED),
            Error::ShuttingDown | Error::Unavailable(_) => (C::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
            Error::Internal(_) => (C::Internal, StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    /// The stable name of the error in HTTP bodies and SSE `error` events:
    /// its gRPC code's name (`INVALID_ARGUMENT`, ...), or
    /// `METHOD_NOT_ALLOWED`, which has no gRPC counterpart.
    pub fn code_name(&self) -> &'static str {
        match self {
            Error::MethodNotAllowed(_) => "METHOD_NOT_ALLOWED",
            other => code_name(other.codes().0),
        }
    }

    /// The message the client gets, after logging what it does not get:
    /// an internal cause is logged (error) and replaced by a generic
    /// message; a store outage is logged at debug only (during one every
    /// call fails the same way, and the health probe logs the outage once).
    /// Refusals of credentials are logged and counted where refused
    /// (`crate::auth`); their message names the key id, never a secret.
    fn client_message(&self) -> String {
        match self {
            Error::Unavailable(cause) => {
                tracing::debug!(%cause, "store unavailable");
                STORE_UNAVAILABLE.to_string()
            }
            Error::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                "internal error".to_string()
            }
            other => other.to_string(),
        }
    }

    /// The refusal of an operation, as the error of a call that made only
    /// that one; `None` for an operation that applied.
    pub fn refused(status: OpStatus) -> Option<Error> {
        match status {
            OpStatus::Ok | OpStatus::AlreadyApplied => None,
            OpStatus::NotPresenceAttached => Some(Error::FailedPrecondition(status.message())),
            OpStatus::TooManyChannels => Some(Error::ResourceExhausted(status.message())),
        }
    }

    /// The `code` and `message` of the SSE `error` event that ends an
    /// event stream: UNAUTHENTICATED for an expired token (the client
    /// reconnects with a fresh one), INTERNAL for a bug, else UNAVAILABLE
    /// (the client reconnects with `Last-Event-ID`).
    pub fn stream_end(&self) -> (&'static str, String) {
        match self {
            Error::StreamExpired | Error::Auth(_) => (self.code_name(), self.to_string()),
            Error::Internal(_) => ("INTERNAL", self.client_message()),
            other => {
                tracing::warn!(cause = %other, "event stream failed");
                (
                    "UNAVAILABLE",
                    "occupancy store unavailable, reconnect with Last-Event-ID".to_string(),
                )
            }
        }
    }
}

/// The stable name of a gRPC code (`INVALID_ARGUMENT`, ...), as the gRPC
/// specification spells it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The status of one operation in an Apply answer: the code a call of
/// that operation alone fails with ([`Error::refused`]).
pub fn operation_status(status: OpStatus) -> pb::OperationStatus {
    match Error::refused(status).map(|e| e.codes().0) {
        None if status == OpStatus::AlreadyApplied => pb::OperationStatus::AlreadyApplied,
        None => pb::OperationStatus::Ok,
        Some(tonic::Code::ResourceExhausted) => pb::OperationStatus::ResourceExhausted,
        Some(_) => pb::OperationStatus::FailedPrecondition,
    }
}

/// The HTTP status of `/health`: 200 while the replica is SERVING, 503
/// otherwise (what load balancers' HTTP checks read).
pub fn health_status(serving: bool) -> StatusCode {
    if serving {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let mut status = tonic::Status::new(err.codes().0, err.client_message());
        if let Error::Unavailable(_) = err {
            // tells clients the service itself answered (it is reachable;
            // its Redis is not)
            status.metadata_mut().insert(
                occupancy_client::STORE_UNAVAILABLE_METADATA,
                tonic::metadata::MetadataValue::from_static("1"),
            );
        }
        status
    }
}

/// The JSON body of every HTTP error:
/// `{"error": {"code", "statusCode", "message", "field"?}}`, where `code` is
/// the stable name of the gRPC status the same failure gets
/// (`INVALID_ARGUMENT`, ...), and `field` names the bad parameter.
fn http_error(status: StatusCode, code: &str, message: &str, field: Option<&str>) -> axum::response::Response {
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
        let field = match &self {
            Error::InvalidInput(e) => Some(e.field.as_str()),
            _ => None,
        };
        http_error(self.codes().1, self.code_name(), &self.client_message(), field)
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
    fn stream_ends_and_routes_have_their_codes() {
        use axum::response::IntoResponse;
        let s: tonic::Status = Error::StreamExpired.into();
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        assert!(s.message().contains("resume_from"), "{s:?}");
        let s: tonic::Status = Error::ShuttingDown.into();
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(!occupancy_client::Error::from(s).is_store_unavailable());
        let r = Error::MethodNotAllowed("no".into()).into_response();
        assert_eq!(r.status(), 405);
        assert_eq!(Error::MethodNotAllowed("no".into()).code_name(), "METHOD_NOT_ALLOWED");
        assert_eq!(Error::StreamExpired.stream_end().0, "UNAUTHENTICATED");
        assert_eq!(Error::Unavailable("x".into()).stream_end().0, "UNAVAILABLE");
        assert_eq!(
            (health_status(true), health_status(false)),
            (StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE)
        );
    }

    #[test]
    fn a_refused_operation_has_the_code_of_its_call() {
        assert!(Error::refused(OpStatus::Ok).is_none());
        for (op, code, status) in [
            (
                OpStatus::NotPresenceAttached,
                tonic::Code::FailedPrecondition,
                pb::OperationStatus::FailedPrecondition,
            ),
            (
                OpStatus::TooManyChannels,
                tonic::Code::ResourceExhausted,
                pb::OperationStatus::ResourceExhausted,
            ),
        ] {
            let e = Error::refused(op).unwrap();
            assert_eq!(e.codes().0, code);
            assert_eq!(operation_status(op), status);
        }
        assert_eq!(operation_status(OpStatus::Ok), pb::OperationStatus::Ok);
        assert!(OpStatus::TooManyChannels.message().contains("1000 channels"));
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
