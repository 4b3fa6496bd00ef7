//! What the client subcommands print: tables for people, JSON objects
//! (Ably's shapes, camelCase) for scripts; and how they print it
//! ([`out!`], [`outln!`]).

use std::io::{ErrorKind, Write};

use occupancy_client::proto;
use serde_json::json;

/// Writes to standard output for the subcommands. A reader that went away
/// (`occupancy list | head`) ends the command at once with status 0, as
/// Unix tools end, instead of the panic `print!` gives on a closed pipe;
/// any other write error ends it with status 1 and says why.
pub(crate) fn write_out(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `print!` through [`write_out`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::write_out(format_args!($($arg)*))
    };
}

/// `println!` through [`write_out`].
macro_rules! outln {
    () => {
        $crate::cli::output::write_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};

const COLUMNS: [&str; 9] = [
    "connections",
    "publishers",
    "subscribers",
    "presenceConnections",
    "presenceMembers",
    "presenceSubscribers",
    "objectPublishers",
    "objectSubscribers",
    "presenceClients",
];

fn values(m: &proto::Metrics) -> [u32; 9] {
    [
        m.connections,
        m.publishers,
        m.subscribers,
        m.presence_connections,
        m.presence_members,
        m.presence_subscribers,
        m.object_publishers,
        m.object_subscribers,
        m.presence_clients,
    ]
}

pub(super) fn metrics_json(m: &proto::Metrics) -> serde_json::Value {
    let mut o = serde_json::Map::new();
    for (k, v) in COLUMNS.iter().zip(values(m)) {
        o.insert((*k).to_string(), json!(v));
    }
    serde_json::Value::Object(o)
}

/// Ably's ChannelDetails as JSON.
pub(super) fn details_json(d: &proto::ChannelDetails) -> serde_json::Value {
    match &d.status {
        None => json!({ "channelId": d.channel_id }),
        Some(s) => {
            let m = s.occupancy.as_ref().and_then(|o| o.metrics).unwrap_or_default();
            json!({
                "channelId": d.channel_id,
                "status": { "isActive": s.is_active, "occupancy": { "metrics": metrics_json(&m) } }
            })
        }
    }
}

const SHORT: [&str; 9] = [
    "CONN",
    "PUB",
    "SUB",
    "PRES_CONN",
    "PRES_MEMB",
    "PRES_SUB",
    "OBJ_PUB",
    "OBJ_SUB",
    "PRES_CLI",
];

pub(super) fn table(rows: &[(String, Option<proto::Metrics>, String)], extra: Option<&str>) -> String {
    let width = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(7).max(7);
    let mut out = format!("{:width$}", "CHANNEL");
    for h in SHORT {
        out.push_str(&format!(" {h:>9}"));
    }
    if let Some(e) = extra {
        out.push_str(&format!("  {e}"));
    }
    out.push('\n');
    for (name, m, tail) in rows {
        out.push_str(&format!("{name:width$}"));
        if let Some(m) = m {
            for v in values(m) {
                out.push_str(&format!(" {v:>9}"));
            }
        }
        if !tail.is_empty() {
            out.push_str(&format!("  {tail}"));
        }
        out.push('\n');
    }
    out
}

pub(super) fn details_table(details: &[proto::ChannelDetails]) -> String {
    let rows: Vec<_> = details
        .iter()
        .map(|d| {
            let m = d
                .status
                .as_ref()
                .and_then(|s| s.occupancy.as_ref())
                .and_then(|o| o.metrics);
            (d.channel_id.clone(), Some(m.unwrap_or_default()), String::new())
        })
        .collect();
    table(&rows, None)
}

pub(super) fn clock(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}.{:03} UTC", ms.rem_euclid(1000))
}
