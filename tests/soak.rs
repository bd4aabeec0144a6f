//! Soak: 30 minutes of event time from two datagen sources (rows out of order by up to 1 s)
//! through tumbling, hopping and session windows and a time-bounded join. Window and join state
//! must stay bounded by what the watermark keeps open, and the process's memory must stay flat
//! once the pipeline is warm.

mod common;

use std::time::{Duration, Instant};

/// Rows per source: one every `STEP_MS` of event time for 30 minutes.
const STEP_MS: u64 = 5;
const ROWS: u64 = 30 * 60 * 1000 / STEP_MS;
const KEYS: u64 = 500;
/// Rows per wall-clock second per source: 30 minutes of event time pass in about 20 seconds, and
/// the two sources stay within a fraction of a second (tens of event seconds) of each other.
const RATE: u64 = 20_000;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn source(name: &str, seed: u64) -> String {
    format!(
        "CREATE SOURCE {name} (k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) \
         WITH (connector = 'datagen', 'rows_per_second' = '{RATE}', 'max_rows' = '{ROWS}', 'seed' = '{seed}', \
         'batch_size' = '500', 'fields.k.max' = '{}', 'fields.ts.start' = '2024-01-01T00:00:01Z', \
         'fields.ts.step' = '{STEP_MS}', 'fields.ts.jitter_ms' = '1000', 'retention' = '0 rows')",
        KEYS - 1
    )
}

#[test]
fn thirty_minutes_of_event_time_in_flat_memory() {
    let db = common::db_with_workers(2);
    db.execute(&source("views", 1)).expect("views");
    db.execute(&source("clicks", 2)).expect("clicks");
    let keep = "WITH ('retention' = '1000 rows')";
    let streams = [
        (
            "per_minute",
            "SELECT k, window_start, window_end, COUNT(*) AS n, SUM(v) AS s FROM views \
             GROUP BY k, TUMBLE(ts, INTERVAL '1' MINUTE) EMIT ON WINDOW CLOSE",
        ),
        (
            "sliding",
            "SELECT window_start, COUNT(*) AS n, MAX(v) AS hi FROM views \
             GROUP BY HOP(ts, INTERVAL '10' SECOND, INTERVAL '1' MINUTE) EMIT ON WINDOW CLOSE",
        ),
        (
            "sessions",
            "SELECT k, window_start, window_end, COUNT(*) AS n FROM clicks \
             GROUP BY k, SESSION(ts, INTERVAL '2' SECOND) EMIT ON WINDOW CLOSE",
        ),
        (
            "click_through",
            "SELECT v.k AS k, v.ts AS vts, c.ts AS cts FROM views v JOIN clicks c \
             ON v.k = c.k AND c.ts BETWEEN v.ts AND v.ts + INTERVAL '5' SECOND",
        ),
    ];
    for (name, q) in streams {
        db.execute(&format!("CREATE STREAM {name} AS {q} {keep}")).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    db.execute("CREATE STREAM totals AS SELECT COUNT(*) AS windows, SUM(n) AS n FROM per_minute").expect("totals");
    let started = Instant::now();
    db.start().expect("start");

    // Samples: (rows ingested, rss KiB, state rows per stream).
    let mut samples: Vec<(u64, u64, Vec<u64>)> = Vec::new();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let ingested: u64 =
            ["views", "clicks"].iter().map(|s| db.source_metrics(s).map_or(0, |m| m.total_events)).sum();
        let state: Vec<u64> = streams.iter().map(|(n, _)| db.stream_metrics(n).map_or(0, |m| m.state_rows)).collect();
        samples.push((ingested, rss_kib(), state));
        if ingested >= 2 * ROWS {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "the soak did not finish: {ingested} rows in");
    }
    db.flush().expect("flush");
    let elapsed = started.elapsed();

    // State bounds from what the watermark keeps open (event time advances 1 s every 200 rows;
    // the watermark trails the newest row by 2 s, rows arrive up to 1 s out of order).
    let per_second = 1000 / STEP_MS;
    let bounds = [
        // Open one-minute windows: the current one and the one not yet passed, per key.
        2 * KEYS,
        // Six overlapping windows per row, one group each, and one not yet closed.
        8,
        // Session rows: the rows of sessions the watermark has not passed (a few seconds).
        10 * per_second,
        // Join rows kept: the 5 s bound plus the watermark lag and disorder, both sides, plus
        // what one source runs ahead of the other (the join waits for the slower watermark).
        2 * 12 * per_second + RATE / 4,
    ];
    for (i, (name, _)) in streams.iter().enumerate() {
        let max = samples.iter().map(|s| s.2[i]).max().unwrap_or(0);
        assert!(max > 0, "{name} never held state: the soak proved nothing");
        assert!(max <= bounds[i], "{name} held {max} state rows (bound {})", bounds[i]);
    }
    // Memory: the growth over the second half of the run is small next to the data that passed.
    let at = |frac: f64| {
        let target = (2.0 * ROWS as f64 * frac) as u64;
        samples.iter().find(|s| s.0 >= target).map_or(0, |s| s.1)
    };
    let (half, end) = (at(0.5), samples.last().map_or(0, |s| s.1));
    let growth_mib = end.saturating_sub(half) as f64 / 1024.0;
    eprintln!(
        "soak: {} rows in {:.1} s; RSS at half {:.0} MiB, at end {:.0} MiB; max state {:?}",
        2 * ROWS,
        elapsed.as_secs_f64(),
        half as f64 / 1024.0,
        end as f64 / 1024.0,
        (0..streams.len()).map(|i| samples.iter().map(|s| s.2[i]).max().unwrap_or(0)).collect::<Vec<_>>()
    );
    assert!(growth_mib < 32.0, "memory grew by {growth_mib:.1} MiB over the second half of the soak");

    // The results are complete: every key's minute was closed and counted once. The last minute
    // is still open (the watermark trails by 2 s); rows near a minute's end may fall on either
    // side of it by their up to 1 s of disorder.
    let totals = common::sorted_query(&db, "SELECT windows, n FROM totals");
    let [row] = totals.as_slice() else { panic!("totals: {totals:?}") };
    let (windows, n) = row.split_once('|').expect("two columns");
    assert_eq!(windows.parse::<u64>().expect("windows"), 29 * KEYS, "closed (key, minute) windows");
    let n: u64 = n.parse().expect("n");
    // Row r has event time 1 s + r * STEP_MS (minus up to 1 s); minutes 0..29 are closed.
    let full = (29 * 60 * 1000 - 1000) / STEP_MS;
    assert!(n.abs_diff(full) <= per_second, "{n} rows in closed minutes, about {full} expected");
    for (name, _) in &streams {
        let m = db.stream_metrics(name).expect("metrics");
        assert_eq!(m.dropped, 0, "{name}: {:?}", m.last_error);
    }
    assert_eq!(db.stream_metrics("per_minute").expect("m").late_rows, 0, "disorder within the watermark delay");
    db.shutdown().expect("shutdown");
}
