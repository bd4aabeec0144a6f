//! Oracle tests: random insertions, updates and deletions flow through continuous queries; after
//! every epoch each stream's incrementally maintained result must equal the same query computed
//! from scratch (by the batch engine) over the sources' current contents.

mod common;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const QUERIES: &[(&str, &str)] = &[
    ("agg", "SELECT g, COUNT(*) AS n, SUM(v) AS s, MIN(v) AS lo, MAX(v) AS hi, AVG(v) AS a, COUNT(DISTINCT w) AS dw FROM t GROUP BY g"),
    ("agg2", "SELECT g, w, COUNT(v) AS n, SUM(v) AS s FROM t WHERE v % 3 <> 0 GROUP BY g, w HAVING COUNT(*) > 1"),
    ("total", "SELECT COUNT(*) AS n, SUM(v) AS s, MIN(w) AS lo, MAX(w) AS hi FROM t"),
    ("filt", "SELECT id, v * 2 AS v2, CASE WHEN w IS NULL THEN 'none' ELSE w END AS w FROM t WHERE v > 10 OR w = 'b'"),
    ("uni", "SELECT g AS x FROM t WHERE v < 20 UNION ALL SELECT id % 4 FROM t WHERE w IS NULL"),
    ("dist", "SELECT DISTINCT g, w FROM t"),
    ("minmax_str", "SELECT v % 5 AS b, MIN(w) AS lo, MAX(w) AS hi FROM t GROUP BY v % 5"),
    ("by_str", "SELECT w, COUNT(*) AS n, SUM(v) AS s, MAX(id) AS last FROM t GROUP BY w"),
];

fn random_row(rng: &mut StdRng, id: i64) -> String {
    let g = rng.random_range(0..6);
    let v = rng.random_range(-5..40);
    let w = match rng.random_range(0..5) {
        0 => "null".to_string(),
        i => format!("\"{}\"", ["a", "b", "c", "d"][i - 1]),
    };
    format!(r#"{{"id": {id}, "g": {g}, "v": {v}, "w": {w}}}"#)
}

/// `changes`: how many changes each epoch makes (from 64 rows on, batches are pre-aggregated
/// before the exchange).
fn run(seed: u64, workers: usize, epochs: usize, changes: std::ops::Range<usize>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let db = common::db_with_workers(workers);
    db.execute("CREATE SOURCE t (id BIGINT, g INT, v BIGINT, w VARCHAR, PRIMARY KEY (id))").expect("source");
    for (name, q) in QUERIES {
        db.execute(&format!("CREATE STREAM {name} AS {q}")).expect("stream");
    }
    db.start().expect("start");
    let schema = db.schema("t").expect("schema");
    let mut live: Vec<i64> = Vec::new();
    let mut next_id = 0i64;
    for epoch in 0..epochs {
        let changes = rng.random_range(changes.clone());
        let mut rows = Vec::new();
        let mut deletes = Vec::new();
        for _ in 0..changes {
            match rng.random_range(0..10) {
                0..=5 => {
                    rows.push(random_row(&mut rng, next_id));
                    live.push(next_id);
                    next_id += 1;
                }
                6..=7 if !live.is_empty() => {
                    let id = live[rng.random_range(0..live.len())];
                    rows.push(random_row(&mut rng, id)); // update in place
                }
                _ if !live.is_empty() => {
                    let i = rng.random_range(0..live.len());
                    deletes.push(format!(r#"{{"id": {}}}"#, live.swap_remove(i)));
                }
                _ => {}
            }
        }
        if !rows.is_empty() {
            db.insert_json("t", &rows.join("\n")).expect("insert");
        }
        if !deletes.is_empty() {
            let keys = laminardb::ingest::batch_from_json_rows(&schema, &deletes.join("\n")).expect("keys");
            db.delete("t", &keys).expect("delete");
        }
        db.flush().expect("flush");
        for (name, q) in QUERIES {
            let incremental = common::sorted_query(&db, &format!("SELECT * FROM {name}"));
            let scratch = common::sorted_query(&db, q);
            assert_eq!(incremental, scratch, "seed {seed}, workers {workers}, epoch {epoch}: stream {name} diverged");
        }
    }
    for m in db.all_stream_metrics() {
        assert_eq!(m.dropped, 0, "stream {} dropped rows: {:?}", m.name, m.last_error);
    }
    db.shutdown().expect("shutdown");
}

#[test]
fn oracle_single_worker() {
    for seed in 0..4 {
        run(seed, 1, 40, 1..25);
    }
}

#[test]
fn oracle_two_workers() {
    for seed in 10..14 {
        run(seed, 2, 40, 1..25);
    }
}

/// Epochs of hundreds of changes: inserts, updates and deletes arrive as batches large enough
/// to be pre-aggregated before the exchange.
#[test]
fn oracle_large_batches() {
    for (seed, workers) in [(20, 1), (21, 2), (22, 2)] {
        run(seed, workers, 12, 100..400);
    }
}
