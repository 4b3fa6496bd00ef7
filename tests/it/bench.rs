//! `scripts/bench`'s table (`scripts/bench-table.py`): a quick run is not
//! judged against the full-size targets.

use std::process::Command;

/// Results of a quick run as `scripts/bench` collects them, with figures
/// that miss the full-size targets (Apply at 0.45x, fan-out 156,835/s,
/// 203 bytes per attachment).
const QUICK_RESULTS: &str = "\
CPU evalsha_p16 1000 500 0
BASE evalsha_p16 100000
RESULT scenario=apply rate=45000 p50_ms=1.0 p99_ms=3.0
BASE evalsha 50000
RESULT scenario=unary rate=25000 p50_ms=1.0 p99_ms=3.0
BASE hgetall 60000
RESULT scenario=get rate=40000 p50_ms=1.0 p99_ms=2.0
RESULT scenario=batch-get rate=300000 p50_ms=1.0 p99_ms=4.0
RESULT scenario=fanout rate=156835 streams=500 channels=500 writers=4 changes_per_s=300 delivered=1000 delivered_share=1.000
RESULT scenario=latency subscribers=50 channels=50 changes=500 change_rate=5000 achieved_rate=4990 deliveries_per_s=4990 in_flight=1 samples=500 missing=0 early=0 p50_ms=0.10 p99_ms=0.50 max_ms=2.00
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
    let rows: Vec<&str> = quick
        .lines()
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
