//! The Lua code as one Redis function library (Redis 7 `FUNCTION LOAD`,
//! called with `FCALL`).
//!
//! `lua/ORDER` lists how the library is assembled: the constants header
//! written from the Rust constants (`codec::lua_constants`), then the
//! modules (key names, counters, leases, records, the occupancy rules),
//! defined once when the library loads; then each function, whose file is
//! its body, starting by resetting the per-call state (`begin` in
//! `lua/call.lua`). `scripts/redis-instructions` reads the same list.
//!
//! Why functions rather than EVALSHA scripts: a script re-runs its whole
//! prelude on every call (about 60 closures and the tables behind them),
//! which was a large share of a one-operation write. A library pays that
//! once, at load.
//!
//! The library's name carries a hash of its code, so replicas of different
//! versions sharing one Redis each call their own functions. A replica
//! loads it with its first health check ([`ensure_loaded`]), before it
//! reports SERVING. A call that finds its function missing anyway (a Redis
//! that restarted empty, a `FUNCTION FLUSH`, a failover to a replica that
//! never got it) loads the library and retries once; the calls that found
//! it missing at the same time wait for that one load instead of each
//! sending their own (a replica starting under load sent one `FUNCTION
//! LOAD` per call in flight, all but one failing, each counted in Redis'
//! error statistics). Old versions' libraries stay until deleted with
//! `FUNCTION DELETE`; they hold only code.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{Cmd, FromRedisValue, RedisResult};

use super::RedisConfig;

/// The functions of the library, each listed in `lua/ORDER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Function {
    Apply,
    ApplyMany,
    KeepAlive,
    Close,
    Reap,
    List,
    Snapshot,
    History,
    SessionState,
    StreamState,
}

impl Function {
    #[cfg(test)]
    const ALL: [Function; 10] = [
        Function::Apply,
        Function::ApplyMany,
        Function::KeepAlive,
        Function::Close,
        Function::Reap,
        Function::List,
        Function::Snapshot,
        Function::History,
        Function::SessionState,
        Function::StreamState,
    ];

    /// Its name in `lua/ORDER` and its file's: the function is
    /// `<library>_<name>`.
    fn name(self) -> &'static str {
        match self {
            Function::Apply => "apply",
            Function::ApplyMany => "apply_many",
            Function::KeepAlive => "keep_alive",
            Function::Close => "close",
            Function::Reap => "reap",
            Function::List => "list",
            Function::Snapshot => "snapshot",
            Function::History => "history",
            Function::SessionState => "session_state",
            Function::StreamState => "stream_state",
        }
    }
}

/// How the library is assembled, one part a line (see the file's comment).
const ORDER: &str = include_str!("lua/ORDER");

/// Every Lua file, by its name in [`ORDER`]: `include_str!` needs each path
/// spelled out, and a test checks these are exactly the files it lists.
const SOURCES: [(&str, &str); 18] = [
    ("util", include_str!("lua/util.lua")),
    ("keys", include_str!("lua/keys.lua")),
    ("counters", include_str!("lua/counters.lua")),
    ("leases", include_str!("lua/leases.lua")),
    ("records", include_str!("lua/records.lua")),
    ("ops", include_str!("lua/ops.lua")),
    ("events", include_str!("lua/events.lua")),
    ("call", include_str!("lua/call.lua")),
    ("apply", include_str!("lua/apply.lua")),
    ("apply_many", include_str!("lua/apply_many.lua")),
    ("keep_alive", include_str!("lua/keep_alive.lua")),
    ("close", include_str!("lua/close.lua")),
    ("reap", include_str!("lua/reap.lua")),
    ("list", include_str!("lua/list.lua")),
    ("snapshot", include_str!("lua/snapshot.lua")),
    ("history", include_str!("lua/history.lua")),
    ("session_state", include_str!("lua/session_state.lua")),
    ("stream_state", include_str!("lua/stream_state.lua")),
];

/// One line of [`ORDER`].
#[derive(Debug, PartialEq, Eq)]
enum Part<'a> {
    /// A module, defined when the library loads.
    Module(&'a str),
    /// A function, and how it starts.
    Function(&'a str, Start),
}

/// How a function of the library starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// With `begin`, not reading the Redis clock.
    Plain,
    /// With `begin`, reading the Redis clock.
    Clock,
    /// Without `begin`: it runs other functions of the library, each for
    /// one partition's slot, so it is registered with the
    /// `allow-cross-slot-keys` flag (see `lua/apply_many.lua`).
    CrossSlot,
}

/// How a function without and with the Redis clock starts: `begin`
/// answers an error reply instead when the call must not run (its state's
/// slot migrating, see `lua/call.lua`).
const BEGIN_PLAIN: &str = "local refused = begin(ARGV, false, KEYS)\nif refused then return refused end\n";
/// See [`BEGIN_PLAIN`].
const BEGIN_CLOCK: &str = "local refused = begin(ARGV, true, KEYS)\nif refused then return refused end\n";

/// The parts [`ORDER`] lists, in order.
fn parts() -> Result<Vec<Part<'static>>, String> {
    ORDER
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["module", name] => Ok(Part::Module(name)),
            ["function", name] => Ok(Part::Function(name, Start::Plain)),
            ["function", name, "clock"] => Ok(Part::Function(name, Start::Clock)),
            ["function", name, "cross-slot"] => Ok(Part::Function(name, Start::CrossSlot)),
            _ => Err(format!("lua/ORDER: malformed line {line:?}")),
        })
        .collect()
}

/// The Lua file named `name` in [`ORDER`].
fn source(name: &str) -> Result<&'static str, String> {
    SOURCES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .ok_or_else(|| format!("lua/ORDER names {name}.lua, which functions.rs does not include"))
}

/// The library's body, its functions registered under `lib`'s name.
fn body(lib: &str) -> Result<String, String> {
    let mut body = super::codec::lua_constants();
    for part in parts()? {
        match part {
            Part::Module(name) => {
                body.push('\n');
                body.push_str(source(name)?);
            }
            // each function is also a local `f_NAME`, so that a function
            // listed later can run it
            Part::Function(name, start) => {
                let code = source(name)?;
                let (begin, flags) = match start {
                    Start::Plain => (BEGIN_PLAIN, ""),
                    Start::Clock => (BEGIN_CLOCK, ""),
                    Start::CrossSlot => ("", "'allow-cross-slot-keys'"),
                };
                body.push_str(&format!(
                    "\nlocal f_{name} = function(KEYS, ARGV)\n{begin}{code}\nend\n\
                     redis.register_function{{function_name = '{lib}_{name}', callback = f_{name}, flags = {{{flags}}}}}\n"
                ));
            }
        }
    }
    Ok(body)
}

/// The library's code (for `FUNCTION LOAD`) and the name its functions
/// start with.
struct Library {
    code: String,
    name: String,
}

/// FNV-1a, 64 bits: a stable hash of the code (not a security measure).
fn fnv64(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

static LIBRARY: LazyLock<Library> = LazyLock::new(|| {
    // the functions are registered under a placeholder, replaced by the
    // name once the code (and so its hash) is complete; ORDER and SOURCES
    // are compiled in, and the tests assemble them
    let body = body("@LIB@").unwrap_or_else(|e| panic!("the Lua library cannot be assembled: {e}"));
    let name = format!("occupancy_{:016x}", fnv64(&body));
    let code = format!("#!lua name={name}\n{}", body.replace("@LIB@", &name));
    Library { code, name }
});

/// A call of `f` with the arguments every function starts with (see
/// `begin` in `lua/call.lua`): key prefix, event shards, stream length;
/// on a cluster, with the anchor key (`keys::anchor`) as its one key. Add the
/// function's own arguments, then run it with [`invoke`].
pub(crate) fn call(cfg: &RedisConfig, f: Function) -> Cmd {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg(name(f));
    if cfg.cluster {
        // the anchor is in the state's slot: declared as the call's one
        // key, it routes the call to the primary serving that slot, and,
        // since it exists wherever the state is, to the node holding the
        // state while the slot migrates (a key missing on the migrating
        // node would send the call to the importing one, where the rest of
        // the state is not yet); the functions read no KEYS
        cmd.arg(1).arg(super::keys::anchor(&cfg.key_prefix));
    } else {
        cmd.arg(0);
    }
    cmd.arg(&cfg.key_prefix).arg(cfg.event_shards).arg(cfg.stream_max_len);
    cmd
}

/// The name `f` is called by (`<library>_<name>`).
pub(crate) fn name(f: Function) -> String {
    format!("{}_{}", LIBRARY.name, f.name())
}

/// The arguments every function starts with, as [`call`] adds them, in a
/// command of their own: a section of an `apply_many` call
/// (`nodes.rs`).
pub(crate) fn call_args(cfg: &RedisConfig) -> Cmd {
    let mut args = Cmd::new();
    args.arg(&cfg.key_prefix).arg(cfg.event_shards).arg(cfg.stream_max_len);
    args
}

/// Held while a call that found its function missing loads the library,
/// so the others retry after that load rather than load it again. One for
/// the process: a load takes a millisecond, and only calls that failed
/// ever wait for it.
static LOADING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs a [`call`], loading the library first if Redis does not have it.
pub(crate) async fn invoke<T: FromRedisValue>(conn: &mut impl ConnectionLike, cmd: &Cmd) -> RedisResult<T> {
    match cmd.query_async(conn).await {
        Err(e) if missing(&e) => {
            let _one_load = LOADING.lock().await;
            // another call may have loaded it meanwhile; a call whose
            // function was missing changed nothing, so trying it again is
            // safe
            match cmd.query_async(conn).await {
                Err(e) if missing(&e) => {
                    load(conn).await?;
                    cmd.query_async(conn).await
                }
                r => r,
            }
        }
        r => r,
    }
}

/// [`invoke`] followed, in the same round trip to the same node, by `WAIT
/// replicas timeout`: the call's answer and how many replicas acknowledged
/// every write of the connection so far (the call's included).
pub(crate) async fn invoke_acked<T: FromRedisValue>(
    conn: &mut impl ConnectionLike,
    cmd: &Cmd,
    replicas: u32,
    timeout: std::time::Duration,
) -> RedisResult<(T, u32)> {
    let mut pipe = redis::pipe();
    // the pipeline goes where its first command's key routes it, so the
    // WAIT asks the node that ran the call
    pipe.add_command(cmd.clone())
        .cmd("WAIT")
        .arg(replicas)
        .arg(timeout.as_millis().max(1) as u64);
    match pipe.query_async(conn).await {
        Err(e) if missing(&e) => {
            let _one_load = LOADING.lock().await;
            // a call whose function was missing changed nothing
            load(conn).await?;
            pipe.query_async(conn).await
        }
        r => r,
    }
}

/// Loads the library unless Redis already has this version of it. A user
/// whose ACL forbids `FUNCTION` commands is not an error here: an
/// administrator loads the library for it (README), and a call that finds
/// it missing says so.
pub(crate) async fn ensure_loaded(conn: &mut impl ConnectionLike) -> RedisResult<()> {
    let listed: RedisResult<Vec<redis::Value>> = redis::cmd("FUNCTION")
        .arg("LIST")
        .arg("LIBRARYNAME")
        .arg(&LIBRARY.name)
        .query_async(conn)
        .await;
    let r = match listed {
        Ok(listed) if listed.is_empty() => load(conn).await,
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    };
    match r {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) => Ok(()),
        r => r,
    }
}

/// Loads the library; another replica loading it first is fine.
async fn load(conn: &mut impl ConnectionLike) -> RedisResult<()> {
    let r: RedisResult<String> = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(&LIBRARY.code)
        .query_async(conn)
        .await;
    match r {
        Err(e) if !e.to_string().contains("already exists") => Err(e),
        _ => Ok(()),
    }
}

fn missing(e: &redis::RedisError) -> bool {
    e.to_string().contains("Function not found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_names_every_function_after_its_code() {
        let lib = &*LIBRARY;
        assert!(lib.code.starts_with(&format!("#!lua name={}\n", lib.name)));
        assert!(!lib.code.contains("@LIB@"));
        for f in Function::ALL {
            let name = format!("'{}_{}'", lib.name, f.name());
            assert_eq!(lib.code.matches(&name).count(), 1, "{name}");
        }
        // names Redis accepts: letters, digits and underscores
        assert!(lib.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    }

    #[test]
    fn order_lists_every_file_once_and_every_function() {
        let parts = parts().unwrap();
        let names: Vec<&str> = parts
            .iter()
            .map(|p| match p {
                Part::Module(n) | Part::Function(n, _) => *n,
            })
            .collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        let mut files: Vec<&str> = SOURCES.iter().map(|(n, _)| *n).collect();
        files.sort_unstable();
        assert_eq!(sorted, files, "lua/ORDER and SOURCES disagree");
        let functions: Vec<&str> = parts
            .iter()
            .filter_map(|p| match p {
                Part::Function(n, _) => Some(*n),
                Part::Module(_) => None,
            })
            .collect();
        assert_eq!(functions, Function::ALL.map(Function::name));
        // the constants come first, then the modules, begin() last of them
        assert!(body("x")
            .unwrap()
            .starts_with(&crate::store::redis::codec::lua_constants()));
        assert_eq!(parts.iter().rposition(|p| matches!(p, Part::Module(_))), Some(7));
        assert_eq!(parts[7], Part::Module("call"));
    }

    #[test]
    fn every_lua_file_is_in_sources() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/redis/lua");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".lua").map(str::to_string))
            .collect();
        on_disk.sort_unstable();
        let mut listed: Vec<&str> = SOURCES.iter().map(|(n, _)| *n).collect();
        listed.sort_unstable();
        assert_eq!(on_disk, listed);
    }
}
