//! Oracle tests for incremental joins: random insertions, updates and deletions on every input;
//! after every epoch each join's incrementally maintained result must equal the same query
//! computed from scratch by the batch engine over the sources' current contents.

mod common;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// (stream name, continuous query, from-scratch query).
const QUERIES: &[(&str, &str, &str)] = &[
    ("inner_j", "SELECT l.id AS lid, r.id AS rid, l.v AS lv, r.v AS rv FROM l JOIN r ON l.k = r.k", ""),
    ("left_j", "SELECT l.id AS lid, r.id AS rid, r.s AS rs FROM l LEFT JOIN r ON l.k = r.k", ""),
    ("right_j", "SELECT l.id AS lid, r.id AS rid, l.s AS ls FROM l RIGHT JOIN r ON l.k = r.k", ""),
    ("full_j", "SELECT l.id AS lid, r.id AS rid, l.v + r.v AS total FROM l FULL OUTER JOIN r ON l.k = r.k", ""),
    (
        "multi_key_filter",
        "SELECT l.id AS lid, r.id AS rid FROM l LEFT JOIN r ON l.k = r.k AND l.s = r.s AND l.v < r.v",
        "",
    ),
    ("full_filter", "SELECT l.id AS lid, r.id AS rid FROM l FULL JOIN r ON l.k = r.k AND r.v % 2 = 0", ""),
    ("chain3", "SELECT l.id AS lid, r.id AS rid, m.id AS mid FROM l JOIN r ON l.k = r.k LEFT JOIN m ON r.s = m.s", ""),
    ("self_j", "SELECT a.id AS x, b.id AS y FROM l a JOIN l b ON a.k = b.k AND a.id < b.id", ""),
    (
        "agg_over_join",
        "SELECT l.k AS k, COUNT(*) AS n, SUM(r.v) AS s, MAX(l.v) AS hi FROM l JOIN r ON l.k = r.k GROUP BY l.k",
        "",
    ),
    (
        "join_with_view",
        "SELECT l.id AS lid, c.n AS n FROM l LEFT JOIN counts c ON l.k = c.k",
        "SELECT l.id AS lid, c.n AS n FROM l LEFT JOIN (SELECT k, COUNT(*) AS n FROM r GROUP BY k) c ON l.k = c.k",
    ),
];

fn random_row(rng: &mut StdRng, id: i64) -> String {
    let k = match rng.random_range(0..9) {
        0 => "null".to_string(),
        i => (i % 5).to_string(),
    };
    let v = rng.random_range(-5..30);
    let s = ["\"a\"", "\"b\"", "\"c\"", "null"][rng.random_range(0..4)];
    format!(r#"{{"id": {id}, "k": {k}, "v": {v}, "s": {s}}}"#)
}

struct Table {
    name: &'static str,
    live: Vec<i64>,
    next: i64,
}

fn run(seed: u64, workers: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let db = common::db_with_workers(workers);
    for t in ["l", "r", "m"] {
        db.execute(&format!("CREATE SOURCE {t} (id BIGINT, k INT, v BIGINT, s VARCHAR, PRIMARY KEY (id))"))
            .expect("source");
    }
    db.execute("CREATE MATERIALIZED VIEW counts AS SELECT k, COUNT(*) AS n FROM r GROUP BY k").expect("view");
    for (name, q, _) in QUERIES {
        db.execute(&format!("CREATE STREAM {name} AS {q}")).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    db.start().expect("start");
    let schema = db.schema("l").expect("schema");
    let mut seen_rows = vec![0usize; QUERIES.len()];
    let mut tables: Vec<Table> =
        ["l", "r", "m"].into_iter().map(|name| Table { name, live: Vec::new(), next: 0 }).collect();
    for epoch in 0..30 {
        // Most epochs change one or two inputs; some change all of them at once.
        for t in tables.iter_mut() {
            if rng.random_range(0..3) == 0 {
                continue;
            }
            let mut rows = Vec::new();
            let mut deletes = Vec::new();
            for _ in 0..rng.random_range(1..8) {
                match rng.random_range(0..10) {
                    0..=5 => {
                        rows.push(random_row(&mut rng, t.next));
                        t.live.push(t.next);
                        t.next += 1;
                    }
                    6..=7 if !t.live.is_empty() => {
                        let id = t.live[rng.random_range(0..t.live.len())];
                        rows.push(random_row(&mut rng, id));
                    }
                    _ if !t.live.is_empty() => {
                        let i = rng.random_range(0..t.live.len());
                        deletes.push(format!(r#"{{"id": {}}}"#, t.live.swap_remove(i)));
                    }
                    _ => {}
                }
            }
            if !rows.is_empty() {
                db.insert_json(t.name, &rows.join("\n")).expect("insert");
            }
            if !deletes.is_empty() {
                let keys = laminardb::ingest::batch_from_json_rows(&schema, &deletes.join("\n")).expect("keys");
                db.delete(t.name, &keys).expect("delete");
            }
        }
        db.flush().expect("flush");
        for (i, (name, q, scratch)) in QUERIES.iter().enumerate() {
            let incremental = common::sorted_query(&db, &format!("SELECT * FROM {name}"));
            let expected = common::sorted_query(&db, if scratch.is_empty() { q } else { scratch });
            assert_eq!(incremental, expected, "seed {seed}, workers {workers}, epoch {epoch}: stream {name} diverged");
            seen_rows[i] += incremental.len();
        }
    }
    for (i, (name, ..)) in QUERIES.iter().enumerate() {
        assert!(seen_rows[i] > 0, "seed {seed}: stream {name} never had rows, so the test proved nothing");
    }
    for m in db.all_stream_metrics() {
        assert_eq!(m.dropped, 0, "stream {} dropped rows: {:?}", m.name, m.last_error);
    }
    db.shutdown().expect("shutdown");
}

#[test]
fn join_oracle_single_worker() {
    for seed in 0..4 {
        run(seed, 1);
    }
}

#[test]
fn join_oracle_two_workers() {
    for seed in 20..24 {
        run(seed, 2);
    }
}

fn ts_text(ms: i64) -> String {
    let (s, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    format!("2024-01-01T{:02}:{:02}:{:02}.{milli:03}", s / 3600, (s / 60) % 60, s % 60)
}

/// Time-bounded joins with out-of-order and late rows: rows behind their source's watermark are
/// dropped and counted, the rest must join exactly as the batch engine joins them, and the join
/// state must shrink as the watermarks pass.
fn run_bounded(seed: u64, workers: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let db = common::db_with_workers(workers);
    for s in ["views", "clicks"] {
        db.execute(&format!(
            "CREATE SOURCE {s} (ad BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)"
        ))
        .expect("source");
        db.execute(&format!("CREATE SOURCE {s}_kept (ad BIGINT, ts TIMESTAMP)")).expect("shadow");
    }
    let on = "v.ad = c.ad AND c.ts BETWEEN v.ts AND v.ts + INTERVAL '5' SECOND";
    let queries = [
        ("bj_inner", format!("SELECT v.ad AS ad, v.ts AS vts, c.ts AS cts FROM views v JOIN clicks c ON {on}")),
        ("bj_left", format!("SELECT v.ad AS ad, v.ts AS vts, c.ts AS cts FROM views v LEFT JOIN clicks c ON {on}")),
    ];
    for (name, q) in &queries {
        db.execute(&format!("CREATE STREAM {name} AS {q}")).expect("stream");
    }
    let plan = common::sorted_query(&db, &format!("EXPLAIN {}", queries[0].1)).join("\n");
    assert!(plan.contains("state=bounded"), "the time bound is recognised: {plan}");
    db.start().expect("start");
    let mut watermark = [i64::MIN; 2];
    let mut late = 0u64;
    let mut kept = 0usize;
    let mut now = 10_000i64;
    for round in 0..60 {
        now += rng.random_range(0..1500);
        for (i, s) in ["views", "clicks"].into_iter().enumerate() {
            let mut rows = Vec::new();
            let mut keep = Vec::new();
            let mut max = i64::MIN;
            for _ in 0..rng.random_range(0..6) {
                let ts = now + rng.random_range(-4000..1000);
                let row = format!(r#"{{"ad": {}, "ts": "{}"}}"#, rng.random_range(0..6), ts_text(ts));
                max = max.max(ts);
                if ts < watermark[i] {
                    late += 1;
                } else {
                    keep.push(row.clone());
                }
                rows.push(row);
            }
            if rows.is_empty() {
                continue;
            }
            db.insert_json(s, &rows.join("\n")).expect("insert");
            if !keep.is_empty() {
                kept += keep.len();
                db.insert_json(&format!("{s}_kept"), &keep.join("\n")).expect("shadow insert");
            }
            watermark[i] = watermark[i].max(max - 2000);
        }
        db.flush().expect("flush");
        for (name, q) in &queries {
            let incremental = common::sorted_query(&db, &format!("SELECT * FROM {name}"));
            let scratch = q.replace("views v", "views_kept v").replace("clicks c", "clicks_kept c");
            let expected = common::sorted_query(&db, &scratch);
            assert_eq!(incremental, expected, "seed {seed}, workers {workers}, round {round}: {name} diverged");
        }
    }
    assert!(late > 0, "seed {seed}: the data had no late rows");
    for (name, _) in &queries {
        let m = db.stream_metrics(name).expect("metrics");
        assert_eq!(m.late_rows, late, "{name}: late rows counted");
        assert!(
            (m.state_rows as usize) < kept / 2,
            "{name}: join state holds {} of {kept} rows; expired rows must be freed",
            m.state_rows
        );
    }
    db.shutdown().expect("shutdown");
}

#[test]
fn time_bounded_join_oracle() {
    for seed in 0..4 {
        run_bounded(seed, 1);
    }
    for seed in 7..9 {
        run_bounded(seed, 2);
    }
}
