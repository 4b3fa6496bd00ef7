//! A model-style check: concurrent random attaches and detaches on three
//! replicas, one rule over every channel. Afterwards the last occupancy
//! delivered for each channel equals GetOccupancy, and each channel's
//! occupied and vacated events alternate, starting with occupied and
//! ending as the channel is now.

use std::collections::HashMap;
use std::time::Duration;

use occupancy::integrations::RuleSpec;
use occupancy::proto::v1::Mode as PbMode;
use rand::{Rng, SeedableRng};

use super::faults::{every_kind, per_channel};
use super::rule_for;
use crate::fixture::Fx;
use crate::support::receiver::Receiver;
use crate::support::{eventually, Harness};

const TTL: Duration = Duration::from_secs(30);
const CHANNELS: usize = 12;
const OPS_PER_REPLICA: usize = 150;

async fn load(fx: Fx, replica: usize, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut mine: Vec<(String, String)> = Vec::new();
    for i in 0..OPS_PER_REPLICA {
        if mine.is_empty() || rng.random_bool(0.55) {
            let ch = format!("rooms:m{}", rng.random_range(0..CHANNELS));
            let conn = format!("r{replica}-c{i}");
            fx.attach(
                &format!("load-{replica}"),
                &conn,
                &ch,
                &[PbMode::Subscribe, PbMode::Presence],
            )
            .await;
            mine.push((conn, ch));
        } else {
            let (conn, ch) = mine.swap_remove(rng.random_range(0..mine.len()));
            fx.detach(&format!("load-{replica}"), &conn, &ch).await;
        }
    }
}

async fn last_delivered_equals_get_occupancy(h: Harness) {
    let mut servers = Vec::new();
    let mut fxs = Vec::new();
    for _ in 0..3 {
        let s = h.server().await;
        fxs.push(Fx::new(&s).await);
        servers.push(s);
    }
    let store = h.store();
    let rx = Receiver::start().await;
    rule_for(
        store.as_ref(),
        &fxs[0],
        &rx,
        RuleSpec {
            channels: Some(vec!["*".into()]),
            vacated_delay_ms: Some(200),
            ..every_kind()
        },
    )
    .await;
    let tasks: Vec<_> = fxs
        .iter()
        .enumerate()
        .map(|(i, fx)| tokio::spawn(load(fx.clone(), i, 1_000 + i as u64)))
        .collect();
    for t in tasks {
        t.await.expect("load task");
    }

    let channels: Vec<String> = (0..CHANNELS).map(|i| format!("rooms:m{i}")).collect();
    let mut now: HashMap<String, [u32; 9]> = HashMap::new();
    for ch in &channels {
        now.insert(ch.clone(), fxs[1].get(ch).await);
    }
    eventually(Duration::from_secs(30), "deliveries to settle at GetOccupancy", || {
        let got = per_channel(&rx.delivered());
        let now = now.clone();
        let channels = channels.clone();
        async move {
            channels
                .iter()
                .all(|ch| {
                    let want = now[ch];
                    let Some(events) = got.get(ch) else {
                        return want[0] == 0;
                    };
                    let last_occ = events.iter().rev().find(|e| e["type"] == "channel.occupancy");
                    let last_flip = events
                        .iter()
                        .rev()
                        .find(|e| e["type"] != "channel.occupancy")
                        .map(|e| e["type"].as_str().unwrap_or("").to_string());
                    let m = last_occ.map(|e| &e["data"]["metrics"]);
                    let matches = m.is_some_and(|m| {
                        m["connections"].as_u64() == Some(u64::from(want[0]))
                            && m["presenceConnections"].as_u64() == Some(u64::from(want[3]))
                            && m["subscribers"].as_u64() == Some(u64::from(want[2]))
                    });
                    let flip_ok = if want[0] > 0 {
                        last_flip.as_deref() == Some("channel.occupied")
                    } else {
                        last_flip.as_deref() == Some("channel.vacated")
                    };
                    matches && flip_ok
                })
                .then_some(())
        }
    })
    .await;

    let got = per_channel(&rx.delivered());
    let mut flips_seen = 0;
    for (ch, events) in &got {
        let flips: Vec<&str> = events
            .iter()
            .filter_map(|e| e["type"].as_str())
            .filter(|t| *t != "channel.occupancy")
            .collect();
        for (i, f) in flips.iter().enumerate() {
            let want = if i % 2 == 0 {
                "channel.occupied"
            } else {
                "channel.vacated"
            };
            assert_eq!(*f, want, "channel {ch}: flip {i} of {flips:?}");
        }
        flips_seen += flips.len();
        // a later count never arrives before an earlier one: event ids of
        // a channel increase in arrival order
        let ids: Vec<(u64, u64)> = events
            .iter()
            .map(|e| {
                let pos = e["id"].as_str().unwrap().rsplit(':').next().unwrap().to_string();
                let (ms, seq) = pos.split_once('-').unwrap();
                (ms.parse().unwrap(), seq.parse().unwrap())
            })
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "channel {ch}: out of order");
    }
    assert!(flips_seen >= CHANNELS, "the load flipped channels");
    assert!(rx.requests().iter().all(|r| r.valid));
}

all_stores!(last_delivered_equals_get_occupancy);
