//! Checkpoints and recovery: a pipeline checkpointed at some epoch, crashed (dropped without a
//! graceful shutdown) after more input, and reopened must hold exactly what a pipeline that only
//! ever saw the input up to the checkpoint holds, and must go on from there identically, for
//! aggregates, joins, tumbling and session windows, plain streams and streams reading streams, with incremental
//! checkpoints and a different number of workers after the restart.

mod common;

use laminardb::{Database, LaminarConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DDL: &[&str] = &[
    "CREATE SOURCE orders (id BIGINT, cust INT, amount BIGINT, ts TIMESTAMP, PRIMARY KEY (id), \
     WATERMARK FOR ts AS ts - INTERVAL '3' SECOND)",
    "CREATE SOURCE customers (cust INT, region VARCHAR, PRIMARY KEY (cust))",
    "CREATE SOURCE clicks (usr INT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)",
    "CREATE STREAM per_cust AS SELECT cust, COUNT(*) AS n, SUM(amount) AS total, MAX(amount) AS hi, \
     COUNT(DISTINCT amount) AS kinds FROM orders GROUP BY cust",
    "CREATE STREAM by_region AS SELECT c.region AS region, COUNT(*) AS n, SUM(o.amount) AS total \
     FROM orders o JOIN customers c ON o.cust = c.cust GROUP BY c.region",
    "CREATE STREAM unmatched AS SELECT o.id AS id, c.region AS region FROM orders o LEFT JOIN customers c ON o.cust = c.cust",
    "CREATE STREAM per_window AS SELECT cust, window_start, window_end, COUNT(*) AS n FROM orders \
     GROUP BY cust, TUMBLE(ts, INTERVAL '5' SECOND)",
    "CREATE STREAM closed_windows AS SELECT window_start, COUNT(*) AS n, SUM(amount) AS total FROM orders \
     GROUP BY TUMBLE(ts, INTERVAL '5' SECOND) EMIT ON WINDOW CLOSE",
    "CREATE STREAM visits AS SELECT usr, window_start, window_end, COUNT(*) AS n FROM clicks \
     GROUP BY usr, SESSION(ts, INTERVAL '3' SECOND)",
    "CREATE STREAM big AS SELECT id, amount FROM orders WHERE amount > 50",
    // Streams reading streams: each runs in one dataflow with the stream it reads.
    "CREATE STREAM region_counts AS SELECT region, COUNT(*) AS n FROM unmatched GROUP BY region",
    "CREATE STREAM busy_regions AS SELECT region, total FROM by_region WHERE n > 3",
    "CREATE STREAM window_sums AS SELECT cust, SUM(n) AS n FROM per_window GROUP BY cust",
];

const STREAMS: &[&str] = &[
    "per_cust",
    "by_region",
    "unmatched",
    "per_window",
    "closed_windows",
    "visits",
    "big",
    "region_counts",
    "busy_regions",
    "window_sums",
];

fn ts(ms: i64) -> String {
    let (s, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    format!("2024-01-01T{:02}:{:02}:{:02}.{milli:03}", s / 3600, (s / 60) % 60, s % 60)
}

/// One round of input: upserts and deletes of orders, customers, clicks.
struct Round {
    orders: Vec<String>,
    deletes: Vec<String>,
    customers: Vec<String>,
    clicks: Vec<String>,
}

fn rounds(seed: u64, n: usize) -> Vec<Round> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut live: Vec<i64> = Vec::new();
    let mut next = 0i64;
    let mut now = 20_000i64;
    (0..n)
        .map(|_| {
            now += rng.random_range(200..1500);
            let mut r = Round { orders: vec![], deletes: vec![], customers: vec![], clicks: vec![] };
            for _ in 0..rng.random_range(1..8) {
                let id = if !live.is_empty() && rng.random_range(0..4) == 0 {
                    live[rng.random_range(0..live.len())]
                } else {
                    next += 1;
                    live.push(next);
                    next
                };
                r.orders.push(format!(
                    r#"{{"id": {id}, "cust": {}, "amount": {}, "ts": "{}"}}"#,
                    rng.random_range(0..6),
                    rng.random_range(1..100),
                    ts(now + rng.random_range(-4000..500))
                ));
            }
            if !live.is_empty() && rng.random_range(0..3) == 0 {
                let id = live.swap_remove(rng.random_range(0..live.len()));
                r.deletes.push(format!(r#"{{"id": {id}}}"#));
            }
            if rng.random_range(0..3) == 0 {
                let region = ["eu", "us", "apac"][rng.random_range(0..3)];
                r.customers.push(format!(r#"{{"cust": {}, "region": "{region}"}}"#, rng.random_range(0..5)));
            }
            for _ in 0..rng.random_range(0..4) {
                r.clicks.push(format!(
                    r#"{{"usr": {}, "ts": "{}"}}"#,
                    rng.random_range(0..3),
                    ts(now + rng.random_range(-3000..500))
                ));
            }
            r
        })
        .collect()
}

fn apply(db: &Database, r: &Round) {
    let schema = db.schema("orders").expect("schema");
    // Each change in an epoch of its own, so that both pipelines judge late rows against the
    // same watermarks.
    if !r.customers.is_empty() {
        db.insert_json("customers", &r.customers.join("\n")).expect("customers");
        db.flush().expect("flush");
    }
    if !r.orders.is_empty() {
        db.insert_json("orders", &r.orders.join("\n")).expect("orders");
        db.flush().expect("flush");
    }
    if !r.deletes.is_empty() {
        let keys = laminardb::ingest::batch_from_json_rows(&schema, &r.deletes.join("\n")).expect("keys");
        db.delete("orders", &keys).expect("delete");
        db.flush().expect("flush");
    }
    if !r.clicks.is_empty() {
        db.insert_json("clicks", &r.clicks.join("\n")).expect("clicks");
        db.flush().expect("flush");
    }
}

fn open(dir: &std::path::Path, workers: usize) -> Database {
    Database::open_with_config(dir, LaminarConfig { workers: Some(workers), ..Default::default() }).expect("open")
}

fn contents(db: &Database) -> Vec<Vec<String>> {
    STREAMS.iter().map(|s| common::sorted_query(db, &format!("SELECT * FROM {s}"))).collect()
}

fn scenario(seed: u64, workers_before: usize, workers_after: usize) {
    let input = rounds(seed, 40);
    let dir = tempfile::tempdir().expect("dir");
    let reference = common::db_with_workers(workers_after);
    for ddl in DDL {
        reference.execute(ddl).expect("ddl");
    }
    reference.start().expect("start");
    {
        let db = open(dir.path(), workers_before);
        for ddl in DDL {
            db.execute(ddl).expect("ddl");
        }
        db.start().expect("start");
        // A full checkpoint, then (mostly) incremental ones; the last one at round 25.
        let mut incremental = 0;
        for (i, r) in input.iter().enumerate().take(25) {
            apply(&db, r);
            if i >= 9 && i % 3 == 0 || i == 24 {
                let c = db.checkpoint().expect("checkpoint");
                assert!(c.full || i > 9, "the first checkpoint is full");
                incremental += usize::from(!c.full);
            }
        }
        assert!(incremental > 0, "no incremental checkpoint was taken");
        for r in &input[..25] {
            apply(&reference, r);
        }
        assert_eq!(contents(&db), contents(&reference), "seed {seed}: before the crash");
        // More input that no checkpoint covers, then a crash (no graceful shutdown).
        for r in &input[25..32] {
            apply(&db, r);
        }
        drop(db);
    }
    let db = open(dir.path(), workers_after);
    // Source contents are back at once; streams once started.
    db.start().expect("restart");
    db.flush().expect("flush");
    let got = contents(&db);
    let want = contents(&reference);
    for (i, s) in STREAMS.iter().enumerate() {
        assert_eq!(got[i], want[i], "seed {seed}, workers {workers_before}->{workers_after}: {s} after recovery");
    }
    if std::env::var("CKPT_DEBUG").is_ok() {
        for s in STREAMS {
            eprintln!(
                "{s}: state {} vs {}",
                db.stream_metrics(s).map_or(0, |m| m.state_rows),
                reference.stream_metrics(s).map_or(0, |m| m.state_rows)
            );
        }
    }
    // And both go on identically (retractions of restored rows, windows closing later, …).
    for r in &input[25..] {
        apply(&db, r);
        apply(&reference, r);
    }
    let got = contents(&db);
    let want = contents(&reference);
    for (i, s) in STREAMS.iter().enumerate() {
        assert!(!want[i].is_empty(), "{s} is empty: the test proves nothing for it");
        assert_eq!(got[i], want[i], "seed {seed}, workers {workers_before}->{workers_after}: {s} after more input");
    }
    for m in db.all_stream_metrics() {
        assert_eq!(m.dropped, 0, "{}: {:?}", m.name, m.last_error);
    }
    db.shutdown().expect("shutdown");
}

#[test]
fn recovery_restores_every_kind_of_state() {
    for seed in 0..3 {
        scenario(seed, 1, 1);
    }
}

#[test]
fn recovery_with_two_workers_and_a_different_worker_count() {
    scenario(10, 2, 2);
    scenario(11, 2, 1);
    scenario(12, 1, 2);
}

#[test]
fn checkpoint_errors_are_typed() {
    let db = common::db_with_workers(1);
    db.execute("CREATE SOURCE s (x INT)").expect("source");
    db.start().expect("start");
    let e = db.checkpoint().expect_err("in-memory");
    assert!(matches!(e, laminardb::LaminarError::Checkpoint(_)), "{e}");
    let dir = tempfile::tempdir().expect("dir");
    let db = open(dir.path(), 1);
    let e = db.checkpoint().expect_err("not running");
    assert!(e.to_string().contains("start()"), "{e}");
}
