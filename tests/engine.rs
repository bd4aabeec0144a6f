//! Integration tests of the embedding API: catalog persistence, DDL results and atomicity,
//! ingestion, subscriptions, lifecycle, metrics and topology.

mod common;

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use laminardb::{codes, Database, ExecuteResult, PipelineState, SubscriptionMode};

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("laminardb-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn ddl_results_carry_type_and_object() {
    let db = common::db_with_workers(1);
    let r = db.execute("CREATE SOURCE s (a INT)").expect("create");
    assert_eq!(r.result_type(), "ddl");
    match r {
        ExecuteResult::Ddl { ddl_type, ddl_object } => {
            assert_eq!(ddl_type, "CREATE SOURCE");
            assert_eq!(ddl_object, "s");
        }
        other => panic!("unexpected {other:?}"),
    }
    let r = db.execute("CREATE MATERIALIZED VIEW mv AS SELECT a, COUNT(*) AS n FROM s GROUP BY a").expect("mv");
    assert!(matches!(r, ExecuteResult::Ddl { ref ddl_type, .. } if ddl_type == "CREATE MATERIALIZED VIEW"));
    let r = db.execute("INSERT INTO s VALUES (1), (2), (2)").expect("insert");
    assert_eq!(r.result_type(), "rows_affected");
    assert!(matches!(r, ExecuteResult::RowsAffected(3)));
    assert_eq!(db.execute("SELECT * FROM s").expect("q").result_type(), "query");
    assert_eq!(db.execute("SHOW SOURCES").expect("show").result_type(), "metadata");
    let r = db.execute("DROP MATERIALIZED VIEW mv").expect("drop");
    assert!(
        matches!(r, ExecuteResult::Ddl { ref ddl_type, ref ddl_object } if ddl_type == "DROP MATERIALIZED VIEW" && ddl_object == "mv")
    );
}

#[test]
fn catalog_persists_and_directory_is_locked() {
    let dir = temp_dir("persist");
    {
        let db = Database::open(&dir).expect("open");
        db.execute("CREATE SOURCE trades (symbol VARCHAR, price DOUBLE, ts TIMESTAMP, WATERMARK FOR ts)").expect("src");
        db.execute("CREATE STREAM agg AS SELECT symbol, MAX(price) AS hi FROM trades GROUP BY symbol").expect("stream");
        db.execute("CREATE STREAM gone AS SELECT symbol FROM trades").expect("stream2");
        db.execute("DROP STREAM gone").expect("drop");
        let second = Database::open(&dir).err().expect("second open must fail while the first is open");
        assert_eq!(second.code(), codes::CONNECTION_IN_USE, "{second}");
        db.close().expect("close");
        assert!(db.execute("SHOW SOURCES").is_err_and(|e| e.code() == codes::CONNECTION_CLOSED));
    }
    let db = Database::open(&dir).expect("reopen");
    let sources = db.sources();
    assert_eq!(sources.len(), 1);
    assert_eq!(sources[0].name, "trades");
    assert_eq!(sources[0].watermark_column.as_deref(), Some("ts"));
    assert_eq!(sources[0].schema.fields().len(), 3);
    let streams = db.streams();
    assert_eq!(streams.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["agg"]);
    // the restored stream works
    db.start().expect("start");
    db.insert_json("trades", r#"{"symbol": "A", "price": 2.5, "ts": "2024-01-01T00:00:00"}"#).expect("insert");
    db.flush().expect("flush");
    assert_eq!(common::sorted_query(&db, "SELECT * FROM agg"), vec!["A|2.5"]);
    db.close().expect("close");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn failed_ddl_changes_nothing() {
    let dir = temp_dir("atomic");
    let db = Database::open(&dir).expect("open");
    db.execute("CREATE SOURCE s (a INT)").expect("src");
    let before = std::fs::read_to_string(dir.join("catalog.json")).expect("catalog");
    assert!(db.execute("CREATE STREAM bad AS SELECT nope FROM s").is_err());
    assert!(db.execute("CREATE SOURCE k (a INT) WITH (connector = 'kafkaa')").is_err());
    assert!(db.execute("CREATE SINK x AS SELECT * FROM s WITH (connector = 'nope')").is_err());
    assert_eq!(std::fs::read_to_string(dir.join("catalog.json")).expect("catalog"), before);
    assert_eq!(db.streams().len(), 0);
    assert_eq!(db.sources().len(), 1);
    assert_eq!(db.sinks().len(), 0);
    db.close().expect("close");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn connector_errors_are_typed() {
    let db = common::db_with_workers(1);
    let e = db.execute("CREATE SOURCE k (a INT) WITH (connector = 'nosuch', 'topic' = 'x')").expect_err("unknown");
    assert_eq!(e.code(), codes::CONNECTOR_CONFIG);
    assert!(e.to_string().contains("unknown source connector 'nosuch'"), "{e}");
    let e = db.execute("CREATE SOURCE k (a INT) WITH ('topic' = 'x')").expect_err("missing connector");
    assert_eq!(e.code(), codes::CONNECTOR_CONFIG);
    assert!(db.sources().is_empty());
}

#[test]
fn insert_is_all_or_nothing_with_column_errors() {
    let db = common::db_with_workers(1);
    db.execute("CREATE SOURCE s (id BIGINT NOT NULL, name VARCHAR, price DOUBLE)").expect("src");
    let bad = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true), Field::new("price", DataType::Utf8, true)])),
        vec![Arc::new(Int64Array::from(vec![1, 2])), Arc::new(StringArray::from(vec!["x", "y"]))],
    )
    .expect("batch");
    let e = db.insert("s", &bad).expect_err("type mismatch");
    assert_eq!(e.code(), codes::SCHEMA_MISMATCH);
    assert!(e.to_string().contains("'price'"), "{e}");
    let nulls = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)])),
        vec![Arc::new(Int64Array::from(vec![Some(1), None]))],
    )
    .expect("batch");
    let e = db.insert("s", &nulls).expect_err("null in NOT NULL");
    assert!(e.to_string().contains("'id'"), "{e}");
    assert!(db.insert_json("s", r#"{"id": 1, "price": "abc"}"#).is_err());
    assert!(db.insert("nosuch", &nulls).is_err_and(|e| e.code() == codes::TABLE_NOT_FOUND));
    assert_eq!(
        db.query("SELECT COUNT(*) FROM s")
            .expect("q")
            .to_batch()
            .expect("b")
            .column(0)
            .as_primitive::<Int64Type>()
            .value(0),
        0
    );
    // safe coercions: Int32 -> BIGINT, Int32 -> DOUBLE, missing nullable column -> NULL
    let ok = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("ID", DataType::Int32, false),
            Field::new("price", DataType::Int32, true),
        ])),
        vec![Arc::new(Int32Array::from(vec![7])), Arc::new(Int32Array::from(vec![3]))],
    )
    .expect("batch");
    assert_eq!(db.insert("s", &ok).expect("coerced"), 1);
    assert_eq!(common::sorted_query(&db, "SELECT * FROM s"), vec!["7|NULL|3.0"]);
    assert_eq!(db.insert_csv("s", "id,name,price\n8,b,1.5\n").expect("csv"), 1);
    assert_eq!(db.source_metrics("s").expect("m").total_events, 2);
}

#[test]
fn subscriptions_deliver_upserts_and_changelogs() {
    for workers in [1, 2] {
        let db = common::db_with_workers(workers);
        db.execute("CREATE SOURCE s (k VARCHAR, v BIGINT, PRIMARY KEY (k))").expect("src");
        db.execute("CREATE STREAM total AS SELECT SUM(v) AS t, COUNT(*) AS n FROM s").expect("stream");
        db.execute("CREATE STREAM changes AS SELECT k, v FROM s WHERE v > 0 EMIT CHANGES").expect("changes");
        let up = db.subscribe("total").expect("sub");
        let log = db.subscribe_with_mode("total", SubscriptionMode::Changelog).expect("log");
        let ch = db.subscribe("changes").expect("changes sub");
        assert_eq!(log.schema().field(2).name(), "_weight");
        db.start().expect("start");
        db.insert_json("s", r#"{"k": "a", "v": 5}"#).expect("i1");
        db.flush().expect("flush");
        db.insert_json("s", r#"{"k": "a", "v": 7}"#).expect("i2");
        db.flush().expect("flush");
        let first = up.next_timeout(Duration::from_secs(10)).expect("first");
        assert_eq!(common::rows(&[first.batch]), vec!["5|1"]);
        let second = up.next_timeout(Duration::from_secs(10)).expect("second");
        assert_eq!(common::rows(&[second.batch]), vec!["7|1"]);
        assert!(second.epoch > first.epoch);
        assert!(up.try_next().expect("try").is_none());
        let l1 = log.next_timeout(Duration::from_secs(10)).expect("l1");
        assert_eq!(common::rows(&[l1.batch]), vec!["5|1|1"]);
        let mut l2 = common::rows(&[log.next_timeout(Duration::from_secs(10)).expect("l2").batch]);
        l2.sort();
        assert_eq!(l2, vec!["5|1|-1", "7|1|1"]);
        let c1 = common::rows(&[ch.next_timeout(Duration::from_secs(10)).expect("c1").batch]);
        assert_eq!(c1, vec!["a|5|1"]);
        let mut c2 = common::rows(&[ch.next_timeout(Duration::from_secs(10)).expect("c2").batch]);
        c2.sort();
        assert_eq!(c2, vec!["a|5|-1", "a|7|1"]);
        let e = up.next_timeout(Duration::from_millis(30)).expect_err("timeout");
        assert_eq!(e.code(), codes::SUBSCRIPTION_TIMEOUT);
        db.shutdown().expect("shutdown");
        assert!(up.next().is_none(), "subscriptions end at shutdown");
        assert!(!up.is_active());
        assert_eq!(db.pipeline_state(), PipelineState::Stopped);
    }
}

#[test]
fn cancel_from_another_thread_unblocks_next() {
    let db = common::db_with_workers(1);
    db.execute("CREATE SOURCE s (v BIGINT)").expect("src");
    db.execute("CREATE STREAM f AS SELECT v FROM s").expect("stream");
    db.start().expect("start");
    let sub = db.subscribe("f").expect("sub");
    let cancel = sub.canceller();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        cancel.store(true, std::sync::atomic::Ordering::Release);
    });
    let started = std::time::Instant::now();
    assert!(sub.next().is_none());
    assert!(started.elapsed() < Duration::from_secs(5));
    t.join().expect("join");
    db.shutdown().expect("shutdown");
}

#[test]
fn streams_backfill_and_restart_recomputes() {
    let db = common::db_with_workers(2);
    db.execute("CREATE SOURCE s (k INT, v DOUBLE)").expect("src");
    let schema = db.schema("s").expect("schema");
    let batch = RecordBatch::try_new(
        schema,
        vec![Arc::new(Int32Array::from(vec![1, 1, 2])), Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0]))],
    )
    .expect("batch");
    db.insert("s", &batch).expect("before start");
    db.execute("CREATE STREAM a AS SELECT k, SUM(v) AS t FROM s GROUP BY k").expect("a");
    db.start().expect("start");
    db.insert("s", &batch).expect("after start");
    db.execute("CREATE STREAM late AS SELECT k, COUNT(*) AS n FROM s GROUP BY k").expect("late");
    db.flush().expect("flush");
    assert_eq!(common::sorted_query(&db, "SELECT * FROM a"), vec!["1|6.0", "2|6.0"]);
    assert_eq!(common::sorted_query(&db, "SELECT * FROM late"), vec!["1|4", "2|2"]);
    db.shutdown().expect("shutdown");
    db.insert("s", &batch).expect("while stopped");
    db.start().expect("restart");
    db.flush().expect("flush");
    assert_eq!(common::sorted_query(&db, "SELECT * FROM a"), vec!["1|9.0", "2|9.0"]);
    db.shutdown().expect("shutdown");
}

#[test]
fn metrics_topology_and_explain() {
    let db = common::db_with_workers(2);
    db.execute("CREATE SOURCE s (k INT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)")
        .expect("src");
    db.execute("CREATE STREAM f AS SELECT k, v FROM s WHERE v > 0").expect("f");
    db.execute("CREATE MATERIALIZED VIEW g AS SELECT k, SUM(v) AS t FROM f GROUP BY k").expect("g");
    let topo = db.topology();
    let nodes: Vec<(String, String)> = topo.nodes.iter().map(|n| (n.name.clone(), n.node_type.clone())).collect();
    assert_eq!(
        nodes,
        vec![("s".into(), "source".into()), ("f".into(), "stream".into()), ("g".into(), "stream".into())]
    );
    let edges: Vec<(String, String)> = topo.edges.iter().map(|e| (e.from_node.clone(), e.to_node.clone())).collect();
    assert_eq!(edges, vec![("s".into(), "f".into()), ("f".into(), "g".into())]);
    assert!(db.source_metrics("nope").is_none());
    assert_eq!(db.metrics().state, "Created");
    db.start().expect("start");
    let sub = db.subscribe("g").expect("sub");
    db.insert_json(
        "s",
        r#"[{"k":1,"v":5,"ts":"2024-01-01T00:00:10"},{"k":1,"v":-1,"ts":"2024-01-01T00:00:12"},{"k":2,"v":1,"ts":"2024-01-01T00:00:11"}]"#,
    )
    .expect("insert");
    db.flush().expect("flush");
    let _ = sub.next_timeout(Duration::from_secs(5)).expect("update");
    let m = db.metrics();
    assert_eq!(m.state, "Running");
    assert_eq!(m.total_events_ingested, 3);
    assert_eq!(m.total_batches, 1);
    assert_eq!(m.source_count, 1);
    assert_eq!(m.stream_count, 2);
    assert!(m.total_cycles >= 1);
    assert_eq!(m.total_events_emitted, 2);
    // watermark: max event time 00:00:12 minus 2 s, in ms since the epoch
    assert_eq!(m.pipeline_watermark, Some(1_704_067_210_000));
    let sm = db.source_metrics("s").expect("sm");
    assert_eq!(sm.total_events, 3);
    assert_eq!(sm.watermark, Some(1_704_067_210_000));
    let f = db.stream_metrics("f").expect("fm");
    assert_eq!(f.total_events, 2);
    assert_eq!(f.current_rows, 2);
    let g = db.stream_metrics("g").expect("gm");
    assert_eq!(g.current_rows, 2);
    let plan = db.query("EXPLAIN SELECT k, SUM(v) FROM f GROUP BY k").expect("explain");
    let text = plan.pretty();
    assert!(text.contains("IncrementalAggregate"), "{text}");
    assert!(text.contains("Filter: s.v > Int64(0)"), "{text}");
    db.shutdown().expect("shutdown");
}

#[test]
fn evaluation_errors_are_counted_not_fatal() {
    let db = common::db_with_workers(1);
    db.execute("CREATE SOURCE s (a INT, b INT)").expect("src");
    db.execute("CREATE STREAM d AS SELECT a / b AS q FROM s").expect("stream");
    db.execute("CREATE STREAM ok AS SELECT a FROM s").expect("stream");
    db.start().expect("start");
    db.insert_json("s", r#"{"a": 1, "b": 0}"#).expect("bad row");
    db.insert_json("s", r#"{"a": 4, "b": 2}"#).expect("good row");
    // one bad row in a batch costs only that row
    db.insert_json("s", r#"[{"a": 9, "b": 3}, {"a": 5, "b": 0}, {"a": 8, "b": 4}]"#).expect("mixed batch");
    db.execute("CREATE STREAM agg AS SELECT SUM(a / b) AS total, COUNT(*) AS n FROM s").expect("agg");
    db.flush().expect("flush");
    let m = db.stream_metrics("d").expect("m");
    assert_eq!(m.dropped, 2);
    assert!(m.last_error.as_deref().unwrap_or("").contains("Divide by zero"), "{:?}", m.last_error);
    assert_eq!(common::sorted_query(&db, "SELECT * FROM d"), vec!["2", "2", "3"]);
    assert_eq!(common::sorted_query(&db, "SELECT * FROM ok"), vec!["1", "4", "5", "8", "9"]);
    // the aggregate (backfilled) skips the two bad rows and keeps the other three
    assert_eq!(common::sorted_query(&db, "SELECT * FROM agg"), vec!["7|3"]);
    assert_eq!(db.stream_metrics("agg").expect("m").dropped, 2);
    assert_eq!(db.metrics().total_events_dropped, 4);
    db.shutdown().expect("shutdown");
}

#[test]
fn writer_watermarks_and_close() {
    let db = common::db_with_workers(1);
    db.execute("CREATE SOURCE s (v BIGINT, ts TIMESTAMP, WATERMARK FOR ts)").expect("src");
    let w = db.writer("s").expect("writer");
    assert_eq!(w.insert_json(r#"{"v": 1, "ts": "1970-01-01T00:00:01"}"#).expect("insert"), 1);
    assert_eq!(db.source_metrics("s").expect("m").watermark, Some(1000));
    w.watermark(5000).expect("watermark");
    w.watermark(4000).expect("never moves back");
    assert_eq!(db.source_metrics("s").expect("m").watermark, Some(5000));
    assert_eq!(db.pipeline_watermark(), Some(5000));
    w.flush().expect("flush");
    w.close();
    assert!(w.is_closed());
    let e = w.insert_json(r#"{"v": 2}"#).expect_err("closed");
    assert_eq!(e.code(), codes::WRITER_CLOSED);
    assert!(db.writer("nope").is_err());
}

#[test]
fn backpressure_bounds_rows_in_flight_and_loses_nothing() {
    let db = Database::open_with_config(
        ":memory:",
        laminardb::LaminarConfig { workers: Some(2), buffer_size: 200, ..Default::default() },
    )
    .expect("open");
    db.execute("CREATE SOURCE s (k BIGINT, v BIGINT)").expect("src");
    db.execute("CREATE STREAM agg AS SELECT k % 10 AS b, COUNT(*) AS n, SUM(v) AS t FROM s GROUP BY k % 10")
        .expect("agg");
    db.start().expect("start");
    let schema = db.schema("s").expect("schema");
    let mut max_pending = 0;
    for i in 0..200i64 {
        let k = Int64Array::from_iter_values(i * 50..(i + 1) * 50);
        let v = Int64Array::from_iter_values((0..50).map(|_| 1));
        let b = RecordBatch::try_new(schema.clone(), vec![Arc::new(k), Arc::new(v)]).expect("batch");
        db.insert("s", &b).expect("insert");
        let m = db.source_metrics("s").expect("metrics");
        assert_eq!(m.capacity, 200);
        max_pending = max_pending.max(m.pending);
    }
    // at most one batch beyond the capacity is ever in flight
    assert!(max_pending <= 250, "pending reached {max_pending}");
    db.flush().expect("flush");
    let m = db.source_metrics("s").expect("metrics");
    assert_eq!(m.pending, 0);
    assert!(!m.is_backpressured);
    assert_eq!(m.utilization, 0.0);
    let mut rows = common::sorted_query(&db, "SELECT n, t FROM agg");
    rows.dedup();
    assert_eq!(rows, vec!["1000|1000"]);
    db.shutdown().expect("shutdown");
}

/// An insert much larger than the buffer goes in slices, with backpressure between them, and
/// is still all or nothing: a null key in its last row rejects every row. Replacing every key
/// of an upsert source with one large insert retracts exactly the old rows.
#[test]
fn large_inserts_go_in_slices_and_stay_all_or_nothing() {
    let db = Database::open_with_config(
        ":memory:",
        laminardb::LaminarConfig { workers: Some(2), buffer_size: 20_000, ..Default::default() },
    )
    .expect("open");
    db.execute("CREATE SOURCE u (id BIGINT, k BIGINT, PRIMARY KEY (id))").expect("src");
    db.execute("CREATE STREAM c AS SELECT k, COUNT(*) AS n FROM u GROUP BY k").expect("stream");
    db.start().expect("start");
    let sub = db.subscribe_with_mode("c", SubscriptionMode::Changelog).expect("sub");
    let schema =
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true), Field::new("k", DataType::Int64, true)]));
    let batch = |ids: Vec<Option<i64>>, m: i64| {
        let k = Int64Array::from_iter(ids.iter().map(|i| i.map(|i| i % m)));
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(ids)), Arc::new(k)]).expect("batch")
    };
    let n = 50_000i64;
    let mut ids: Vec<Option<i64>> = (0..n).map(Some).collect();
    ids[n as usize - 1] = None;
    assert!(db.insert("u", &batch(ids, 7)).is_err(), "a null key fails the insert");
    db.flush().expect("flush");
    assert_eq!(common::sorted_query(&db, "SELECT COUNT(*) FROM u"), vec!["0"]);
    assert!(common::sorted_query(&db, "SELECT * FROM c").is_empty());
    assert!(sub.try_next().expect("sub").is_none(), "nothing of the failed insert was sent");

    db.insert("u", &batch((0..n).map(Some).collect(), 7)).expect("insert");
    db.flush().expect("flush");
    let want = |m: i64| -> Vec<String> {
        let mut v: Vec<String> = (0..m).map(|k| format!("{k}|{}", (0..n).filter(|i| i % m == k).count())).collect();
        v.sort();
        v
    };
    assert_eq!(common::sorted_query(&db, "SELECT k, n FROM c"), want(7));
    let mut epochs = 0;
    while sub.try_next().expect("sub").is_some() {
        epochs += 1;
    }
    assert!(epochs >= 2, "a 50,000-row insert into a 20,000-row buffer spans epochs, got {epochs}");
    db.insert("u", &batch((0..n).map(Some).collect(), 5)).expect("replace");
    db.flush().expect("flush");
    assert_eq!(common::sorted_query(&db, "SELECT k, n FROM c"), want(5));
    assert_eq!(common::sorted_query(&db, "SELECT COUNT(*) FROM u"), vec![n.to_string()]);
    db.shutdown().expect("shutdown");
}

#[test]
fn ad_hoc_query_subscriptions_are_temporary() {
    let db = common::db_with_workers(2);
    db.execute("CREATE SOURCE s (k VARCHAR, v BIGINT)").expect("src");
    db.insert_json("s", r#"{"k": "a", "v": 1}"#).expect("before");
    db.start().expect("start");
    let sub = db.subscribe_query("SELECT k, SUM(v) AS t FROM s GROUP BY k", SubscriptionMode::Upsert).expect("sub");
    let first = sub.next_timeout(Duration::from_secs(10)).expect("backfill");
    assert_eq!(common::rows(&[first.batch]), vec!["a|1"]);
    db.insert_json("s", r#"{"k": "a", "v": 5}"#).expect("after");
    let second = sub.next_timeout(Duration::from_secs(10)).expect("update");
    assert_eq!(common::rows(&[second.batch]), vec!["a|6"]);
    assert!(db.streams().is_empty(), "not in the catalog");
    assert!(db.topology().nodes.iter().all(|n| n.node_type != "stream"));
    assert!(db.subscribe_query("CREATE SOURCE x (a INT)", SubscriptionMode::Upsert).is_err());
    drop(sub);
    db.insert_json("s", r#"{"k": "b", "v": 1}"#).expect("after drop");
    db.flush().expect("flush");
    db.shutdown().expect("shutdown");
}

/// Streams that read streams run in one dataflow with them (sharing their operators). Their
/// results equal the same queries written against the sources; dropping a reader leaves the
/// streams it read running; a reader created while the pipeline runs (and so computed on its
/// own) is restored from a checkpoint into the shared dataflow at the next start.
#[test]
fn streams_reading_streams_share_operators_and_recover() {
    let dir = temp_dir("shared-streams");
    let insert = |db: &Database, from: i64, to: i64| {
        let schema = db.schema("orders").expect("schema");
        let ids: Vec<i64> = (from..to).collect();
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids.clone())),
                Arc::new(Int64Array::from(ids.iter().map(|i| i % 7).collect::<Vec<_>>())),
                Arc::new(Int64Array::from(ids.iter().map(|i| i % 11 * 3).collect::<Vec<_>>())),
            ],
        )
        .expect("orders");
        db.insert("orders", &batch).expect("insert");
        // Updates of earlier orders (same id, new amount) retract through every layer.
        if from >= 20 {
            let schema = db.schema("orders").expect("schema");
            let upd: Vec<i64> = (from - 20..from - 10).collect();
            let batch = RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(Int64Array::from(upd.clone())),
                    Arc::new(Int64Array::from(upd.iter().map(|i| i % 7).collect::<Vec<_>>())),
                    Arc::new(Int64Array::from(upd.iter().map(|i| 100 + i).collect::<Vec<_>>())),
                ],
            )
            .expect("updates");
            db.insert("orders", &batch).expect("update");
        }
        db.flush().expect("flush");
    };
    let same = |db: &Database, stream: &str, direct: &str| {
        assert_eq!(
            common::sorted_query(db, &format!("SELECT * FROM {stream}")),
            common::sorted_query(db, direct),
            "{stream}"
        );
    };
    let check = |db: &Database, with_late: bool| {
        same(db, "joined", "SELECT o.id, o.amount, c.name FROM orders o JOIN customers c ON o.k = c.k");
        same(
            db,
            "per_name",
            "SELECT c.name, COUNT(*) AS n, SUM(o.amount) AS amt FROM orders o JOIN customers c ON o.k = c.k \
             GROUP BY c.name",
        );
        same(
            db,
            "big_names",
            "SELECT name, n FROM (SELECT c.name, COUNT(*) AS n, SUM(o.amount) AS amt FROM orders o \
             JOIN customers c ON o.k = c.k GROUP BY c.name) WHERE amt > 200",
        );
        if with_late {
            same(
                db,
                "late_total",
                "SELECT COUNT(*) AS n, SUM(o.amount) AS amt FROM orders o JOIN customers c ON o.k = c.k",
            );
        }
    };
    {
        let db = Database::open(&dir).expect("open");
        db.execute("CREATE SOURCE orders (id BIGINT, k BIGINT, amount BIGINT, PRIMARY KEY (id))").expect("orders");
        db.execute("CREATE SOURCE customers (k BIGINT, name VARCHAR, PRIMARY KEY (k))").expect("customers");
        db.insert_json("customers", r#"[{"k":0,"name":"a"},{"k":1,"name":"b"},{"k":2,"name":"c"},{"k":3,"name":"a"}]"#)
            .expect("customers");
        db.execute("CREATE STREAM joined AS SELECT o.id, o.amount, c.name FROM orders o JOIN customers c ON o.k = c.k")
            .expect("joined");
        db.execute(
            "CREATE STREAM per_name AS SELECT name, COUNT(*) AS n, SUM(amount) AS amt FROM joined GROUP BY name",
        )
        .expect("per_name");
        db.execute("CREATE STREAM big_names AS SELECT name, n FROM per_name WHERE amt > 200").expect("big_names");
        db.execute("CREATE STREAM doomed AS SELECT name, MAX(amount) AS hi FROM joined GROUP BY name").expect("doomed");
        db.start().expect("start");
        insert(&db, 0, 40);
        check(&db, false);
        // A reader of a running stream, then a reader dropped: the others go on.
        db.execute("CREATE STREAM late_total AS SELECT COUNT(*) AS n, SUM(amount) AS amt FROM joined")
            .expect("late_total");
        db.execute("DROP STREAM doomed").expect("drop");
        insert(&db, 40, 80);
        db.insert_json("customers", r#"[{"k":1,"name":"z"},{"k":5,"name":"b"}]"#).expect("renames");
        db.flush().expect("flush");
        check(&db, true);
        db.checkpoint().expect("checkpoint");
        insert(&db, 80, 100);
        drop(db);
    }
    let db = Database::open(&dir).expect("reopen");
    db.start().expect("restart");
    db.flush().expect("flush");
    check(&db, true);
    insert(&db, 100, 150);
    db.insert_json("customers", r#"[{"k":6,"name":"c"}]"#).expect("more");
    db.flush().expect("flush");
    check(&db, true);
    // Every order but those of key 4 (no customer) is joined.
    assert_eq!(
        common::sorted_query(&db, "SELECT n FROM late_total"),
        common::sorted_query(&db, "SELECT COUNT(*) FROM orders WHERE k <> 4")
    );
    for m in db.all_stream_metrics() {
        assert_eq!(m.dropped, 0, "{}: {:?}", m.name, m.last_error);
    }
    db.shutdown().expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A window in GROUP BY may sit in a subquery or a CTE (Nexmark q7 and q5 in their usual form):
/// the results equal those of the same queries with the windowed part defined as a stream.
#[test]
fn windows_in_subqueries_and_ctes() {
    let db = common::db_with_workers(2);
    db.execute(
        "CREATE SOURCE bid (auction BIGINT, price BIGINT, date_time TIMESTAMP, \
         WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND)",
    )
    .expect("bid");
    let window = "SELECT window_start, window_end, MAX(price) AS maxprice FROM bid \
                  GROUP BY TUMBLE(date_time, INTERVAL '10' SECOND)";
    let counts = "SELECT auction, window_start, COUNT(*) AS n FROM bid \
                  GROUP BY auction, TUMBLE(date_time, INTERVAL '10' SECOND)";
    db.execute(&format!("CREATE STREAM maxima AS {window}")).expect("maxima");
    db.execute(&format!("CREATE STREAM counts AS {counts}")).expect("counts");
    let q7 = |w: &str| {
        format!(
            "SELECT b.auction, b.price, b.date_time FROM bid b JOIN {w} ON b.price = w.maxprice \
             WHERE b.date_time >= w.window_start AND b.date_time < w.window_end"
        )
    };
    db.execute(&format!("CREATE STREAM q7_nested AS {}", q7(&format!("({window}) w")))).expect("q7 nested");
    db.execute(&format!("CREATE STREAM q7_streams AS {}", q7("maxima w"))).expect("q7 streams");
    db.execute(&format!(
        "CREATE STREAM top_cte AS WITH c AS ({counts}) SELECT window_start, MAX(n) AS top FROM c GROUP BY window_start"
    ))
    .expect("cte");
    db.execute("CREATE STREAM top_streams AS SELECT window_start, MAX(n) AS top FROM counts GROUP BY window_start")
        .expect("top streams");
    let e = db
        .execute(&format!(
            "CREATE STREAM two AS SELECT * FROM ({window}) a JOIN ({window}) b ON a.maxprice = b.maxprice"
        ))
        .expect_err("two windows");
    assert!(e.to_string().contains("two windowed GROUP BYs"), "{e}");
    db.start().expect("start");
    let rows: Vec<String> = (0..3000)
        .map(|i| {
            let ms = i * 20;
            format!(
                r#"{{"auction": {}, "price": {}, "date_time": "2024-01-01T00:{:02}:{:02}.{:03}"}}"#,
                i % 13,
                i * 7919 % 1000,
                ms / 60_000,
                ms / 1000 % 60,
                ms % 1000
            )
        })
        .collect();
    for chunk in rows.chunks(500) {
        db.insert_json("bid", &chunk.join("\n")).expect("insert");
        db.flush().expect("flush");
    }
    let q7_rows = common::sorted_query(&db, "SELECT * FROM q7_nested");
    assert!(q7_rows.len() >= 6, "{q7_rows:?}");
    assert_eq!(q7_rows, common::sorted_query(&db, "SELECT * FROM q7_streams"));
    let top = common::sorted_query(&db, "SELECT * FROM top_cte");
    assert_eq!(top.len(), 6, "{top:?}");
    assert_eq!(top, common::sorted_query(&db, "SELECT * FROM top_streams"));
    db.shutdown().expect("shutdown");
}
