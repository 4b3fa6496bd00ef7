//! `scripts/bench`'s table (`scripts/bench-table.py`): a quick run is not
//! judged against the full-size targets.

use std::process::Command;

/// Results of a quick run as `scripts/bench` collects them, with figures
/// that miss the full-size targets (Apply at 0.45x, unary Attach with a
/// key at 0.90x of without, REST at 0.50x of gRPC, fan-out 156,835/s, 203
/// bytes per attachment).
const QUICK_RESULTS: &str = "\
CPU evalsha_p16 1000 500 0
BASE evalsha_p16 100000
RESULT scenario=apply rate=45000 p50_ms=1.0 p99_ms=3.0
BASE evalsha 50000
RESULT scenario=unary rate=25000 p50_ms=1.0 p99_ms=3.0 cpu_us_redis=10.0 cpu_us_replica=30.0 cpu_us_gen=20.0
RESULT scenario=unary-auth rate=22500 p50_ms=1.1 p99_ms=3.2 cpu_us_redis=10.0 cpu_us_replica=33.0 cpu_us_gen=20.0
BASE hgetall 60000
RESULT scenario=get rate=40000 p50_ms=1.0 p99_ms=2.0
RESULT scenario=get-auth rate=39000 p50_ms=1.0 p99_ms=2.0
RESULT scenario=rest-get rate=20000 mean_ms=3.100 requests=20000 connections=64 cpu_us_redis=9.0 cpu_us_replica=40.0
RESULT scenario=batch-get rate=300000 p50_ms=1.0 p99_ms=4.0
RESULT scenario=fanout rate=156835 streams=500 channels=500 writers=4 changes_per_s=300 delivered=1000 delivered_share=1.000
RESULT scenario=latency subscribers=50 channels=50 changes=500 change_rate=5000 achieved_rate=4990 deliveries_per_s=4990 in_flight=1 samples=500 missing=0 early=120 p50_ms=0.10 p99_ms=0.50 max_ms=2.00 reply_p50_ms=0.02 reply_p99_ms=0.30 reply_max_ms=1.50
RESULT scenario=sse subscribers=200 channels=50 changes=500 change_rate=5000 achieved_rate=4990 deliveries_per_s=19960 in_flight=64 samples=2000 missing=0 early=700 p50_ms=1.20 p99_ms=4.50 max_ms=6.00 reply_p50_ms=0.30 reply_p99_ms=3.00 reply_max_ms=5.00
RESULT scenario=footprint bytes_per_attachment=203 bytes_per_member=180 count=20000
";

fn table(quick: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    std::fs::write(&results, QUICK_RESULTS).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench-table.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(&results);
    if quick {
        cmd.arg("--quick");
    }
    let out = cmd.output().expect("python3 (scripts/bench needs it too)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn quick_rows_are_not_judged_against_full_size_targets() {
    let full = table(false);
    // the same figures in a full run fail their targets
    assert!(full.contains("| NO "), "{full}");
    let quick = table(true);
    // the main table, not the CPU table after it
    let rows: Vec<&str> = quick
        .lines()
        .take_while(|l| !l.is_empty())
        .filter(|l| l.starts_with("| ") && !l.starts_with("| scenario"))
        .collect();
    assert!(rows.len() >= 8, "{quick}");
    for row in rows.iter().filter(|r| !r.contains("---")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let met = cells[5];
        assert!(met != "NO" && met != "yes" || row.contains("reported"), "{row}");
        if !row.contains("reported") {
            assert_eq!(met, "not comparable (quick)", "{row}");
        }
    }
    assert!(quick.contains("quick run:"), "{quick}");
}

/// The row of `table` whose first cell starts with `name`, as cells.
fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    let line = table
        .lines()
        .find(|l| l.trim_start_matches("| ").starts_with(name))
        .unwrap_or_else(|| panic!("no row {name:?} in\n{table}"));
    line.split('|').map(str::trim).collect()
}

#[test]
fn auth_rest_and_sse_rows_show_with_their_targets() {
    let full = table(false);
    // auth on against off: the ratio and the 0.95 target, judged
    let unary = row(&full, "2. unary Attach/Detach with a key");
    assert_eq!(unary[4], "0.90 x (target 0.95)", "{full}");
    assert_eq!(unary[5], "NO", "{full}");
    let get = row(&full, "3. GetOccupancy with a key");
    assert_eq!(get[4], "0.97 x (target 0.95)", "{full}");
    assert_eq!(get[5], "yes", "{full}");
    // REST against gRPC, with the concurrency it ran at
    let rest = row(&full, "3. REST GET /channels/{id}, 64 HTTP/1.1 conns");
    assert_eq!(rest[4], "0.50 x (target 0.7)", "{full}");
    assert_eq!(rest[5], "NO", "{full}");
    assert!(rest[2].contains("mean 3.100 ms"), "{full}");
    // SSE: deliveries and latency from send, reported
    let sse = row(&full, "5. SSE A->B from send, 200 HTTP clients on 50 channels");
    assert!(
        sse[2].starts_with("19,960 deliveries/s, p50 1.20 ms, p99 4.50 ms"),
        "{full}"
    );
    assert_eq!(sse[5], "yes", "{full}");
    // the latency row: from send, the figure from the reply beside it
    let lat = row(&full, "5. latency A->B from send");
    assert!(lat[2].starts_with("p50 0.10 ms, p99 0.50 ms"), "{full}");
    assert!(
        lat[2].ends_with("from the reply: p50 0.02 ms, p99 0.30 ms, 120 early"),
        "{full}"
    );
    // CPU per operation of the auth and REST runs
    let auth = row(&full, "unary-auth");
    assert_eq!(auth[3], "33.0", "{full}");
    let rest = row(&full, "rest-get");
    assert_eq!((rest[3], rest[4]), ("40.0", "-"), "{full}");
}
