//! `occupancy get`, `list` and `stats`: one-off reads, printed as tables
//! or JSON lines.

use clap::Args;
use serde_json::json;

use super::output::{details_json, details_table, out, outln};
use super::{client, fail, Target};

/// `occupancy get`.
#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// Channels to read (up to 1,000).
    #[arg(required = true)]
    pub channels: Vec<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: Target,
}

/// `occupancy list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Only channels starting with this.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// `value` (with metrics) or `id` (names only).
    #[arg(long, default_value = "value", value_parser = ["value", "id"])]
    pub by: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: Target,
}

/// `occupancy stats`.
#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: Target,
}

/// `occupancy stats`: the app-wide totals; returns the exit code.
pub async fn stats(args: StatsArgs) -> i32 {
    let client = match client(&args.target) {
        Ok(c) => c,
        Err(e) => return fail(&e, &args.target),
    };
    match client.stats().await {
        Ok(s) => {
            if args.target.json {
                outln!(
                    "{}",
                    json!({
                        "activeChannels": s.active_channels,
                        "connections": s.connections,
                        "presenceMembers": s.presence_members,
                        "sessions": s.sessions,
                    })
                );
            } else {
                outln!("active channels   {}", s.active_channels);
                outln!("connections       {}", s.connections);
                outln!("presence members  {}", s.presence_members);
                outln!("sessions          {}", s.sessions);
            }
            0
        }
        Err(e) => fail(&e, &args.target),
    }
}

/// `occupancy get`: returns the exit code.
pub async fn get(args: GetArgs) -> i32 {
    let client = match client(&args.target) {
        Ok(c) => c,
        Err(e) => return fail(&e, &args.target),
    };
    match client.batch_get(&args.channels).await {
        Ok(details) => {
            if args.target.json {
                for d in &details {
                    outln!("{}", details_json(d));
                }
            } else {
                out!("{}", details_table(&details));
            }
            0
        }
        Err(e) => {
            let code = fail(&e, &args.target);
            if e.is_unreachable() {
                hint_endpoint(&args.channels);
            }
            code
        }
    }
}

/// A first channel written like an address (`occupancy get HOST:PORT ch`)
/// was most likely meant as the service's address: channel names may
/// hold colons, so it is read as a channel, and the call went to the
/// default endpoint instead. Says so on stderr.
fn hint_endpoint(channels: &[String]) {
    let Some(first) = channels.first() else { return };
    let looks_like_address = first.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains(' ') && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if looks_like_address {
        eprintln!("hint: {first:?} was read as a channel name; to reach a service there, pass --endpoint {first}");
    }
}

/// `occupancy list`: returns the exit code.
pub async fn list(args: ListArgs) -> i32 {
    let client = match client(&args.target) {
        Ok(c) => c,
        Err(e) => return fail(&e, &args.target),
    };
    let by_value = args.by == "value";
    match client.list_all(&args.prefix, by_value).await {
        Ok(channels) => {
            if args.target.json {
                for d in &channels {
                    outln!("{}", details_json(d));
                }
            } else if by_value {
                out!("{}", details_table(&channels));
            } else {
                for d in &channels {
                    outln!("{}", d.channel_id);
                }
            }
            0
        }
        Err(e) => fail(&e, &args.target),
    }
}
