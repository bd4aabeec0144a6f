//! The `postgres-cdc` source against a real Postgres 15 with logical replication (started by
//! `scripts/services.sh`; its URI in `LAMINAR_TEST_POSTGRES_URI`): the snapshot and streamed
//! inserts, updates (also of the key), deletes and truncates for every common column type,
//! compared row by row; a stop and restart from a checkpoint with changes made while down; the
//! LSN acknowledged to the server only after a checkpoint, and keepalives moving an idle source
//! on; a column added upstream while running; aggregates and joins of CDC tables kept equal to
//! the same SQL run upstream through random changes; and the errors that say how to fix things.

mod common;

use std::time::{Duration, Instant};

use common::cdc::{converge, detail, killed_pipeline_restarts_exactly, memory_db, KillTest};
use common::postgres::{psql, psql_rows, session, unique, uri, uri_as};
use laminardb::{Database, LaminarConfig, LaminarError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Waits until `f` holds; the panic shows what `show` says last.
fn wait_until<T: std::fmt::Debug>(what: &str, timeout: Duration, mut show: impl FnMut() -> T, ok: impl Fn(&T) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = show();
        if ok(&got) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last: {got:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The options of a source reading `table` through its own slot and publication (`tag`).
fn cdc(table: &str, tag: &str) -> String {
    format!(
        "connector = 'postgres-cdc', 'connection' = '{}', 'table' = 'public.{table}', 'slot.name' = '{tag}', \
         'publication.name' = '{tag}'",
        uri()
    )
}

/// Drops what a test made upstream (slots first, once their sessions are gone: they hold WAL).
fn cleanup(tags: &[&str], tables: &[&str]) {
    for s in tags {
        for _ in 0..100 {
            let state = psql(&format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{s}'"));
            match state.trim() {
                "" => break,
                "f" => {
                    psql(&format!("SELECT pg_drop_replication_slot('{s}')"));
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
    for p in tags {
        psql(&format!("DROP PUBLICATION IF EXISTS {p}"));
    }
    for t in tables {
        psql(&format!("DROP TABLE IF EXISTS {t}"));
    }
}

const TYPES_DDL: &str = "id BIGINT, qty INT, price DECIMAL(12, 3), name VARCHAR, ok BOOLEAN, day DATE, \
                         at TIMESTAMP, at_tz TIMESTAMPTZ, doc VARCHAR, raw BYTEA, score DOUBLE";

#[test]
fn snapshot_then_inserts_updates_deletes_and_truncates_of_every_common_type() {
    let t = unique("types");
    psql(&format!(
        "CREATE TABLE {t} (id BIGINT PRIMARY KEY, qty INT, price NUMERIC(12,3), name TEXT, ok BOOLEAN, day DATE, \
         at TIMESTAMP, at_tz TIMESTAMPTZ, doc JSONB, raw BYTEA, score DOUBLE PRECISION);
         INSERT INTO {t} VALUES (1, 3, 12.5, 'ann', true, '2026-12-06', '2026-12-06 10:00:00', '2026-12-06 10:00:00+02', '{{\"a\": [1, 2]}}', '\\x00ff', 0.1), (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL), (3, -7, -0.001, 'd''arc', false, '1999-01-31', '1999-01-31 23:59:59.123456', '1999-01-31 23:59:59.5-05', '[]', '\\x', -1e300);"
    ));
    let tag = unique("types_cdc");
    let db = memory_db();
    db.execute(&format!("CREATE SOURCE src ({TYPES_DDL}) WITH ({})", cdc(&t, &tag))).expect("create");
    db.start().expect("start");
    let all = "SELECT * FROM src";
    let snapshot = [
        "1|3|12.500|ann|true|2026-12-06|2026-12-06T10:00:00|2026-12-06T08:00:00Z|{\"a\": [1, 2]}|00ff|0.1",
        "2|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL",
        "3|-7|-0.001|d'arc|false|1999-01-31|1999-01-31T23:59:59.123456|1999-02-01T04:59:59.500Z|[]||-1e300",
    ];
    converge(&db, all, || snapshot.iter().map(|s| s.to_string()).collect(), "the snapshot");
    assert_eq!(detail(&db, "src", "snapshot_rows"), 3);

    // Streaming: inserts, updates of values and of the key, deletes, in several transactions.
    psql(&format!(
        "INSERT INTO {t} VALUES (4, 40, 4.25, 'new', true, '2026-01-01', '2026-01-01 00:00:00', '2026-01-01 00:00:00+00', '{{\"k\": \"v\"}}', '\\xdeadbeef', 2.5);
         UPDATE {t} SET qty = 30, name = 'ann b', doc = '{{\"a\": []}}', at_tz = '2026-12-06 12:00:00+00' WHERE id = 1;
         UPDATE {t} SET id = 20, name = 'moved' WHERE id = 2;
         DELETE FROM {t} WHERE id = 3;
         BEGIN; INSERT INTO {t} (id, name) VALUES (5, 'five'); UPDATE {t} SET name = 'five!' WHERE id = 5; DELETE FROM {t} WHERE id = 4; COMMIT;"
    ));
    let streamed = [
        "1|30|12.500|ann b|true|2026-12-06|2026-12-06T10:00:00|2026-12-06T12:00:00Z|{\"a\": []}|00ff|0.1",
        "20|NULL|NULL|moved|NULL|NULL|NULL|NULL|NULL|NULL|NULL",
        "5|NULL|NULL|five!|NULL|NULL|NULL|NULL|NULL|NULL|NULL",
    ];
    converge(&db, all, || streamed.iter().map(|s| s.to_string()).collect(), "the streamed changes");
    assert!(detail(&db, "src", "transactions") >= 5, "{:?}", db.source_metrics("src").map(|m| m.details));

    // TRUNCATE empties the source; rows after it arrive.
    psql(&format!("TRUNCATE {t};\nINSERT INTO {t} (id, name) VALUES (7, 'after')"));
    converge(&db, "SELECT id, name FROM src", || vec!["7|after".to_string()], "after TRUNCATE");
    assert_eq!(detail(&db, "src", "connected"), 1);
    db.shutdown().expect("shutdown");
    cleanup(&[&tag], &[&t]);
}

#[test]
fn restart_from_a_checkpoint_resumes_from_its_lsn_and_acknowledges_only_what_is_durable() {
    let t = unique("accounts");
    let slot = unique("restart_cdc");
    psql(&format!("CREATE TABLE {t} (id INT PRIMARY KEY, grp INT NOT NULL, v BIGINT NOT NULL)"));
    psql(&format!("INSERT INTO {t} SELECT i, i % 7, i * 10 FROM generate_series(1, 500) i"));
    let dir = tempfile::tempdir().expect("dir");
    let open = || {
        Database::open_with_config(
            dir.path().join("db").to_str().expect("path"),
            LaminarConfig { workers: Some(1), checkpoint_interval_ms: Some(3_600_000), ..Default::default() },
        )
        .expect("open")
    };
    let oracle = || psql_rows(&format!("SELECT grp, count(*), sum(v) FROM {t} GROUP BY grp"));
    let view = "SELECT grp, n, s FROM totals";
    let confirmed = || {
        psql(&format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"))
            .trim()
            .to_string()
    };
    {
        let db = open();
        db.execute(&format!("CREATE SOURCE src (id INT, grp INT, v BIGINT) WITH ({})", cdc(&t, &slot)))
            .expect("source");
        db.execute("CREATE MATERIALIZED VIEW totals AS SELECT grp, COUNT(*) AS n, SUM(v) AS s FROM src GROUP BY grp")
            .expect("view");
        db.start().expect("start");
        converge(&db, view, oracle, "the snapshot's totals");
        psql(&format!(
            "UPDATE {t} SET v = v + 1 WHERE id % 3 = 0;
             DELETE FROM {t} WHERE id > 480;
             INSERT INTO {t} SELECT i, i % 5, i FROM generate_series(1001, 1100) i"
        ));
        converge(&db, view, oracle, "streamed totals");
        // Not acknowledged before a checkpoint holds it; acknowledged after.
        let before = confirmed();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(confirmed(), before, "nothing acknowledged without a checkpoint");
        assert_eq!(detail(&db, "src", "acked_lsn"), 0);
        db.checkpoint().expect("checkpoint");
        let lsn_text = |l: i64| format!("{:X}/{:X}", (l as u64) >> 32, (l as u64) & 0xFFFF_FFFF);
        wait_until(
            "the server to hear of the checkpointed LSN",
            Duration::from_secs(20),
            || (confirmed(), lsn_text(detail(&db, "src", "acked_lsn"))),
            |(c, acked)| c == acked && c != &before,
        );
        let lsn = detail(&db, "src", "lsn");
        // Keepalives move an idle source on: WAL written for other tables.
        let other = unique("other");
        psql(&format!("CREATE TABLE {other} (x INT);\nINSERT INTO {other} SELECT generate_series(1, 1000)"));
        wait_until(
            "keepalives to advance the position",
            Duration::from_secs(30),
            || detail(&db, "src", "lsn"),
            |l| *l > lsn,
        );
        psql(&format!("DROP TABLE {other}"));
        db.close().expect("close");
    }
    // Changes while nothing runs.
    psql(&format!(
        "UPDATE {t} SET grp = 6 WHERE id < 50;
         DELETE FROM {t} WHERE id BETWEEN 100 AND 150;
         INSERT INTO {t} VALUES (5000, 1, 1), (5001, 2, 2)"
    ));
    {
        let db = open();
        db.start().expect("restart");
        converge(&db, view, oracle, "totals after the restart");
        assert_eq!(detail(&db, "src", "snapshot_rows"), 0, "no new snapshot after a restart");
        converge(&db, "SELECT COUNT(*) FROM src", || psql_rows(&format!("SELECT count(*) FROM {t}")), "row count");
        db.close().expect("close");
    }
    cleanup(&[&slot], &[&t]);
}

#[test]
fn a_column_added_upstream_is_reported_and_streaming_goes_on() {
    let t = unique("evolving");
    psql(&format!("CREATE TABLE {t} (id INT PRIMARY KEY, name TEXT)"));
    psql(&format!("INSERT INTO {t} VALUES (1, 'a')"));
    let tag = unique("evolving_cdc");
    let db = memory_db();
    db.execute(&format!("CREATE SOURCE src (id INT, name VARCHAR) WITH ({})", cdc(&t, &tag))).expect("create");
    db.start().expect("start");
    converge(&db, "SELECT id, name FROM src", || vec!["1|a".into()], "snapshot");
    psql(&format!("INSERT INTO {t} VALUES (2, 'b')"));
    converge(&db, "SELECT id, name FROM src", || vec!["1|a".into(), "2|b".into()], "before the change");
    psql(&format!("ALTER TABLE {t} ADD COLUMN extra INT;\nINSERT INTO {t} VALUES (3, 'c', 42);\nUPDATE {t} SET name = 'A', extra = 1 WHERE id = 1"));
    converge(&db, "SELECT id, name FROM src", || vec!["1|A".into(), "2|b".into(), "3|c".into()], "after the change");
    let m = db.source_metrics("src").expect("metrics");
    assert_eq!(m.details.get("schema_changes").copied(), Some(1), "{:?}", m.details);
    let last = m.last_error.unwrap_or_default();
    assert!(last.contains("added 'extra'") && last.contains("streaming the declared columns"), "{last}");
    assert_eq!(m.connector_state.as_deref(), Some("running"));
    db.shutdown().expect("shutdown");
    cleanup(&[&tag], &[&t]);
}

#[test]
fn aggregates_and_joins_of_cdc_tables_stay_equal_to_the_same_sql_upstream() {
    let (users, orders) = (unique("users"), unique("orders"));
    psql(&format!(
        "CREATE TABLE {users} (id INT PRIMARY KEY, name TEXT NOT NULL, tier INT NOT NULL);
         CREATE TABLE {orders} (order_id INT PRIMARY KEY, customer_id INT NOT NULL, total BIGINT NOT NULL, status TEXT NOT NULL);
         INSERT INTO {users} SELECT i, 'u' || i, i % 3 FROM generate_series(1, 100) i;
         INSERT INTO {orders} SELECT i, 1 + i % 120, i, 'new' FROM generate_series(1, 300) i"
    ));
    let (tu, to) = (unique("join_users"), unique("join_orders"));
    let db = memory_db();
    db.execute(&format!("CREATE SOURCE pg_users (id INT, name VARCHAR, tier INT) WITH ({})", cdc(&users, &tu)))
        .expect("users");
    db.execute(&format!(
        "CREATE SOURCE pg_orders (order_id INT, customer_id INT, total BIGINT, status VARCHAR) WITH ({})",
        cdc(&orders, &to)
    ))
    .expect("orders");
    db.execute(
        "CREATE MATERIALIZED VIEW enriched AS SELECT o.order_id, o.total, o.status, u.name AS customer_name \
         FROM pg_orders o LEFT JOIN pg_users u ON o.customer_id = u.id",
    )
    .expect("join");
    db.execute(
        "CREATE MATERIALIZED VIEW by_tier AS SELECT u.tier, COUNT(*) AS n, SUM(o.total) AS s \
         FROM pg_orders o JOIN pg_users u ON o.customer_id = u.id GROUP BY u.tier",
    )
    .expect("aggregate");
    db.start().expect("start");
    let join_oracle = || {
        psql_rows(&format!(
            "SELECT o.order_id, o.total, o.status, u.name FROM {orders} o LEFT JOIN {users} u ON o.customer_id = u.id"
        ))
    };
    let agg_oracle = || {
        psql_rows(&format!(
            "SELECT u.tier, count(*), sum(o.total) FROM {orders} o JOIN {users} u ON o.customer_id = u.id GROUP BY u.tier"
        ))
    };
    let join_sql = "SELECT order_id, total, status, customer_name FROM enriched";
    let agg_sql = "SELECT tier, n, s FROM by_tier";
    converge(&db, join_sql, join_oracle, "join after the snapshots");
    // Random changes on both sides, in transactions of up to 10, through one psql session.
    let mut rng = StdRng::seed_from_u64(8);
    let mut upstream = session();
    let mut changes = 0;
    while changes < 10_000 {
        let n = rng.random_range(1..=10);
        let mut tx = String::from("BEGIN;");
        for _ in 0..n {
            let id = rng.random_range(1..=150);
            let sql = match rng.random_range(0..10) {
                0 => format!("DELETE FROM {users} WHERE id = {id};"),
                1 => format!(
                    "INSERT INTO {users} VALUES ({id}, 'n{id}', {}) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name;",
                    id % 3
                ),
                2 => format!("UPDATE {users} SET tier = {} WHERE id = {id};", rng.random_range(0..3)),
                3 => format!("DELETE FROM {orders} WHERE order_id = {};", rng.random_range(1..=400)),
                4 | 5 => format!(
                    "INSERT INTO {orders} VALUES ({}, {id}, {}, 'new') ON CONFLICT (order_id) DO UPDATE SET total = EXCLUDED.total;",
                    rng.random_range(1..=400),
                    rng.random_range(1..1000)
                ),
                6 => format!("UPDATE {orders} SET customer_id = {id} WHERE order_id = {};", rng.random_range(1..=400)),
                7 => format!("UPDATE {orders} SET status = 'shipped' WHERE order_id = {};", rng.random_range(1..=400)),
                8 => format!("UPDATE {users} SET id = {} WHERE id = {id};", 1000 + changes),
                _ => format!("UPDATE {orders} SET total = total + 1 WHERE customer_id = {id};"),
            };
            tx.push_str(&sql);
            changes += 1;
        }
        tx.push_str("COMMIT;");
        upstream.send(&tx);
    }
    upstream.finish();
    converge(&db, join_sql, join_oracle, "LEFT JOIN after 10,000 changes");
    converge(&db, agg_sql, agg_oracle, "aggregate over a join after 10,000 changes");
    db.shutdown().expect("shutdown");
    cleanup(&[&tu, &to], &[&users, &orders]);
}

#[test]
fn errors_name_the_problem_and_how_to_fix_it() {
    let t = unique("errs");
    let nokey = unique("nokey");
    psql(&format!(
        "CREATE TABLE {t} (id INT PRIMARY KEY, name TEXT, at TIMESTAMPTZ);
         CREATE TABLE {nokey} (a INT, b TEXT)"
    ));
    let db = memory_db();
    // CREATE time: options.
    let create = |sql: &str| db.execute(sql).expect_err(sql);
    let e = create("CREATE SOURCE s1 (id INT) WITH (connector = 'postgres-cdc', 'table' = 'public.x')");
    assert!(matches!(e, LaminarError::Connector { .. }) && e.to_string().contains("'connection'"), "{e}");
    let e = create(&format!("CREATE SOURCE s1 (id INT) WITH (connector = 'postgres-cdc', 'connection' = '{}')", uri()));
    assert!(e.to_string().contains("'table'"), "{e}");
    let e = create(&format!("CREATE SOURCE s1 (id INT) WITH ({}, 'slot' = 'x')", cdc(&t, "e0")));
    assert!(e.to_string().contains("'slot'") && e.to_string().contains("slot.name"), "{e}");
    let e = create(
        "CREATE SOURCE s1 (id INT) WITH (connector = 'postgres-cdc', 'connection' = 'mysql://a@b/c', 'table' = 't')",
    );
    assert!(e.to_string().contains("postgresql://"), "{e}");
    assert!(db.source_metrics("s1").is_none(), "no half-made source");

    // start(): each problem on its own database, so one failure does not hide another.
    let start_err = |ddl: &str| {
        let db = memory_db();
        db.execute(ddl).expect("create");
        let e = db.start().expect_err(ddl);
        let _ = db.shutdown();
        e.to_string()
    };
    let e = start_err(&format!("CREATE SOURCE s (id INT, nope VARCHAR) WITH ({})", cdc(&t, "e1")));
    assert!(e.contains("column 'nope'") && e.contains("its columns: id, name, at"), "{e}");
    let e = start_err(&format!("CREATE SOURCE s (id INT, name BIGINT) WITH ({})", cdc(&t, "e2")));
    assert!(e.contains("column 'name'") && e.contains("text") && e.contains("VARCHAR"), "{e}");
    let e = start_err(&format!("CREATE SOURCE s (id INT, at DATE) WITH ({})", cdc(&t, "e3")));
    assert!(e.contains("column 'at'") && e.contains("timestamp with time zone"), "{e}");
    let e = start_err(&format!("CREATE SOURCE s (a INT, b VARCHAR) WITH ({})", cdc(&nokey, "e4")));
    assert!(e.contains("no primary key") && e.contains("REPLICA IDENTITY FULL"), "{e}");
    let e = start_err(&format!("CREATE SOURCE s (name VARCHAR) WITH ({})", cdc(&t, "e5")));
    assert!(e.contains("column 'id'") && e.contains("key"), "{e}");
    let e = start_err(&format!("CREATE SOURCE s (id INT) WITH ({})", cdc("missing_table", "e6")));
    assert!(e.contains("does not exist"), "{e}");
    let e = start_err(&format!(
        "CREATE SOURCE s (id INT) WITH (connector = 'postgres-cdc', 'connection' = '{}', 'table' = '{t}')",
        uri_as("plain", "plain")
    ));
    assert!(e.contains("REPLICATION"), "{e}");
    let e = start_err(&format!(
        "CREATE SOURCE s (id INT) WITH (connector = 'postgres-cdc', 'connection' = '{}', 'table' = '{t}')",
        uri_as("laminar", "wrong")
    ));
    assert!(e.contains("password") && !e.contains("wrong"), "{e}");
    let e = start_err(&format!(
        "CREATE SOURCE s (id INT) WITH (connector = 'postgres-cdc', 'connection' = 'postgres://a:b@127.0.0.1:1/x', 'table' = '{t}')"
    ));
    assert!(e.contains("127.0.0.1:1") && !e.contains(":b@"), "{e}");
    // With REPLICA IDENTITY FULL a table without a key works (rows are their own key).
    psql(&format!("ALTER TABLE {nokey} REPLICA IDENTITY FULL;\nINSERT INTO {nokey} VALUES (1, 'x'), (2, 'y')"));
    let e7 = unique("errs_full");
    let ok = memory_db();
    ok.execute(&format!("CREATE SOURCE s (a INT, b VARCHAR) WITH ({})", cdc(&nokey, &e7))).expect("create");
    ok.start().expect("start");
    converge(&ok, "SELECT a, b FROM s", || vec!["1|x".into(), "2|y".into()], "full identity snapshot");
    psql(&format!("DELETE FROM {nokey} WHERE a = 1;\nUPDATE {nokey} SET b = 'z' WHERE a = 2"));
    converge(&ok, "SELECT a, b FROM s", || vec!["2|z".into()], "full identity changes");
    ok.shutdown().expect("shutdown");
    cleanup(&[&e7], &[&t, &nokey]);
}

#[test]
fn a_pipeline_killed_mid_stream_restarts_without_loss_or_duplicates() {
    let t = unique("killed");
    let tag = unique("killed_cdc");
    psql(&format!("CREATE TABLE {t} (id INT PRIMARY KEY, grp INT NOT NULL, v BIGINT NOT NULL)"));
    psql(&format!("INSERT INTO {t} SELECT i, i % 10, i FROM generate_series(1, 2000) i"));
    killed_pipeline_restarts_exactly(KillTest {
        source: cdc(&t, &tag),
        session: &session,
        delete: &|id| format!("DELETE FROM {t} WHERE id = {id};"),
        regroup: &|id, g| format!("UPDATE {t} SET grp = {g} WHERE id = {id};"),
        upsert: &|id, g, v| {
            format!("INSERT INTO {t} VALUES ({id}, {g}, {v}) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v;")
        },
        totals: &|| psql_rows(&format!("SELECT grp, count(*), sum(v) FROM {t} GROUP BY grp")),
    });
    cleanup(&[&tag], &[&t]);
}

#[test]
fn tls_per_sslmode_and_every_password_method() {
    let ca = std::env::var("LAMINAR_TEST_POSTGRES_CA").expect("LAMINAR_TEST_POSTGRES_CA (scripts/services.sh)");
    let t = unique("secure");
    let tag = unique("secure_cdc");
    psql(&format!(
        "CREATE TABLE {t} (id INT PRIMARY KEY, name TEXT);
         INSERT INTO {t} VALUES (1, 'one'), (2, 'two');
         GRANT SELECT ON {t} TO tlsonly, md5user;
         CREATE PUBLICATION {tag} FOR TABLE {t}"
    ));
    let source = |connection: &str, slot: &str| {
        format!(
            "CREATE SOURCE s (id INT, name VARCHAR) WITH (connector = 'postgres-cdc', 'connection' = '{connection}', \
             'table' = '{t}', 'slot.name' = '{slot}', 'publication.name' = '{tag}')"
        )
    };
    let works = |connection: String, slot: &str| {
        let db = memory_db();
        db.execute(&source(&connection, slot)).expect("create");
        db.start().unwrap_or_else(|e| panic!("{connection}: {e}"));
        converge(&db, "SELECT id, name FROM s", || vec!["1|one".into(), "2|two".into()], &connection);
        db.shutdown().expect("shutdown");
    };
    let fails = |connection: String| {
        let db = memory_db();
        db.execute(&source(&connection, &format!("{tag}_x"))).expect("create");
        let e = db.start().expect_err(&connection).to_string();
        let _ = db.shutdown();
        e
    };
    let tls_user = uri_as("tlsonly", "tlsonly");
    // The server's certificate checked against the test CA, host name included.
    works(format!("{tls_user}?sslmode=verify-full&sslrootcert={ca}"), &format!("{tag}_1"));
    // Encrypted without checking the certificate (libpq's `require`).
    works(format!("{tls_user}?sslmode=require"), &format!("{tag}_2"));
    // `prefer` (the default) takes TLS when offered: this user may only connect over TLS.
    works(tls_user.clone(), &format!("{tag}_3"));
    let e = fails(format!("{tls_user}?sslmode=disable"));
    assert!(e.contains("pg_hba.conf"), "{e}");
    // Without the CA the certificate is not trusted.
    let e = fails(format!("{tls_user}?sslmode=verify-full"));
    assert!(e.contains("TLS") && e.to_lowercase().contains("certificate"), "{e}");
    // MD5 password authentication.
    works(uri_as("md5user", "md5user"), &format!("{tag}_4"));
    let e = fails(uri_as("md5user", "nope"));
    assert!(e.contains("password authentication failed"), "{e}");
    let tags: Vec<String> = (1..=4).map(|i| format!("{tag}_{i}")).collect();
    let mut all: Vec<&str> = tags.iter().map(String::as_str).collect();
    all.push(&tag);
    cleanup(&all, &[&t]);
}
