//! Postgres CDC benchmark (run with `cargo bench --bench postgres_cdc`, against the server of
//! `scripts/services.sh`: `LAMINAR_TEST_POSTGRES_URI`). A table `(id INT PRIMARY KEY, grp INT,
//! v BIGINT)` of `LAMINAR_BENCH_POSTGRES_ROWS` rows (default 200,000; 20,000 in an unoptimized
//! build, as `cargo test --all-targets` runs it).
//!
//! - snapshot: a fresh source reads the table (slot created with its snapshot, rows through a
//!   cursor) until every row is in the pipeline, with a running `COUNT`/`SUM` view over it.
//! - changes: with the source stopped at a checkpoint, every row is updated upstream (100 rows
//!   per transaction); the restarted source streams them until the last transaction is applied.
//!   Next to it, `pg_recvlogical` (Postgres's own client, writing the pgoutput bytes to
//!   /dev/null) reads the same changes from a second slot: the server's decoding and the wire,
//!   the ceiling for any client.
//!
//! Prints change events/s for each and the ratio to `pg_recvlogical`.

use std::process::Command;
use std::time::{Duration, Instant};

use laminardb::{Database, LaminarConfig};

fn uri() -> String {
    std::env::var("LAMINAR_TEST_POSTGRES_URI")
        .expect("LAMINAR_TEST_POSTGRES_URI is not set: start Postgres with `eval \"$(scripts/services.sh start)\"`")
}

fn psql(sql: &str) -> String {
    let out = Command::new("psql")
        .args([&uri(), "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql");
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn detail(db: &Database, key: &str) -> i64 {
    db.source_metrics("src").and_then(|m| m.details.get(key).copied()).unwrap_or_default()
}

fn wait(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn main() {
    let default = if cfg!(debug_assertions) { 20_000 } else { 200_000 };
    let n: i64 = std::env::var("LAMINAR_BENCH_POSTGRES_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let tag = format!("bench_cdc_{}", std::process::id());
    let (table, bare) = (tag.clone(), format!("{tag}_bare"));
    psql(&format!("DROP TABLE IF EXISTS {table}"));
    psql(&format!("CREATE TABLE {table} (id INT PRIMARY KEY, grp INT NOT NULL, v BIGINT NOT NULL)"));
    psql(&format!("INSERT INTO {table} SELECT i, i % 100, i FROM generate_series(1, {n}) i"));
    psql(&format!("CREATE PUBLICATION {tag} FOR TABLE {table}"));
    println!("Postgres CDC, {n} rows, 1 timely worker, server and engine sharing the machine");

    let dir = tempfile::tempdir().expect("dir");
    let config = || LaminarConfig {
        workers: Some(1),
        checkpoint_interval_ms: Some(3_600_000),
        storage_dir: None,
        ..Default::default()
    };
    let path = dir.path().join("db");
    let snapshot = {
        let db = Database::open_with_config(path.to_str().expect("path"), config()).expect("open");
        db.execute(&format!(
            "CREATE SOURCE src (id INT, grp INT, v BIGINT) WITH (connector = 'postgres-cdc', 'connection' = '{}', \
             'table' = 'public.{table}', 'slot.name' = '{tag}', 'publication.name' = '{tag}')",
            uri()
        ))
        .expect("source");
        db.execute("CREATE MATERIALIZED VIEW agg AS SELECT COUNT(*) AS n, SUM(v) AS s FROM src").expect("view");
        let t0 = Instant::now();
        db.start().expect("start");
        wait("the snapshot", Duration::from_secs(600), || detail(&db, "snapshot_rows") >= n && detail(&db, "lsn") > 0);
        db.flush().expect("flush");
        let took = t0.elapsed();
        db.checkpoint().expect("checkpoint");
        db.close().expect("close");
        n as f64 / took.as_secs_f64()
    };
    println!("  {:<40}{snapshot:>10.0} rows/s", "snapshot (slot + cursor):");

    // The same changes for both readers: a second slot from here on.
    psql(&format!("SELECT pg_create_logical_replication_slot('{bare}', 'pgoutput')"));
    let script = dir.path().join("changes.sql");
    let mut sql = String::new();
    let mut txns = 0;
    for a in (0..n).step_by(100) {
        sql.push_str(&format!("UPDATE {table} SET v = v + 1 WHERE id > {a} AND id <= {};\n", a + 100));
        txns += 1;
    }
    std::fs::write(&script, sql).expect("script");
    let out = Command::new("psql")
        .args([&uri(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&script)
        .output()
        .expect("psql");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let end = psql("SELECT pg_current_wal_lsn()");

    let t0 = Instant::now();
    let status = Command::new("pg_recvlogical")
        .args(["-d", &uri(), "--slot", &bare, "--start", "--endpos", &end, "--no-loop", "-f", "/dev/null"])
        .args(["-o", "proto_version=1", "-o", &format!("publication_names={tag}")])
        .status()
        .expect("pg_recvlogical (postgresql-client)");
    let bare_rate = n as f64 / t0.elapsed().as_secs_f64();
    assert!(status.success(), "pg_recvlogical failed");
    println!("  {:<40}{bare_rate:>10.0} changes/s", "pg_recvlogical to /dev/null:");

    let streamed = {
        let db = Database::open_with_config(path.to_str().expect("path"), config()).expect("reopen");
        let t0 = Instant::now();
        db.start().expect("restart");
        let sum = || {
            let r = db.query("SELECT s FROM agg").expect("agg");
            r.batches
                .first()
                .filter(|b| b.num_rows() > 0)
                .map_or(0, |b| arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(b.column(0)).value(0))
        };
        // Done when the running SUM has every update (each adds 1 to one row).
        let want = n * (n + 1) / 2 + n;
        wait("the changes", Duration::from_secs(300), || sum() >= want);
        let took = t0.elapsed();
        assert!(detail(&db, "transactions") >= txns, "{:?}", db.source_metrics("src").map(|m| m.details));
        assert_eq!(sum(), want, "every change applied once");
        db.close().expect("close");
        n as f64 / took.as_secs_f64()
    };
    println!(
        "  {:<40}{streamed:>10.0} changes/s (updates, 100 per transaction, into a running SUM)",
        "postgres-cdc source:"
    );
    println!("ratio to pg_recvlogical: {:.2}", streamed / bare_rate);
    for slot in [&tag, &bare] {
        // The source's session may take a moment to go away.
        wait("the slot to be released", Duration::from_secs(10), || {
            psql(&format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active")) == "0"
        });
        psql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
    }
    psql(&format!("DROP PUBLICATION {tag}"));
    psql(&format!("DROP TABLE {table}"));
}
