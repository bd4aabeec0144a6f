//! Integration tests of the connector framework through the embedding API: `WITH` validation at
//! CREATE, datagen, file source and sink round trips (read back independently), dead letters,
//! sink capabilities, start-time connection errors, backpressure and metrics.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use laminardb::{codes, Database, LaminarConfig};

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn source_state(db: &Database, name: &str) -> String {
    db.source_metrics(name).and_then(|m| m.connector_state).unwrap_or_default()
}

/// Every JSON line of every committed file in `dir` (an independent reader: serde_json).
fn read_json_dir(dir: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .expect("read")
                .lines()
                .map(|l| serde_json::from_str(l).expect("json line"))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn with_options_are_validated_at_create_and_leave_the_catalog_unchanged() {
    let dir = tempfile::tempdir().expect("dir");
    let db = Database::open(dir.path()).expect("open");
    let cases = [
        (
            "CREATE SOURCE s (a BIGINT) WITH (connector = 'nope')",
            "unknown source connector 'nope' (available: datagen, delta-lake, file, kafka, mysql-cdc, postgres-cdc, python, rabbitmq, websocket)",
        ),
        ("CREATE SOURCE s (a BIGINT) WITH (connector = 'file')", "requires option 'path'"),
        ("CREATE SOURCE s (a BIGINT) WITH (connector = 'file', 'path' = '/x', 'paht' = '1')", "did you mean 'path'"),
        ("CREATE SOURCE s (a BIGINT) WITH (connector = 'file', 'path' = '/x', 'watch' = 'sometimes')", "'watch'"),
        ("CREATE SOURCE s (a BIGINT) WITH (connector = 'file', 'path' = '/x', 'format' = 'xml')", "'format'"),
        ("CREATE SOURCE s (a BIGINT) WITH (connector = 'datagen', 'rows_per_second' = '-1')", "'rows_per_second'"),
        ("CREATE SOURCE s (a BIGINT) WITH (connector = 'file', 'path' = '/x', 'format' = 'debezium')", "PRIMARY KEY"),
        ("CREATE SOURCE s (a BIGINT, b BIGINT) WITH (connector = 'file', 'path' = '/x', 'format' = 'raw')", "raw"),
        ("CREATE SOURCE s (a BIGINT) WITH ('path' = '/x')", "'connector' is required"),
    ];
    for (sql, expected) in cases {
        let err = db.execute(sql).expect_err(sql);
        assert_eq!(err.code(), codes::CONNECTOR_CONFIG, "{sql}: {err}");
        assert!(err.to_string().contains(expected), "{sql}: {err}");
        assert!(db.sources().is_empty(), "{sql} left a catalog entry");
    }
    db.execute("CREATE SOURCE t (a BIGINT)").expect("plain source");
    let sink_cases = [
        (
            "CREATE SINK k AS SELECT * FROM t WITH (connector = 'rabbit')",
            "unknown sink connector 'rabbit' (available: blackhole, console, delta-lake, file, iceberg, kafka, python, rabbitmq, websocket)",
        ),
        ("CREATE SINK k AS SELECT * FROM t WITH (connector = 'file')", "requires option 'path'"),
        (
            "CREATE SINK k AS SELECT * FROM t WITH (connector = 'file', 'path' = '/x', 'rollover.rows' = 'many')",
            "'rollover.rows'",
        ),
        (
            "CREATE SINK k AS SELECT a, COUNT(*) AS n FROM t GROUP BY a WITH (connector = 'file', 'path' = '/x')",
            "append-only, but its query produces updates",
        ),
    ];
    for (sql, expected) in sink_cases {
        let err = db.execute(sql).expect_err(sql);
        assert_eq!(err.code(), codes::CONNECTOR_CONFIG, "{sql}: {err}");
        assert!(err.to_string().contains(expected), "{sql}: {err}");
        assert!(db.sinks().is_empty(), "{sql} left a catalog entry");
    }
    drop(db);
    let catalog = std::fs::read_to_string(dir.path().join("catalog.json")).expect("catalog");
    assert!(!catalog.contains("CREATE SINK") && !catalog.contains("connector"), "{catalog}");
}

#[test]
fn datagen_feeds_an_aggregate_and_finishes() {
    let db = common::db_with_workers(2);
    db.execute(
        "CREATE SOURCE g (id BIGINT, k VARCHAR, v DOUBLE) WITH (connector = 'datagen', 'rows_per_second' = '0', \
         'max_rows' = '20000', 'seed' = '3', 'fields.id.kind' = 'sequence', 'fields.k.values' = 'a,b,c,d')",
    )
    .expect("source");
    db.execute("CREATE MATERIALIZED VIEW agg AS SELECT k, COUNT(*) AS n, SUM(id) AS s FROM g GROUP BY k").expect("mv");
    db.start().expect("start");
    wait_for("datagen to finish", Duration::from_secs(30), || source_state(&db, "g") == "finished");
    db.flush().expect("flush");
    let total = common::sorted_query(&db, "SELECT SUM(n), SUM(s) FROM agg");
    assert_eq!(total, vec![format!("20000|{}", 19_999i64 * 20_000 / 2)]);
    assert_eq!(common::sorted_query(&db, "SELECT COUNT(*) FROM agg"), vec!["4"]);
    let m = db.source_metrics("g").expect("metrics");
    assert_eq!(m.total_events, 20_000);
    assert_eq!(m.dead_letters, 0);
    db.shutdown().expect("shutdown");
    assert_eq!(source_state(&db, "g"), "finished");
}

#[test]
fn file_source_to_file_sink_round_trip_with_dead_letters() {
    let input = tempfile::tempdir().expect("in");
    let output = tempfile::tempdir().expect("out");
    std::fs::write(
        input.path().join("a.jsonl"),
        "{\"id\": 1, \"name\": \"x\", \"price\": 10.5}\n{\"id\": 2, \"name\": \"y\", \"price\": 99}\nnot json\n\n{\"id\": \"three\"}\n",
    )
    .expect("write a");
    std::fs::write(input.path().join("b.jsonl"), "{\"id\": 3, \"name\": \"z\", \"price\": 1000}\n").expect("b");
    std::fs::write(input.path().join(".hidden.jsonl"), "{\"id\": 99}\n").expect("hidden");
    let db = common::db_with_workers(2);
    db.execute(&format!(
        "CREATE SOURCE orders (id BIGINT NOT NULL, name VARCHAR, price DOUBLE) WITH (connector = 'file', 'path' = '{}')",
        input.path().display()
    ))
    .expect("source");
    db.execute(&format!(
        "CREATE SINK big AS SELECT id, name, price * 2 AS doubled FROM orders WHERE price > 50 \
         WITH (connector = 'file', 'path' = '{}', 'rollover.interval_ms' = '0')",
        output.path().display()
    ))
    .expect("sink");
    db.start().expect("start");
    wait_for("the files to be read", Duration::from_secs(30), || source_state(&db, "orders") == "finished");
    db.flush().expect("flush");
    let mut rows = read_json_dir(output.path());
    rows.sort_by_key(|r| r["id"].as_i64());
    assert_eq!(
        rows,
        vec![
            serde_json::json!({"id": 2, "name": "y", "doubled": 198.0}),
            serde_json::json!({"id": 3, "name": "z", "doubled": 2000.0}),
        ]
    );
    // No half-written file is visible: every file has its final name.
    assert!(std::fs::read_dir(output.path())
        .expect("dir")
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().starts_with('.')));
    let errors = common::sorted_query(&db, "SELECT position, payload FROM orders_errors ORDER BY position");
    assert_eq!(errors, vec!["a.jsonl:3|not json", "a.jsonl:5|{\"id\": \"three\"}"]);
    let m = db.source_metrics("orders").expect("metrics");
    assert_eq!((m.total_events, m.dead_letters), (3, 2));
    assert!(db.metrics().total_events_dropped >= 2);
    let sm = db.sink_metrics("big").expect("sink metrics");
    assert_eq!(sm.rows_written, 2);
    assert!(sm.epochs_committed >= 1);
    assert_eq!(db.metrics().total_events_emitted, 2);
    db.shutdown().expect("shutdown");
    assert_eq!(db.sink_metrics("big").expect("m").state, "stopped");
    // Topology: source -> sink.
    let topo = db.topology();
    assert!(topo.edges.iter().any(|e| e.from_node == "orders" && e.to_node == "big"));
}

#[test]
fn csv_and_parquet_files_and_a_dead_letter_file() {
    let input = tempfile::tempdir().expect("in");
    let output = tempfile::tempdir().expect("out");
    let dlq = input.path().join("..").join(format!("dlq-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&dlq);
    std::fs::write(input.path().join("x.csv"), "price,id,ignored\n1.5,1,q\nbad,2,q\n2.5,3,q\n").expect("csv");
    let db = common::db_with_workers(1);
    db.execute(&format!(
        "CREATE SOURCE c (id BIGINT, price DOUBLE) WITH (connector = 'file', 'path' = '{}', 'format' = 'csv', \
         'dlq' = 'file:{}')",
        input.path().display(),
        dlq.display()
    ))
    .expect("source");
    db.execute(&format!(
        "CREATE SINK pq AS SELECT id, price FROM c WITH (connector = 'file', 'path' = '{}', 'format' = 'parquet')",
        output.path().display()
    ))
    .expect("sink");
    db.start().expect("start");
    wait_for("csv", Duration::from_secs(30), || source_state(&db, "c") == "finished");
    db.shutdown().expect("shutdown");
    // Read the Parquet output with the parquet crate, independently of the engine.
    let mut ids = Vec::new();
    for e in std::fs::read_dir(output.path()).expect("dir").flatten() {
        let f = std::fs::File::open(e.path()).expect("open");
        let r =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).expect("pq").build().expect("r");
        for b in r {
            let b = b.expect("batch");
            let col = b.column(0).as_any().downcast_ref::<arrow::array::Int64Array>().expect("i64");
            ids.extend(col.values().iter().copied());
        }
    }
    ids.sort();
    assert_eq!(ids, vec![1, 3]);
    let letters = std::fs::read_to_string(&dlq).expect("dlq file");
    let v: serde_json::Value = serde_json::from_str(letters.lines().next().expect("line")).expect("json");
    assert_eq!(v["position"], "x.csv:3");
    assert_eq!(v["payload"], "bad,2,q");
    assert_eq!(v["source"], "c");
    let _ = std::fs::remove_file(&dlq);
    // Parquet files are a source too.
    let db2 = common::db_with_workers(1);
    db2.execute(&format!(
        "CREATE SOURCE p (price DOUBLE, id BIGINT) WITH (connector = 'file', 'path' = '{}', 'format' = 'parquet')",
        output.path().display()
    ))
    .expect("pq source");
    db2.start().expect("start");
    wait_for("parquet", Duration::from_secs(30), || source_state(&db2, "p") == "finished");
    assert_eq!(common::sorted_query(&db2, "SELECT id, price FROM p"), vec!["1|1.5", "3|2.5"]);
    db2.shutdown().expect("shutdown");
}

#[test]
fn debezium_files_drive_an_upsert_source() {
    let input = tempfile::tempdir().expect("in");
    std::fs::write(
        input.path().join("changes.json"),
        concat!(
            "{\"op\":\"c\",\"after\":{\"id\":1,\"qty\":5}}\n",
            "{\"op\":\"c\",\"after\":{\"id\":2,\"qty\":7}}\n",
            "{\"op\":\"u\",\"before\":{\"id\":1,\"qty\":5},\"after\":{\"id\":1,\"qty\":6}}\n",
            "{\"op\":\"d\",\"before\":{\"id\":2,\"qty\":7}}\n",
            "{\"op\":\"?\"}\n",
        ),
    )
    .expect("write");
    let db = common::db_with_workers(2);
    db.execute(&format!(
        "CREATE SOURCE inv (id BIGINT PRIMARY KEY, qty BIGINT) WITH (connector = 'file', 'path' = '{}', 'format' = 'debezium')",
        input.path().display()
    ))
    .expect("source");
    db.execute("CREATE MATERIALIZED VIEW total AS SELECT SUM(qty) AS q, COUNT(*) AS n FROM inv").expect("mv");
    db.start().expect("start");
    wait_for("changes", Duration::from_secs(30), || source_state(&db, "inv") == "finished");
    db.flush().expect("flush");
    assert_eq!(common::sorted_query(&db, "SELECT id, qty FROM inv"), vec!["1|6"]);
    assert_eq!(common::sorted_query(&db, "SELECT q, n FROM total"), vec!["6|1"]);
    assert_eq!(db.source_metrics("inv").expect("m").dead_letters, 1);
    db.shutdown().expect("shutdown");
}

#[test]
fn connection_problems_surface_at_start_with_the_path() {
    let db = common::db_with_workers(1);
    db.execute("CREATE SOURCE s (a BIGINT) WITH (connector = 'file', 'path' = '/no/such/dir/anywhere')")
        .expect("create");
    let err = db.start().expect_err("start must fail");
    assert_eq!(err.code(), codes::CONNECTOR_UNAVAILABLE, "{err}");
    assert!(err.to_string().contains("/no/such/dir/anywhere"), "{err}");
    assert_ne!(db.pipeline_state(), laminardb::PipelineState::Running);
}

#[test]
fn a_slow_sink_backpressures_the_source_and_memory_stays_bounded() {
    let db = Database::open_with_config(
        ":memory:",
        LaminarConfig { workers: Some(1), buffer_size: 2_000, ..Default::default() },
    )
    .expect("open");
    db.execute(
        "CREATE SOURCE g (id BIGINT, v DOUBLE) WITH (connector = 'datagen', 'rows_per_second' = '0', 'batch_size' = '500', \
         'retention' = '1000 rows')",
    )
    .expect("source");
    db.execute("CREATE SINK slow AS SELECT * FROM g WITH (connector = 'blackhole', 'delay_ms' = '20')").expect("sink");
    db.start().expect("start");
    let mut saw_backpressure = false;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        let m = db.source_metrics("g").expect("m");
        assert!(m.pending <= m.capacity + 500, "pending {} over capacity {}", m.pending, m.capacity);
        if m.is_backpressured && m.connector_state.as_deref() == Some("backpressured") {
            saw_backpressure = true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(saw_backpressure, "the source never reported backpressure");
    let m = db.source_metrics("g").expect("m");
    // 20 ms per epoch bounds throughput far below what datagen could produce unthrottled.
    assert!(m.total_events < 400_000, "{} rows passed a sink that takes ~25 epochs/s", m.total_events);
    db.shutdown().expect("shutdown");
    let sm = db.sink_metrics("slow").expect("sink");
    assert_eq!(sm.rows_written, m.total_events.max(sm.rows_written));
}

#[test]
fn console_sink_accepts_updating_queries_and_sinks_can_come_and_go_while_running() {
    let out = tempfile::tempdir().expect("out");
    let db = common::db_with_workers(2);
    db.execute("CREATE SOURCE t (k VARCHAR, v BIGINT)").expect("src");
    db.execute(
        "CREATE SINK c AS SELECT k, SUM(v) AS s FROM t GROUP BY k WITH (connector = 'console', 'target' = 'stderr')",
    )
    .expect("console accepts changelogs");
    db.start().expect("start");
    db.execute("INSERT INTO t VALUES ('a', 1), ('b', 2)").expect("insert");
    db.flush().expect("flush");
    // Created while running: sees existing rows, then new ones.
    db.execute(&format!(
        "CREATE SINK f AS SELECT k, v FROM t WITH (connector = 'file', 'path' = '{}', 'changelog' = 'true', 'rollover.interval_ms' = '0')",
        out.path().display()
    ))
    .expect("file sink");
    db.execute("INSERT INTO t VALUES ('c', 3)").expect("insert");
    db.flush().expect("flush");
    let mut rows = read_json_dir(out.path());
    rows.sort_by_key(|r| r["k"].as_str().map(String::from));
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[2], serde_json::json!({"k": "c", "v": 3, "op": "insert"}));
    assert!(db.sink_metrics("c").expect("c").rows_written >= 3);
    db.execute("DROP SINK f").expect("drop");
    assert!(db.sink_metrics("f").is_none());
    db.shutdown().expect("shutdown");
}

#[test]
fn nexmark_tables_agree() {
    let db = common::db_with_workers(2);
    for (t, cols) in [
        ("person", "id BIGINT, name VARCHAR, date_time TIMESTAMP"),
        ("auction", "id BIGINT, seller BIGINT, category BIGINT, date_time TIMESTAMP"),
        ("bid", "auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP"),
    ] {
        db.execute(&format!(
            "CREATE SOURCE {t} ({cols}) WITH (connector = 'datagen', 'flavour' = 'nexmark', 'nexmark.table' = '{t}', \
             'rows_per_second' = '0', 'max_rows' = '50000', 'seed' = '1')"
        ))
        .expect("nexmark source");
    }
    db.start().expect("start");
    for t in ["person", "auction", "bid"] {
        wait_for(t, Duration::from_secs(30), || source_state(&db, t) == "finished");
    }
    db.flush().expect("flush");
    assert_eq!(common::sorted_query(&db, "SELECT COUNT(*) FROM person"), vec!["1000"]);
    assert_eq!(common::sorted_query(&db, "SELECT COUNT(*) FROM auction"), vec!["3000"]);
    assert_eq!(common::sorted_query(&db, "SELECT COUNT(*) FROM bid"), vec!["46000"]);
    // Every seller exists among persons (Nexmark q3-style reference integrity).
    let orphans = common::sorted_query(
        &db,
        "SELECT COUNT(*) FROM auction a LEFT JOIN person p ON a.seller = p.id WHERE p.id IS NULL",
    );
    assert_eq!(orphans, vec!["0"]);
    db.shutdown().expect("shutdown");
}

#[test]
fn a_transient_failure_is_retried_with_backoff_and_reported_in_metrics() {
    let root = tempfile::tempdir().expect("root");
    let dir = root.path().join("incoming");
    std::fs::create_dir(&dir).expect("dir");
    std::fs::write(dir.join("1.jsonl"), "{\"id\": 1}\n").expect("write");
    let db = common::db_with_workers(1);
    db.execute(&format!(
        "CREATE SOURCE s (id BIGINT) WITH (connector = 'file', 'path' = '{}', 'watch' = 'true', 'poll_interval_ms' = '10')",
        dir.display()
    ))
    .expect("source");
    db.start().expect("start");
    wait_for("the first file", Duration::from_secs(30), || db.source_metrics("s").is_some_and(|m| m.total_events == 1));
    // The directory goes away: the source retries (and says so) instead of failing.
    std::fs::remove_dir_all(&dir).expect("remove");
    wait_for("retrying", Duration::from_secs(30), || source_state(&db, "s") == "retrying");
    let m = db.source_metrics("s").expect("m");
    assert!(m.last_error.as_deref().is_some_and(|e| e.contains("incoming")), "{:?}", m.last_error);
    // It comes back: the source resumes and reads the new file.
    std::fs::create_dir(&dir).expect("dir again");
    std::fs::write(dir.join("2.jsonl"), "{\"id\": 2}\n{\"id\": 3}\n").expect("write");
    wait_for("recovery", Duration::from_secs(30), || db.source_metrics("s").is_some_and(|m| m.total_events == 3));
    wait_for("running", Duration::from_secs(30), || source_state(&db, "s") == "running");
    db.flush().expect("flush");
    assert_eq!(common::sorted_query(&db, "SELECT id FROM s"), vec!["1", "2", "3"]);
    db.shutdown().expect("shutdown");
    assert_eq!(source_state(&db, "s"), "stopped");
}

#[test]
fn show_create_returns_the_statement() {
    let db = common::db_with_workers(1);
    db.execute("CREATE SOURCE g (id BIGINT) WITH (connector = 'datagen', 'max_rows' = '10')").expect("source");
    db.execute("CREATE SINK out AS SELECT id FROM g WITH (connector = 'blackhole')").expect("sink");
    let r = common::sorted_query(&db, "SHOW CREATE SINK out");
    assert_eq!(r, vec!["out|SINK|CREATE SINK out AS SELECT id FROM g WITH (connector = 'blackhole')"]);
    let r = common::sorted_query(&db, "SHOW CREATE g");
    assert!(r[0].starts_with("g|SOURCE|CREATE SOURCE g (id BIGINT)"), "{r:?}");
    let err = db.execute("SHOW CREATE STREAM g").expect_err("kind mismatch");
    assert!(err.to_string().contains("is a source, not a stream"), "{err}");
    assert!(db.execute("SHOW CREATE nothing").is_err());
}

#[test]
fn unreadable_columnar_files_are_dead_letters_and_the_rest_still_arrives() {
    let input = tempfile::tempdir().expect("in");
    std::fs::write(input.path().join("a-broken.parquet"), b"PAR1 this is not parquet").expect("write");
    let good = tempfile::tempdir().expect("good");
    // A real Parquet file written by the parquet crate.
    {
        use std::sync::Arc;
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
            "id",
            arrow::datatypes::DataType::Int64,
            false,
        )]));
        let batch = arrow::array::RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(arrow::array::Int64Array::from(vec![7, 8, 9]))],
        )
        .expect("batch");
        let f = std::fs::File::create(input.path().join("b-good.parquet")).expect("create");
        let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, None).expect("writer");
        w.write(&batch).expect("write");
        w.close().expect("close");
    }
    std::fs::write(good.path().join("x.avro"), b"Obj\x01 truncated header").expect("avro");
    let db = common::db_with_workers(1);
    db.execute(&format!(
        "CREATE SOURCE p (id BIGINT) WITH (connector = 'file', 'path' = '{}', 'format' = 'parquet')",
        input.path().display()
    ))
    .expect("parquet source");
    db.execute(&format!(
        "CREATE SOURCE a (id BIGINT) WITH (connector = 'file', 'path' = '{}', 'format' = 'avro')",
        good.path().display()
    ))
    .expect("avro source");
    db.start().expect("start");
    wait_for("files", Duration::from_secs(30), || {
        source_state(&db, "p") == "finished" && source_state(&db, "a") == "finished"
    });
    db.flush().expect("flush");
    assert_eq!(common::sorted_query(&db, "SELECT id FROM p"), vec!["7", "8", "9"]);
    let errors = common::sorted_query(&db, "SELECT position, reason FROM p_errors");
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with("a-broken.parquet|not a readable Parquet file"), "{errors:?}");
    let errors = common::sorted_query(&db, "SELECT position, reason FROM a_errors");
    assert!(errors.len() == 1 && errors[0].starts_with("x.avro|not a readable Avro container file"), "{errors:?}");
    assert_eq!(db.metrics().total_events_dropped, 2);
    db.shutdown().expect("shutdown");
}
