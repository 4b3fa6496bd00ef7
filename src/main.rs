//! The `occupancy` binary: parse configuration, start telemetry, serve.

use clap::Parser;
use occupancy::config::{Cli, Command};
use tracing_subscriber::EnvFilter;

/// The log filter without `RUST_LOG`.
const DEFAULT_LOG_FILTER: &str = "info,redis::cluster_handling=error";

/// mimalloc instead of the system allocator: a gRPC call allocates and
/// frees dozens of small buffers, and under load glibc malloc was a large
/// share of the server's CPU time (the measurements are in BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        None => cli.serve,
        Some(Command::Get(a)) => std::process::exit(occupancy::cli::get(a).await),
        Some(Command::List(a)) => std::process::exit(occupancy::cli::list(a).await),
        Some(Command::Watch(a)) => std::process::exit(occupancy::cli::watch(a).await),
        Some(Command::Key(a)) => std::process::exit(occupancy::auth::commands::key(&a)),
        Some(Command::Token(a)) => std::process::exit(occupancy::auth::commands::token(&a)),
        Some(Command::Stats(a)) => std::process::exit(occupancy::cli::stats(a).await),
        Some(Command::Health(a)) => std::process::exit(occupancy::cli::health(a).await),
        Some(Command::Integrations(a)) => std::process::exit(occupancy::cli::integrations(a).await),
    };
    let config = match args.to_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    // redis-rs's cluster client logs every failed reconnection and slot
    // refresh (dozens of lines per failover); the store logs an outage once
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    if args.log_format == "json" {
        tracing_subscriber::fmt().with_env_filter(filter).json().init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).init();
    }
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            // one line, nothing else: the usual cause is another process
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                " (another process holds this port: stop it or choose another --listen)"
            } else {
                ""
            };
            eprintln!("error: cannot listen on {}: {e}{hint}", args.listen);
            std::process::exit(1);
        }
    };
    occupancy::run(listener, config, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(cause = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(cause = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
