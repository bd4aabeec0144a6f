//! The `iceberg` sink against real Iceberg tables in a SQLite SQL catalog (the tables pyiceberg
//! uses), read back with iceberg-rust's scan: snapshots per epoch with the epoch recorded,
//! option errors at CREATE, concurrent writers on one table, upserts as position deletes, and
//! exactly-once snapshots (appends and upserts) across a pipeline killed with SIGKILL.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::cdc::memory_db;
use common::rows;
use futures::TryStreamExt;
use iceberg::io::FileIO;
use iceberg::spec::TableMetadata;
use iceberg::table::Table;
use iceberg::{Runtime, TableIdent};
use laminardb::{Database, LaminarConfig};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime")
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

/// The current metadata location of `ns.name` in the SQLite catalog `catalog` (`default`).
fn metadata_location(catalog: &Path, ns: &str, name: &str) -> String {
    let conn = rusqlite::Connection::open(catalog).expect("catalog");
    conn.query_row(
        "SELECT metadata_location FROM iceberg_tables \
         WHERE catalog_name = 'default' AND table_namespace = ?1 AND table_name = ?2",
        [ns, name],
        |r| r.get(0),
    )
    .expect("the table is in the catalog")
}

fn metadata(catalog: &Path, ns: &str, name: &str) -> TableMetadata {
    let location = metadata_location(catalog, ns, name);
    rt().block_on(TableMetadata::read_from(&FileIO::new_with_fs(), &location)).expect("metadata")
}

/// The table as iceberg-rust loads it.
async fn load_table(catalog: &Path, ns: &str, name: &str) -> Table {
    let location = metadata_location(catalog, ns, name);
    let io = FileIO::new_with_fs();
    let metadata = TableMetadata::read_from(&io, &location).await.expect("metadata");
    Table::builder()
        .identifier(TableIdent::from_strs([ns, name]).expect("ident"))
        .file_io(io)
        .metadata(metadata)
        .metadata_location(location)
        .runtime(Runtime::current())
        .build()
        .expect("table")
}

/// Every row of the table as `a|b|…` strings, sorted, read by iceberg-rust's scan (which
/// applies position deletes).
fn table_rows(catalog: &Path, ns: &str, name: &str) -> Vec<String> {
    let r = rt();
    r.block_on(async {
        let table = load_table(catalog, ns, name).await;
        if table.metadata().current_snapshot().is_none() {
            return Vec::new();
        }
        let scan = table.scan().select_all().build().expect("scan");
        let batches: Vec<RecordBatch> = scan.to_arrow().await.expect("read").try_collect().await.expect("batches");
        let mut out = rows(&batches);
        out.sort();
        out
    })
}

fn snapshot_epochs(metadata: &TableMetadata) -> Vec<u64> {
    let mut snaps: Vec<_> = metadata.snapshots().collect();
    snaps.sort_by_key(|s| s.sequence_number());
    snaps.iter().filter_map(|s| s.summary().additional_properties.get("laminardb.epoch")?.parse().ok()).collect()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sink_db(catalog: &Path, table: &str, extra: &str) -> Database {
    let db = memory_db();
    db.execute("CREATE SOURCE s (id BIGINT, name VARCHAR)").expect("source");
    db.execute(&format!(
        "CREATE SINK k AS SELECT id, name FROM s WHERE id > 0 WITH (connector = 'iceberg', \
         'catalog_uri' = 'sqlite:///{}', 'table' = '{table}'{extra})",
        catalog.display()
    ))
    .expect("sink");
    db
}

#[test]
fn sink_creates_the_table_and_appends_one_snapshot_per_epoch() {
    let dir = tempfile::tempdir().expect("dir");
    let catalog = dir.path().join("catalog.db");
    let db = sink_db(&catalog, "analytics.events", "");
    db.start().expect("start");
    db.insert("s", &batch(&[1, 2, -1], &["a", "b", "x"])).expect("insert");
    db.flush().expect("flush");
    wait_for("the first rows", || db.sink_metrics("k").is_some_and(|m| m.rows_written >= 2));
    db.insert("s", &batch(&[3], &["c"])).expect("insert");
    db.flush().expect("flush");
    wait_for("the second rows", || db.sink_metrics("k").is_some_and(|m| m.rows_written >= 3));
    let m = db.sink_metrics("k").expect("metrics");
    db.shutdown().expect("shutdown");
    assert_eq!(table_rows(&catalog, "analytics", "events"), ["1|a", "2|b", "3|c"]);
    let table = metadata(&catalog, "analytics", "events");
    let epochs = snapshot_epochs(&table);
    assert_eq!(epochs.len(), 2, "one snapshot per epoch with data: {epochs:?}");
    assert!(epochs[0] < epochs[1], "{epochs:?}");
    let current = table.current_snapshot().expect("snapshot");
    let summary = &current.summary().additional_properties;
    assert_eq!(summary.get("total-records").map(String::as_str), Some("3"), "{summary:?}");
    assert_eq!(summary.get("laminardb.app-id").map(String::as_str), Some("laminardb-k"));
    // pyiceberg's layout: <warehouse = the catalog's directory>/<namespace>.db/<table>.
    assert!(table.location().ends_with("/analytics.db/events"), "{}", table.location());
    assert_eq!(m.details.get("iceberg_commits"), Some(&2), "{:?}", m.details);
    assert!(db.metrics().total_events_emitted >= 3);
}

#[test]
fn sink_errors_name_the_key_and_leave_nothing_behind() {
    let db = memory_db();
    db.execute("CREATE SOURCE s (id BIGINT, name VARCHAR, span INTERVAL)").expect("source");
    let cat = "'catalog_uri' = 'sqlite:////tmp/laminar-iceberg-errors/catalog.db'";
    let cases = [
        ("SELECT id FROM s", ", 'table' = 'a.b'".to_string(), "catalog_uri"),
        ("SELECT id FROM s", format!(", {cat}"), "'table'"),
        ("SELECT id FROM s", format!(", {cat}, 'table' = 'nonamespace'"), "namespace.table"),
        ("SELECT id FROM s", format!(", {cat}, 'table' = 'a.b', 'write_mode' = 'merge'"), "write_mode"),
        ("SELECT id FROM s", format!(", {cat}, 'table' = 'a.b', 'catalog.type' = 'nessie'"), "nessie"),
        ("SELECT id FROM s", ", 'catalog_uri' = 'thrift://hms:9083', 'table' = 'a.b'".to_string(), "catalog.type"),
        ("SELECT id FROM s", format!(", {cat}, 'table' = 'a.b', 'comit_interval_ms' = '5'"), "comit_interval_ms"),
        ("SELECT name, COUNT(*) AS n FROM s GROUP BY name", format!(", {cat}, 'table' = 'a.b'"), "append"),
        ("SELECT id, span FROM s", format!(", {cat}, 'table' = 'a.b'"), "'span'"),
        ("SELECT id FROM s", format!(", {cat}, 'table' = 'a.b', 'merge_key_columns' = 'id'"), "upsert"),
        (
            "SELECT id FROM s",
            format!(", {cat}, 'table' = 'a.b', 'write_mode' = 'upsert', 'merge_key_columns' = 'nope'"),
            "'nope'",
        ),
    ];
    for (query, opts, needle) in cases {
        let e = db.execute(&format!("CREATE SINK k AS {query} WITH (connector = 'iceberg'{opts})")).expect_err(needle);
        assert!(e.to_string().contains(needle), "{needle}: {e}");
    }
    assert!(db.sinks().is_empty(), "a failed CREATE leaves nothing behind");
}

#[test]
fn concurrent_writers_to_one_table_keep_every_snapshot() {
    let dir = tempfile::tempdir().expect("dir");
    let catalog = dir.path().join("catalog.db");
    let dbs: Vec<Database> = (0..3).map(|_| sink_db(&catalog, "shared.t", "")).collect();
    // The first creates the table; the others find it.
    for db in &dbs {
        db.start().expect("start");
    }
    std::thread::scope(|s| {
        for (w, db) in dbs.iter().enumerate() {
            s.spawn(move || {
                for round in 0..10i64 {
                    let id = 1 + (w as i64) * 1000 + round;
                    db.insert("s", &batch(&[id], &[&format!("w{w}")])).expect("insert");
                    db.flush().expect("flush");
                }
                wait_for("the writer's rows", || db.sink_metrics("k").is_some_and(|m| m.rows_written >= 10));
            });
        }
    });
    for db in &dbs {
        db.shutdown().expect("shutdown");
    }
    let got = table_rows(&catalog, "shared", "t");
    assert_eq!(got.len(), 30, "{got:?}");
    let table = metadata(&catalog, "shared", "t");
    assert_eq!(table.snapshots().count(), 30, "one snapshot per epoch of each writer");
}

/// Live files of the current snapshot by content: (data files, position delete files).
fn file_counts(catalog: &Path, ns: &str, name: &str) -> (usize, usize) {
    rt().block_on(async {
        let table = load_table(catalog, ns, name).await;
        let snap = table.metadata().current_snapshot().expect("snapshot");
        let list = table.manifest_list_reader(snap).load().await.expect("manifest list");
        let (mut data, mut deletes) = (0, 0);
        for m in list.entries() {
            for e in m.load_manifest(table.file_io()).await.expect("manifest").entries().iter().filter(|e| e.is_alive())
            {
                match e.content_type() {
                    iceberg::spec::DataContentType::Data => data += 1,
                    iceberg::spec::DataContentType::PositionDeletes => deletes += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        (data, deletes)
    })
}

#[test]
fn upsert_merges_on_the_key_with_position_deletes() {
    let dir = tempfile::tempdir().expect("dir");
    let catalog = dir.path().join("catalog.db");
    // Epochs close only at flush(): the delete and the insert before the same flush land in
    // one epoch, hence one commit (the coordinator would otherwise close an epoch between them
    // now and then, making four commits of three).
    let db = Database::open_with_config(
        ":memory:",
        LaminarConfig { workers: Some(1), epoch_interval: Duration::from_secs(3600), ..Default::default() },
    )
    .expect("open");
    db.execute("CREATE SOURCE s (id BIGINT PRIMARY KEY, name VARCHAR)").expect("source");
    let sink = |name: &str, query: &str, extra: &str| {
        db.execute(&format!(
            "CREATE SINK {name} AS {query} WITH (connector = 'iceberg', 'catalog_uri' = 'sqlite:///{}', \
             'table' = 'up.{name}', 'write_mode' = 'upsert'{extra})",
            catalog.display()
        ))
        .expect("sink");
    };
    // The GROUP BY key, the same partitioned, and the source's primary key.
    sink("per_name", "SELECT name, COUNT(*) AS n FROM s GROUP BY name", "");
    sink("per_name_p", "SELECT name, COUNT(*) AS n FROM s GROUP BY name", ", 'partition_by' = 'truncate(1, name)'");
    sink("by_id", "SELECT id, name FROM s", "");
    db.start().expect("start");
    db.insert("s", &batch(&[1, 2, 3], &["a", "a", "b"])).expect("insert");
    db.flush().expect("flush");
    for t in ["per_name", "per_name_p"] {
        wait_for("the first counts", || {
            db.sink_metrics(t).is_some_and(|m| m.details.get("iceberg_commits") == Some(&1))
        });
        assert_eq!(table_rows(&catalog, "up", t), ["a|2", "b|1"], "{t}");
    }
    // Conflicting keys: 'a' changes its count, 'b' disappears, 'c' is new, then changes; id 3
    // is deleted, id 1 renamed (in the third commit 'a' loses id 1 and gains id 6: unchanged).
    db.delete("s", &batch(&[3], &["b"])).expect("delete");
    db.insert("s", &batch(&[4, 5], &["a", "c"])).expect("insert");
    db.flush().expect("flush");
    db.insert("s", &batch(&[1, 6], &["c", "a"])).expect("insert");
    db.flush().expect("flush");
    for t in ["per_name", "per_name_p", "by_id"] {
        wait_for("the last commit", || {
            db.sink_metrics(t).is_some_and(|m| m.details.get("iceberg_commits") == Some(&3))
        });
    }
    let m = db.sink_metrics("per_name").expect("metrics");
    db.shutdown().expect("shutdown");
    for t in ["per_name", "per_name_p"] {
        assert_eq!(table_rows(&catalog, "up", t), ["a|3", "c|2"], "{t}");
    }
    assert_eq!(table_rows(&catalog, "up", "by_id"), ["1|c", "2|a", "4|a", "5|c", "6|a"]);
    // Retired rows: a|2, b|1 (second commit), c|1 (third).
    assert_eq!(m.details.get("iceberg_retired_rows"), Some(&3), "{:?}", m.details);
    assert_eq!(m.details.get("iceberg_keys"), Some(&2), "{:?}", m.details);
    // Each commit adds its data files; the later ones also a position delete file.
    assert_eq!(file_counts(&catalog, "up", "per_name"), (3, 2));
    let md = metadata(&catalog, "up", "per_name");
    let mut snaps: Vec<_> = md.snapshots().collect();
    snaps.sort_by_key(|s| s.sequence_number());
    let ops: Vec<&str> = snaps.iter().map(|s| s.summary().operation.as_str()).collect();
    assert_eq!(ops, ["append", "overwrite", "overwrite"]);
    // Partitioned: a delete file per partition of the rows it retires ('a' and 'b', then 'c').
    assert_eq!(file_counts(&catalog, "up", "per_name_p").1, 3);
}

#[test]
fn upsert_retires_rows_another_writer_appends_meanwhile() {
    let dir = tempfile::tempdir().expect("dir");
    let catalog = dir.path().join("catalog.db");
    let upserter = memory_db();
    upserter.execute("CREATE SOURCE s (id BIGINT PRIMARY KEY, name VARCHAR)").expect("source");
    upserter
        .execute(&format!(
            "CREATE SINK k AS SELECT id, name FROM s WITH (connector = 'iceberg', 'catalog_uri' = 'sqlite:///{}', \
             'table' = 'shared.t', 'write_mode' = 'upsert')",
            catalog.display()
        ))
        .expect("sink");
    upserter.start().expect("start");
    let appender = sink_db(&catalog, "shared.t", "");
    appender.start().expect("start");
    let ids: Vec<i64> = (1..=40).collect();
    let names = |n: &str| vec![n.to_string(); ids.len()];
    // Both write the same keys in 15 rounds each; the upserter's commits keep losing races to
    // the appender's and are rebuilt on top of them.
    std::thread::scope(|s| {
        s.spawn(|| {
            for round in 0..15 {
                let n = names(&format!("b{round}"));
                appender.insert("s", &batch(&ids, &n.iter().map(String::as_str).collect::<Vec<_>>())).expect("insert");
                appender.flush().expect("flush");
            }
        });
        s.spawn(|| {
            for round in 0..15 {
                let n = names(&format!("a{round}"));
                upserter.insert("s", &batch(&ids, &n.iter().map(String::as_str).collect::<Vec<_>>())).expect("insert");
                upserter.flush().expect("flush");
            }
        });
    });
    wait_for("the appender", || appender.sink_metrics("k").is_some_and(|m| m.rows_written >= 600));
    appender.shutdown().expect("shutdown");
    // The upserter's last word on every key, after the appender stopped: one row per key.
    let n = names("final");
    upserter.insert("s", &batch(&ids, &n.iter().map(String::as_str).collect::<Vec<_>>())).expect("insert");
    upserter.flush().expect("flush");
    wait_for("the final upsert", || table_rows(&catalog, "shared", "t").iter().all(|r| r.ends_with("|final")));
    let m = upserter.sink_metrics("k").expect("metrics");
    upserter.shutdown().expect("shutdown");
    assert!(m.details.get("iceberg_commit_conflicts").is_some_and(|c| *c > 0), "no race was lost: {:?}", m.details);
    let got = table_rows(&catalog, "shared", "t");
    let want: Vec<String> = {
        let mut w: Vec<String> = ids.iter().map(|i| format!("{i}|final")).collect();
        w.sort();
        w
    };
    assert_eq!(got, want);
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

fn pipeline(catalog: &Path) -> String {
    format!(
        "CREATE SOURCE views (ad BIGINT, ts TIMESTAMP)
           WITH (connector = 'datagen', 'rows_per_second' = '20000', 'max_rows' = '200000', 'seed' = '1',
                 'fields.ad.max' = '30', 'fields.ts.start' = '2024-01-01T00:00:00Z', 'fields.ts.step' = '10',
                 'retention' = '0 rows');
         CREATE SINK raw AS SELECT ad, ts FROM views
           WITH (connector = 'iceberg', 'catalog_uri' = 'sqlite:///{0}', 'table' = 'lake.raw',
                 'delivery.guarantee' = 'exactly-once');
         CREATE SINK totals AS SELECT ad, COUNT(*) AS n, MAX(ts) AS last FROM views GROUP BY ad
           WITH (connector = 'iceberg', 'catalog_uri' = 'sqlite:///{0}', 'table' = 'lake.totals',
                 'write_mode' = 'upsert', 'delivery.guarantee' = 'exactly-once');",
        catalog.display()
    )
}

#[test]
fn exactly_once_iceberg_sink_survives_kills() {
    let clean = tempfile::tempdir().expect("dir");
    let crashy = tempfile::tempdir().expect("dir");
    for d in [&clean, &crashy] {
        std::fs::write(d.path().join("pipeline.sql"), pipeline(&d.path().join("catalog.db"))).expect("sql");
    }
    let out = run_cli(&clean.path().join("db"), &clean.path().join("pipeline.sql")).wait_with_output().expect("run");
    assert!(out.status.success(), "the clean run failed: {}", String::from_utf8_lossy(&out.stderr));
    let delays = [700u64, 1100, 900, 1300, 800, 1000].map(Duration::from_millis);
    let kills =
        common::run_with_kills(|| run_cli(&crashy.path().join("db"), &crashy.path().join("pipeline.sql")), delays);
    assert!(kills >= 3, "only {kills} kills before the pipeline finished");
    let count = |rows: Vec<String>| {
        let mut m: BTreeMap<String, i64> = BTreeMap::new();
        rows.into_iter().for_each(|r| *m.entry(r).or_default() += 1);
        m
    };
    let want = count(table_rows(&clean.path().join("catalog.db"), "lake", "raw"));
    assert_eq!(want.values().sum::<i64>(), 200_000);
    let got = count(table_rows(&crashy.path().join("catalog.db"), "lake", "raw"));
    assert_eq!(got.values().sum::<i64>(), 200_000, "rows lost or written twice after {kills} kills");
    assert!(got == want, "the rows differ from the clean run");
    let epochs = snapshot_epochs(&metadata(&crashy.path().join("catalog.db"), "lake", "raw"));
    let mut sorted = epochs.clone();
    sorted.dedup();
    assert_eq!(sorted, epochs, "no epoch committed twice, in order");
    // The upserted totals: one row per ad, equal to the clean run's.
    let want = table_rows(&clean.path().join("catalog.db"), "lake", "totals");
    assert_eq!(want.len(), 31, "{want:?}");
    assert_eq!(table_rows(&crashy.path().join("catalog.db"), "lake", "totals"), want);
}
