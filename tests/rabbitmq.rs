//! The RabbitMQ source and sink against a real RabbitMQ server (started by
//! `scripts/services.sh`; its URI in `LAMINAR_TEST_RABBITMQ_URI`): every source format and dead
//! letters with `auto` acknowledgements; `manual` acknowledgements held until a checkpoint,
//! the prefetch limit, and a restart that gets back what was not acknowledged; the sink to a
//! bound exchange (fixed and per-row routing keys, changes of an updating query with their
//! `op`, CSV); `mandatory` with nowhere to go; a broker that drops the pipeline's connections;
//! amqps with a private CA; and errors at CREATE and at `start()`.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::rabbitmq::{close_connections_named, unique, uri, Client};
use laminardb::{Database, LaminarConfig, LaminarError};
use lapin::ExchangeKind;

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the broker reports `want` (ready, unacknowledged) for `q`; the panic says what
/// it reported last.
fn wait_depth(amqp: &Client, q: &str, want: (u64, u64), what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = amqp.depth(q);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: (ready, unacked) = {got:?}, want {want:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count(db: &Database, sql: &str) -> i64 {
    let r = db.query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let b = &r.batches[0];
    arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(b.column(0)).value(0)
}

fn events(db: &Database, source: &str) -> u64 {
    db.source_metrics(source).map_or(0, |m| m.total_events)
}

fn source_with(queue: &str, extra: &str) -> String {
    format!("connector = 'rabbitmq', 'uri' = '{}', 'queue' = '{queue}'{extra}", uri())
}

#[test]
fn every_format_flows_in_and_auto_mode_acknowledges_everything() {
    let amqp = Client::new();
    let (qj, qc, qr) = (unique("json"), unique("csv"), unique("raw"));
    for q in [&qj, &qc, &qr] {
        amqp.queue(q);
    }
    let mut json: Vec<String> =
        (0..500).map(|i| format!(r#"{{"id": {i}, "kind": "k{}", "amount": {i}.5}}"#, i % 5)).collect();
    json.insert(250, "{not json".to_string());
    amqp.publish(&qj, &json);
    amqp.publish(&qc, &["1,a,1.5", "2,b,2.5"]);
    amqp.publish(&qr, &["hello", "world"]);

    let db = common::db_with_workers(2);
    db.execute(&format!(
        "CREATE SOURCE js (id BIGINT, kind VARCHAR, amount DOUBLE) WITH ({})",
        source_with(&qj, ", 'format' = 'json', 'prefetch_count' = '100'")
    ))
    .expect("json source");
    db.execute(&format!(
        "CREATE SOURCE cs (id BIGINT, kind VARCHAR, amount DOUBLE) WITH ({})",
        source_with(&qc, ", 'format' = 'csv', 'csv.header' = 'false', 'ack_mode' = 'auto'")
    ))
    .expect("csv source");
    db.execute(&format!("CREATE SOURCE rs (line VARCHAR) WITH ({})", source_with(&qr, ", 'format' = 'raw'")))
        .expect("raw source");
    db.execute("CREATE STREAM per_kind AS SELECT kind, COUNT(*) AS n, SUM(amount) AS total FROM js GROUP BY kind")
        .expect("stream");
    db.start().expect("start");
    wait_for("every message", Duration::from_secs(30), || {
        events(&db, "js") == 500 && events(&db, "cs") == 2 && events(&db, "rs") == 2
    });
    db.flush().expect("flush");
    assert_eq!(count(&db, "SELECT COUNT(DISTINCT id) FROM js"), 500);
    assert_eq!(count(&db, "SELECT SUM(n) FROM per_kind"), 500);
    assert_eq!(common::sorted_query(&db, "SELECT kind, n FROM per_kind")[0], "k0|100");
    assert_eq!(common::sorted_query(&db, "SELECT * FROM cs"), vec!["1|a|1.5", "2|b|2.5"]);
    assert_eq!(common::sorted_query(&db, "SELECT * FROM rs"), vec!["hello", "world"]);
    // The malformed message is a dead letter naming its queue and delivery tag.
    let errors = common::rows(&db.query("SELECT position, payload FROM js_errors").expect("errors").batches);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with(&format!("{qj}#251|")), "{errors:?}");
    assert!(errors[0].contains("{not json"), "{errors:?}");
    let m = db.source_metrics("js").expect("metrics");
    assert_eq!(m.connector_state.as_deref(), Some("running"));
    assert_eq!(m.details.get("messages").copied(), Some(501), "{:?}", m.details);
    assert_eq!(m.details.get("connected").copied(), Some(1));
    // Auto mode: everything taken in is acknowledged; the queues are empty.
    wait_for("the queues to be acknowledged", Duration::from_secs(10), || {
        [&qj, &qc, &qr].iter().all(|q| amqp.depth(q) == (0, 0))
    });
    db.shutdown().expect("shutdown");
}

#[test]
fn manual_mode_holds_acknowledgements_for_checkpoints_and_a_restart_gets_the_rest() {
    let amqp = Client::new();
    let q = unique("manual");
    amqp.queue(&q);
    let dir = tempfile::tempdir().expect("dir");
    // Checkpoints are on but taken by hand here (the interval never elapses in the test).
    let config = || LaminarConfig { workers: Some(1), checkpoint_interval_ms: Some(3_600_000), ..Default::default() };
    let open = || Database::open_with_config(dir.path(), config()).expect("open");
    let db = open();
    db.execute(&format!(
        "CREATE SOURCE tasks (id BIGINT, kind VARCHAR) WITH ({})",
        source_with(&q, ", 'ack_mode' = 'manual', 'prefetch_count' = '50'")
    ))
    .expect("source");
    let payloads: Vec<String> = (0..200).map(|i| format!(r#"{{"id": {i}, "kind": "t{}"}}"#, i % 3)).collect();
    amqp.publish(&q, &payloads[..150]);
    db.start().expect("start");
    // The prefetch limit: 50 deliveries and then nothing until some are acknowledged.
    wait_for("the first 50", Duration::from_secs(20), || events(&db, "tasks") == 50);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(events(&db, "tasks"), 50, "no more than prefetch_count unacknowledged deliveries");
    wait_depth(&amqp, &q, (100, 50), "the broker's view", Duration::from_secs(10));
    assert_eq!(db.source_metrics("tasks").and_then(|m| m.details.get("unacked").copied()), Some(50));
    // A checkpoint acknowledges what it holds, and the next deliveries come.
    db.checkpoint().expect("checkpoint");
    wait_for("the next 50", Duration::from_secs(20), || events(&db, "tasks") == 100);
    db.checkpoint().expect("checkpoint");
    wait_for("150", Duration::from_secs(20), || events(&db, "tasks") == 150);
    // The last 50 are in the pipeline but no checkpoint holds them: unacknowledged.
    wait_depth(&amqp, &q, (0, 50), "the broker's view", Duration::from_secs(10));
    // Publishing goes on while the pipeline is down.
    db.close().expect("close");
    amqp.publish(&q, &payloads[150..]);
    // The shutdown's last checkpoint held the 150 rows and was acknowledged before the
    // connection closed: the restart restores them and gets only the 50 new messages.
    let db = open();
    db.start().expect("restart");
    wait_for("every task once", Duration::from_secs(20), || count(&db, "SELECT COUNT(*) FROM tasks") == 200);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(&db, "SELECT COUNT(*) FROM tasks"), 200, "no duplicates");
    assert_eq!(count(&db, "SELECT COUNT(DISTINCT id) FROM tasks"), 200, "none lost");
    db.close().expect("close");
    wait_depth(&amqp, &q, (0, 0), "the queue to be empty", Duration::from_secs(10));
}

#[test]
fn unacknowledged_deliveries_come_back_after_a_crash() {
    // A pipeline killed with deliveries taken in but no checkpoint holding them: the broker
    // requeues them when the connection drops, and the next run gets them.
    let amqp = Client::new();
    let q = unique("crash");
    amqp.queue(&q);
    let dir = tempfile::tempdir().expect("dir");
    let sql = dir.path().join("pipeline.sql");
    std::fs::write(
        &sql,
        format!(
            "CREATE SOURCE jobs (id BIGINT) WITH ({});\n\
             CREATE SINK done AS SELECT id FROM jobs WITH (connector = 'file', 'path' = '{}', 'format' = 'json');",
            source_with(&q, ", 'ack_mode' = 'manual'"),
            dir.path().join("out").display()
        ),
    )
    .expect("sql");
    let payloads: Vec<String> = (0..300).map(|i| format!(r#"{{"id": {i}}}"#)).collect();
    amqp.publish(&q, &payloads);
    let db = dir.path().join("db");
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_laminardb"))
            .args(["run", &sql.display().to_string(), "--db", &db.display().to_string(), "--quiet"])
            .args(["--checkpoint-interval", "3600000"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn laminardb")
    };
    let mut child = run();
    // Everything delivered, nothing acknowledged (no checkpoint yet).
    wait_depth(&amqp, &q, (0, 300), "all deliveries in flight", Duration::from_secs(30));
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    wait_depth(&amqp, &q, (300, 0), "the broker to requeue them", Duration::from_secs(10));
    let mut child = run();
    wait_depth(&amqp, &q, (0, 300), "all deliveries again", Duration::from_secs(30));
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    wait_depth(&amqp, &q, (300, 0), "requeued again", Duration::from_secs(10));
    // Read by a database of our own: every message is still there.
    let check =
        Database::open_with_config(":memory:", LaminarConfig { workers: Some(1), ..Default::default() }).expect("open");
    check.execute(&format!("CREATE SOURCE jobs (id BIGINT) WITH ({})", source_with(&q, ""))).expect("source");
    check.start().expect("start");
    wait_for("300 jobs", Duration::from_secs(20), || events(&check, "jobs") == 300);
    check.flush().expect("flush");
    assert_eq!(count(&check, "SELECT COUNT(DISTINCT id) FROM jobs"), 300, "none lost");
    check.shutdown().expect("shutdown");
}

#[test]
fn the_sink_publishes_rows_and_changes_to_bound_exchanges() {
    let amqp = Client::new();
    let (ex, q_all, q_eu, q_us, q_totals, q_csv) =
        (unique("ex"), unique("all"), unique("eu"), unique("us"), unique("totals"), unique("csv"));
    amqp.exchange(&ex, ExchangeKind::Direct);
    for q in [&q_all, &q_eu, &q_us, &q_totals, &q_csv] {
        amqp.queue(q);
    }
    amqp.bind(&q_all, &ex, "orders");
    amqp.bind(&q_eu, &ex, "eu");
    amqp.bind(&q_us, &ex, "us");
    let u = uri();
    let db = common::db_with_workers(2);
    db.execute("CREATE SOURCE orders (id BIGINT, region VARCHAR, amount BIGINT)").expect("source");
    db.execute("CREATE SOURCE accounts (id BIGINT PRIMARY KEY, region VARCHAR)").expect("keyed source");
    db.execute(&format!(
        "CREATE SINK all_orders AS SELECT id, region, amount FROM orders WITH (connector = 'rabbitmq', \
         'uri' = '{u}', 'exchange' = '{ex}', 'routing_key' = 'orders', 'format' = 'json')"
    ))
    .expect("sink");
    db.execute(&format!(
        "CREATE SINK by_region AS SELECT id, region FROM orders WITH (connector = 'rabbitmq', \
         'uri' = '{u}', 'exchange' = '{ex}', 'routing_key.column' = 'region')"
    ))
    .expect("routed sink");
    db.execute(&format!(
        "CREATE SINK totals AS SELECT region, COUNT(*) AS n FROM accounts GROUP BY region \
         WITH (connector = 'rabbitmq', 'uri' = '{u}', 'routing_key' = '{q_totals}')"
    ))
    .expect("updating sink");
    db.execute(&format!(
        "CREATE SINK totals_csv AS SELECT region, COUNT(*) AS n FROM accounts GROUP BY region \
         WITH (connector = 'rabbitmq', 'uri' = '{u}', 'routing_key' = '{q_csv}', 'format' = 'csv')"
    ))
    .expect("csv sink");
    db.start().expect("start");
    let rows: Vec<String> = (0..100)
        .map(|i| format!(r#"{{"id":{i},"region":"{}","amount":{}}}"#, if i % 4 == 0 { "us" } else { "eu" }, i * 10))
        .collect();
    db.insert_json("orders", &format!("[{}]", rows.join(","))).expect("insert");
    db.flush().expect("flush");
    let all = amqp.get(&q_all, 100, Duration::from_secs(20));
    assert_eq!(all.len(), 100);
    let ids: BTreeSet<i64> = all
        .iter()
        .map(|g| serde_json::from_str::<serde_json::Value>(&g.payload).expect("json")["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids, (0..100).collect());
    let first: serde_json::Value = serde_json::from_str(&all[0].payload).expect("json");
    assert_eq!(first.as_object().map(|o| o.len()), Some(3), "the row's columns only: {first}");
    assert_eq!(all[0].content_type.as_deref(), Some("application/json"));
    assert!(all[0].headers.get("laminar.epoch").is_some_and(|e| e.parse::<u64>().is_ok()), "{:?}", all[0].headers);
    assert_eq!(all[0].routing_key, "orders");
    // Per-row routing keys reach the queue bound for each.
    let eu = amqp.get(&q_eu, 75, Duration::from_secs(20));
    let us = amqp.get(&q_us, 25, Duration::from_secs(20));
    assert_eq!((eu.len(), us.len()), (75, 25));
    assert!(eu.iter().all(|g| g.payload.contains(r#""region":"eu""#)));
    assert!(us.iter().all(|g| g.payload.contains(r#""region":"us""#) && g.routing_key == "us"));

    // An updating query: one message per key and epoch, with its op.
    db.insert_json("accounts", r#"{"id":1,"region":"eu"}"#).expect("insert");
    db.flush().expect("flush");
    let got = amqp.get(&q_totals, 1, Duration::from_secs(20));
    assert_eq!(got[0].payload, r#"{"region":"eu","n":1,"op":"insert"}"#);
    assert_eq!(got[0].headers.get("laminar.op").map(String::as_str), Some("insert"));
    db.insert_json("accounts", r#"{"id":2,"region":"eu"}"#).expect("insert");
    db.flush().expect("flush");
    let got = amqp.get(&q_totals, 1, Duration::from_secs(20));
    assert_eq!(got[0].payload, r#"{"region":"eu","n":2,"op":"update"}"#);
    // Both accounts move to "us": "eu" is gone, "us" appears.
    db.insert_json("accounts", r#"[{"id":1,"region":"us"},{"id":2,"region":"us"}]"#).expect("upsert");
    db.flush().expect("flush");
    let mut got: Vec<String> = amqp.get(&q_totals, 2, Duration::from_secs(20)).into_iter().map(|g| g.payload).collect();
    got.sort();
    assert_eq!(got, vec![r#"{"region":"eu","n":2,"op":"delete"}"#, r#"{"region":"us","n":2,"op":"insert"}"#]);
    let mut csv: Vec<String> = amqp.get(&q_csv, 4, Duration::from_secs(20)).into_iter().map(|g| g.payload).collect();
    csv.sort();
    assert_eq!(csv, vec!["eu,1,insert", "eu,2,delete", "eu,2,update", "us,2,insert"]);
    assert!(amqp.get(&q_totals, 1, Duration::from_millis(300)).is_empty(), "nothing more");
    let m = db.sink_metrics("all_orders").expect("metrics");
    assert_eq!(m.details.get("messages").copied(), Some(100), "{:?}", m.details);
    assert_eq!(m.state, "running");
    db.shutdown().expect("shutdown");
}

#[test]
fn mandatory_messages_with_no_queue_are_counted_and_the_pipeline_goes_on() {
    let amqp = Client::new();
    let (ex, q) = (unique("mand"), unique("good"));
    amqp.exchange(&ex, ExchangeKind::Direct);
    amqp.queue(&q);
    amqp.bind(&q, &ex, "good");
    let db = common::db_with_workers(1);
    db.execute("CREATE SOURCE alerts (id BIGINT, route VARCHAR)").expect("source");
    db.execute(&format!(
        "CREATE SINK out AS SELECT id, route FROM alerts WITH (connector = 'rabbitmq', 'uri' = '{}', \
         'exchange' = '{ex}', 'routing_key.column' = 'route', 'mandatory' = 'true')",
        uri()
    ))
    .expect("sink");
    db.start().expect("start");
    let rows: Vec<String> =
        (0..30).map(|i| format!(r#"{{"id":{i},"route":"{}"}}"#, if i % 3 == 0 { "nowhere" } else { "good" })).collect();
    db.insert_json("alerts", &format!("[{}]", rows.join(","))).expect("insert");
    db.flush().expect("flush");
    let good = amqp.get(&q, 20, Duration::from_secs(20));
    assert_eq!(good.len(), 20);
    wait_for("the returns", Duration::from_secs(10), || {
        db.sink_metrics("out").and_then(|m| m.details.get("returned").copied()) == Some(10)
    });
    let m = db.sink_metrics("out").expect("metrics");
    assert_eq!(m.state, "running", "{m:?}");
    assert!(m.last_error.as_deref().is_some_and(|e| e.contains("unroutable") && e.contains("nowhere")), "{m:?}");
    // And it keeps going.
    db.insert_json("alerts", r#"{"id":100,"route":"good"}"#).expect("insert");
    db.flush().expect("flush");
    assert_eq!(amqp.get(&q, 1, Duration::from_secs(20)).len(), 1);
    db.shutdown().expect("shutdown");
}

#[test]
fn source_and_sink_reconnect_when_the_broker_drops_their_connections() {
    let amqp = Client::new();
    let (q_in, q_out) = (unique("in"), unique("out"));
    amqp.queue(&q_in);
    amqp.queue(&q_out);
    let db = common::db_with_workers(1);
    db.execute(&format!("CREATE SOURCE ev_dropped (id BIGINT) WITH ({})", source_with(&q_in, ""))).expect("source");
    db.execute(&format!(
        "CREATE SINK copy_dropped AS SELECT id FROM ev_dropped WITH (connector = 'rabbitmq', 'uri' = '{}', 'routing_key' = '{q_out}')",
        uri()
    ))
    .expect("sink");
    db.start().expect("start");
    let first: Vec<String> = (0..100).map(|i| format!(r#"{{"id": {i}}}"#)).collect();
    amqp.publish(&q_in, &first);
    wait_for("the first 100", Duration::from_secs(20), || events(&db, "ev_dropped") == 100);
    db.flush().expect("flush");
    let before = amqp.get(&q_out, 100, Duration::from_secs(20));
    assert_eq!(before.len(), 100);
    // The broker closes both of the pipeline's connections.
    assert_eq!(
        close_connections_named("laminardb source ev_dropped") + close_connections_named("laminardb sink copy_dropped"),
        2
    );
    let more: Vec<String> = (100..200).map(|i| format!(r#"{{"id": {i}}}"#)).collect();
    amqp.publish(&q_in, &more);
    wait_for("the next 100", Duration::from_secs(60), || {
        db.query("SELECT COUNT(DISTINCT id) FROM ev_dropped").is_ok_and(|r| {
            arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(r.batches[0].column(0)).value(0) == 200
        })
    });
    db.flush().expect("flush");
    let after = amqp.get(&q_out, 100, Duration::from_secs(60));
    let ids: BTreeSet<i64> = after
        .iter()
        .map(|g| serde_json::from_str::<serde_json::Value>(&g.payload).expect("json")["id"].as_i64().expect("id"))
        .collect();
    assert!((100..200).all(|i| ids.contains(&i)), "every later row reached the queue: {} of 100", ids.len());
    let src = db.source_metrics("ev_dropped").expect("metrics");
    assert!(src.details.get("connections").copied().unwrap_or(0) >= 2, "{:?}", src.details);
    assert!(src.retries >= 1, "{src:?}");
    let sink = db.sink_metrics("copy_dropped").expect("metrics");
    assert!(sink.details.get("connections").copied().unwrap_or(0) >= 2, "{:?}", sink.details);
    assert_eq!(sink.state, "running");
    db.shutdown().expect("shutdown");
}

#[test]
fn options_are_checked_at_create_and_the_broker_at_start() {
    let db = common::db_with_workers(1);
    let create_err = |sql: &str| match db.execute(sql) {
        Err(e @ LaminarError::Connector { .. }) => e.to_string(),
        other => panic!("{sql}: expected a connector error, got {other:?}"),
    };
    let u = uri();
    for (opts, key) in [
        ("'queue' = 'q'".to_string(), "uri"),
        (format!("'uri' = '{u}'"), "queue"),
        ("'uri' = 'http://h/', 'queue' = 'q'".to_string(), "uri"),
        (format!("'uri' = '{u}', 'queue' = 'q', 'prefetch_count' = '0'"), "prefetch_count"),
        (format!("'uri' = '{u}', 'queue' = 'q', 'prefetch_count' = '70000'"), "prefetch_count"),
        (format!("'uri' = '{u}', 'queue' = 'q', 'ack_mode' = 'sometimes'"), "ack_mode"),
        (format!("'uri' = '{u}', 'queue' = 'q', 'prefetch' = '5'"), "prefetch_count"),
        (format!("'uri' = '{u}', 'queue' = 'q', 'format' = 'debezium'"), "format"),
    ] {
        let e = create_err(&format!("CREATE SOURCE s (x VARCHAR) WITH (connector = 'rabbitmq', {opts})"));
        assert!(e.contains(key), "{e} should name {key}");
        assert!(db.sources().is_empty(), "a failed CREATE leaves nothing behind");
    }
    db.execute("CREATE SOURCE src (x VARCHAR, n BIGINT)").expect("source");
    for (opts, key) in [
        (format!("'uri' = '{u}', 'exchange' = 'e', 'routing_key' = 'k', 'routing_key.column' = 'x'"), "routing_key"),
        (format!("'uri' = '{u}'"), "exchange"),
        (format!("'uri' = '{u}', 'exchange' = 'e', 'routing_key.column' = 'nope'"), "nope"),
        (format!("'uri' = '{u}', 'exchange' = 'e', 'mandatory' = 'perhaps'"), "mandatory"),
    ] {
        let e = create_err(&format!("CREATE SINK k AS SELECT x, n FROM src WITH (connector = 'rabbitmq', {opts})"));
        assert!(e.contains(key), "{e} should name {key}");
    }
    assert!(db.sinks().is_empty(), "no half-made sink");

    // start(): nobody listening, wrong credentials, a missing queue, a missing exchange.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let wrong_password = u.replacen("guest:guest@", "guest:hunter2@", 1);
    assert_ne!(wrong_password, u, "the test URI carries guest:guest");
    let missing = unique("missing");
    for (sql, expect) in [
        (
            format!("CREATE SOURCE dead (x VARCHAR) WITH (connector = 'rabbitmq', 'uri' = 'amqp://guest:hunter2@127.0.0.1:{port}/%2f', 'queue' = 'q')"),
            format!("127.0.0.1:{port}"),
        ),
        (
            format!("CREATE SOURCE denied (x VARCHAR) WITH (connector = 'rabbitmq', 'uri' = '{wrong_password}', 'queue' = 'q')"),
            "ACCESS".to_string(),
        ),
        (format!("CREATE SOURCE absent (x VARCHAR) WITH ({})", source_with(&missing, "")), missing.clone()),
        (
            format!("CREATE SINK nowhere AS SELECT x FROM src WITH (connector = 'rabbitmq', 'uri' = '{u}', 'exchange' = '{missing}')"),
            missing.clone(),
        ),
    ] {
        let db = common::db_with_workers(1);
        db.execute("CREATE SOURCE src (x VARCHAR, n BIGINT)").expect("source");
        db.execute(&sql).expect("valid at CREATE (no I/O)");
        let started = Instant::now();
        match db.start() {
            Err(e @ LaminarError::Connector { .. }) => {
                let text = e.to_string();
                assert!(text.contains(&expect), "{text} should name {expect}");
                assert!(!text.contains("hunter2"), "the password is masked: {text}");
            }
            other => panic!("{sql}: expected a connector error, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(20), "start() gave up after {:?}", started.elapsed());
    }
}

#[test]
fn amqps_with_a_private_certificate_authority() {
    let tls_uri =
        std::env::var("LAMINAR_TEST_RABBITMQ_TLS_URI").expect("LAMINAR_TEST_RABBITMQ_TLS_URI (scripts/services.sh)");
    let ca = std::env::var("LAMINAR_TEST_RABBITMQ_CA").expect("LAMINAR_TEST_RABBITMQ_CA (scripts/services.sh)");
    let amqp = Client::new();
    let (q_in, q_out) = (unique("tls-in"), unique("tls-out"));
    amqp.queue(&q_in);
    amqp.queue(&q_out);
    let payloads: Vec<String> = (0..50).map(|i| format!(r#"{{"id": {i}}}"#)).collect();
    amqp.publish(&q_in, &payloads);
    let db = common::db_with_workers(1);
    db.execute(&format!(
        "CREATE SOURCE sec (id BIGINT) WITH (connector = 'rabbitmq', 'uri' = '{tls_uri}', 'queue' = '{q_in}', \
         'tls.ca_file' = '{ca}')"
    ))
    .expect("source");
    db.execute(&format!(
        "CREATE SINK back AS SELECT id FROM sec WITH (connector = 'rabbitmq', 'uri' = '{tls_uri}', \
         'routing_key' = '{q_out}', 'tls.ca_file' = '{ca}')"
    ))
    .expect("sink");
    db.start().expect("start over amqps");
    wait_for("50 messages over TLS", Duration::from_secs(20), || events(&db, "sec") == 50);
    db.flush().expect("flush");
    assert_eq!(amqp.get(&q_out, 50, Duration::from_secs(20)).len(), 50);
    db.shutdown().expect("shutdown");
    // Without the CA the server's certificate is not trusted: start() says so.
    let db = common::db_with_workers(1);
    db.execute(&format!(
        "CREATE SOURCE sec (id BIGINT) WITH (connector = 'rabbitmq', 'uri' = '{tls_uri}', 'queue' = '{q_in}')"
    ))
    .expect("source");
    match db.start() {
        Err(e @ LaminarError::Connector { .. }) => {
            let text = e.to_string().to_lowercase();
            assert!(text.contains("certificate") || text.contains("issuer"), "{text}");
        }
        other => panic!("expected a certificate error, got {other:?}"),
    }
}
