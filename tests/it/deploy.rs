//! The deployment files: the Kubernetes example, compose file, Dockerfile
//! and `.dockerignore` use only flags and variables the binary has, with
//! stop grace periods above the service's own; and the client crate's copy
//! of the proto is the contract. The monitoring files (Prometheus,
//! Grafana) are checked in [`monitoring`].

use std::collections::HashMap;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use occupancy::config::{Cli, Command};
use serde::Deserialize;
use serde_yaml_ng::Value;

fn repo(path: &str) -> String {
    let p = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// `OCCUPANCY_*` variable → (long flag, whether it is a switch), for
/// `occupancy serve`.
fn serve_env() -> HashMap<String, (String, bool)> {
    let cli = Cli::command();
    let serve = cli.find_subcommand("serve").expect("serve");
    serve
        .get_arguments()
        .filter_map(|a| {
            let switch = matches!(a.get_action(), clap::ArgAction::SetTrue);
            Some((a.get_env()?.to_str()?.to_string(), (a.get_long()?.to_string(), switch)))
        })
        .collect()
}

/// Checks that an `occupancy` command line parses, and returns it parsed.
fn parses(argv: &[String]) -> Cli {
    assert!(argv[0].ends_with("occupancy"), "{argv:?}");
    Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?} does not parse: {e}"))
}

/// The serve configuration that `env` (name → value) gives, checked by the
/// same validation as the binary's.
fn serve_config(env: &HashMap<String, String>) -> occupancy::Config {
    let flags = serve_env();
    let mut argv = vec!["occupancy".to_string(), "serve".to_string()];
    for (name, value) in env {
        if !name.starts_with("OCCUPANCY_") {
            continue;
        }
        let (flag, switch) = flags
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not a variable of occupancy serve"));
        if *switch {
            // a switch takes no value on the command line; its variable is
            // true or false
            match value.as_str() {
                "true" | "1" => argv.push(format!("--{flag}")),
                "false" | "0" => {}
                _ => panic!("{name}={value}: a switch is true or false"),
            }
        } else {
            argv.push(format!("--{flag}={value}"));
        }
    }
    match parses(&argv).command {
        Some(Command::Serve(a)) => a.to_config().unwrap_or_else(|e| panic!("{argv:?}: {e}")),
        _ => unreachable!(),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

#[test]
fn kubernetes_example_uses_existing_flags_and_probes() {
    let text = repo("deploy/k8s.yaml");
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().expect("kind")).collect();
    assert_eq!(kinds, ["Deployment", "Service", "PodDisruptionBudget"]);
    let pod = &docs[0]["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    // the container's own command line and environment
    let mut argv = vec!["occupancy".to_string()];
    argv.extend(strings(&c["args"]));
    parses(&argv);
    let env: HashMap<String, String> = c["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let config = serve_config(&env);
    assert!(
        env["OCCUPANCY_LISTEN"].starts_with("0.0.0.0:"),
        "reachable from the kubelet"
    );
    // probes: `occupancy health`, readiness on SERVING, liveness with --live
    for (probe, live) in [("readinessProbe", false), ("livenessProbe", true)] {
        let cmd = strings(&c[probe]["exec"]["command"]);
        match parses(&cmd).command {
            Some(Command::Health(h)) => {
                assert_eq!(h.live, live, "{probe}");
                assert!(env["OCCUPANCY_LISTEN"].ends_with(&format!(":{}", h.endpoint.rsplit(':').next().unwrap())));
                let timeout = c[probe]["timeoutSeconds"].as_u64().expect("timeoutSeconds");
                assert!(
                    h.timeout < Duration::from_secs(timeout),
                    "{probe}: the probe gives up first"
                );
            }
            other => panic!("{probe} runs {other:?}, not occupancy health"),
        }
    }
    let grace = pod["terminationGracePeriodSeconds"].as_u64().expect("grace");
    assert!(
        Duration::from_secs(grace) > config.shutdown_grace,
        "kubelet grace {grace}s must exceed --shutdown-grace {:?}",
        config.shutdown_grace
    );
    let port = c["ports"][0]["containerPort"].as_u64().unwrap();
    assert!(env["OCCUPANCY_LISTEN"].ends_with(&format!(":{port}")));
    assert_eq!(docs[1]["spec"]["ports"][0]["targetPort"], c["ports"][0]["name"]);
    assert!(docs[2]["spec"]["maxUnavailable"].as_u64().is_some());
}

#[test]
fn compose_and_dockerfile_check_health_and_outlast_the_shutdown_grace() {
    let mut compose: Value = serde_yaml_ng::from_str(&repo("docker-compose.yml")).expect("valid YAML");
    // the replicas share settings through `<<: *replica`
    compose.apply_merge().expect("merge keys");
    let services = compose["services"].as_mapping().expect("services");
    assert!(compose["services"]["redis"]["healthcheck"]["test"].is_sequence());
    let mut replicas = 0;
    for (name, s) in services {
        if s.get("build").is_none() {
            continue;
        }
        replicas += 1;
        let env: HashMap<String, String> = s["environment"]
            .as_mapping()
            .expect("environment")
            .iter()
            .map(|(k, v)| (k.as_str().unwrap().to_string(), v.as_str().unwrap().to_string()))
            .collect();
        let config = serve_config(&env);
        assert_eq!(s["depends_on"]["redis"]["condition"], "service_healthy", "{name:?}");
        let stop = humantime::parse_duration(s["stop_grace_period"].as_str().expect("stop_grace_period")).unwrap();
        assert!(stop > config.shutdown_grace, "{name:?}: {stop:?}");
    }
    assert_eq!(replicas, 3);
    let dockerfile = repo("Dockerfile");
    let health = dockerfile
        .split("HEALTHCHECK")
        .nth(1)
        .expect("a HEALTHCHECK")
        .split("CMD")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap();
    let argv: Vec<String> = serde_json::from_str(health.trim()).expect("exec form");
    assert!(matches!(parses(&argv).command, Some(Command::Health(_))));
    let ignore = repo(".dockerignore");
    for entry in ["target/", "**/node_modules/"] {
        assert!(ignore.lines().any(|l| l == entry), "{entry} missing from .dockerignore");
    }
}

/// The published client crate builds from its own copy of the proto.
#[test]
fn the_client_crate_proto_is_the_contract() {
    let contract = repo("proto/occupancy/v1/occupancy.proto");
    let copy = repo("crates/occupancy-client/proto/occupancy/v1/occupancy.proto");
    assert!(
        contract == copy,
        "crates/occupancy-client/proto/occupancy/v1/occupancy.proto differs from proto/occupancy/v1/occupancy.proto: copy it over"
    );
    let build = repo("crates/occupancy-client/build.rs");
    assert!(!build.contains(".."), "the client's build reads outside the crate");
}

mod monitoring {
    //! The deployment files: docker-compose.yml wires Prometheus to every
    //! replica's HTTP side and Grafana to Prometheus; the Grafana dashboard
    //! only queries metrics the service exports. The files are parsed (YAML,
    //! JSON) and checked against each other and against a live `/metrics`.

    use std::collections::BTreeSet;

    use serde_json::Value;
    use yaml_rust2::{Yaml, YamlLoader};

    use crate::support::Harness;

    fn read(path: &str) -> String {
        std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
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
        let dash: Value =
            serde_json::from_str(&read("deploy/grafana/dashboards/occupancy.json")).expect("dashboard JSON");
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
}
