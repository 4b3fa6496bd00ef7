//! `occupancy watch`: channels followed live, as a refreshing table
//! (busiest first) or JSON lines.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use occupancy_client::{proto, Followed};
use serde_json::json;
use tonic::Code;

use super::output::{clock, metrics_json, out, outln, table};
use super::{client, fail, Target, EXIT_USAGE};

/// `occupancy watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Channels to follow.
    pub channels: Vec<String>,
    /// Also follow every channel under this prefix.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Follow every channel (every active one in the first table, and any
    /// that appears later).
    #[arg(long, conflicts_with = "prefix")]
    pub all: bool,
    /// Hold back changes for up to this many ms (zero/non-zero flips are
    /// always shown at once).
    #[arg(long, default_value_t = 0)]
    pub debounce_ms: u32,
    /// Exit after this many events (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: Target,
}

/// Shortest time between two redraws of the `watch` table: a burst of
/// changes is drawn once, then once more after the last change.
const REDRAW_EVERY: Duration = Duration::from_millis(200);

/// `occupancy watch`: returns the exit code.
///
/// Follows the subscription with the client crate's reconnect-and-resume
/// loop ([`Client::follow`](occupancy_client::Client::follow)): a replica that goes away is left for the
/// next endpoint, resuming where the stream was. Three failures in a row
/// (or a refused argument, at once) end the command with the exit code of
/// the last one.
///
/// The table is drawn first once the snapshot has arrived (the stream
/// says it is live, even when nothing matched: then it has a header only;
/// or a second into a snapshot still arriving), then at most every
/// `REDRAW_EVERY` while changes arrive, and always once more after the
/// last one, so it never shows a stale row.
pub async fn watch(args: WatchArgs) -> i32 {
    if args.channels.is_empty() && args.prefix.is_empty() && !args.all {
        eprintln!("error: give channels to watch, --prefix or --all");
        return EXIT_USAGE;
    }
    let client = match client(&args.target) {
        Ok(c) => c,
        Err(e) => return fail(&e, &args.target),
    };
    let mut follow = client.follow(proto::SubscribeOccupancyRequest {
        channels: args.channels.clone(),
        prefix: args.prefix.clone(),
        categories: vec![],
        debounce_ms: args.debounce_ms,
        resume_from: String::new(),
        all_channels: args.all,
    });
    let mut state: HashMap<String, (proto::Metrics, i64)> = HashMap::new();
    let mut seen: u64 = 0;
    let mut failures = 0u32;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    // when the table must be drawn next, if it shows anything out of date
    let mut last_draw: Option<Instant> = None;
    let mut due: Option<tokio::time::Instant> = None;
    // a busy system never stops sending: the first table is drawn within
    // a second of subscribing in any case
    let mut first_by = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let item = tokio::select! {
            item = follow.next() => item,
            () = sleep_until(due), if due.is_some() => {
                due = None;
                last_draw = Some(Instant::now());
                draw(&state, tty);
                continue;
            }
        };
        let e = match item {
            Some(Followed::Event(e)) => e,
            Some(Followed::Live) => {
                if !args.target.json && last_draw.is_none() {
                    due = None;
                    last_draw = Some(Instant::now());
                    draw(&state, tty);
                }
                continue;
            }
            Some(Followed::Failed(e) | Followed::ResumeRefused(e)) => {
                // a refused argument ends at once; anything else (e.g. the
                // store is down, so the snapshot failed) after three tries
                // in a row
                failures += 1;
                if e.code() == Some(Code::InvalidArgument) || failures >= 3 {
                    return fail(&e, &args.target);
                }
                first_by = tokio::time::Instant::now() + Duration::from_secs(1);
                continue;
            }
            None => return 1,
        };
        failures = 0;
        seen += 1;
        let m = e.metrics.unwrap_or_default();
        let last = args.count > 0 && seen >= args.count;
        if args.target.json {
            outln!(
                "{}",
                json!({
                    "id": e.id, "name": e.name, "channel": e.channel,
                    "timestampMs": e.timestamp_ms, "metrics": metrics_json(&m)
                })
            );
        } else {
            state.insert(e.channel.clone(), (m, e.timestamp_ms));
            if last {
                draw(&state, tty);
            } else if let Some(at) = last_draw {
                // drawn before: redraw at once if the last draw is old
                // enough, else when it is; never later than that
                let next = tokio::time::Instant::from_std(at + REDRAW_EVERY);
                due = Some(due.map_or(next, |d| d.min(next)));
            } else {
                // still in the snapshot: draw once it stops arriving
                due = Some((tokio::time::Instant::now() + REDRAW_EVERY).min(first_by));
            }
        }
        if last {
            return 0;
        }
    }
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn draw(state: &HashMap<String, (proto::Metrics, i64)>, tty: bool) {
    let mut rows: Vec<_> = state.iter().collect();
    rows.sort_by(|a, b| b.1 .0.connections.cmp(&a.1 .0.connections).then(a.0.cmp(b.0)));
    let rows: Vec<_> = rows
        .into_iter()
        .map(|(n, (m, ts))| (n.clone(), Some(*m), clock(*ts)))
        .collect();
    let now = crate::domain::events::wall_ms();
    let mut out = String::new();
    if tty {
        out.push_str("\x1b[2J\x1b[H");
    }
    out.push_str(&format!("occupancy at {}, busiest first\n", clock(now)));
    out.push_str(&table(&rows, Some("LAST CHANGE")));
    if !tty {
        out.push('\n');
    }
    out!("{out}");
}
