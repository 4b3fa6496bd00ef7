//! The Lua code as one Redis function library (Redis 7 `FUNCTION LOAD`,
//! called with `FCALL`).
//!
//! `lua/common.lua` is the library's body: key names, counters and the
//! occupancy rules, defined once when the library loads. Each other file
//! under `lua/` becomes one function of it, which starts by resetting the
//! per-call state (`begin` in `common.lua`).
//!
//! Why functions rather than EVALSHA scripts: a script re-runs its whole
//! prelude on every call (about 60 closures and the tables behind them,
//! about 100,000 instructions in Redis, measured with callgrind), which was
//! a quarter of a one-operation write. A library pays that once, at load.
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

/// The functions of the library: one per Lua file besides `common.lua`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Function {
    Apply,
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
    const ALL: [Function; 9] = [
        Function::Apply,
        Function::KeepAlive,
        Function::Close,
        Function::Reap,
        Function::List,
        Function::Snapshot,
        Function::History,
        Function::SessionState,
        Function::StreamState,
    ];

    /// Short name (the function is `<library>_<short>`), source, and
    /// whether it reads the clock (`TIME`, for lease deadlines).
    fn spec(self) -> (&'static str, &'static str, bool) {
        match self {
            Function::Apply => ("apply", include_str!("lua/apply.lua"), true),
            Function::KeepAlive => ("keep_alive", include_str!("lua/keep_alive.lua"), true),
            Function::Close => ("close", include_str!("lua/close.lua"), true),
            Function::Reap => ("reap", include_str!("lua/reap.lua"), true),
            Function::List => ("list", include_str!("lua/list.lua"), false),
            Function::Snapshot => ("snapshot", include_str!("lua/snapshot.lua"), false),
            Function::History => ("history", include_str!("lua/history.lua"), false),
            Function::SessionState => ("session_state", include_str!("lua/session_state.lua"), true),
            Function::StreamState => ("stream_state", include_str!("lua/stream_state.lua"), false),
        }
    }
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
    let mut body = String::from(include_str!("lua/common.lua"));
    let name_of = |short: &str, lib: &str| format!("{lib}_{short}");
    // the functions are registered under a placeholder, replaced by the
    // name once the code (and so its hash) is complete
    for f in Function::ALL {
        let (short, source, clock) = f.spec();
        body.push_str(&format!(
            "\nredis.register_function('{}', function(KEYS, ARGV)\nbegin(ARGV, {clock})\n{source}\nend)\n",
            name_of(short, "@LIB@")
        ));
    }
    let name = format!("occupancy_{:016x}", fnv64(&body));
    let code = format!("#!lua name={name}\n{}", body.replace("@LIB@", &name));
    Library { code, name }
});

/// A call of `f` with the arguments every function starts with (see
/// `lua/common.lua`): key prefix, event shards, stream length. Add the
/// function's own arguments, then run it with [`invoke`].
pub(crate) fn call(cfg: &RedisConfig, f: Function) -> Cmd {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg(format!("{}_{}", LIBRARY.name, f.spec().0))
        .arg(0)
        .arg(&cfg.key_prefix)
        .arg(cfg.event_shards)
        .arg(cfg.stream_max_len);
    cmd
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
            let name = format!("'{}_{}'", lib.name, f.spec().0);
            assert_eq!(lib.code.matches(&name).count(), 1, "{name}");
        }
        // names Redis accepts: letters, digits and underscores
        assert!(lib.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    }
}
