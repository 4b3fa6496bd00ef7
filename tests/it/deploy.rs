//! The deployment files: the Kubernetes example, compose file, Dockerfile
//! and `.dockerignore` use only flags and variables the binary has, with
//! stop grace periods above the service's own; and the client crate's copy
//! of the proto is the contract.

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

/// `OCCUPANCY_*` variable → long flag, for `occupancy serve`.
fn serve_env() -> HashMap<String, String> {
    let cli = Cli::command();
    let serve = cli.find_subcommand("serve").expect("serve");
    serve
        .get_arguments()
        .filter_map(|a| Some((a.get_env()?.to_str()?.to_string(), a.get_long()?.to_string())))
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
        let flag = flags
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not a variable of occupancy serve"));
        argv.push(format!("--{flag}={value}"));
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
