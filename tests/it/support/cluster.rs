//! A private Redis Cluster: three primaries, each with one replica, on
//! loopback ports in a temp dir, created with `redis-cli --cluster create`
//! and stopped by pid on drop. Node ports stay below 55536 and are chosen
//! with their cluster bus port (port + 10000) free too.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a node goes unanswered before the cluster fails it over: short,
/// so fault tests take seconds.
const NODE_TIMEOUT_MS: u64 = 1_000;

/// Bound on every wait for the cluster to settle.
const SETTLE: Duration = Duration::from_secs(30);

/// One node process.
struct Node {
    port: u16,
    child: Option<Child>,
}

/// A Redis Cluster owned by the test.
pub struct RedisCluster {
    nodes: Vec<Node>,
    /// Holds the nodes' files until the cluster is dropped.
    dir: tempfile::TempDir,
}

/// One node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The node id.
    pub id: String,
    /// Its client port.
    pub port: u16,
    /// Whether it is a primary (with or without slots).
    pub primary: bool,
    /// Whether the cluster sees it failing.
    pub failed: bool,
    /// The slots it serves (primaries only).
    pub slots: Vec<(u16, u16)>,
}

fn binary(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: run the README's test command, which installs it");
}

/// A port whose cluster bus port is free as well, below 55536.
fn free_node_port(taken: &[u16]) -> u16 {
    for _ in 0..200 {
        let Ok(l) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = l.local_addr() else { continue };
        let port = addr.port();
        if port >= 55_536 || taken.contains(&port) || taken.contains(&(port + 10_000)) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

fn ping(port: u16) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}/")) else {
        return false;
    };
    let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
        return false;
    };
    redis::cmd("PING").query::<String>(&mut c).is_ok()
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster (three primaries, one replica
    /// each) and waits until every node sees every slot served.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cluster = RedisCluster { nodes: Vec::new(), dir };
        for _ in 0..6 {
            let node = start_node(&cluster.nodes, cluster.dir.path());
            cluster.nodes.push(node);
        }
        let mut args = vec!["--cluster".to_string(), "create".to_string()];
        args.extend(cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"].map(String::from));
        redis_cli(&args);
        cluster.wait_ok();
        // a replica that never synced cannot be promoted: fault tests need
        // every replica attached
        cluster.wait_replicated();
        cluster
    }

    /// Every node's URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}/", n.port))
            .collect()
    }

    /// The nodes as a live node sees them.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        for n in &self.nodes {
            if n.child.is_none() {
                continue;
            }
            let Ok(mut c) = connect(n.port) else { continue };
            if let Ok(text) = redis::cmd("CLUSTER").arg("NODES").query::<String>(&mut c) {
                return parse_nodes(&text);
            }
        }
        panic!("no cluster node answered CLUSTER NODES");
    }

    /// The slot of `key`, as a live node computes it.
    pub fn keyslot(&self, key: &str) -> u16 {
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            let Ok(mut c) = connect(n.port) else { continue };
            if let Ok(slot) = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query(&mut c) {
                return slot;
            }
        }
        panic!("no cluster node answered CLUSTER KEYSLOT");
    }

    /// The live primaries that serve slots.
    pub fn primaries(&self) -> Vec<NodeInfo> {
        self.nodes()
            .into_iter()
            .filter(|n| n.primary && !n.failed && !n.slots.is_empty())
            .collect()
    }

    /// The live primary serving `slot`.
    pub fn primary_of(&self, slot: u16) -> NodeInfo {
        self.primaries()
            .into_iter()
            .find(|n| n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .unwrap_or_else(|| panic!("no live primary serves slot {slot}"))
    }

    /// SIGKILLs the node on `port` (its data is gone).
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"));
        stop(node);
    }

    /// Deletes every key in `slot` on the primary serving it, as a
    /// promoted replica that missed them would lack them (the function
    /// library stays); returns how many there were.
    pub fn drop_slot(&self, slot: u16) -> usize {
        let primary = self.primary_of(slot);
        let mut c = connect(primary.port).expect("connect to the slot's primary");
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(1_000_000)
            .query(&mut c)
            .expect("CLUSTER GETKEYSINSLOT");
        if !keys.is_empty() {
            let _: usize = redis::cmd("DEL").arg(&keys).query(&mut c).expect("DEL");
        }
        keys.len()
    }

    /// Waits until every live node reports `cluster_state:ok` with all
    /// slots served by primaries it does not see failing.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + SETTLE;
        loop {
            if self.settled() {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not settle in {SETTLE:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn settled(&self) -> bool {
        self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
            let Ok(mut c) = connect(n.port) else { return false };
            let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut c).unwrap_or_default();
            let ok = info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384");
            let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut c).unwrap_or_default();
            let served: usize = parse_nodes(&nodes)
                .iter()
                .filter(|n| n.primary && !n.failed)
                .flat_map(|n| n.slots.iter().map(|(a, b)| usize::from(b - a) + 1))
                .sum();
            ok && served == 16_384
        })
    }

    /// Moves `slots` slots from the primary on `from` to the one on `to`
    /// with `redis-cli --cluster reshard`, while clients keep running.
    pub fn reshard(&self, from: &NodeInfo, to: &NodeInfo, slots: u16) {
        reshard_with(from, to, usize::from(slots), &[]);
    }

    /// Moves `slot` live to the primary `to` with `redis-cli --cluster
    /// reshard`, the way the README tells operators to: it moves the
    /// source's lowest slots, so every slot of the source up to `slot`
    /// moves, and each slot's keys move in one MIGRATE (a pipeline larger
    /// than any slot's key count), so that no call sees a slot's keys split
    /// between two nodes.
    pub fn reshard_slot(&self, slot: u16, to: &NodeInfo) {
        let from = self.primary_of(slot);
        assert_ne!(from.id, to.id, "slot {slot} is on {} already", to.port);
        let below: usize = from
            .slots
            .iter()
            .filter(|(a, _)| *a <= slot)
            .map(|(a, b)| usize::from((*b).min(slot) - a) + 1)
            .sum();
        reshard_with(&from, to, below, &["--cluster-pipeline", "1000000"]);
    }

    /// Moves every slot off the primary `node` live with `redis-cli
    /// --cluster rebalance` (its weight 0), each slot's keys in one MIGRATE
    /// as the README says, while clients keep running.
    pub fn drain(&self, node: &NodeInfo) {
        redis_cli(&[
            "--cluster".to_string(),
            "rebalance".to_string(),
            format!("127.0.0.1:{}", node.port),
            "--cluster-weight".to_string(),
            format!("{}=0", node.id),
            "--cluster-pipeline".to_string(),
            "1000000".to_string(),
        ]);
    }

    /// Waits until every live primary's replica is online and has every
    /// write the primary has (its offset in `INFO replication` reached the
    /// primary's), bounded. (`WAIT` would not do: it counts only the writes
    /// of the connection that sends it.)
    pub fn wait_replicated(&self) {
        let deadline = Instant::now() + SETTLE;
        for p in self.primaries() {
            while !caught_up(p.port) {
                assert!(Instant::now() < deadline, "the replica of {} did not catch up", p.port);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Whether the primary on `port` has a replica online whose offset
/// reached its own.
fn caught_up(port: u16) -> bool {
    let Ok(mut c) = connect(port) else { return false };
    let Ok(info) = redis::cmd("INFO").arg("replication").query::<String>(&mut c) else {
        return false;
    };
    let field = |line: &str, name: &str| -> Option<u64> {
        line.split(',')
            .find_map(|kv| kv.trim().strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    let primary = info.lines().find_map(|l| field(l, "master_repl_offset:"));
    let replicas: Vec<Option<u64>> = info
        .lines()
        .filter(|l| l.starts_with("slave") && l.contains("state=online"))
        .map(|l| field(l.split_once(':').map_or("", |(_, v)| v), "offset="))
        .collect();
    match primary {
        Some(offset) => !replicas.is_empty() && replicas.iter().all(|r| r.is_some_and(|o| o >= offset)),
        None => false,
    }
}

/// `redis-cli --cluster reshard` of `slots` slots from `from` to `to`,
/// with `extra` options.
fn reshard_with(from: &NodeInfo, to: &NodeInfo, slots: usize, extra: &[&str]) {
    let mut args = vec![
        "--cluster".to_string(),
        "reshard".to_string(),
        format!("127.0.0.1:{}", from.port),
        "--cluster-from".to_string(),
        from.id.clone(),
        "--cluster-to".to_string(),
        to.id.clone(),
        "--cluster-slots".to_string(),
        slots.to_string(),
        "--cluster-yes".to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    redis_cli(&args);
}

/// Runs `redis-cli` with `args`, failing the test with its output if it
/// fails.
fn redis_cli(args: &[String]) {
    let out = Command::new(binary("redis-cli"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    assert!(
        out.status.success(),
        "redis-cli {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn connect(port: u16) -> redis::RedisResult<redis::Connection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))?.get_connection_with_timeout(Duration::from_secs(1))
}

fn spawn(node: &mut Node, dir: &Path) {
    let own = dir.join(node.port.to_string());
    std::fs::create_dir_all(&own).expect("node dir");
    let child = super::redis::server_command(node.port, &own)
        .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
        .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
        // a replica's full sync starts at once: by default a primary waits
        // 5 s for more replicas to share one transfer, and every cluster
        // waits for its replicas before a test starts
        .args(["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"])
        .spawn()
        .expect("spawn redis-server");
    node.child = Some(child);
}

/// Starts one node on a free port pair and waits until it answers PING. A
/// port found free can be taken by another test's server before this one
/// binds it (tests run in parallel processes): a node that exits is started
/// again on another pair.
fn start_node(others: &[Node], dir: &Path) -> Node {
    for _ in 0..5 {
        let taken: Vec<u16> = others.iter().flat_map(|n| [n.port, n.port + 10_000]).collect();
        let mut node = Node {
            port: free_node_port(&taken),
            child: None,
        };
        spawn(&mut node, dir);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(Ok(Some(_))) = node.child.as_mut().map(|c| c.try_wait()) {
                node.child = None;
                break;
            }
            if ping(node.port) {
                return node;
            }
            if Instant::now() >= deadline {
                stop(&mut node);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("could not start a cluster node after 5 attempts");
}

fn stop(node: &mut Node) {
    if let Some(mut c) = node.child.take() {
        // SIGKILL by our own pid; an error means it is gone already
        let _killed = c.kill();
        let _reaped = c.wait();
    }
}

/// Parses `CLUSTER NODES` (migrating and importing slot markers ignored).
pub fn parse_nodes(text: &str) -> Vec<NodeInfo> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let port = f[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
            let flags = f[2];
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|a| (a, a)),
                })
                .collect();
            Some(NodeInfo {
                id: f[0].to_string(),
                port,
                primary: flags.contains("master"),
                failed: (flags.contains("fail") && !flags.contains("fail?")) || flags.contains("noaddr"),
                slots,
            })
        })
        .collect()
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            stop(n);
        }
    }
}
