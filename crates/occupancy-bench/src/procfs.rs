//! What the scenarios read from `/proc`: CPU time of a process and its
//! resident memory.

use std::time::Duration;

use anyhow::Context;

/// CPU time (user and system, all threads) of a process so far, from
/// `/proc/PID/stat`; `None` reads this process.
pub(crate) fn cpu_time(pid: Option<u32>) -> anyhow::Result<Duration> {
    let path = pid.map_or_else(|| "/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // the command name (field 2) may hold spaces: count from its ')'
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime, fields 14 and 15, in USER_HZ ticks (100 per second
    // in the Linux ABI)
    let mut ticks = 0u64;
    for f in fields.get(11..13).context("short stat")? {
        ticks += f
            .parse::<u64>()
            .with_context(|| format!("bad tick count {f} in {path}"))?;
    }
    Ok(Duration::from_millis(ticks * 10))
}

/// Resident memory (VmRSS) of process `pid`, in bytes.
pub(crate) fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("read /proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")?;
    Ok(kb * 1024)
}

/// CPU time of each watched process, and of this one as `gen`.
fn snapshot(watch: &[(String, u32)]) -> anyhow::Result<Vec<(String, Duration)>> {
    let mut out = Vec::with_capacity(watch.len() + 1);
    for (name, pid) in watch {
        out.push((name.clone(), cpu_time(Some(*pid))?));
    }
    out.push(("gen".to_string(), cpu_time(None)?));
    Ok(out)
}

/// The CPU time watched processes (and this one, as `gen`) spend over a
/// measured window.
pub(crate) struct Window {
    watch: Vec<(String, u32)>,
    before: Vec<(String, Duration)>,
}

impl Window {
    /// Starts the window: reads each process's CPU time so far.
    ///
    /// # Errors
    /// A process that is gone or a `/proc` file that does not parse.
    pub(crate) fn start(watch: &[(String, u32)]) -> anyhow::Result<Self> {
        Ok(Self {
            watch: watch.to_vec(),
            before: snapshot(watch)?,
        })
    }

    /// The CPU time each process spent since [`Window::start`], by name.
    ///
    /// # Errors
    /// As [`Window::start`].
    pub(crate) fn end(self) -> anyhow::Result<Vec<(String, Duration)>> {
        Ok(snapshot(&self.watch)?
            .into_iter()
            .zip(self.before)
            .map(|((name, after), (_, before))| (name, after.saturating_sub(before)))
            .collect())
    }
}

/// ` cpu_us_NAME=X` for each name: the CPU time per operation, in µs, of
/// the processes watched under it (summed: `--cpu-of redis=…` given once
/// per cluster primary reports them together).
pub(crate) fn per_op(cpu: &[(String, Duration)], ops: u64) -> String {
    let mut names: Vec<(&str, Duration)> = Vec::new();
    for (name, t) in cpu {
        match names.iter_mut().find(|(n, _)| n == name) {
            Some((_, sum)) => *sum += *t,
            None => names.push((name, *t)),
        }
    }
    let mut out = String::new();
    for (name, t) in names {
        let per_op = t.as_secs_f64() * 1e6 / ops.max(1) as f64;
        out.push_str(&format!(" cpu_us_{name}={per_op:.1}"));
    }
    out
}
