//! One request to a target: the signed POST of a body, and what its
//! answer means for the delivery (done, retry when, or give up).
//!
//! reqwest with rustls, one client for the replica (its pool keeps
//! connections to each target); every request has the rule's timeout, so a
//! target that never answers costs one task per request in flight, bounded
//! by the rule's concurrency, and nothing else waits on it.

use std::time::{Duration, Instant};

use super::payload;
use super::rule::{secret_key, Rule};
use crate::error::{Error, Result};

/// The answer to one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Delivered {
        /// The status.
        status: u16,
    },
    /// Worth another try (5xx, 408, 429, a timeout, a refused or broken
    /// connection); `after` is the target's Retry-After when it sent one.
    Retry {
        /// What happened (`HTTP 503`, `timed out` …).
        reason: String,
        /// The target's Retry-After.
        after: Option<Duration>,
    },
    /// Final for this batch (any other 4xx, or a redirect).
    Failed {
        /// What happened.
        reason: String,
    },
}

/// The result of a test send, for the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// What the target answered.
    pub outcome: Outcome,
    /// Status code, when the target answered at all.
    pub status: Option<u16>,
    /// Time to the answer (or the failure).
    pub latency: Duration,
}

/// Sends signed requests.
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
}

/// The `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("occupancy-webhooks/", env!("CARGO_PKG_VERSION"));

impl Sender {
    /// A sender with its own connection pool.
    ///
    /// # Errors
    /// [`Error::Internal`] when the TLS stack cannot start.
    pub fn new() -> Result<Self> {
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            // a webhook answers where it is asked; following redirects
            // would resend signed bodies to a place the rule does not name
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::Internal(format!("webhook client: {e}")))?;
        Ok(Self { client })
    }

    /// POSTs `body` to the rule's target as message `id`, signed with the
    /// rule's secret, within the rule's timeout.
    pub async fn post(&self, rule: &Rule, id: &str, body: Vec<u8>) -> Attempt {
        let started = Instant::now();
        let key = match secret_key(&rule.secret) {
            Ok(k) => k,
            Err(e) => {
                return Attempt {
                    outcome: Outcome::Failed {
                        reason: format!("the rule's secret {e}"),
                    },
                    status: None,
                    latency: started.elapsed(),
                }
            }
        };
        let ts = crate::domain::events::wall_ms() / 1000;
        let signature = payload::signature(&key, id, ts, &body);
        let mut req = self
            .client
            .post(&rule.target)
            .timeout(Duration::from_millis(rule.timeout_ms))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature);
        for (k, v) in &rule.headers {
            req = req.header(k, v);
        }
        let answer = req.body(body).send().await;
        let latency = started.elapsed();
        match answer {
            Ok(resp) => {
                let status = resp.status();
                let after = retry_after(resp.headers());
                // read the body so the connection goes back to the pool
                let _drained = resp.bytes().await;
                Attempt {
                    outcome: classify(status.as_u16(), after),
                    status: Some(status.as_u16()),
                    latency,
                }
            }
            Err(e) => {
                let reason = if e.is_timeout() {
                    "timed out".to_string()
                } else if e.is_connect() {
                    format!("could not connect: {}", root_cause(&e))
                } else {
                    format!("request failed: {}", root_cause(&e))
                };
                Attempt {
                    outcome: Outcome::Retry { reason, after: None },
                    status: None,
                    latency,
                }
            }
        }
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// What a status means for the delivery.
pub fn classify(status: u16, after: Option<Duration>) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered { status },
        408 | 429 | 500..=599 => Outcome::Retry {
            reason: format!("HTTP {status}"),
            after,
        },
        _ => Outcome::Failed {
            reason: format!("HTTP {status}"),
        },
    }
}

/// A Retry-After in seconds (the HTTP-date form is rare from webhook
/// receivers and is treated as absent).
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_the_issue_says() {
        assert!(matches!(classify(204, None), Outcome::Delivered { .. }));
        for s in [408, 429, 500, 503] {
            assert!(matches!(classify(s, None), Outcome::Retry { .. }), "{s}");
        }
        for s in [301, 400, 401, 404, 410] {
            assert!(matches!(classify(s, None), Outcome::Failed { .. }), "{s}");
        }
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
    }
}
