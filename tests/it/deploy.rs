//! The deployment files: docker-compose.yml wires Prometheus to every
//! replica's HTTP side and Grafana to Prometheus; the Grafana dashboard
//! only queries metrics the service exports. The files are parsed (YAML,
//! JSON) and checked against each other and against a live `/metrics`.

use std::collections::BTreeSet;

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use crate::support::Harness;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"));
    assert_eq!(docs.len(), 1, "{path}: one document");
    docs.remove(0)
}

/// A service's key, following a `<<` merge of an anchored service.
fn key<'a>(service: &'a Yaml, k: &str) -> &'a Yaml {
    let v = &service[k];
    if v.is_badvalue() {
        &service["<<"][k]
    } else {
        v
    }
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| v.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

#[test]
fn compose_prometheus_and_grafana_are_wired_to_the_replicas() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_hash().expect("services");
    let replicas: Vec<String> = services
        .keys()
        .filter_map(|k| k.as_str())
        .filter(|k| k.starts_with("occupancy-"))
        .map(str::to_string)
        .collect();
    assert_eq!(replicas.len(), 3);
    let mut targets_wanted = BTreeSet::new();
    for r in &replicas {
        let s = &compose["services"][r.as_str()];
        let env = key(s, "environment");
        let http = env["OCCUPANCY_HTTP_LISTEN"]
            .as_str()
            .expect("OCCUPANCY_HTTP_LISTEN on every replica");
        let port = http.rsplit(':').next().unwrap();
        targets_wanted.insert(format!("{r}:{port}"));
        assert!(
            strings(&s["ports"]).iter().any(|p| p.ends_with(&format!(":{port}"))),
            "{r} publishes its HTTP port"
        );
    }
    // Prometheus scrapes exactly those, at /metrics
    let prom = &compose["services"]["prometheus"];
    let mounts = strings(&prom["volumes"]);
    assert!(
        mounts.iter().any(|m| m.starts_with("./deploy/prometheus.yml:")),
        "{mounts:?}"
    );
    let conf = yaml("deploy/prometheus.yml");
    let jobs = conf["scrape_configs"].as_vec().expect("scrape_configs");
    let job = jobs
        .iter()
        .find(|j| j["job_name"].as_str() == Some("occupancy"))
        .expect("an occupancy job");
    assert_eq!(job["metrics_path"].as_str(), Some("/metrics"));
    let targets: BTreeSet<String> = job["static_configs"]
        .as_vec()
        .unwrap()
        .iter()
        .flat_map(|c| strings(&c["targets"]))
        .collect();
    assert_eq!(targets, targets_wanted);
    // Grafana gets the provisioning and the dashboards, and its data source
    // is the uid the dashboard uses
    let grafana = &compose["services"]["grafana"];
    let mounts = strings(&grafana["volumes"]);
    for dir in ["./deploy/grafana/provisioning:", "./deploy/grafana/dashboards:"] {
        assert!(mounts.iter().any(|m| m.starts_with(dir)), "grafana mounts {dir}");
    }
    let ds = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let ds = &ds["datasources"][0];
    assert_eq!(ds["type"].as_str(), Some("prometheus"));
    assert_eq!(ds["url"].as_str(), Some("http://prometheus:9090"));
    let provider = yaml("deploy/grafana/provisioning/dashboards/occupancy.yml");
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        mounts.iter().any(|m| m.ends_with(&format!(":{path}:ro"))),
        "dashboards mounted at {path}"
    );
    let dash: Value = serde_json::from_str(&read("deploy/grafana/dashboards/occupancy.json")).expect("dashboard JSON");
    for p in dash["panels"].as_array().unwrap() {
        assert_eq!(
            p["datasource"]["uid"].as_str(),
            ds["uid"].as_str(),
            "panel {}",
            p["title"]
        );
    }
}

/// Metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("occupancy_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_only_exported_metrics() {
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    let h = Harness::redis(std::time::Duration::from_secs(15));
    let s = h.http_server().await;
    // one request of each kind, so labelled series exist: HTTP and gRPC
    // reads, a write, and an event delivered to a subscription
    let c = reqwest::Client::new();
    c.get(format!("{}/stats", s.http_url())).send().await.unwrap();
    let fx = crate::fixture::Fx::new(&s).await;
    fx.get("x").await;
    let mut events = c
        .get(format!("{}/channels/x/occupancy/stream", s.http_url()))
        .send()
        .await
        .unwrap()
        .bytes_stream()
        .eventsource();
    let within = std::time::Duration::from_secs(10);
    tokio::time::timeout(within, events.next()).await.expect("snapshot");
    fx.attach("fe", "c", "x", &[occupancy::proto::v1::Mode::Subscribe])
        .await;
    tokio::time::timeout(within, events.next()).await.expect("the change");
    let text = c
        .get(format!("{}/metrics", s.http_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let exported: BTreeSet<String> = scrape.samples.iter().map(|s| s.metric.clone()).collect();
    let dash: Value = serde_json::from_str(&read("deploy/grafana/dashboards/occupancy.json")).unwrap();
    let mut checked = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for name in metric_names(expr) {
                // a series the exposition has samples of (histograms have
                // `_bucket`, `_sum` and `_count` lines)
                let series = text.lines().any(|l| {
                    l.strip_prefix(name.as_str())
                        .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
                });
                assert!(
                    series,
                    "panel {} queries {name}, which /metrics does not export: {exported:?}",
                    p["title"]
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 15, "{checked} metric references checked");
}
