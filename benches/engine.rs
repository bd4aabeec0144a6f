//! Engine benchmarks through the Rust embedding API (run with `cargo bench --bench engine`).
//!
//! - W1: GROUP BY 100 keys with COUNT/AVG/MAX over N rows in 10k-row Arrow batches; the clock
//!   stops when a subscriber has seen the final counts (the workload of `shared/bench/groupby_w1.py`).
//! - filter+project: a stateless `WHERE` + expressions over the same rows.
//! - GROUP BY 1M distinct keys: rows/s and peak resident memory.
//! - latency: insert→subscriber p50/p99 at 100k rows/s.
//! - checkpoint: GROUP BY 1M keys, then a full checkpoint, an incremental one after 1% of the
//!   keys changed, and the recovery of a reopened database (open + start until it answers).
//! - window: a one-minute tumbling window per key (100 keys) over rows one millisecond apart,
//!   with a watermark (the workload of `benches/python/join_window.py window`).
//!
//! `LAMINAR_BENCH_ROWS` sets N (default 5,000,000); `LAMINAR_BENCH_ONLY` picks one workload
//! (w1, filter, keys, latency, window, checkpoint); `LAMINAR_BENCH_BUFFER` sets the source buffer (rows in flight)
//! for the 1M-key workload, whose source keeps no history (`'retention' = '0 rows'`) so that
//! the memory measured is the aggregate's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use laminardb::Database;

const BATCH: usize = 10_000;

fn trades_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, true),
        Field::new("price", DataType::Float64, true),
        Field::new("ts", DataType::Int64, true),
    ]))
}

fn w1_batches(n: usize) -> Vec<RecordBatch> {
    let schema = trades_schema();
    let syms: Arc<dyn Array> = Arc::new(StringArray::from_iter_values((0..BATCH).map(|i| format!("S{}", i % 100))));
    (0..n / BATCH)
        .map(|b| {
            let price = Float64Array::from_iter_values((0..BATCH).map(|j| ((b * BATCH + j) % 997) as f64));
            let ts = Int64Array::from_iter_values((b * BATCH..(b + 1) * BATCH).map(|x| x as i64));
            RecordBatch::try_new(schema.clone(), vec![syms.clone(), Arc::new(price), Arc::new(ts)]).expect("batch")
        })
        .collect()
}

fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

fn status_mb(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(key)).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn w1(n: usize) -> f64 {
    let data = w1_batches(n);
    let db = Database::open(":memory:").expect("open");
    db.execute("CREATE SOURCE trades (symbol VARCHAR, price DOUBLE, ts BIGINT)").expect("source");
    db.execute("CREATE STREAM agg AS SELECT symbol, COUNT(*) AS n, AVG(price) AS p, MAX(price) AS m FROM trades GROUP BY symbol")
        .expect("stream");
    db.start().expect("start");
    let sub = db.subscribe("agg").expect("sub");
    let t = Instant::now();
    for b in &data {
        db.insert("trades", b).expect("insert");
    }
    let mut latest: HashMap<String, i64> = HashMap::new();
    while latest.values().sum::<i64>() < n as i64 {
        let item = sub.next_timeout(Duration::from_secs(30)).expect("update");
        let syms = item.batch.column(0).as_string::<i32>();
        let counts = item.batch.column(1).as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..item.batch.num_rows() {
            latest.insert(syms.value(i).to_string(), counts.value(i));
        }
    }
    let dt = t.elapsed().as_secs_f64();
    db.shutdown().expect("shutdown");
    n as f64 / dt
}

fn filter_project(n: usize) -> f64 {
    let data = w1_batches(n);
    let db = Database::open(":memory:").expect("open");
    db.execute("CREATE SOURCE trades (symbol VARCHAR, price DOUBLE, ts BIGINT)").expect("source");
    db.execute("CREATE STREAM f AS SELECT symbol, price * 1.1 AS adj, ts + 1 AS t1 FROM trades WHERE price > 100")
        .expect("stream");
    db.start().expect("start");
    let t = Instant::now();
    for b in &data {
        db.insert("trades", b).expect("insert");
    }
    db.flush().expect("flush");
    let dt = t.elapsed().as_secs_f64();
    let m = db.stream_metrics("f").expect("metrics");
    assert!(m.total_events > 0);
    db.shutdown().expect("shutdown");
    n as f64 / dt
}

fn many_keys(n: usize) -> (f64, f64) {
    let schema =
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true), Field::new("v", DataType::Int64, true)]));
    let data: Vec<RecordBatch> = (0..n / BATCH)
        .map(|b| {
            let k = Int64Array::from_iter_values((b * BATCH..(b + 1) * BATCH).map(|x| ((x * 7919) % 1_000_000) as i64));
            let v = Int64Array::from_iter_values((0..BATCH).map(|x| x as i64));
            RecordBatch::try_new(schema.clone(), vec![Arc::new(k), Arc::new(v)]).expect("batch")
        })
        .collect();
    let base = rss_mb();
    let buffer = std::env::var("LAMINAR_BENCH_BUFFER").ok().and_then(|s| s.parse().ok()).unwrap_or(65_536);
    let config = laminardb::LaminarConfig { buffer_size: buffer, ..Default::default() };
    let db = Database::open_with_config(":memory:", config).expect("open");
    db.execute("CREATE SOURCE kv (k BIGINT, v BIGINT) WITH ('retention' = '0 rows')").expect("source");
    db.execute("CREATE STREAM agg AS SELECT k, COUNT(*) AS n, SUM(v) AS s FROM kv GROUP BY k").expect("stream");
    db.start().expect("start");
    let t = Instant::now();
    for b in &data {
        db.insert("kv", b).expect("insert");
    }
    db.flush().expect("flush");
    let dt = t.elapsed().as_secs_f64();
    let m = db.stream_metrics("agg").expect("metrics");
    assert_eq!(m.current_rows as usize, n.min(1_000_000));
    eprintln!("  rss: before {base:.0} MB, after flush {:.0} MB, peak so far {:.0} MB", rss_mb(), peak_rss_mb());
    db.shutdown().expect("shutdown");
    (n as f64 / dt, peak_rss_mb())
}

fn window(n: usize) -> f64 {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new("v", DataType::Float64, true),
        Field::new("ts", DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None), true),
    ]));
    let t0 = 1_704_067_200_000i64;
    let batch = 50_000;
    let data: Vec<RecordBatch> = (0..n / batch)
        .map(|b| {
            let k = Int64Array::from_iter_values((0..batch).map(|i| (i % 100) as i64));
            let v = Float64Array::from_iter_values((0..batch).map(|i| (i % 1000) as f64));
            let ts = arrow::array::TimestampMillisecondArray::from_iter_values(
                (0..batch).map(|i| t0 + (b * batch + i) as i64),
            );
            RecordBatch::try_new(schema.clone(), vec![Arc::new(k), Arc::new(v), Arc::new(ts)]).expect("batch")
        })
        .collect();
    let db = Database::open(":memory:").expect("open");
    db.execute("CREATE SOURCE ev (k BIGINT, v DOUBLE, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' MINUTE)")
        .expect("source");
    db.execute(
        "CREATE STREAM w AS SELECT k, window_start, window_end, COUNT(*) AS n, SUM(v) AS s FROM ev \
         GROUP BY k, TUMBLE(ts, INTERVAL '1' MINUTE)",
    )
    .expect("stream");
    db.start().expect("start");
    let t = Instant::now();
    for b in &data {
        db.insert("ev", b).expect("insert");
    }
    db.flush().expect("flush");
    let dt = t.elapsed().as_secs_f64();
    let r = db.query("SELECT SUM(n) FROM w").expect("query");
    let total = r.batches[0].column(0).as_primitive::<arrow::datatypes::Int64Type>().value(0);
    assert_eq!(total as usize, n / batch * batch);
    db.shutdown().expect("shutdown");
    n as f64 / dt
}

/// (full checkpoint s, MB; incremental s, MB; recovery s).
fn checkpoint_costs() -> (f64, f64, f64, f64, f64) {
    let schema =
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true), Field::new("v", DataType::Int64, true)]));
    let keys = 1_000_000usize;
    let batch = |from: usize, n: usize| {
        let k = Int64Array::from_iter_values((from..from + n).map(|x| x as i64));
        let v = Int64Array::from_iter_values((from..from + n).map(|x| (x % 100) as i64));
        RecordBatch::try_new(schema.clone(), vec![Arc::new(k), Arc::new(v)]).expect("batch")
    };
    let dir = tempfile_dir();
    let sql = [
        "CREATE SOURCE kv (k BIGINT, v BIGINT) WITH ('retention' = '0 rows')",
        "CREATE MATERIALIZED VIEW agg AS SELECT k, COUNT(*) AS n, SUM(v) AS s FROM kv GROUP BY k",
    ];
    let db = Database::open(&dir).expect("open");
    sql.iter().for_each(|q| drop(db.execute(q).expect("ddl")));
    db.start().expect("start");
    for from in (0..keys).step_by(BATCH) {
        db.insert("kv", &batch(from, BATCH)).expect("insert");
    }
    db.flush().expect("flush");
    let full = db.checkpoint().expect("full checkpoint");
    assert!(full.full);
    for from in (0..keys).step_by(100).take(100) {
        db.insert("kv", &batch(from, 100)).expect("insert");
    }
    db.flush().expect("flush");
    let inc = db.checkpoint().expect("incremental checkpoint");
    assert!(!inc.full);
    drop(db);
    let t = Instant::now();
    let db = Database::open(&dir).expect("reopen");
    db.start().expect("restart");
    db.flush().expect("flush");
    let recovery = t.elapsed().as_secs_f64();
    let r = db.query("SELECT COUNT(*) FROM agg").expect("query");
    assert_eq!(r.batches[0].column(0).as_primitive::<arrow::datatypes::Int64Type>().value(0) as usize, keys);
    db.shutdown().expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
    let mb = |b: u64| b as f64 / 1e6;
    (full.duration.as_secs_f64(), mb(full.bytes), inc.duration.as_secs_f64(), mb(inc.bytes), recovery)
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("laminar-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn latency() -> (f64, f64, f64) {
    let db = Database::open(":memory:").expect("open");
    db.execute("CREATE SOURCE ev (id BIGINT, v DOUBLE)").expect("source");
    db.execute("CREATE STREAM s AS SELECT id, v * 2 AS v2 FROM ev WHERE v >= 0").expect("stream");
    db.start().expect("start");
    let sub = db.subscribe("s").expect("sub");
    let schema = db.schema("ev").expect("schema");
    let rows_per_batch = 1000usize;
    let batches = 500usize; // 100k rows/s for 5 s: one 1000-row batch every 10 ms
    let sent: Arc<parking_lot::Mutex<Vec<Instant>>> = Arc::new(parking_lot::Mutex::new(Vec::with_capacity(batches)));
    let sent2 = sent.clone();
    let db2 = db.clone();
    let producer = std::thread::spawn(move || {
        let start = Instant::now();
        for b in 0..batches {
            let due = start + Duration::from_millis(10 * b as u64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let ids = Int64Array::from_iter_values((0..rows_per_batch).map(|_| b as i64));
            let v = Float64Array::from_iter_values((0..rows_per_batch).map(|i| i as f64));
            let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(ids), Arc::new(v)]).expect("batch");
            sent2.lock().push(Instant::now());
            db2.insert("ev", &batch).expect("insert");
        }
    });
    let mut seen: HashMap<i64, usize> = HashMap::new();
    let mut lat: Vec<f64> = Vec::new();
    while lat.len() < batches {
        let item = sub.next_timeout(Duration::from_secs(10)).expect("item");
        let now = Instant::now();
        let ids = item.batch.column(0).as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..ids.len() {
            let id = ids.value(i);
            let c = seen.entry(id).or_insert(0);
            *c += 1;
            if *c == rows_per_batch {
                let t0 = sent.lock()[id as usize];
                lat.push(now.duration_since(t0).as_secs_f64() * 1000.0);
            }
        }
    }
    producer.join().expect("producer");
    db.shutdown().expect("shutdown");
    lat.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    (p(0.5), p(0.99), lat[lat.len() - 1])
}

fn main() {
    // `cargo test --all-targets` runs this without `--bench`: a quick smoke run then.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let default_rows = if smoke { 20_000 } else { 5_000_000 };
    let n: usize = std::env::var("LAMINAR_BENCH_ROWS").ok().and_then(|s| s.parse().ok()).unwrap_or(default_rows);
    let only = std::env::var("LAMINAR_BENCH_ONLY").unwrap_or_default();
    let runs = 5;
    let want = |w: &str| only.is_empty() || only == w;
    println!("workload                 rows/s (median of {runs})   notes");
    if want("w1") {
        let r = median((0..runs).map(|_| w1(n)).collect());
        println!("W1 group-by 100 keys     {:>14.0}        N={n}", r);
    }
    if want("filter") {
        let r = median((0..runs).map(|_| filter_project(n)).collect());
        println!("filter+project           {:>14.0}        N={n}", r);
    }
    if want("keys") {
        let rs: Vec<(f64, f64)> = (0..3).map(|_| many_keys(n)).collect();
        let r = median(rs.iter().map(|x| x.0).collect());
        let mem = rs.iter().map(|x| x.1).fold(0.0, f64::max);
        println!("group-by 1M keys         {r:>14.0}        N={n}, peak RSS {mem:.0} MB (whole process)");
    }
    if want("window") {
        let r = median((0..runs).map(|_| window(n.max(100_000))).collect());
        println!("tumbling window 1 min    {:>14.0}        N={}", r, n.max(100_000));
    }
    if want("checkpoint") {
        let (fs, fmb, is, imb, rs) = checkpoint_costs();
        println!(
            "checkpoint of 1M-key aggregate: full {fs:.2} s / {fmb:.1} MB; after 1% changed, incremental {is:.2} s / {imb:.1} MB; recovery {rs:.2} s"
        );
    }
    if want("latency") {
        let (p50, p99, max) = latency();
        println!("insert->subscriber latency at 100k rows/s: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms");
    }
}
