//! Credentials on every call: `authorization: Bearer …` metadata added by
//! a tonic interceptor in front of each endpoint's channel.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;

/// A channel to one endpoint that sends the client's credential with
/// every call (none when the client has none).
pub type AuthChannel = InterceptedService<Channel, Credentials>;

/// The credential a client sends: an API key (`KEY_ID:SECRET`) or a
/// signed token.
#[derive(Clone, Default)]
pub struct Credentials(Option<MetadataValue<Ascii>>);

impl Credentials {
    /// A credential (`KEY_ID:SECRET` or a token); `None` when it is not
    /// visible ASCII.
    pub(crate) fn bearer(credential: &str) -> Option<Self> {
        format!("Bearer {credential}").parse().ok().map(|v| Self(Some(v)))
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the secret
        f.write_str(if self.0.is_some() {
            "Credentials(set)"
        } else {
            "Credentials(none)"
        })
    }
}

impl Interceptor for Credentials {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}
