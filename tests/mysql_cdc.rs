//! The `mysql-cdc` source against a real MariaDB 10.11 with a row-based binary log (started by
//! `scripts/services.sh`; its URI in `LAMINAR_TEST_MYSQL_URI`): the snapshot and streamed
//! inserts, updates (also of the key), deletes and truncates for every common column type,
//! with the snapshot (text protocol) and the binary log giving identical rows; a restart from a
//! checkpoint (binlog file, offset and GTID) with changes made while down; a pipeline killed
//! mid-stream; a column added upstream; the spec's cross-database join (MariaDB orders with
//! Postgres users) kept equal to the same join computed from both databases through random
//! changes; TLS; and the errors that say how to fix things.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cdc::{converge, detail, killed_pipeline_restarts_exactly, memory_db, KillTest};
use common::mysql::{mysql, mysql_rows, session, uri, uri_as};
use common::postgres::{psql, psql_rows};
use laminardb::{Database, LaminarConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn unique(prefix: &str) -> String {
    common::postgres::unique(prefix)
}

fn cdc(table: &str) -> String {
    format!("connector = 'mysql-cdc', 'connection' = '{}', 'table' = '{table}'", uri())
}

const TYPES_TABLE: &str = "id BIGINT PRIMARY KEY, qty INT, big BIGINT UNSIGNED, price DECIMAL(12,3), \
     name VARCHAR(50), ok TINYINT(1), day DATE, at DATETIME(6), at_ts TIMESTAMP(6) NULL, doc JSON, raw VARBINARY(16), \
     score DOUBLE, status ENUM('new','it''s shipped'), tags SET('a','b','c'), span TIME(6), yr YEAR, tiny TINYINT UNSIGNED";
const TYPES_DDL: &str = "id BIGINT, qty INT, big DECIMAL(20, 0), price DECIMAL(12, 3), name VARCHAR, ok BOOLEAN, \
     day DATE, at TIMESTAMP, at_ts TIMESTAMPTZ, doc VARCHAR, raw BYTEA, score DOUBLE, status VARCHAR, tags VARCHAR, \
     span VARCHAR, yr INT, tiny INT";
const TYPES_ROW: &str = "3, 18446744073709551615, 12.5, 'ann', 1, '2026-12-06', '2026-12-06 10:00:00.123456', \
     '2026-12-06 10:00:00', '{\"a\": [1, 2]}', X'00FF', 0.1, 'it''s shipped', 'a,c', '-26:03:04.5', 2026, 255";

#[test]
fn snapshot_and_binlog_give_the_same_rows_of_every_common_type_through_every_change() {
    let t = unique("types");
    mysql(&format!(
        "CREATE TABLE {t} ({TYPES_TABLE});
         INSERT INTO {t} VALUES (1, {TYPES_ROW}), (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);"
    ));
    let db = memory_db();
    db.execute(&format!("CREATE SOURCE src ({TYPES_DDL}) WITH ({})", cdc(&t))).expect("create");
    db.start().expect("start");
    let one = "3|18446744073709551615|12.500|ann|true|2026-12-06|2026-12-06T10:00:00.123456|2026-12-06T10:00:00Z|\
               {\"a\": [1, 2]}|00ff|0.1|it's shipped|a,c|-26:03:04.500000|2026|255";
    let nulls = "NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL";
    let snapshot = vec![format!("1|{one}"), format!("2|{nulls}")];
    converge(&db, "SELECT * FROM src", || snapshot.clone(), "the snapshot");
    assert_eq!(detail(&db, "src", "snapshot_rows"), 2);

    // The same values through the binary log read back identically.
    mysql(&format!("INSERT INTO {t} VALUES (101, {TYPES_ROW})"));
    let mut both = snapshot.clone();
    both.push(format!("101|{one}"));
    both.sort();
    converge(&db, "SELECT * FROM src", || both.clone(), "the same row through the binlog");

    // Updates of values and of the key, deletes, a multi-statement transaction.
    mysql(&format!(
        "UPDATE {t} SET qty = 30, name = 'ann b', status = 'new', tags = '', ok = 0 WHERE id = 1;
         UPDATE {t} SET id = 20, name = 'moved' WHERE id = 2;
         DELETE FROM {t} WHERE id = 101;
         START TRANSACTION; INSERT INTO {t} (id, name) VALUES (5, 'five'); UPDATE {t} SET name = 'five!' WHERE id = 5; COMMIT;"
    ));
    converge(
        &db,
        "SELECT id, qty, name, ok, status, tags FROM src",
        || {
            vec![
                "1|30|ann b|false|new|".into(),
                "20|NULL|moved|NULL|NULL|NULL".into(),
                "5|NULL|five!|NULL|NULL|NULL".into(),
            ]
        },
        "the streamed changes",
    );
    assert!(detail(&db, "src", "transactions") >= 4);
    // TRUNCATE empties the source.
    mysql(&format!("TRUNCATE TABLE {t}; INSERT INTO {t} (id, name) VALUES (7, 'after');"));
    converge(&db, "SELECT id, name FROM src", || vec!["7|after".into()], "after TRUNCATE");
    // A column added while running: reported, streaming goes on.
    mysql(&format!(
        "ALTER TABLE {t} ADD COLUMN extra INT AFTER qty; INSERT INTO {t} (id, name, extra) VALUES (8, 'eight', 1);"
    ));
    converge(&db, "SELECT id, name FROM src", || vec!["7|after".into(), "8|eight".into()], "after ALTER TABLE");
    let m = db.source_metrics("src").expect("metrics");
    assert_eq!(m.details.get("schema_changes").copied(), Some(1), "{:?}", m.details);
    assert!(m.last_error.unwrap_or_default().contains("added 'extra'"));
    db.shutdown().expect("shutdown");
    mysql(&format!("DROP TABLE {t}"));
}

#[test]
fn restart_resumes_from_the_checkpointed_binlog_position_and_gtid() {
    let t = unique("accounts");
    mysql(&format!("CREATE TABLE {t} (id INT PRIMARY KEY, grp INT NOT NULL, v BIGINT NOT NULL)"));
    let mut values = Vec::new();
    for i in 1..=500 {
        values.push(format!("({i}, {}, {})", i % 7, i * 10));
    }
    mysql(&format!("INSERT INTO {t} VALUES {}", values.join(",")));
    let dir = tempfile::tempdir().expect("dir");
    let open = || {
        Database::open_with_config(
            dir.path().join("db").to_str().expect("path"),
            LaminarConfig { workers: Some(1), checkpoint_interval_ms: Some(3_600_000), ..Default::default() },
        )
        .expect("open")
    };
    let oracle = || mysql_rows(&format!("SELECT grp, count(*), sum(v) FROM {t} GROUP BY grp"));
    let view = "SELECT grp, n, s FROM totals";
    {
        let db = open();
        db.execute(&format!("CREATE SOURCE src (id INT, grp INT, v BIGINT) WITH ({}, 'server_id' = '4242')", cdc(&t)))
            .expect("source");
        db.execute("CREATE MATERIALIZED VIEW totals AS SELECT grp, COUNT(*) AS n, SUM(v) AS s FROM src GROUP BY grp")
            .expect("view");
        db.start().expect("start");
        converge(&db, view, oracle, "the snapshot's totals");
        mysql(&format!(
            "UPDATE {t} SET v = v + 1 WHERE id % 3 = 0; DELETE FROM {t} WHERE id > 480; \
             INSERT INTO {t} SELECT id + 1000, id % 5, id FROM {t} WHERE id <= 100;"
        ));
        converge(&db, view, oracle, "streamed totals");
        let cp = db.checkpoint().expect("checkpoint");
        let _ = cp;
        db.close().expect("close");
    }
    // Changes while nothing runs, read back in one batch on restart: multi-row statements (each
    // a table map and its rows events) one after the other.
    let mut multi: Vec<String> =
        (0..50).map(|k| format!("UPDATE {t} SET v = v + 1 WHERE id BETWEEN {} AND {}", k * 10, k * 10 + 9)).collect();
    multi.push(format!("UPDATE {t} SET grp = 6 WHERE id < 50"));
    multi.push(format!("DELETE FROM {t} WHERE id BETWEEN 100 AND 150"));
    multi.push(format!("INSERT INTO {t} VALUES (5000, 1, 1), (5001, 2, 2)"));
    // A new binary log file after them: the stream reads them together with the rotation.
    multi.push("FLUSH BINARY LOGS".into());
    // A column added in the middle, and rows of the new layout: the updates above, of the old
    // layout, are read after the source has described the new one (row images carry column
    // names on the test server: binlog_row_metadata = FULL).
    multi.push(format!("ALTER TABLE {t} ADD COLUMN note VARCHAR(10) AFTER grp"));
    multi.push(format!("INSERT INTO {t} (id, grp, note, v) VALUES (6000, 3, 'x', 7), (6001, 4, NULL, 8)"));
    multi.push(format!("UPDATE {t} SET v = v + 1000, note = 'y' WHERE id BETWEEN 200 AND 210"));
    mysql(&(multi.join(";") + ";"));
    {
        let db = open();
        db.start().expect("restart");
        converge(&db, view, oracle, "totals after the restart");
        assert_eq!(detail(&db, "src", "snapshot_rows"), 0, "no new snapshot after a restart");
        db.close().expect("close");
    }
    // The checkpoint holds the binlog file, offset and MariaDB GTID.
    let head = std::fs::read_dir(dir.path().join("db")).expect("db dir").flatten().count();
    assert!(head > 0);
    mysql(&format!("DROP TABLE {t}"));
}

#[test]
fn a_pipeline_killed_mid_stream_restarts_without_loss_or_duplicates() {
    let t = unique("killed");
    mysql(&format!("CREATE TABLE {t} (id INT PRIMARY KEY, grp INT NOT NULL, v BIGINT NOT NULL)"));
    let values: Vec<String> = (1..=2000).map(|i| format!("({i}, {}, {i})", i % 10)).collect();
    mysql(&format!("INSERT INTO {t} VALUES {}", values.join(",")));
    killed_pipeline_restarts_exactly(KillTest {
        source: format!("{}, 'server_id' = '4343'", cdc(&t)),
        session: &session,
        delete: &|id| format!("DELETE FROM {t} WHERE id = {id};"),
        regroup: &|id, g| format!("UPDATE {t} SET grp = {g} WHERE id = {id};"),
        upsert: &|id, g, v| format!("INSERT INTO {t} VALUES ({id}, {g}, {v}) ON DUPLICATE KEY UPDATE v = VALUES(v);"),
        totals: &|| mysql_rows(&format!("SELECT grp, count(*), sum(v) FROM {t} GROUP BY grp")),
    });
    mysql(&format!("DROP TABLE {t}"));
}

#[test]
fn the_spec_cross_database_join_stays_equal_to_both_databases_through_random_changes() {
    let (orders, users) = (unique("orders"), unique("users"));
    mysql(&format!(
        "CREATE TABLE {orders} (order_id BIGINT PRIMARY KEY, customer_id BIGINT NOT NULL, total_amount DOUBLE NOT NULL, \
         status VARCHAR(20) NOT NULL, created_at DATETIME NOT NULL)"
    ));
    let rows: Vec<String> =
        (1..=300).map(|i| format!("({i}, {}, {}.5, 'new', '2026-12-06 10:00:00')", 1 + i % 120, i)).collect();
    mysql(&format!("INSERT INTO {orders} VALUES {}", rows.join(",")));
    psql(&format!(
        "CREATE TABLE {users} (id BIGINT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL, role TEXT, updated_at TIMESTAMP);
         INSERT INTO {users} SELECT i, 'u' || i, 'u' || i || '@example.com', 'user', now() FROM generate_series(1, 100) i"
    ));
    let slot = unique("join_pg");
    let db = memory_db();
    // The spec's DDL, pointed at the test servers.
    db.execute(&format!(
        "CREATE SOURCE pg_users (id BIGINT, name VARCHAR, email VARCHAR, role VARCHAR, updated_at TIMESTAMP) WITH (
            connector = 'postgres-cdc', 'connection' = '{}', 'table' = 'public.{users}',
            'slot.name' = '{slot}', 'publication.name' = '{slot}')",
        common::postgres::uri()
    ))
    .expect("pg source");
    db.execute(&format!(
        "CREATE SOURCE mysql_orders (order_id BIGINT, customer_id BIGINT, total_amount DOUBLE, status VARCHAR,
            created_at TIMESTAMP) WITH (connector = 'mysql-cdc', 'connection' = '{}', 'table' = '{orders}',
            'server_id' = '2001')",
        uri()
    ))
    .expect("mysql source");
    db.execute(
        "CREATE STREAM enriched_orders AS SELECT o.order_id, o.total_amount, o.status, u.name as customer_name, \
         u.email as customer_email FROM mysql_orders o JOIN pg_users u ON o.customer_id = u.id",
    )
    .expect("join");
    db.execute(
        "CREATE MATERIALIZED VIEW all_orders AS SELECT o.order_id, u.name FROM mysql_orders o \
         LEFT JOIN pg_users u ON o.customer_id = u.id",
    )
    .expect("left join");
    db.execute("CREATE MATERIALIZED VIEW spend AS SELECT u.role, COUNT(*) AS n, SUM(o.total_amount) AS s FROM mysql_orders o JOIN pg_users u ON o.customer_id = u.id GROUP BY u.role")
        .expect("aggregate");
    db.start().expect("start");
    // The oracle: both tables read from their databases, joined here.
    let oracle = |left: bool| {
        let users: BTreeMap<i64, (String, String)> = psql_rows(&format!("SELECT id, name, email FROM {users}"))
            .iter()
            .map(|r| {
                let f: Vec<&str> = r.split('|').collect();
                (f[0].parse().expect("id"), (f[1].to_string(), f[2].to_string()))
            })
            .collect();
        let mut out = Vec::new();
        for r in mysql_rows(&format!("SELECT order_id, customer_id, total_amount, status FROM {orders}")) {
            let f: Vec<&str> = r.split('|').collect();
            let cust: i64 = f[1].parse().expect("customer");
            match (users.get(&cust), left) {
                (Some((name, email)), false) => out.push(format!("{}|{}|{}|{name}|{email}", f[0], f[2], f[3])),
                (Some((name, _)), true) => out.push(format!("{}|{name}", f[0])),
                (None, true) => out.push(format!("{}|NULL", f[0])),
                (None, false) => {}
            }
        }
        out.sort();
        out
    };
    let join_sql = "SELECT order_id, total_amount, status, customer_name, customer_email FROM enriched_orders";
    converge(&db, join_sql, || oracle(false), "the join after both snapshots");
    converge(&db, "SELECT order_id, name FROM all_orders", || oracle(true), "the LEFT JOIN after both snapshots");
    let mut rng = StdRng::seed_from_u64(13);
    let (mut my, mut pg) = (session(), common::postgres::session());
    let mut changes = 0;
    while changes < 10_000 {
        let n = rng.random_range(1..=10);
        let (mut my_tx, mut pg_tx) = (String::from("START TRANSACTION;"), String::from("BEGIN;"));
        for _ in 0..n {
            let id = rng.random_range(1..=150);
            let order = rng.random_range(1..=400);
            match rng.random_range(0..10) {
                0 => pg_tx.push_str(&format!("DELETE FROM {users} WHERE id = {id};")),
                1 => pg_tx.push_str(&format!(
                    "INSERT INTO {users} VALUES ({id}, 'n{id}', 'n{id}@example.com', 'user', now()) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name;"
                )),
                2 => pg_tx.push_str(&format!("UPDATE {users} SET email = 'e{}@x' WHERE id = {id};", rng.random_range(0..1000))),
                3 => my_tx.push_str(&format!("DELETE FROM {orders} WHERE order_id = {order};")),
                4 | 5 => my_tx.push_str(&format!(
                    "INSERT INTO {orders} VALUES ({order}, {id}, {}.25, 'new', NOW()) ON DUPLICATE KEY UPDATE total_amount = VALUES(total_amount);",
                    rng.random_range(1..1000)
                )),
                6 => my_tx.push_str(&format!("UPDATE {orders} SET customer_id = {id} WHERE order_id = {order};")),
                7 => my_tx.push_str(&format!("UPDATE {orders} SET status = 'shipped' WHERE order_id = {order};")),
                8 => my_tx.push_str(&format!("UPDATE {orders} SET order_id = {} WHERE order_id = {order};", 1000 + changes)),
                _ => pg_tx.push_str(&format!("UPDATE {users} SET role = 'admin' WHERE id = {id};")),
            }
            changes += 1;
        }
        my.send(&format!("{my_tx}COMMIT;"));
        pg.send(&format!("{pg_tx}COMMIT;"));
    }
    my.finish();
    pg.finish();
    converge(&db, join_sql, || oracle(false), "the join after 10,000 changes");
    converge(&db, "SELECT order_id, name FROM all_orders", || oracle(true), "the LEFT JOIN after 10,000 changes");
    let spend_oracle = || {
        psql(&format!("DROP TABLE IF EXISTS {users}_roles"));
        let roles: BTreeMap<i64, String> = psql_rows(&format!("SELECT id, role FROM {users}"))
            .iter()
            .map(|r| {
                let (a, b) = r.split_once('|').expect("id|role");
                (a.parse().expect("id"), b.to_string())
            })
            .collect();
        let mut agg: BTreeMap<String, (i64, f64)> = BTreeMap::new();
        for r in mysql_rows(&format!("SELECT customer_id, total_amount FROM {orders}")) {
            let (c, a) = r.split_once('|').expect("customer|amount");
            if let Some(role) = roles.get(&c.parse().expect("customer")) {
                let e = agg.entry(role.clone()).or_default();
                e.0 += 1;
                e.1 += a.parse::<f64>().expect("amount");
            }
        }
        let mut out: Vec<String> = agg.into_iter().map(|(r, (n, s))| format!("{r}|{n}|{s}")).collect();
        out.sort();
        out
    };
    converge(&db, "SELECT role, n, s FROM spend", spend_oracle, "the aggregate over the join");
    db.shutdown().expect("shutdown");
    mysql(&format!("DROP TABLE {orders}"));
    for _ in 0..100 {
        let state = psql(&format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"));
        match state.trim() {
            "f" => {
                psql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
                break;
            }
            "" => break,
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    psql(&format!("DROP PUBLICATION IF EXISTS {slot}"));
    psql(&format!("DROP TABLE {users}"));
}

#[test]
fn errors_name_the_problem_and_tls_works_per_ssl_mode() {
    let t = unique("errs");
    mysql(&format!("CREATE TABLE {t} (id INT PRIMARY KEY, name VARCHAR(10), at DATETIME); INSERT INTO {t} VALUES (1, 'one', NULL);"));
    let db = memory_db();
    let e =
        db.execute("CREATE SOURCE s (id INT) WITH (connector = 'mysql-cdc', 'table' = 'x')").expect_err("connection");
    assert!(e.to_string().contains("'connection'"), "{e}");
    let e = db
        .execute(&format!("CREATE SOURCE s (id INT) WITH (connector = 'mysql-cdc', 'connection' = '{}')", uri()))
        .expect_err("table");
    assert!(e.to_string().contains("'table'"), "{e}");
    let e =
        db.execute(&format!("CREATE SOURCE s (id INT) WITH ({}, 'serverid' = '1')", cdc(&t))).expect_err("unknown key");
    assert!(e.to_string().contains("'serverid'") && e.to_string().contains("server_id"), "{e}");
    let start_err = |ddl: String| {
        let db = memory_db();
        db.execute(&ddl).expect("create");
        let e = db.start().expect_err(&ddl);
        let _ = db.shutdown();
        e.to_string()
    };
    let e = start_err(format!("CREATE SOURCE s (id INT, nope VARCHAR) WITH ({})", cdc(&t)));
    assert!(e.contains("column 'nope'") && e.contains("its columns: id, name, at"), "{e}");
    let e = start_err(format!("CREATE SOURCE s (id INT, name BIGINT) WITH ({})", cdc(&t)));
    assert!(e.contains("column 'name'") && e.contains("varchar(10)"), "{e}");
    let e = start_err(format!("CREATE SOURCE s (name VARCHAR) WITH ({})", cdc(&t)));
    assert!(e.contains("column 'id'") && e.contains("key"), "{e}");
    let e = start_err(format!("CREATE SOURCE s (id INT) WITH ({})", cdc("missing_table")));
    assert!(e.contains("does not exist"), "{e}");
    let e = start_err(format!(
        "CREATE SOURCE s (id INT) WITH (connector = 'mysql-cdc', 'connection' = '{}', 'table' = '{t}')",
        uri_as("plain", "plain")
    ));
    assert!(e.contains("REPLICATION"), "{e}");
    let e = start_err(format!(
        "CREATE SOURCE s (id INT) WITH (connector = 'mysql-cdc', 'connection' = '{}', 'table' = '{t}')",
        uri_as("laminar", "wrong")
    ));
    assert!(e.contains("password") && !e.contains("wrong"), "{e}");

    // TLS: the server's certificate checked against the test CA; without it, refused.
    let ca = std::env::var("LAMINAR_TEST_MYSQL_CA").expect("LAMINAR_TEST_MYSQL_CA (scripts/services.sh)");
    let secure = memory_db();
    secure
        .execute(&format!(
            "CREATE SOURCE s (id INT, name VARCHAR) WITH (connector = 'mysql-cdc', 'connection' = \
             '{}?ssl-mode=verify_identity&ssl-ca={ca}', 'table' = '{t}')",
            uri()
        ))
        .expect("create");
    secure.start().expect("TLS start");
    converge(&secure, "SELECT id, name FROM s", || vec!["1|one".into()], "snapshot over TLS");
    mysql(&format!("INSERT INTO {t} VALUES (2, 'two', NULL)"));
    converge(&secure, "SELECT id, name FROM s", || vec!["1|one".into(), "2|two".into()], "binlog over TLS");
    secure.shutdown().expect("shutdown");
    let e = start_err(format!(
        "CREATE SOURCE s (id INT) WITH (connector = 'mysql-cdc', 'connection' = '{}?ssl-mode=verify_identity', 'table' = '{t}')",
        uri()
    ));
    assert!(e.to_lowercase().contains("certificate") || e.to_lowercase().contains("tls"), "{e}");
    mysql(&format!("DROP TABLE {t}"));
}
