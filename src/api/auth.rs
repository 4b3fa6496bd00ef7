//! Access control on the gRPC side: one interceptor in front of the
//! occupancy services authenticates every call's `authorization` metadata
//! and leaves the [`Principal`] in the request's extensions, before the
//! request body is decoded; handlers check channels with it. Health and
//! reflection are served without it (probes and grpcurl stay open).

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::auth::{AuthError, Authenticator, Principal};
use crate::error::Error;

/// The interceptor: UNAUTHENTICATED for a missing or bad credential.
#[derive(Clone)]
pub struct Authenticate(pub Arc<Authenticator>);

impl Interceptor for Authenticate {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let header = req.metadata().get("authorization").map(|v| v.to_str());
        let header = match header {
            None => None,
            Some(Ok(h)) => Some(h),
            Some(Err(_)) => {
                return Err(Error::from(AuthError::Malformed(
                    "the authorization value is not visible ASCII".into(),
                ))
                .into())
            }
        };
        let principal = self.0.authenticate(header).map_err(Error::from)?;
        req.extensions_mut().insert(principal);
        Ok(req)
    }
}

/// The caller of a request that passed [`Authenticate`].
///
/// # Errors
/// UNAUTHENTICATED ([`AuthError::Missing`]) when the request did not pass
/// it (a service mounted without the interceptor refuses rather than
/// serves everyone).
pub fn principal<T>(req: &Request<T>) -> Result<Principal, Status> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Error::from(AuthError::Missing).into())
}
