//! The `delta-lake` source and sink against real Delta tables on local storage, with delta-rs
//! as the other writer (for the source) and the reader (for the sink): snapshot and tailing,
//! compaction commits that must not duplicate, deletes of keyed sources, the three write modes,
//! schema evolution, and exactly-once commits across a pipeline killed with SIGKILL.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::cdc::memory_db;
use common::{rows, sorted_query};
use deltalake::datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use laminardb::Database;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn url(dir: &Path) -> url::Url {
    std::fs::create_dir_all(dir).expect("dir");
    url::Url::from_directory_path(dir.canonicalize().expect("path")).expect("url")
}

fn batch(ids: &[i64], names: &[&str]) -> RecordBatch {
    let schema =
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true), Field::new("name", DataType::Utf8, true)]));
    RecordBatch::try_new(
        schema,
        vec![Arc::new(Int64Array::from(ids.to_vec())), Arc::new(StringArray::from(names.to_vec()))],
    )
    .expect("batch")
}

/// Appends rows with delta-rs (creating the table on first use).
fn append(dir: &Path, b: RecordBatch) {
    rt().block_on(async {
        let t = DeltaTable::try_from_url(url(dir)).await.expect("open");
        t.write(vec![b]).await.expect("write");
    });
}

/// Every row of the table, read by delta-rs through DataFusion, as sorted `a|b` strings.
fn table_rows(dir: &Path, columns: &str) -> Vec<String> {
    rt().block_on(async {
        let t = DeltaTable::try_from_url(url(dir)).await.expect("open");
        let ctx = SessionContext::new();
        t.update_datafusion_session(&ctx.state()).expect("session");
        ctx.register_table("t", t.table_provider().await.expect("provider")).expect("register");
        let df = ctx.sql(&format!("SELECT {columns} FROM t")).await.expect("sql");
        let mut r = rows(&df.collect().await.expect("collect"));
        r.sort();
        r
    })
}

/// The commit infos of the table, newest first.
fn history(dir: &Path) -> Vec<serde_json::Value> {
    rt().block_on(async {
        let t = DeltaTable::try_from_url(url(dir)).await.expect("open");
        t.history(None).await.expect("history").map(|c| serde_json::to_value(c).expect("json")).collect()
    })
}

/// An in-memory database with a source `s (id, name)` and a sink `k` of its rows into the Delta
/// table at `table` (`extra`: more options, each starting with a comma).
fn sink_db(table: &str, extra: &str) -> Database {
    let db = memory_db();
    db.execute("CREATE SOURCE s (id BIGINT, name VARCHAR)").expect("source");
    db.execute(&format!(
        "CREATE SINK k AS SELECT id, name FROM s WITH (connector = 'delta-lake', 'table_uri' = '{table}'{extra})"
    ))
    .expect("sink");
    db
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn converge(db: &Database, sql: &str, want: &[&str]) {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = sorted_query(db, sql);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: got {got:?}, want {want:?}; metrics {:?}",
            db.source_metrics("src").map(|m| (m.details, m.last_error))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn source_reads_the_snapshot_then_new_versions_and_skips_compaction() {
    let dir = tempfile::tempdir().expect("dir");
    let t = dir.path().join("t");
    append(&t, batch(&[1, 2], &["a", "b"]));
    append(&t, batch(&[3], &["c"]));
    let db = memory_db();
    db.execute(&format!(
        "CREATE SOURCE src (id BIGINT, name VARCHAR) WITH (connector = 'delta-lake', 'table_uri' = '{}', \
         'poll_interval_ms' = '50')",
        t.display()
    ))
    .expect("create");
    db.start().expect("start");
    converge(&db, "SELECT id, name FROM src", &["1|a", "2|b", "3|c"]);
    // Another writer appends while the pipeline runs.
    append(&t, batch(&[4, 5], &["d", "e"]));
    converge(&db, "SELECT id, name FROM src", &["1|a", "2|b", "3|c", "4|d", "5|e"]);
    // OPTIMIZE rewrites the files (dataChange = false): nothing is read twice.
    rt().block_on(async {
        let t = DeltaTable::try_from_url(url(&t)).await.expect("open");
        let (_, m) = t.optimize().await.expect("optimize");
        assert!(m.num_files_removed >= 2, "{m:?}");
    });
    append(&t, batch(&[6], &["f"]));
    converge(&db, "SELECT id, name FROM src", &["1|a", "2|b", "3|c", "4|d", "5|e", "6|f"]);
    let m = db.source_metrics("src").expect("metrics");
    assert_eq!(m.total_events, 6, "{:?}", m.details);
    assert!(m.details.get("delta_version").copied().unwrap_or(0) >= 4, "{:?}", m.details);
    db.shutdown().expect("shutdown");
}

#[test]
fn keyed_source_applies_deletes_and_updates_of_other_writers() {
    let dir = tempfile::tempdir().expect("dir");
    let t = dir.path().join("t");
    append(&t, batch(&[1, 2, 3], &["a", "b", "c"]));
    let db = memory_db();
    db.execute(&format!(
        "CREATE SOURCE src (id BIGINT PRIMARY KEY, name VARCHAR) WITH (connector = 'delta-lake', \
         'table_uri' = '{}', 'poll_interval_ms' = '50')",
        t.display()
    ))
    .expect("create");
    db.execute("CREATE STREAM n AS SELECT COUNT(*) AS c FROM src").expect("stream");
    db.start().expect("start");
    converge(&db, "SELECT id, name FROM src", &["1|a", "2|b", "3|c"]);
    rt().block_on(async {
        let table = DeltaTable::try_from_url(url(&t)).await.expect("open");
        let (table, _) = table.delete().with_predicate("id = 2").await.expect("delete");
        table.update().with_predicate("id = 3").with_update("name", "'z'").await.expect("update");
    });
    converge(&db, "SELECT id, name FROM src", &["1|a", "3|z"]);
    converge(&db, "SELECT c FROM n", &["2"]);
    db.shutdown().expect("shutdown");
}

#[test]
fn source_errors_name_the_problem() {
    let dir = tempfile::tempdir().expect("dir");
    let t = dir.path().join("t");
    append(&t, batch(&[1], &["a"]));
    let db = memory_db();
    let e = db.execute("CREATE SOURCE s (id BIGINT) WITH (connector = 'delta-lake')").expect_err("no uri");
    assert!(e.to_string().contains("table_uri"), "{e}");
    let e = db
        .execute("CREATE SOURCE s (id BIGINT) WITH (connector = 'delta-lake', 'table_uri' = '/x', 'poll_ms' = '1')")
        .expect_err("unknown key");
    assert!(e.to_string().contains("poll_ms"), "{e}");
    let e = db
        .execute(
            "CREATE SOURCE s (id BIGINT) WITH (connector = 'delta-lake', 'table_uri' = '/x', 'starting_version' = 'x')",
        )
        .expect_err("bad version");
    assert!(e.to_string().contains("starting_version"), "{e}");
    assert!(db.sources().is_empty(), "a failed CREATE leaves nothing behind");
    db.execute(&format!(
        "CREATE SOURCE s (id BIGINT, missing VARCHAR) WITH (connector = 'delta-lake', 'table_uri' = '{}')",
        t.display()
    ))
    .expect("create");
    let e = db.start().expect_err("missing column");
    assert!(e.to_string().contains("'missing'"), "{e}");
}

#[test]
fn sink_appends_one_commit_per_epoch_with_the_epoch_recorded() {
    let dir = tempfile::tempdir().expect("dir");
    let t = dir.path().join("out");
    let db = memory_db();
    db.execute("CREATE SOURCE s (id BIGINT, name VARCHAR)").expect("source");
    db.execute(&format!(
        "CREATE SINK k AS SELECT id, name FROM s WHERE id > 0 WITH (connector = 'delta-lake', 'table_uri' = '{}')",
        t.display()
    ))
    .expect("sink");
    db.start().expect("start");
    db.insert("s", &batch(&[1, 2, -1], &["a", "b", "x"])).expect("insert");
    db.flush().expect("flush");
    wait_for("the first rows", || db.sink_metrics("k").is_some_and(|m| m.rows_written >= 2));
    db.insert("s", &batch(&[3], &["c"])).expect("insert");
    db.flush().expect("flush");
    wait_for("the second rows", || db.sink_metrics("k").is_some_and(|m| m.rows_written >= 3));
    db.shutdown().expect("shutdown");
    assert_eq!(table_rows(&t, "id, name"), ["1|a", "2|b", "3|c"]);
    let commits: Vec<serde_json::Value> =
        history(&t).into_iter().filter(|c| c.get("laminardb.epoch").is_some()).collect();
    assert_eq!(commits.len(), 2, "one commit per epoch with data");
    assert!(commits.iter().all(|c| c["operation"] == "WRITE"), "{commits:?}");
    assert!(db.metrics().total_events_emitted >= 3);
}

#[test]
fn sink_upsert_merges_on_the_group_by_key_and_overwrite_replaces() {
    let dir = tempfile::tempdir().expect("dir");
    let (up, ow) = (dir.path().join("up"), dir.path().join("ow"));
    let db = memory_db();
    db.execute("CREATE SOURCE s (id BIGINT PRIMARY KEY, name VARCHAR)").expect("source");
    db.execute(&format!(
        "CREATE SINK per_name AS SELECT name, COUNT(*) AS n FROM s GROUP BY name WITH (connector = 'delta-lake', \
         'table_uri' = '{}', 'write_mode' = 'upsert')",
        up.display()
    ))
    .expect("upsert sink");
    db.execute(&format!(
        "CREATE SINK snapshot AS SELECT name, COUNT(*) AS n FROM s GROUP BY name WITH (connector = 'delta-lake', \
         'table_uri' = '{}', 'write_mode' = 'overwrite')",
        ow.display()
    ))
    .expect("overwrite sink");
    db.start().expect("start");
    db.insert("s", &batch(&[1, 2, 3], &["a", "a", "b"])).expect("insert");
    db.flush().expect("flush");
    wait_for("upsert 1", || table_rows_or_empty(&up) == ["a|2", "b|1"]);
    // Conflicting keys: 'a' changes its count, 'b' disappears, 'c' is new.
    db.delete("s", &batch(&[3], &["b"])).expect("delete");
    db.insert("s", &batch(&[4, 5], &["a", "c"])).expect("insert");
    db.flush().expect("flush");
    wait_for("upsert 2", || table_rows_or_empty(&up) == ["a|3", "c|1"]);
    wait_for("overwrite", || table_rows_or_empty(&ow) == ["a|3", "c|1"]);
    db.shutdown().expect("shutdown");
    let ops: Vec<String> = history(&up).iter().filter_map(|c| c["operation"].as_str().map(String::from)).collect();
    assert!(ops.iter().any(|o| o == "MERGE"), "{ops:?}");
}

fn table_rows_or_empty(dir: &Path) -> Vec<String> {
    if !dir.join("_delta_log").exists() {
        return Vec::new();
    }
    table_rows(dir, "name, n")
}

#[test]
fn sink_adds_new_query_columns_to_an_existing_table() {
    let dir = tempfile::tempdir().expect("dir");
    let t = dir.path().join("t");
    append(&t, batch(&[1], &["a"]));
    let db = memory_db();
    db.execute("CREATE SOURCE s (id BIGINT, name VARCHAR, score DOUBLE)").expect("source");
    db.execute(&format!(
        "CREATE SINK k AS SELECT id, name, score FROM s WITH (connector = 'delta-lake', 'table_uri' = '{}')",
        t.display()
    ))
    .expect("sink");
    db.start().expect("start");
    db.execute("INSERT INTO s VALUES (2, 'b', 0.5)").expect("insert");
    db.flush().expect("flush");
    wait_for("the row", || db.sink_metrics("k").is_some_and(|m| m.rows_written >= 1));
    db.shutdown().expect("shutdown");
    assert_eq!(table_rows(&t, "id, name, score"), ["1|a|NULL", "2|b|0.5"]);
}

#[test]
fn sink_errors_name_the_key() {
    let db = memory_db();
    db.execute("CREATE SOURCE s (id BIGINT, name VARCHAR)").expect("source");
    let cases = [
        ("SELECT id FROM s", "", "table_uri"),
        ("SELECT id FROM s", ", 'table_uri' = '/tmp/x', 'write_mode' = 'merge'", "write_mode"),
        ("SELECT id FROM s", ", 'table_uri' = '/tmp/x', 'write_mode' = 'upsert', 'merge_key_columns' = 'nope'", "nope"),
        ("SELECT id FROM s", ", 'table_uri' = '/tmp/x', 'partition_by' = 'nope'", "partition_by"),
        ("SELECT id FROM s", ", 'table_uri' = '/tmp/x', 'comit_interval_ms' = '5'", "comit_interval_ms"),
        ("SELECT name, COUNT(*) AS n FROM s GROUP BY name", ", 'table_uri' = '/tmp/x'", "write_mode"),
        ("SELECT id FROM s", ", 'table_uri' = 'ftp://h/t'", "ftp"),
    ];
    for (query, opts, needle) in cases {
        let e =
            db.execute(&format!("CREATE SINK k AS {query} WITH (connector = 'delta-lake'{opts})")).expect_err(needle);
        assert!(e.to_string().contains(needle), "{needle}: {e}");
    }
    assert!(db.sinks().is_empty(), "a failed CREATE leaves nothing behind");
}

fn run_cli(db: &Path, sql: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_laminardb"))
        .args(["run", &sql.display().to_string(), "--db", &db.display().to_string(), "--quiet"])
        .args(["--checkpoint-interval", "200", "--workers", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn laminardb")
}

fn pipeline(out: &Path) -> String {
    let sink = |name: &str, extra: &str| {
        format!(
            "WITH (connector = 'delta-lake', 'table_uri' = '{}', 'delivery.guarantee' = 'exactly-once'{extra})",
            out.join(name).display()
        )
    };
    format!(
        "CREATE SOURCE views (ad BIGINT, ts TIMESTAMP)
           WITH (connector = 'datagen', 'rows_per_second' = '20000', 'max_rows' = '200000', 'seed' = '1',
                 'fields.ad.max' = '30', 'fields.ts.start' = '2024-01-01T00:00:00Z', 'fields.ts.step' = '10',
                 'retention' = '0 rows');
         CREATE SINK raw AS SELECT ad, ts FROM views {};
         CREATE SINK totals AS SELECT ad, COUNT(*) AS n FROM views GROUP BY ad {};",
        sink("raw", ", 'partition_by' = 'ad'"),
        sink("totals", ", 'write_mode' = 'upsert'")
    )
}

#[test]
fn exactly_once_delta_sinks_survive_kills() {
    let clean = tempfile::tempdir().expect("dir");
    let crashy = tempfile::tempdir().expect("dir");
    for d in [&clean, &crashy] {
        std::fs::write(d.path().join("pipeline.sql"), pipeline(&d.path().join("out"))).expect("sql");
    }
    let out = run_cli(&clean.path().join("db"), &clean.path().join("pipeline.sql")).wait_with_output().expect("run");
    assert!(out.status.success(), "the clean run failed: {}", String::from_utf8_lossy(&out.stderr));
    let delays = [700u64, 1100, 900, 1300, 800, 1000].map(Duration::from_millis);
    let kills =
        common::run_with_kills(|| run_cli(&crashy.path().join("db"), &crashy.path().join("pipeline.sql")), delays);
    assert!(kills >= 3, "only {kills} kills before the pipeline finished");
    let (a, b) = (clean.path().join("out"), crashy.path().join("out"));
    let count = |rows: Vec<String>| {
        let mut m: BTreeMap<String, i64> = BTreeMap::new();
        rows.into_iter().for_each(|r| *m.entry(r).or_default() += 1);
        m
    };
    let want = count(table_rows(&a.join("raw"), "ad, ts"));
    assert_eq!(want.values().sum::<i64>(), 200_000);
    let got = count(table_rows(&b.join("raw"), "ad, ts"));
    assert_eq!(got.values().sum::<i64>(), 200_000, "rows lost or written twice after {kills} kills");
    assert!(got == want, "the rows differ from the clean run");
    let totals = table_rows(&b.join("totals"), "ad, n");
    assert_eq!(totals, table_rows(&a.join("totals"), "ad, n"));
    assert_eq!(totals.len(), 31);
}

/// Points the AWS environment at the S3 stand-in of scripts/services.sh.
fn s3_env() -> String {
    let endpoint = std::env::var("LAMINAR_TEST_S3_ENDPOINT")
        .expect("LAMINAR_TEST_S3_ENDPOINT is not set: run scripts/test.sh (scripts/services.sh starts moto_server)");
    for (k, v) in [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ] {
        std::env::set_var(k, v);
    }
    let bucket = std::env::var("LAMINAR_TEST_S3_BUCKET").unwrap_or_else(|_| "laminar-test".into());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos();
    format!("s3://{bucket}/delta-{nanos}")
}

/// Every row of a table in an object store, read by delta-rs.
fn s3_rows(uri: &str, columns: &str) -> Vec<String> {
    rt().block_on(async {
        let t = DeltaTable::try_from_url(url::Url::parse(uri).expect("url")).await.expect("open");
        let ctx = SessionContext::new();
        t.update_datafusion_session(&ctx.state()).expect("session");
        ctx.register_table("t", t.table_provider().await.expect("provider")).expect("register");
        let df = ctx.sql(&format!("SELECT {columns} FROM t")).await.expect("sql");
        let mut r = rows(&df.collect().await.expect("collect"));
        r.sort();
        r
    })
}

#[test]
fn s3_tables_are_written_and_read_through_the_s3_stand_in() {
    let base = s3_env();
    let table = format!("{base}/events");
    let db = sink_db(&table, "");
    db.execute(&format!(
        "CREATE SOURCE src (id BIGINT, name VARCHAR) WITH (connector = 'delta-lake', 'table_uri' = '{table}', \
         'poll_interval_ms' = '50')"
    ))
    .expect("source on the same table");
    // The source needs the table to exist when it starts: the sink's first commit makes it.
    let first = sink_db(&table, "");
    first.start().expect("start");
    first.insert("s", &batch(&[1, 2], &["a", "b"])).expect("insert");
    first.flush().expect("flush");
    wait_for("the first commit", || first.sink_metrics("k").is_some_and(|m| m.rows_written >= 2));
    first.shutdown().expect("shutdown");
    db.start().expect("start");
    converge(&db, "SELECT id, name FROM src", &["1|a", "2|b"]);
    db.insert("s", &batch(&[3], &["c"])).expect("insert");
    db.flush().expect("flush");
    converge(&db, "SELECT id, name FROM src", &["1|a", "2|b", "3|c"]);
    db.shutdown().expect("shutdown");
    assert_eq!(s3_rows(&table, "id, name"), ["1|a", "2|b", "3|c"]);
}

#[test]
fn concurrent_writers_on_s3_never_overwrite_each_others_commits() {
    let table = format!("{}/shared", s3_env());
    let db = memory_db();
    db.execute("CREATE SOURCE s (id BIGINT, name VARCHAR)").expect("source");
    for k in ["k1", "k2", "k3"] {
        db.execute(&format!(
            "CREATE SINK {k} AS SELECT id, name FROM s WITH (connector = 'delta-lake', 'table_uri' = '{table}')"
        ))
        .expect("sink");
    }
    db.start().expect("start");
    for i in 0..10 {
        db.insert("s", &batch(&[i], &["x"])).expect("insert");
        db.flush().expect("flush");
    }
    wait_for("every sink's rows", || {
        ["k1", "k2", "k3"].iter().all(|k| db.sink_metrics(k).is_some_and(|m| m.rows_written >= 10))
    });
    db.shutdown().expect("shutdown");
    for k in ["k1", "k2", "k3"] {
        let m = db.sink_metrics(k).expect("metrics");
        assert_eq!(m.state, "stopped", "{k}: {:?}", m.last_error);
    }
    // Three writers raced for the same versions: each commit landed once, none replaced another.
    let got = s3_rows(&table, "id");
    let mut want: Vec<String> = (0..10).flat_map(|i| std::iter::repeat_n(i.to_string(), 3)).collect();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn source_resumes_from_its_checkpointed_version_without_duplicates() {
    let dir = tempfile::tempdir().expect("dir");
    let t = dir.path().join("t");
    let dbdir = dir.path().join("db");
    append(&t, batch(&[1, 2], &["a", "b"]));
    let open = || {
        Database::open_with_config(&dbdir, laminardb::LaminarConfig { workers: Some(1), ..Default::default() })
            .expect("open")
    };
    {
        let db = open();
        db.execute(&format!(
            "CREATE SOURCE src (id BIGINT, name VARCHAR) WITH (connector = 'delta-lake', 'table_uri' = '{}', \
             'poll_interval_ms' = '50')",
            t.display()
        ))
        .expect("create");
        db.execute("CREATE STREAM total AS SELECT COUNT(*) AS n, SUM(id) AS s FROM src").expect("stream");
        db.start().expect("start");
        converge(&db, "SELECT id, name FROM src", &["1|a", "2|b"]);
        append(&t, batch(&[3], &["c"]));
        converge(&db, "SELECT id, name FROM src", &["1|a", "2|b", "3|c"]);
        db.checkpoint().expect("checkpoint");
        drop(db); // a crash: no shutdown
    }
    // Written while the pipeline is down: read once after the restart, nothing before it again.
    append(&t, batch(&[4], &["d"]));
    let db = open();
    db.start().expect("restart");
    converge(&db, "SELECT id, name FROM src", &["1|a", "2|b", "3|c", "4|d"]);
    converge(&db, "SELECT n, s FROM total", &["4|10"]);
    db.shutdown().expect("shutdown");
}

#[test]
fn starting_version_reads_from_that_version_on() {
    let dir = tempfile::tempdir().expect("dir");
    let t = dir.path().join("t");
    append(&t, batch(&[1], &["a"])); // version 0
    append(&t, batch(&[2], &["b"])); // version 1
    append(&t, batch(&[3], &["c"])); // version 2
    let db = memory_db();
    for (name, start) in [("from1", "1"), ("latest", "latest")] {
        db.execute(&format!(
            "CREATE SOURCE {name} (id BIGINT, name VARCHAR) WITH (connector = 'delta-lake', 'table_uri' = '{}', \
             'poll_interval_ms' = '50', 'starting_version' = '{start}')",
            t.display()
        ))
        .expect("create");
    }
    db.start().expect("start");
    converge(&db, "SELECT id, name FROM from1", &["2|b", "3|c"]);
    append(&t, batch(&[4], &["d"]));
    converge(&db, "SELECT id, name FROM from1", &["2|b", "3|c", "4|d"]);
    converge(&db, "SELECT id, name FROM latest", &["4|d"]);
    db.shutdown().expect("shutdown");
}

#[test]
fn sink_compacts_and_vacuums_when_asked() {
    let dir = tempfile::tempdir().expect("dir");
    let t = dir.path().join("t");
    let db = sink_db(
        &t.display().to_string(),
        ", 'compaction.every_commits' = '4', 'vacuum.every_commits' = '4', 'vacuum.retention_hours' = '0'",
    );
    db.start().expect("start");
    for i in 0..4 {
        db.insert("s", &batch(&[i], &["x"])).expect("insert");
        db.flush().expect("flush");
        wait_for("the commit", || db.sink_metrics("k").is_some_and(|m| m.rows_written > i as u64));
    }
    wait_for("compaction", || db.sink_metrics("k").is_some_and(|m| m.details.get("files_compacted") == Some(&4)));
    wait_for("vacuum", || db.sink_metrics("k").is_some_and(|m| m.details.contains_key("files_vacuumed")));
    db.shutdown().expect("shutdown");
    let ops: Vec<String> = history(&t).iter().filter_map(|c| c["operation"].as_str().map(String::from)).collect();
    assert!(ops.iter().any(|o| o == "OPTIMIZE"), "{ops:?}");
    assert_eq!(table_rows(&t, "id"), ["0", "1", "2", "3"]);
    // One data file left: the four small ones were compacted and then vacuumed away.
    let parquet = std::fs::read_dir(&t)
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
        .count();
    assert_eq!(parquet, 1);
}

#[test]
fn azure_tables_are_written_and_read_through_azurite() {
    let endpoint = std::env::var("LAMINAR_TEST_AZURITE_URL")
        .expect("LAMINAR_TEST_AZURITE_URL is not set: run scripts/test.sh (scripts/services.sh starts Azurite)");
    std::env::set_var("AZURE_STORAGE_USE_EMULATOR", "true");
    std::env::set_var("AZURITE_BLOB_STORAGE_URL", &endpoint);
    let container = std::env::var("LAMINAR_TEST_AZURE_CONTAINER").unwrap_or_else(|_| "laminar-test".into());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos();
    let table = format!("az://{container}/delta-{nanos}/events");
    let db = sink_db(&table, "");
    db.start().expect("start");
    db.insert("s", &batch(&[1, 2], &["a", "b"])).expect("insert");
    db.flush().expect("flush");
    wait_for("the first commit", || db.sink_metrics("k").is_some_and(|m| m.rows_written >= 2));
    db.insert("s", &batch(&[3], &["c"])).expect("insert");
    db.flush().expect("flush");
    wait_for("the second commit", || db.sink_metrics("k").is_some_and(|m| m.rows_written >= 3));
    db.shutdown().expect("shutdown");
    assert_eq!(s3_rows(&table, "id, name"), ["1|a", "2|b", "3|c"]);
    // The source reads it back from the same container.
    let reader = memory_db();
    reader
        .execute(&format!(
            "CREATE SOURCE src (id BIGINT, name VARCHAR) WITH (connector = 'delta-lake', 'table_uri' = '{table}')"
        ))
        .expect("source");
    reader.start().expect("start");
    converge(&reader, "SELECT id, name FROM src", &["1|a", "2|b", "3|c"]);
    reader.shutdown().expect("shutdown");
}

#[test]
fn gcs_tables_are_written_and_read_through_the_gcs_stand_in() {
    let endpoint = std::env::var("LAMINAR_TEST_GCS_URL")
        .expect("LAMINAR_TEST_GCS_URL is not set: run scripts/test.sh (scripts/services.sh starts the GCS stand-in)");
    // The emulator form of a service-account key: no OAuth, requests go to the stand-in.
    let key = serde_json::json!({
        "gcs_base_url": endpoint, "disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""
    });
    std::env::set_var("GOOGLE_SERVICE_ACCOUNT_KEY", key.to_string());
    let bucket = std::env::var("LAMINAR_TEST_GCS_BUCKET").unwrap_or_else(|_| "laminar-test".into());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos();
    let table = format!("gs://{bucket}/delta-{nanos}/events");
    let db = sink_db(&table, "");
    db.start().expect("start");
    db.insert("s", &batch(&[1, 2], &["a", "b"])).expect("insert");
    db.flush().expect("flush");
    wait_for("the first commit", || db.sink_metrics("k").is_some_and(|m| m.rows_written >= 2));
    // The source follows the table from the same bucket while the sink goes on.
    let reader = memory_db();
    reader
        .execute(&format!(
            "CREATE SOURCE src (id BIGINT, name VARCHAR) WITH (connector = 'delta-lake', 'table_uri' = '{table}', \
             'poll_interval_ms' = '100')"
        ))
        .expect("source");
    reader.start().expect("start");
    converge(&reader, "SELECT id, name FROM src", &["1|a", "2|b"]);
    db.insert("s", &batch(&[3], &["c"])).expect("insert");
    db.flush().expect("flush");
    wait_for("the second commit", || db.sink_metrics("k").is_some_and(|m| m.rows_written >= 3));
    db.shutdown().expect("shutdown");
    converge(&reader, "SELECT id, name FROM src", &["1|a", "2|b", "3|c"]);
    reader.shutdown().expect("shutdown");
    assert_eq!(s3_rows(&table, "id, name"), ["1|a", "2|b", "3|c"]);
}

#[test]
fn commit_interval_gathers_epochs_into_one_commit() {
    let dir = tempfile::tempdir().expect("dir");
    let t = dir.path().join("t");
    let db = sink_db(&t.display().to_string(), ", 'commit_interval_ms' = '600000'");
    db.start().expect("start");
    for i in 0..5 {
        db.insert("s", &batch(&[i], &["x"])).expect("insert");
        db.flush().expect("flush");
    }
    wait_for("five epochs", || db.sink_metrics("k").is_some_and(|m| m.rows_written >= 5));
    // Written, not yet committed: the interval has not passed.
    assert_eq!(db.sink_metrics("k").expect("metrics").details.get("delta_commits").copied().unwrap_or(0), 0);
    db.shutdown().expect("shutdown"); // commits what is held
    let commits = history(&t).into_iter().filter(|c| c.get("laminardb.epoch").is_some()).count();
    assert_eq!(commits, 1, "the five epochs in one commit");
    assert_eq!(table_rows(&t, "id"), ["0", "1", "2", "3", "4"]);
}

/// Two processes of a cluster (two databases in this test, joined over loopback) split an
/// unkeyed table's files between them, snapshot and new versions alike: each reads a part, and
/// process 0's view counts every row once.
#[test]
fn a_cluster_splits_the_files_of_a_table() {
    let dir = tempfile::tempdir().expect("dir");
    let t = dir.path().join("t");
    for f in 0..8i64 {
        let ids: Vec<i64> = (f * 10..f * 10 + 10).collect();
        append(&t, batch(&ids, &["x"; 10]));
    }
    let addresses: Vec<String> = (0..2).map(|_| format!("127.0.0.1:{}", common::free_port())).collect();
    let (appended_tx, appended_rx) = std::sync::mpsc::channel::<()>();
    let appended_rx = std::sync::Mutex::new(Some(appended_rx));
    let table = t.display().to_string();
    let nodes: Vec<_> = (0..2)
        .map(|p| {
            let (addresses, table) = (addresses.clone(), table.clone());
            let waiting = appended_rx.lock().expect("lock").take().filter(|_| p == 0);
            std::thread::spawn(move || {
                let config = laminardb::LaminarConfig {
                    workers: Some(1),
                    cluster: Some(laminardb::ClusterConfig::new(p, addresses)),
                    ..Default::default()
                };
                let db = Database::open_with_config(":memory:", config).expect("open");
                db.execute(&format!(
                    "CREATE SOURCE src (id BIGINT, name VARCHAR) WITH (connector = 'delta-lake', \
                     'table_uri' = '{table}', 'poll_interval_ms' = '50')"
                ))
                .expect("create");
                db.execute("CREATE MATERIALIZED VIEW totals AS SELECT COUNT(*) AS n, SUM(id) AS s FROM src")
                    .expect("view");
                db.start().expect("start");
                if let Some(appended) = waiting {
                    converge(&db, "SELECT n, s FROM totals", &["80|3160"]);
                    // A new version while the cluster runs: its file goes to one process.
                    appended.recv().expect("appended");
                    converge(&db, "SELECT n, s FROM totals", &["90|4005"]);
                }
                db.barrier().expect("barrier");
                let read = db.source_metrics("src").expect("metrics").total_events;
                db.shutdown().expect("shutdown");
                read
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    append(&t, batch(&(80..90).collect::<Vec<i64>>(), &["y"; 10]));
    appended_tx.send(()).expect("send");
    let read: Vec<u64> = nodes.into_iter().map(|h| h.join().expect("node")).collect();
    assert_eq!(read.iter().sum::<u64>(), 90, "every row read once: {read:?}");
    assert!(read.iter().all(|&n| n > 0), "both processes read files: {read:?}");
}
