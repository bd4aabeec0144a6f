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

/// `per_round`: how many rows each round inserts (from 64 rows on, batches are pre-aggregated
/// before the exchange).
fn run(seed: u64, workers: usize, per_round: std::ops::Range<usize>) {
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
        for _ in 0..rng.random_range(per_round.clone()) {
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
        run(seed, 1, 1..8);
    }
}

/// Batches large enough to be pre-aggregated: partial rows carry the late-row counts too.
#[test]
fn window_oracle_large_batches() {
    for (seed, workers) in [(40, 1), (41, 2), (42, 2)] {
        run(seed, workers, 64..300);
    }
}

#[test]
fn window_oracle_two_workers() {
    for seed in 30..33 {
        run(seed, 2, 1..8);
    }
}

/// A source row of the session oracle.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
struct Row {
    id: i64,
    k: i64,
    ts: i64,
    v: i64,
}

impl Row {
    fn json(&self) -> String {
        format!(r#"{{"id": {}, "k": {}, "v": {}, "ts": "{}"}}"#, self.id, self.k, self.v, ts_text(self.ts - BASE_MS))
    }
}

/// Sessions of rows with gap `gap`: (start, end, count, sum) of each maximal run of rows less
/// than `gap` apart.
fn sessions(mut rows: Vec<Row>, gap: i64) -> Vec<(i64, i64, i64, i64)> {
    rows.sort_by_key(|r| r.ts);
    let mut out: Vec<(i64, i64, i64, i64)> = Vec::new();
    for r in rows {
        match out.last_mut() {
            Some(s) if r.ts < s.1 => {
                s.1 = s.1.max(r.ts + gap);
                s.2 += 1;
                s.3 += r.v;
            }
            _ => out.push((r.ts, r.ts + gap, 1, r.v)),
        }
    }
    out
}

/// Session windows under insertions, updates and deletions with out-of-order and late rows.
/// The model: retractions of rows in open sessions apply, others are late; an insertion is late
/// when its own window `[ts, ts + gap)` ends at or before the watermark of the previous epoch, or
/// it starts before the end of a closed session of its key; after each epoch, sessions that end
/// at or before the watermark close for good. The updating stream must hold the closed sessions
/// and the sessions of the open rows; the `EMIT ON WINDOW CLOSE` stream the closed ones only.
fn run_sessions(seed: u64, workers: usize) {
    const GAP: i64 = 3000;
    let mut rng = StdRng::seed_from_u64(seed);
    let db = common::db_with_workers(workers);
    db.execute(
        "CREATE SOURCE sv (id BIGINT, k INT, v BIGINT, ts TIMESTAMP, PRIMARY KEY (id), \
         WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)",
    )
    .expect("source");
    let q = "SELECT k, window_start, window_end, COUNT(*) AS n, SUM(v) AS s FROM sv \
             GROUP BY k, SESSION(ts, INTERVAL '3' SECOND)";
    db.execute(&format!("CREATE STREAM sw AS {q}")).expect("session");
    db.execute(&format!("CREATE STREAM sw_close AS {q} EMIT ON WINDOW CLOSE")).expect("session close");
    let plan = common::sorted_query(&db, &format!("EXPLAIN {q}")).join("\n");
    assert!(plan.contains("SessionWindowAggregate"), "{plan}");
    db.start().expect("start");
    let schema = db.schema("sv").expect("schema");

    let mut live: BTreeMap<i64, Row> = BTreeMap::new();
    let mut open: std::collections::BTreeSet<Row> = Default::default();
    let mut frozen: Vec<(i64, (i64, i64, i64, i64))> = Vec::new();
    let mut closed_end: BTreeMap<i64, i64> = BTreeMap::new();
    let (mut watermark, mut late, mut splits_possible) = (i64::MIN, 0u64, 0u64);
    let mut next_id = 0;
    let mut now = BASE_MS + 20_000;
    for round in 0..60 {
        now += rng.random_range(0..1500);
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        let mut changes: Vec<(Row, i64, bool)> = Vec::new();
        let mut touched = std::collections::BTreeSet::new();
        for _ in 0..rng.random_range(1..10) {
            let pick = (!live.is_empty()).then(|| *live.keys().nth(rng.random_range(0..live.len())).unwrap_or(&0));
            match (rng.random_range(0..10), pick) {
                (0..=5, _) | (_, None) => {
                    let r = Row {
                        id: next_id,
                        k: rng.random_range(0..3),
                        ts: now + rng.random_range(-6000..1000),
                        v: rng.random_range(0..100),
                    };
                    next_id += 1;
                    touched.insert(r.id);
                    live.insert(r.id, r);
                    upserts.push(r);
                    changes.push((r, 1, false));
                }
                (6..=7, Some(id)) if touched.insert(id) => {
                    let old = live[&id];
                    let new = Row { ts: old.ts + rng.random_range(-2000..2000), v: rng.random_range(0..100), ..old };
                    live.insert(id, new);
                    upserts.push(new);
                    changes.push((old, -1, false));
                    changes.push((new, 1, false));
                    splits_possible += 1;
                }
                (_, Some(id)) if touched.insert(id) => {
                    let old = live.remove(&id).unwrap_or_else(|| panic!("row {id}"));
                    deletes.push(format!(r#"{{"id": {id}}}"#));
                    changes.push((old, -1, true));
                    splits_possible += 1;
                }
                _ => {}
            }
        }
        // Upserts and deletes go in separate epochs (flush between them), each modelled alone.
        let (up, del): (Vec<_>, Vec<_>) = changes.into_iter().partition(|(_, _, is_delete)| !is_delete);
        for part in [up, del] {
            if part.is_empty() {
                continue;
            }
            if part[0].2 {
                let keys = laminardb::ingest::batch_from_json_rows(&schema, &deletes.join("\n")).expect("keys");
                db.delete("sv", &keys).expect("delete");
            } else {
                db.insert_json("sv", &upserts.iter().map(Row::json).collect::<Vec<_>>().join("\n")).expect("insert");
            }
            db.flush().expect("flush");
            // The model of one epoch: net changes, retractions first.
            let bound = watermark;
            let mut net: BTreeMap<Row, i64> = BTreeMap::new();
            for (r, d, _) in &part {
                *net.entry(*r).or_default() += d;
            }
            for (r, d) in net.iter().filter(|(_, d)| **d < 0) {
                if !open.remove(r) {
                    late += d.unsigned_abs();
                }
            }
            for (r, _) in net.iter().filter(|(_, d)| **d > 0) {
                if r.ts + GAP <= bound || closed_end.get(&r.k).is_some_and(|&e| r.ts < e) {
                    late += 1;
                } else {
                    open.insert(*r);
                }
            }
            if let Some(max) = part.iter().filter(|(_, d, _)| *d > 0).map(|(r, _, _)| r.ts).max() {
                watermark = watermark.max(max - 2000);
            }
            for k in 0..3 {
                let rows: Vec<Row> = open.iter().filter(|r| r.k == k).copied().collect();
                for s in sessions(rows.clone(), GAP) {
                    if s.1 <= watermark {
                        frozen.push((k, s));
                        closed_end.insert(k, closed_end.get(&k).copied().unwrap_or(i64::MIN).max(s.1));
                        for r in rows.iter().filter(|r| r.ts >= s.0 && r.ts < s.1 - GAP + 1) {
                            open.remove(r);
                        }
                    }
                }
            }
        }

        let fmt = |k: i64, s: &(i64, i64, i64, i64)| format!("{k}|{}|{}|{}|{}", s.0, s.1, s.2, s.3);
        let mut want_closed: Vec<String> = frozen.iter().map(|(k, s)| fmt(*k, s)).collect();
        want_closed.sort();
        let mut want: Vec<String> = want_closed.clone();
        for k in 0..3 {
            let rows: Vec<Row> = open.iter().filter(|r| r.k == k).copied().collect();
            want.extend(sessions(rows, GAP).iter().map(|s| fmt(k, s)));
        }
        want.sort();
        let read = |stream: &str| {
            common::sorted_query(
                &db,
                &format!(
                    "SELECT k, CAST(window_start AS BIGINT) / 1000, CAST(window_end AS BIGINT) / 1000, n, s FROM {stream}"
                ),
            )
        };
        assert_eq!(read("sw"), want, "seed {seed}, workers {workers}, round {round}: sw");
        assert_eq!(read("sw_close"), want_closed, "seed {seed}, workers {workers}, round {round}: sw_close");
        let m = db.stream_metrics("sw").expect("sw");
        assert_eq!(m.late_rows, late, "seed {seed}, round {round}: late rows of sw");
        assert_eq!(m.state_rows, open.len() as u64, "seed {seed}, round {round}: sw holds the open rows");
        assert_eq!(m.dropped, 0, "{:?}", m.last_error);
    }
    assert!(late > 0 && splits_possible > 0 && !frozen.is_empty(), "seed {seed}: the data did not exercise lateness");
    assert_eq!(db.stream_metrics("sw_close").expect("m").late_rows, late);
    db.shutdown().expect("shutdown");
}

#[test]
fn session_oracle_single_worker() {
    for seed in 0..4 {
        run_sessions(seed, 1);
    }
}

#[test]
fn session_oracle_two_workers() {
    for seed in 40..43 {
        run_sessions(seed, 2);
    }
}
