//! `occupancy health`: a probe of one replica's grpc.health.v1 service,
//! for container health checks and Kubernetes exec probes.

use std::time::Duration;

use clap::Args;

use super::output::outln;
use super::DEFAULT_ENDPOINT;

/// `occupancy health`.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// The replica to check: HOST:PORT, http://HOST:PORT or https://HOST:PORT.
    #[arg(long, env = "OCCUPANCY_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// The service to ask about (grpc.health.v1 name); empty for the whole
    /// server.
    #[arg(long, default_value = "")]
    pub service: String,
    /// Give up after this long (counts as not healthy).
    #[arg(long, default_value = crate::config::defaults::HEALTH_CHECK_TIMEOUT_ARG, value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Exit 0 whenever the replica answers, SERVING or not: a liveness
    /// probe, so that a Redis outage (NOT_SERVING) takes replicas out of
    /// load balancing (readiness) without restarting them all.
    #[arg(long)]
    pub live: bool,
}

/// `occupancy health`: asks one replica's grpc.health.v1 service; returns
/// 0 when it answers SERVING (any status with `--live`) and 1 otherwise
/// (not serving, no answer, or a bad endpoint), printing the status or
/// the reason.
pub async fn health(args: HealthArgs) -> i32 {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    let url = match occupancy_client::endpoint_url(&args.endpoint) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let mut endpoint = match tonic::transport::Endpoint::from_shared(url.clone()) {
        Ok(e) => e.connect_timeout(args.timeout).timeout(args.timeout),
        Err(e) => {
            eprintln!("error: invalid endpoint {url}: {e}");
            return 1;
        }
    };
    if url.starts_with("https://") {
        match endpoint.tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots()) {
            Ok(e) => endpoint = e,
            Err(e) => {
                eprintln!("error: {url}: {e}");
                return 1;
            }
        }
    }
    let check = async {
        let channel = endpoint.connect().await.map_err(|e| format!("cannot connect: {e}"))?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await
            .map(|r| r.into_inner().status)
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    };
    match tokio::time::timeout(args.timeout, check).await {
        Ok(Ok(status)) if status == ServingStatus::Serving as i32 => {
            outln!("SERVING");
            0
        }
        Ok(Ok(status)) => {
            let name = ServingStatus::try_from(status).map_or("UNKNOWN", |s| s.as_str_name());
            outln!("{name}");
            i32::from(!args.live)
        }
        Ok(Err(e)) => {
            eprintln!("error: {url}: {e}");
            1
        }
        Err(_) => {
            eprintln!("error: {url}: no answer within {:?}", args.timeout);
            1
        }
    }
}
