//! MySQL/MariaDB CDC benchmark (run with `cargo bench --bench mysql_cdc`, against the MariaDB of
//! `scripts/services.sh`: `LAMINAR_TEST_MYSQL_URI`). A table `(id INT PRIMARY KEY, grp INT,
//! v BIGINT)` of `LAMINAR_BENCH_MYSQL_ROWS` rows (default 200,000; 20,000 in an unoptimized
//! build, as `cargo test --all-targets` runs it).
//!
//! - snapshot: a fresh source reads the table (consistent snapshot, pages in key order) until
//!   every row is in the pipeline, with a running `COUNT`/`SUM` view over it.
//! - changes: with the source stopped at a checkpoint, every row is updated upstream (100 rows
//!   per transaction) into a binary log file of their own; the restarted source streams them
//!   until the last transaction is applied. Next to it, `mariadb-binlog --read-from-remote-server
//!   --raw` (the server's own client, copying the binary log file as it arrives) reads the same
//!   file: the wire, the ceiling for any client; and `mariadb-binlog -v`, which also decodes
//!   every row image (to text, into /dev/null).
//!
//! Prints change events/s for each and the ratios.

use std::process::Command;
use std::time::{Duration, Instant};

use laminardb::{Database, LaminarConfig};

fn uri() -> String {
    std::env::var("LAMINAR_TEST_MYSQL_URI")
        .expect("LAMINAR_TEST_MYSQL_URI is not set: start MariaDB with `eval \"$(scripts/services.sh start)\"`")
}

fn client_args() -> Vec<String> {
    let u = url::Url::parse(&uri()).expect("uri");
    vec![
        "--no-defaults".into(),
        "-h".into(),
        u.host_str().expect("host").into(),
        "-P".into(),
        u.port().unwrap_or(3306).to_string(),
        "-u".into(),
        u.username().into(),
        format!("-p{}", u.password().unwrap_or_default()),
    ]
}

fn mysql(sql: &str) -> String {
    let db = url::Url::parse(&uri()).expect("uri").path().trim_start_matches('/').to_string();
    let out =
        Command::new("mariadb").args(client_args()).arg(&db).args(["-N", "-B", "-e", sql]).output().expect("mariadb");
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
    let n: i64 = std::env::var("LAMINAR_BENCH_MYSQL_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let table = format!("bench_cdc_{}", std::process::id());
    mysql(&format!("DROP TABLE IF EXISTS {table}"));
    mysql(&format!("CREATE TABLE {table} (id INT PRIMARY KEY, grp INT NOT NULL, v BIGINT NOT NULL)"));
    mysql(&format!("INSERT INTO {table} SELECT seq, seq % 100, seq FROM seq_1_to_{n}"));
    println!("MariaDB CDC, {n} rows, 1 timely worker, server and engine sharing the machine");

    let dir = tempfile::tempdir().expect("dir");
    let config = || LaminarConfig { workers: Some(1), checkpoint_interval_ms: Some(3_600_000), ..Default::default() };
    let path = dir.path().join("db");
    let snapshot = {
        let db = Database::open_with_config(path.to_str().expect("path"), config()).expect("open");
        db.execute(&format!(
            "CREATE SOURCE src (id INT, grp INT, v BIGINT) WITH (connector = 'mysql-cdc', 'connection' = '{}', \
             'table' = '{table}', 'server_id' = '{}')",
            uri(),
            7000 + std::process::id() % 1000
        ))
        .expect("source");
        db.execute("CREATE MATERIALIZED VIEW agg AS SELECT COUNT(*) AS n, SUM(v) AS s FROM src").expect("view");
        let t0 = Instant::now();
        db.start().expect("start");
        wait("the snapshot", Duration::from_secs(600), || {
            detail(&db, "snapshot_rows") >= n && detail(&db, "binlog_pos") > 0
        });
        db.flush().expect("flush");
        let took = t0.elapsed();
        db.checkpoint().expect("checkpoint");
        db.close().expect("close");
        n as f64 / took.as_secs_f64()
    };
    println!("  {:<44}{snapshot:>10.0} rows/s", "snapshot (consistent snapshot, key order):");

    // The changes, in a binary log file of their own.
    mysql("FLUSH BINARY LOGS");
    let file = mysql("SHOW MASTER STATUS").split('\t').next().expect("file").to_string();
    let script = dir.path().join("changes.sql");
    let mut sql = String::new();
    let mut txns = 0;
    for a in (0..n).step_by(100) {
        sql.push_str(&format!("UPDATE {table} SET v = v + 1 WHERE id > {a} AND id <= {};\n", a + 100));
        txns += 1;
    }
    std::fs::write(&script, sql).expect("script");
    let db_name = url::Url::parse(&uri()).expect("uri").path().trim_start_matches('/').to_string();
    let out = Command::new("mariadb")
        .args(client_args())
        .arg(&db_name)
        .stdin(std::fs::File::open(&script).expect("script"))
        .output()
        .expect("mariadb");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    mysql("FLUSH BINARY LOGS");

    let raw = tempfile::tempdir().expect("dir");
    let t0 = Instant::now();
    let status = Command::new("mariadb-binlog")
        .args(client_args())
        .args(["--read-from-remote-server", "--raw", "--result-file"])
        .arg(format!("{}/", raw.path().display()))
        .arg(&file)
        .status()
        .expect("mariadb-binlog (mariadb-client)");
    let bare = n as f64 / t0.elapsed().as_secs_f64();
    assert!(status.success(), "mariadb-binlog failed");
    println!("  {:<44}{bare:>10.0} changes/s", "mariadb-binlog --raw (copies the file):");
    // The same client decoding every row image to text (`-v`), written to /dev/null.
    let t0 = Instant::now();
    let status = Command::new("mariadb-binlog")
        .args(client_args())
        .args(["--read-from-remote-server", "-v"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("mariadb-binlog");
    let decoded = n as f64 / t0.elapsed().as_secs_f64();
    assert!(status.success(), "mariadb-binlog -v failed");
    println!("  {:<44}{decoded:>10.0} changes/s", "mariadb-binlog -v (decodes rows to text):");

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
        let mut last_report = Instant::now();
        wait("the changes", Duration::from_secs(600), || {
            if last_report.elapsed() > Duration::from_secs(5) {
                last_report = Instant::now();
                eprintln!(
                    "sum {} of {want}; {:?}",
                    sum(),
                    db.source_metrics("src").map(|m| (
                        m.details,
                        m.last_error,
                        m.connector_state,
                        m.dead_letters,
                        m.total_events
                    ))
                );
            }
            sum() >= want
        });
        let took = t0.elapsed();
        assert!(detail(&db, "transactions") >= txns);
        assert_eq!(sum(), want, "every change applied once");
        db.close().expect("close");
        n as f64 / took.as_secs_f64()
    };
    println!(
        "  {:<44}{streamed:>10.0} changes/s (updates, 100 per transaction, into a running SUM)",
        "mysql-cdc source:"
    );
    println!("ratios: to mariadb-binlog -v {:.2}, to the raw copy {:.2}", streamed / decoded, streamed / bare);
    mysql(&format!("DROP TABLE {table}"));
}
