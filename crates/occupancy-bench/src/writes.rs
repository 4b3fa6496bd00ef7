//! Write scenarios (`apply`, `unary`) and the write helpers other
//! scenarios set up and clean up with.

use occupancy::proto::v1 as pb;
use pb::connection_service_client::ConnectionServiceClient;

use crate::load::{conn, mix, run_load, Credential, Load, Stats};

/// Operation `kind % 4` of the cycle attach → enter → leave → detach, for
/// connection `conn` on `channel`.
pub(crate) fn op(kind: u64, conn: String, channel: String) -> pb::Operation {
    use pb::operation::Op;
    let op = match kind % 4 {
        0 => Op::Attach(pb::AttachOperation {
            connection_id: conn,
            channel,
            modes: vec![pb::Mode::Subscribe as i32, pb::Mode::Presence as i32],
        }),
        1 => Op::Enter(pb::PresenceOperation {
            connection_id: conn,
            channel,
            client_id: "user".into(),
        }),
        2 => Op::Leave(pb::PresenceOperation {
            connection_id: conn,
            channel,
            client_id: "user".into(),
        }),
        _ => Op::Detach(pb::DetachOperation {
            connection_id: conn,
            channel,
        }),
    };
    pb::Operation { op: Some(op) }
}

/// An Apply request of `session` with `operations`, unsequenced.
pub(crate) fn apply_request(session: String, operations: Vec<pb::Operation>) -> pb::ApplyRequest {
    pb::ApplyRequest {
        session_id: session,
        operations,
        include_metrics: false,
        sequence: 0,
        session_epoch: 0,
    }
}

/// (connection, channel) slots per `apply` worker: 512 connections with four
/// channels each.
const APPLY_SLOTS: u64 = 2048;

/// Apply batches of `batch` operations over `channels` channels.
pub(crate) async fn apply(load: Load, batch: usize, channels: usize) -> anyhow::Result<()> {
    let mut stats = apply_load(&load, batch, channels, "").await?;
    stats.print(&load.name("apply"), &format!(" batch={batch} channels={channels}"));
    Ok(())
}

/// The `apply` scenario's load, for other scenarios to run too: `tag` goes
/// into the connection names, so a second run in one process starts from
/// fresh connections and again changes something with every operation.
pub(crate) async fn apply_load(load: &Load, batch: usize, channels: usize, tag: &str) -> anyhow::Result<Stats> {
    let run = std::process::id();
    let tag = tag.to_string();
    run_load(load, move |ch, w, i| {
        let tag = tag.clone();
        async move {
            // Each worker cycles APPLY_SLOTS (connection, channel) slots,
            // four channels per connection, through attach → enter → leave
            // → detach, so every operation changes something; a batch
            // visits its slots in a scattered order.
            let ops: Vec<pb::Operation> = (0..batch as u64)
                .map(|k| {
                    let x = i * batch as u64 + k;
                    let slot = (x % APPLY_SLOTS) * 1021 % APPLY_SLOTS;
                    let conn = format!("b{run}{tag}-w{w}-c{}", slot / 4);
                    let channel = format!("bench:{}", mix(w as u64, slot) % channels as u64);
                    op(x / APPLY_SLOTS, conn, channel)
                })
                .collect();
            ConnectionServiceClient::new(ch)
                .apply(apply_request(apply_session(run, w), ops))
                .await?;
            Ok(batch as u64)
        }
    })
    .await
}

/// The session of [`apply_load`]'s worker `w` in run `run`.
fn apply_session(run: u32, w: usize) -> String {
    format!("bench-{run}-w{w}")
}

/// Closes the sessions of [`apply_load`]'s workers: their channels empty
/// now rather than when the leases run out.
pub(crate) async fn close_apply_sessions(load: &Load) -> anyhow::Result<()> {
    let run = std::process::id();
    let mut c = ConnectionServiceClient::new(conn(&load.url, &load.credential()).await?);
    for w in 0..load.in_flight {
        c.close_session(pb::CloseSessionRequest {
            session_id: apply_session(run, w),
        })
        .await?;
    }
    Ok(())
}

/// Front ends (sessions) the `unary` workers share, as a few front end
/// processes would: each worker writes its own connection.
const UNARY_FRONT_ENDS: usize = 4;

/// Unary Attach and Detach, alternately, of each worker's connection.
pub(crate) async fn unary(load: Load) -> anyhow::Result<()> {
    let run = std::process::id();
    let mut stats = run_load(&load, move |ch, w, i| async move {
        let mut c = ConnectionServiceClient::new(ch);
        let session_id = format!("bench-{run}-f{}", w % UNARY_FRONT_ENDS);
        let connection_id = format!("u{run}-w{w}");
        let channel = format!("bench:{}", mix(w as u64, i / 2) % 10_000);
        if i % 2 == 0 {
            c.attach(pb::AttachRequest {
                session_id,
                connection_id,
                channel,
                modes: vec![pb::Mode::Subscribe as i32],
            })
            .await?;
        } else {
            c.detach(pb::DetachRequest {
                session_id,
                connection_id,
                channel,
            })
            .await?;
        }
        Ok(1)
    })
    .await?;
    stats.print(&load.name("unary"), "");
    Ok(())
}

/// Attaches `count` connections of `session` to channels named by `name`,
/// in batches of 10,000.
pub(crate) async fn fill(
    url: &str,
    session: &str,
    count: usize,
    modes: &[pb::Mode],
    name: impl Fn(usize) -> (String, String),
) -> anyhow::Result<()> {
    let mut c = ConnectionServiceClient::new(conn(url, &Credential::default()).await?);
    c.keep_alive(pb::KeepAliveRequest {
        session_id: session.to_string(),
        ttl_ms: 600_000,
    })
    .await?;
    let modes: Vec<i32> = modes.iter().map(|m| *m as i32).collect();
    for start in (0..count).step_by(10_000) {
        let ops = (start..(start + 10_000).min(count))
            .map(|i| {
                let (conn, channel) = name(i);
                pb::Operation {
                    op: Some(pb::operation::Op::Attach(pb::AttachOperation {
                        connection_id: conn,
                        channel,
                        modes: modes.clone(),
                    })),
                }
            })
            .collect();
        c.apply(apply_request(session.to_string(), ops)).await?;
    }
    Ok(())
}

/// Closes a session (retried: closing a huge one runs many reap rounds, any
/// of which may time out on a loaded machine; closing is idempotent).
pub(crate) async fn close(url: &str, session: &str) -> anyhow::Result<()> {
    let mut c = ConnectionServiceClient::new(conn(url, &Credential::default()).await?);
    let mut last = None;
    for _ in 0..5 {
        match c
            .close_session(pb::CloseSessionRequest {
                session_id: session.to_string(),
            })
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| anyhow::anyhow!("close failed"), anyhow::Error::from))
}
