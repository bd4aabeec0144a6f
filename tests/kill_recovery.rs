//! Crash recovery with exactly-once file sinks: the `laminardb run` command line runs a pipeline
//! (two datagen sources → windowed aggregate, time-bounded join and updating aggregate → file
//! sinks with `'delivery.guarantee' = 'exactly-once'`) in a child process that is killed with
//! SIGKILL at random moments, at least 20 times, and restarted on the same directory each time.
//! What the sinks published at the end must equal a run that was never interrupted: no row lost,
//! none written twice.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn pipeline(out: &Path) -> String {
    let sink = |name: &str, extra: &str| {
        format!(
            "WITH (connector = 'file', 'path' = '{}', 'delivery.guarantee' = 'exactly-once'{extra})",
            out.join(name).display()
        )
    };
    format!(
        "CREATE SOURCE views (ad BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
           WITH (connector = 'datagen', 'rows_per_second' = '10000', 'max_rows' = '250000', 'seed' = '1',
                 'fields.ad.max' = '40', 'fields.ts.start' = '2024-01-01T00:00:00Z', 'fields.ts.step' = '10',
                 'retention' = '0 rows');
         CREATE SOURCE clicks (ad BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
           WITH (connector = 'datagen', 'rows_per_second' = '5000', 'max_rows' = '125000', 'seed' = '2',
                 'fields.ad.max' = '40', 'fields.ts.start' = '2024-01-01T00:00:00Z', 'fields.ts.step' = '20',
                 'retention' = '0 rows');
         CREATE SINK per_window AS SELECT ad, window_start, COUNT(*) AS n FROM views
           GROUP BY ad, TUMBLE(ts, INTERVAL '10' SECOND) EMIT ON WINDOW CLOSE {};
         CREATE SINK matched AS SELECT v.ad AS ad, v.ts AS vts, c.ts AS cts FROM views v JOIN clicks c
           ON v.ad = c.ad AND c.ts BETWEEN v.ts AND v.ts + INTERVAL '500' MILLISECOND {};
         CREATE SINK totals AS SELECT ad, COUNT(*) AS n FROM views GROUP BY ad {};",
        sink("per_window", ""),
        sink("matched", ""),
        sink("totals", ", 'changelog' = 'true'")
    )
}

fn run_cli(db: &Path, sql: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_laminardb"))
        .args(["run", &sql.display().to_string(), "--db", &db.display().to_string(), "--quiet"])
        .args(["--checkpoint-interval", "150", "--workers", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn laminardb")
}

/// Published rows of a sink directory (hidden files are not published), as canonical JSON.
fn published(dir: &Path) -> Vec<String> {
    let mut rows = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return rows };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).expect("read");
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).expect("json line");
            rows.push(v.to_string());
        }
    }
    rows.sort();
    rows
}

/// The final contents of a changelog sink: inserts minus deletes.
fn consolidated(rows: &[String]) -> BTreeMap<String, i64> {
    let mut out: BTreeMap<String, i64> = BTreeMap::new();
    for r in rows {
        let mut v: serde_json::Value = serde_json::from_str(r).expect("json");
        let op = v.as_object_mut().and_then(|o| o.remove("op")).and_then(|o| o.as_str().map(String::from));
        let d = if op.as_deref() == Some("delete") { -1 } else { 1 };
        *out.entry(v.to_string()).or_default() += d;
    }
    out.retain(|_, c| *c != 0);
    out
}

#[test]
fn exactly_once_file_sinks_survive_twenty_kills() {
    let clean = tempfile::tempdir().expect("dir");
    let crashy = tempfile::tempdir().expect("dir");
    for d in [&clean, &crashy] {
        std::fs::write(d.path().join("pipeline.sql"), pipeline(&d.path().join("out"))).expect("sql");
    }
    // The reference: one uninterrupted run.
    let status = run_cli(&clean.path().join("db"), &clean.path().join("pipeline.sql")).wait().expect("clean run");
    assert!(status.success(), "the clean run failed");

    let mut rng = StdRng::seed_from_u64(7);
    let delays: Vec<Duration> = (0..20).map(|_| Duration::from_millis(rng.random_range(300..1200))).collect();
    let started = Instant::now();
    let kills =
        common::run_with_kills(|| run_cli(&crashy.path().join("db"), &crashy.path().join("pipeline.sql")), delays);
    assert!(kills >= 20, "only {kills} kills before the pipeline finished: the test needs a longer pipeline");
    assert!(started.elapsed() < Duration::from_secs(600));

    let (a, b) = (clean.path().join("out"), crashy.path().join("out"));
    for sink in ["per_window", "matched"] {
        let want = published(&a.join(sink));
        let got = published(&b.join(sink));
        assert!(!want.is_empty(), "{sink}: the clean run wrote nothing");
        if got != want {
            // Which rows differ (as multisets), and in which published files they are.
            let mut count: BTreeMap<&String, i64> = BTreeMap::new();
            got.iter().for_each(|r| *count.entry(r).or_default() += 1);
            want.iter().for_each(|r| *count.entry(r).or_default() -= 1);
            let extra: Vec<_> = count.iter().filter(|(_, n)| **n > 0).take(5).collect();
            let missing: Vec<_> = count.iter().filter(|(_, n)| **n < 0).take(5).collect();
            let mut files: Vec<String> = std::fs::read_dir(b.join(sink))
                .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            files.sort();
            panic!(
                "{sink}: {} rows after {kills} kills, {} in the clean run; extra {extra:?}, missing {missing:?}; \
                 files {files:?}",
                got.len(),
                want.len()
            );
        }
    }
    let want = consolidated(&published(&a.join("totals")));
    let got = consolidated(&published(&b.join("totals")));
    assert!(!want.is_empty());
    assert_eq!(got, want, "totals: the final counts differ from the clean run");
    assert_eq!(want.values().sum::<i64>(), 40 + 1, "one row per ad");
}
