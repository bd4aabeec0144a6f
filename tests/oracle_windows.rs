//! Oracle tests for event-time windows: out-of-order and late rows go into tumbling and hopping
//! windows; after every epoch each window stream must equal the windows computed here from the
//! rows that were not late, in both emit modes, and closed windows must leave the state.

mod common;

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// 2024-01-01T00:00:00 in milliseconds since the epoch.
const BASE_MS: i64 = 1_704_067_200_000;

fn ts_text(offset_ms: i64) -> String {
    let (s, milli) = (offset_ms.div_euclid(1000), offset_ms.rem_euclid(1000));
    format!("2024-01-01T{:02}:{:02}:{:02}.{milli:03}", s / 3600, (s / 60) % 60, s % 60)
}

/// (size, slide) in ms and the window starts containing `t`.
fn windows(t: i64, size: i64, slide: i64) -> Vec<i64> {
    let mut out = Vec::new();
    let mut start = t.div_euclid(slide) * slide;
    while start > t - size {
        out.push(start);
        start -= slide;
    }
    out
}

#[derive(Default, Clone, Copy)]
struct Acc {
    n: i64,
    sum: i64,
    max: i64,
}

fn run(seed: u64, workers: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let db = common::db_with_workers(workers);
    db.execute("CREATE SOURCE ev (k INT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)")
        .expect("source");
    let tumble = "SELECT k, window_start, window_end, COUNT(*) AS n, SUM(v) AS s FROM ev GROUP BY k, TUMBLE(ts, INTERVAL '5' SECOND)";
    db.execute(&format!("CREATE STREAM tw AS {tumble}")).expect("tumble");
    db.execute(&format!("CREATE STREAM tw_close AS {tumble} EMIT ON WINDOW CLOSE")).expect("tumble close");
    db.execute(
        "CREATE STREAM hw AS SELECT window_start, window_end, COUNT(*) AS n, MAX(v) AS hi FROM ev \
         GROUP BY HOP(ts, INTERVAL '2' SECOND, INTERVAL '6' SECOND)",
    )
    .expect("hop");
    db.start().expect("start");
    let mut tumbling: BTreeMap<(i64, i64), Acc> = BTreeMap::new();
    let mut hopping: BTreeMap<i64, Acc> = BTreeMap::new();
    let mut watermark = i64::MIN;
    let (mut late_tumble, mut late_hop) = (0u64, 0u64);
    let mut now = 20_000i64;
    for round in 0..50 {
        now += rng.random_range(0..2500);
        let mut rows = Vec::new();
        let mut max = i64::MIN;
        for _ in 0..rng.random_range(1..8) {
            let off = now + rng.random_range(-7000..1000);
            let (k, v) = (rng.random_range(0..3), rng.random_range(0..100));
            rows.push(format!(r#"{{"k": {k}, "v": {v}, "ts": "{}"}}"#, ts_text(off)));
            let t = BASE_MS + off;
            max = max.max(t);
            // A row is late for a window that the watermark has already closed.
            for (size, slide, hop) in [(5000, 5000, false), (6000, 2000, true)] {
                for ws in windows(t, size, slide) {
                    if ws + size <= watermark {
                        if hop {
                            late_hop += 1;
                        } else {
                            late_tumble += 1;
                        }
                        continue;
                    }
                    let acc = if hop { hopping.entry(ws).or_default() } else { tumbling.entry((k, ws)).or_default() };
                    acc.n += 1;
                    acc.sum += v;
                    acc.max = if acc.n == 1 { v } else { acc.max.max(v) };
                }
            }
        }
        db.insert_json("ev", &rows.join("\n")).expect("insert");
        watermark = watermark.max(max - 2000);
        db.flush().expect("flush");

        let tw = common::sorted_query(
            &db,
            "SELECT k, CAST(window_start AS BIGINT) / 1000, CAST(window_end AS BIGINT) / 1000, n, s FROM tw",
        );
        let mut want: Vec<String> =
            tumbling.iter().map(|((k, ws), a)| format!("{k}|{ws}|{}|{}|{}", ws + 5000, a.n, a.sum)).collect();
        want.sort();
        assert_eq!(tw, want, "seed {seed}, workers {workers}, round {round}: tw");

        let closed = common::sorted_query(
            &db,
            "SELECT k, CAST(window_start AS BIGINT) / 1000, CAST(window_end AS BIGINT) / 1000, n, s FROM tw_close",
        );
        let mut want: Vec<String> = tumbling
            .iter()
            .filter(|((_, ws), _)| ws + 5000 <= watermark)
            .map(|((k, ws), a)| format!("{k}|{ws}|{}|{}|{}", ws + 5000, a.n, a.sum))
            .collect();
        want.sort();
        assert_eq!(closed, want, "seed {seed}, workers {workers}, round {round}: tw_close (final rows only)");

        let hw = common::sorted_query(&db, "SELECT CAST(window_start AS BIGINT) / 1000, n, hi FROM hw");
        let mut want: Vec<String> = hopping.iter().map(|(ws, a)| format!("{ws}|{}|{}", a.n, a.max)).collect();
        want.sort();
        assert_eq!(hw, want, "seed {seed}, workers {workers}, round {round}: hw");
    }
    assert!(late_tumble > 0 && late_hop > 0, "seed {seed}: the data had no late rows");
    let m = db.stream_metrics("tw").expect("tw");
    assert_eq!(m.late_rows, late_tumble, "late rows of tw");
    assert_eq!(db.stream_metrics("tw_close").expect("m").late_rows, late_tumble);
    assert_eq!(db.stream_metrics("hw").expect("m").late_rows, late_hop);
    let open_groups = tumbling.keys().filter(|(_, ws)| ws + 5000 > watermark).count() as u64;
    assert!(m.state_rows <= open_groups, "tw holds {} groups, {open_groups} windows are open", m.state_rows);
    db.shutdown().expect("shutdown");
}

#[test]
fn window_oracle_single_worker() {
    for seed in 0..3 {
        run(seed, 1);
    }
}

#[test]
fn window_oracle_two_workers() {
    for seed in 30..33 {
        run(seed, 2);
    }
}
