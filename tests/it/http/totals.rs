//! App-wide totals (`/stats`) against the sums over a REST walk, and
//! Prometheus metrics that move with the load.

use occupancy::http::json::StatsJson;
use occupancy::proto::v1 as pb;
use pb::Mode;
use rand::{Rng, SeedableRng};

use super::{client, get, LONG_TTL_MS, TTL};
use crate::fixture::*;
use crate::support::{eventually, Harness, TestServer};

all_stores!(
    stats_equal_the_sum_over_channels_after_load_and_expiries,
    metrics_parse_and_move_with_load,
);

/// The sums over every active channel, walked through REST, and the
/// number of channels.
async fn sums_over_channels(s: &TestServer) -> (u64, u64, u64) {
    let mut next = Some("/channels?limit=1000".to_string());
    let (mut n, mut c, mut pm) = (0u64, 0u64, 0u64);
    let mut pages = 0;
    while let Some(path) = next.take() {
        pages += 1;
        assert!(pages < 100);
        let (_, link, json) = get(s, &path).await;
        for d in json.as_array().unwrap() {
            let m = &d["status"]["occupancy"]["metrics"];
            n += 1;
            c += m["connections"].as_u64().unwrap();
            pm += m["presenceMembers"].as_u64().unwrap();
        }
        next = link.map(|l| l.trim_start_matches('<').split('>').next().unwrap().to_string());
    }
    (n, c, pm)
}

async fn stats_now(s: &TestServer) -> StatsJson {
    let (status, _, json) = get(s, "/stats").await;
    assert_eq!(status, 200);
    serde_json::from_value(json).expect("stats shape")
}

async fn stats_equal_the_sum_over_channels_after_load_and_expiries(h: Harness) {
    let s = h.http_server().await;
    let fx = Fx::new(&s).await;
    let seed: u64 = rand::rng().random();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let sessions: Vec<String> = (0..6).map(|i| format!("load-{i}")).collect();
    for sess in &sessions {
        fx.keep_alive(sess, LONG_TTL_MS).await;
    }
    for _ in 0..60 {
        let sess = &sessions[rng.random_range(0..sessions.len())];
        let ops = (0..rng.random_range(1..20))
            .map(|_| {
                // connections are named per session, so none moves
                let conn = format!("{sess}-c{}", rng.random_range(0..8));
                let ch = format!("load:{}", rng.random_range(0..25));
                match rng.random_range(0..10) {
                    0..=4 => {
                        let modes: Vec<Mode> = ALL_MODES.iter().copied().filter(|_| rng.random_bool(0.5)).collect();
                        attach_op(&conn, &ch, &[&[Mode::Presence][..], &modes].concat())
                    }
                    5 | 6 => detach_op(&conn, &ch),
                    7 | 8 => enter_op(&conn, &ch, &format!("u{}", rng.random_range(0..4))),
                    _ => leave_op(&conn, &ch, &format!("u{}", rng.random_range(0..4))),
                }
            })
            .collect();
        fx.apply(sess, ops).await;
    }
    let st = stats_now(&s).await;
    let (n, c, pm) = sums_over_channels(&s).await;
    assert!(n > 0 && pm > 0, "the load left something: {n} channels, {pm} members");
    assert_eq!(
        (st.active_channels, st.connections, st.presence_members, st.sessions),
        (n, c, pm, sessions.len() as u64),
        "after the load"
    );
    // half of the sessions get a 1 s lease and run out; the reaper removes
    // what they held
    for sess in &sessions[..3] {
        fx.keep_alive(sess, 1000).await;
    }
    let st = eventually(h.expiry_wait(), "three leases to expire", || async {
        let st = stats_now(&s).await;
        (st.sessions == 3).then_some(st)
    })
    .await;
    let (n, c, pm) = sums_over_channels(&s).await;
    assert_eq!(
        (st.active_channels, st.connections, st.presence_members),
        (n, c, pm),
        "after expiries"
    );
    for sess in &sessions[3..] {
        assert!(fx.close(sess).await);
    }
    let st = stats_now(&s).await;
    assert_eq!(st, StatsJson::from(occupancy::domain::Totals::default()), "all gone");
}

fn scrape(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("prometheus text format")
}

fn sample(sc: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    sc.samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

async fn metrics_text(s: &TestServer) -> String {
    let r = client().get(format!("{}/metrics", s.http_url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The value of the line of `text` that starts with `series ` (a series
/// with its labels written out), or 0.
fn raw(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

async fn metrics_parse_and_move_with_load(h: Harness) {
    let s = h.http_server().await;
    let fx = Fx::new(&s).await;
    let before_text = metrics_text(&s).await;
    let before = scrape(&before_text);
    assert!(!before.samples.is_empty());
    let stats_ok = [("method", "GET"), ("route", "/stats"), ("status", "200")];
    let n0 = sample(&before, "occupancy_http_requests_total", &stats_ok);
    for _ in 0..7 {
        get(&s, "/stats").await;
    }
    for _ in 0..3 {
        get(&s, "/channels?limit=0").await;
    }
    let grpc_stats = [("method", "/occupancy.v1.OccupancyService/GetStats"), ("code", "OK")];
    let g0 = sample(&before, "occupancy_grpc_requests_total", &grpc_stats);
    for _ in 0..4 {
        fx.r.clone().get_stats(pb::GetStatsRequest {}).await.unwrap();
    }
    let bad =
        fx.r.clone()
            .get_occupancy(pb::GetOccupancyRequest { channel: "[x".into() })
            .await;
    assert!(bad.is_err());
    // a session that writes once, then is left to expire
    let reaped0 = sample(&before, "occupancy_sessions_reaped_total", &[]);
    fx.attach("short", "c1", "m:1", &[Mode::Subscribe]).await;
    let mid = scrape(&metrics_text(&s).await);
    assert_eq!(sample(&mid, "occupancy_channel_connections", &[]), 1.0);
    assert_eq!(sample(&mid, "occupancy_sessions", &[]), 1.0);
    assert_eq!(sample(&mid, "occupancy_health_serving", &[]), 1.0);
    // on partitions each copy of the lease expires on its own reaper's
    // round, so the session count falls once the last one has run
    let after = eventually(h.expiry_wait(), "the reapers to expire the session", || async {
        let sc = scrape(&metrics_text(&s).await);
        (sample(&sc, "occupancy_sessions_reaped_total", &[]) > reaped0 && sample(&sc, "occupancy_sessions", &[]) == 0.0)
            .then_some(sc)
    })
    .await;
    assert_eq!(sample(&after, "occupancy_sessions_reaped_total", &[]), reaped0 + 1.0);
    assert_eq!(sample(&after, "occupancy_http_requests_total", &stats_ok), n0 + 7.0);
    assert_eq!(
        sample(
            &after,
            "occupancy_http_requests_total",
            &[("route", "/channels"), ("status", "400")]
        ),
        3.0
    );
    assert_eq!(sample(&after, "occupancy_grpc_requests_total", &grpc_stats), g0 + 4.0);
    assert_eq!(
        sample(
            &after,
            "occupancy_grpc_requests_total",
            &[
                ("method", "/occupancy.v1.OccupancyService/GetOccupancy"),
                ("code", "INVALID_ARGUMENT")
            ]
        ),
        1.0
    );
    assert_eq!(sample(&after, "occupancy_sessions", &[]), 0.0);
    assert_eq!(sample(&after, "occupancy_channel_connections", &[]), 0.0);
    if matches!(h.backend, crate::support::Backend::Redis(_)) {
        // the Redis store's calls (process-wide: other tests' replicas in
        // this process count too, so only rises are checked)
        let text = metrics_text(&s).await;
        for series in [
            "occupancy_redis_call_duration_seconds_count{call=\"apply\"}",
            "occupancy_redis_call_duration_seconds_count{call=\"stats\"}",
            "occupancy_redis_call_duration_seconds_count{call=\"reap\"}",
            "occupancy_group_commit_writes_count",
        ] {
            assert!(raw(&text, series) > raw(&before_text, series), "{series} rose");
        }
    }
    // latency histograms count the same requests
    assert_eq!(
        after
            .samples
            .iter()
            .filter(|s| s.metric == "occupancy_http_request_duration_seconds" && s.labels.get("route") == Some("/stats"))
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
                _ => 0.0,
            })
            .sum::<f64>(),
        n0 + 7.0
    );
}
