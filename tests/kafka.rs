//! The Kafka source and sink against a real Kafka-protocol broker (started by
//! `scripts/services.sh`; its address in `LAMINAR_TEST_KAFKA_BOOTSTRAP`): every source format,
//! Debezium changes and tombstones, dead letters, per-key order over partitions, resuming a
//! consumer group, keyed upserts with tombstones from an updating query, and errors.

mod common;

use std::time::{Duration, Instant};

use common::kafka::{bootstrap, consume, create_topic, produce, unique, Out};
use laminardb::{Database, LaminarError};

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kafka_with(topic: &str, group: &str, extra: &str) -> String {
    format!(
        "connector = 'kafka', 'bootstrap.servers' = '{}', 'topic' = '{topic}', 'group.id' = '{group}', \
         'auto.offset.reset' = 'earliest'{extra}",
        bootstrap()
    )
}

fn count(db: &Database, sql: &str) -> i64 {
    let r = db.query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let b = &r.batches[0];
    arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(b.column(0)).value(0)
}

#[test]
fn json_csv_and_raw_messages_flow_into_sql() {
    let (tj, tc, tr) = (unique("json"), unique("csv"), unique("raw"));
    for t in [&tj, &tc, &tr] {
        create_topic(t, 3);
    }
    let json: Vec<String> = (0..300).map(|i| format!(r#"{{"sym": "S{}", "px": {i}.5}}"#, i % 7)).collect();
    let spread: Vec<Out<'_>> =
        json.iter().enumerate().map(|(i, j)| (Some((i % 3) as i32), None, Some(j.as_bytes()))).collect();
    produce(&tj, &spread);
    produce(&tc, &[(None, None, Some(b"A,1.5".as_slice())), (None, None, Some(b"B,2.5".as_slice()))]);
    produce(&tr, &[(None, None, Some(b"hello".as_slice())), (None, None, Some(b"world".as_slice()))]);

    let db = common::db_with_workers(2);
    db.execute(&format!("CREATE SOURCE js (sym VARCHAR, px DOUBLE) WITH ({})", kafka_with(&tj, "g1", "")))
        .expect("json source");
    db.execute(&format!(
        "CREATE SOURCE cs (sym VARCHAR, px DOUBLE) WITH ({})",
        kafka_with(&tc, "g1", ", 'format' = 'csv', 'csv.header' = 'false'")
    ))
    .expect("csv source");
    db.execute(&format!("CREATE SOURCE rs (line VARCHAR) WITH ({})", kafka_with(&tr, "g1", ", 'format' = 'raw'")))
        .expect("raw source");
    db.execute("CREATE STREAM per_sym AS SELECT sym, COUNT(*) AS n FROM js GROUP BY sym").expect("stream");
    db.start().expect("start");
    wait_for("all messages", Duration::from_secs(30), || {
        db.source_metrics("js").is_some_and(|m| m.total_events == 300)
            && db.source_metrics("cs").is_some_and(|m| m.total_events == 2)
            && db.source_metrics("rs").is_some_and(|m| m.total_events == 2)
    });
    db.flush().expect("flush");
    assert_eq!(count(&db, "SELECT SUM(n) FROM per_sym"), 300);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM per_sym"), 7);
    assert_eq!(common::sorted_query(&db, "SELECT * FROM cs"), vec!["A|1.5", "B|2.5"]);
    assert_eq!(common::sorted_query(&db, "SELECT * FROM rs"), vec!["hello", "world"]);
    let m = db.source_metrics("js").expect("metrics");
    assert_eq!(m.connector_state.as_deref(), Some("running"));
    let topo = db.topology();
    assert!(topo.nodes.iter().any(|n| n.name == "js" && n.node_type == "source"));
    db.shutdown().expect("shutdown");
}

#[test]
fn debezium_changes_and_tombstones_update_a_keyed_source() {
    let t = unique("cdc");
    create_topic(&t, 1);
    let env = |op: &str, before: &str, after: &str| {
        format!(r#"{{"payload": {{"op": "{op}", "before": {before}, "after": {after}}}}}"#)
    };
    let msgs = [
        env("r", "null", r#"{"id": 1, "name": "ann"}"#),
        env("c", "null", r#"{"id": 2, "name": "bob"}"#),
        env("u", r#"{"id": 1, "name": "ann"}"#, r#"{"id": 1, "name": "anne"}"#),
        env("d", r#"{"id": 2, "name": "bob"}"#, "null"),
    ];
    let mut batch: Vec<Out<'_>> = msgs.iter().map(|m| (None, Some("k"), Some(m.as_bytes()))).collect();
    batch.push((None, Some("k"), None)); // the tombstone after the delete
    produce(&t, &batch);
    let db = common::db_with_workers(1);
    db.execute(&format!(
        "CREATE SOURCE users (id BIGINT, name VARCHAR, PRIMARY KEY (id)) WITH ({})",
        kafka_with(&t, "cdc", ", 'format' = 'debezium'")
    ))
    .expect("source");
    db.execute("CREATE STREAM n AS SELECT COUNT(*) AS users FROM users").expect("stream");
    db.start().expect("start");
    wait_for("the changes", Duration::from_secs(30), || {
        db.flush().ok();
        common::sorted_query(&db, "SELECT * FROM users") == vec!["1|anne"]
    });
    // The last changes may have arrived after the flush above: the stream sees them after this.
    db.flush().expect("flush");
    assert_eq!(count(&db, "SELECT users FROM n"), 1);
    assert!(db.dead_letters("users").expect("letters").is_empty(), "the tombstone is not an error");
    db.shutdown().expect("shutdown");
}

#[test]
fn malformed_messages_become_dead_letters_with_their_position() {
    let (t, dlq) = (unique("bad"), unique("dlq"));
    create_topic(&t, 1);
    create_topic(&dlq, 1);
    produce(
        &t,
        &[
            (None, None, Some(br#"{"x": 1}"#.as_slice())),
            (None, None, Some(b"{not json".as_slice())),
            (None, None, Some(br#"{"x": "seven"}"#.as_slice())),
            (None, None, Some(br#"{"x": 3}"#.as_slice())),
            (None, None, None),
        ],
    );
    let db = common::db_with_workers(1);
    db.execute(&format!("CREATE SOURCE a (x BIGINT) WITH ({})", kafka_with(&t, "dl", ""))).expect("a");
    db.execute(&format!(
        "CREATE SOURCE b (x BIGINT) WITH ({})",
        kafka_with(&t, "dl2", &format!(", 'dlq.topic' = '{dlq}'"))
    ))
    .expect("b");
    db.start().expect("start");
    wait_for("the good rows", Duration::from_secs(30), || {
        db.flush().ok();
        common::sorted_query(&db, "SELECT * FROM a") == vec!["1", "3"]
            && common::sorted_query(&db, "SELECT * FROM b") == vec!["1", "3"]
    });
    let letters = db.dead_letters("a").expect("letters");
    let mut positions: Vec<String> = letters.iter().map(|l| l.position.clone()).collect();
    positions.sort();
    assert_eq!(positions, vec![format!("{t}/0@1"), format!("{t}/0@2"), format!("{t}/0@4")]);
    assert_eq!(letters.len(), 3, "{letters:?}");
    assert!(letters.iter().any(|l| l.position == format!("{t}/0@1") && !l.reason.is_empty()));
    assert!(letters.iter().any(|l| l.position == format!("{t}/0@4") && l.reason.contains("tombstone")));
    // With 'dlq.topic' they are produced there, with headers, and not kept locally.
    let got = consume(&dlq, 3, Duration::from_secs(10), false);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.iter().all(|m| m.headers.iter().any(|(k, v)| k == "laminar.source.position" && v.starts_with(&t))));
    assert!(got.iter().any(|m| m.value.as_deref() == Some("{not json")));
    assert!(db.dead_letters("b").expect("letters").is_empty());
    db.shutdown().expect("shutdown");
}

#[test]
fn updates_keep_their_order_per_key_across_partitions() {
    let t = unique("keyed");
    create_topic(&t, 4);
    // 50 keys, 20 versions each, each key always on one partition (keys hash to partitions).
    let mut msgs = Vec::new();
    for v in 0..20 {
        for k in 0..50 {
            msgs.push((format!("k{k}"), format!(r#"{{"k": "k{k}", "v": {v}}}"#)));
        }
    }
    let refs: Vec<Out<'_>> = msgs.iter().map(|(k, v)| (None, Some(k.as_str()), Some(v.as_bytes()))).collect();
    produce(&t, &refs);
    let db = common::db_with_workers(2);
    db.execute(&format!(
        "CREATE SOURCE latest (k VARCHAR, v BIGINT, PRIMARY KEY (k)) WITH ({})",
        kafka_with(&t, "order", "")
    ))
    .expect("source");
    db.start().expect("start");
    wait_for("every message", Duration::from_secs(30), || {
        db.source_metrics("latest").is_some_and(|m| m.total_events == 1000)
    });
    db.flush().expect("flush");
    let rows = common::sorted_query(&db, "SELECT DISTINCT v FROM latest");
    assert_eq!(rows, vec!["19"], "the last version of every key wins");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM latest"), 50);
    db.shutdown().expect("shutdown");
}

#[test]
fn a_consumer_group_resumes_from_its_committed_offsets() {
    let t = unique("resume");
    create_topic(&t, 2);
    let first: Vec<String> = (0..100).map(|i| format!(r#"{{"i": {i}}}"#)).collect();
    produce(&t, &first.iter().map(|m| (Some((m.len() % 2) as i32), None, Some(m.as_bytes()))).collect::<Vec<_>>());
    let group = unique("group");
    let run = |expect: u64| {
        let db = common::db_with_workers(1);
        db.execute(&format!("CREATE SOURCE s (i BIGINT) WITH ({})", kafka_with(&t, &group, ""))).expect("source");
        db.start().expect("start");
        wait_for("the messages", Duration::from_secs(30), || {
            db.source_metrics("s").is_some_and(|m| m.total_events >= expect)
        });
        std::thread::sleep(Duration::from_millis(300));
        db.flush().expect("flush");
        let n = count(&db, "SELECT COUNT(*) FROM s");
        db.shutdown().expect("shutdown"); // commits the offsets read
        n
    };
    assert_eq!(run(100), 100);
    let more: Vec<String> = (100..130).map(|i| format!(r#"{{"i": {i}}}"#)).collect();
    produce(&t, &more.iter().map(|m| (None, None, Some(m.as_bytes()))).collect::<Vec<_>>());
    assert_eq!(run(30), 30, "a new pipeline in the same group reads only what came after");
}

#[test]
fn sink_writes_rows_with_epoch_headers_and_updates_as_keyed_upserts() {
    let (out, upserts) = (unique("out"), unique("upserts"));
    create_topic(&out, 3);
    create_topic(&upserts, 2);
    let db = common::db_with_workers(2);
    db.execute("CREATE SOURCE trades (sym VARCHAR, px DOUBLE)").expect("source");
    let b = bootstrap();
    db.execute(&format!(
        "CREATE SINK big AS SELECT sym, px FROM trades WHERE px > 10 WITH (connector = 'kafka', \
         'bootstrap.servers' = '{b}', 'topic' = '{out}')"
    ))
    .expect("sink");
    db.execute(&format!(
        "CREATE SINK counts AS SELECT sym, COUNT(*) AS n FROM trades GROUP BY sym WITH (connector = 'kafka', \
         'bootstrap.servers' = '{b}', 'topic' = '{upserts}', 'partitioner' = 'key-hash')"
    ))
    .expect("upsert sink");
    db.start().expect("start");
    db.insert_json("trades", r#"[{"sym": "A", "px": 5}, {"sym": "A", "px": 50}, {"sym": "B", "px": 11}]"#)
        .expect("insert");
    db.flush().expect("flush");
    db.insert_json("trades", r#"[{"sym": "A", "px": 70}]"#).expect("insert");
    db.flush().expect("flush");
    let got = consume(&out, 3, Duration::from_secs(10), false);
    let mut values: Vec<String> = got.iter().filter_map(|m| m.value.clone()).collect();
    values.sort();
    assert_eq!(values, vec![r#"{"sym":"A","px":50.0}"#, r#"{"sym":"A","px":70.0}"#, r#"{"sym":"B","px":11.0}"#]);
    assert!(got.iter().all(|m| m.epoch.is_some()), "every message says which epoch produced it");
    // Upserts: the latest message per key is the current count.
    let ups = consume(&upserts, 10, Duration::from_secs(5), false);
    let mut latest = std::collections::BTreeMap::new();
    for m in &ups {
        latest.insert(m.key.clone().expect("keyed"), m.value.clone());
    }
    assert_eq!(latest.get(r#"{"sym":"A"}"#).cloned().flatten().as_deref(), Some(r#"{"sym":"A","n":3}"#));
    assert_eq!(latest.get(r#"{"sym":"B"}"#).cloned().flatten().as_deref(), Some(r#"{"sym":"B","n":1}"#));
    let m = db.sink_metrics("big").expect("metrics");
    assert_eq!(m.rows_written, 3);
    assert!(db.metrics().total_events_emitted >= 3);
    db.shutdown().expect("shutdown");
}

#[test]
fn deleted_keys_become_tombstones() {
    let t = unique("tomb");
    create_topic(&t, 1);
    let db = common::db_with_workers(1);
    db.execute("CREATE SOURCE users (id BIGINT, name VARCHAR, PRIMARY KEY (id))").expect("source");
    db.execute(&format!(
        "CREATE SINK mirror AS SELECT id, name FROM users WITH (connector = 'kafka', 'bootstrap.servers' = '{}', \
         'topic' = '{t}', 'key.columns' = 'id')",
        bootstrap()
    ))
    .expect("sink");
    db.start().expect("start");
    db.insert_json("users", r#"[{"id": 1, "name": "ann"}, {"id": 2, "name": "bob"}]"#).expect("insert");
    db.flush().expect("flush");
    let schema = db.schema("users").expect("schema");
    let keys = laminardb::ingest::batch_from_json_rows(&schema, r#"{"id": 2}"#).expect("keys");
    db.delete("users", &keys).expect("delete");
    db.insert_json("users", r#"[{"id": 1, "name": "anne"}]"#).expect("update");
    db.flush().expect("flush");
    let got = consume(&t, 4, Duration::from_secs(10), false);
    let last = |k: &str| got.iter().rev().find(|m| m.key.as_deref() == Some(k)).map(|m| m.value.clone());
    assert_eq!(last(r#"{"id":1}"#), Some(Some(r#"{"id":1,"name":"anne"}"#.to_string())));
    assert_eq!(last(r#"{"id":2}"#), Some(None), "a deleted key ends with a tombstone");
    db.shutdown().expect("shutdown");
}

#[test]
fn options_are_checked_at_create_and_a_dead_broker_fails_start() {
    let db = common::db_with_workers(1);
    for (opts, key) in [
        ("'topic' = 't', 'group.id' = 'g'", "bootstrap.servers"),
        ("'bootstrap.servers' = 'x:1', 'group.id' = 'g'", "topic"),
        ("'bootstrap.servers' = 'x:1', 'topic' = 't'", "group.id"),
        ("'bootstrap.servers' = 'x:1', 'topic' = 't', 'group.id' = 'g', 'bootstrap.server' = 'y'", "bootstrap.server"),
        ("'bootstrap.servers' = 'x:1', 'topic' = 't', 'group.id' = 'g', 'format' = 'avro'", "schema.registry.url"),
    ] {
        let e = db.execute(&format!("CREATE SOURCE s (x INT) WITH (connector = 'kafka', {opts})")).expect_err(key);
        assert!(matches!(e, LaminarError::Connector { .. }), "{e}");
        assert!(e.to_string().contains(key), "{e} should name {key}");
        assert!(db.sources().is_empty(), "a failed CREATE leaves nothing behind");
    }
    db.execute("CREATE SOURCE src (x INT)").expect("source");
    let e = db
        .execute("CREATE SINK k AS SELECT x FROM src WITH (connector = 'kafka', 'topic' = 't')")
        .expect_err("no brokers");
    assert!(matches!(e, LaminarError::Connector { .. }) && e.to_string().contains("bootstrap.servers"), "{e}");
    let e = db
        .execute("CREATE SINK k AS SELECT x FROM src WITH (connector = 'kafka', 'bootstrap.servers' = 'x:1', 'topic' = 't', 'partitioner' = 'hash')")
        .expect_err("bad partitioner");
    assert!(e.to_string().contains("partitioner"), "{e}");
    assert!(db.sinks().is_empty());
    db.execute(
        "CREATE SOURCE dead (x INT) WITH (connector = 'kafka', 'bootstrap.servers' = '127.0.0.1:1', \
         'topic' = 't', 'group.id' = 'g', 'sasl.password' = 'hunter2')",
    )
    .expect("created (no I/O at CREATE)");
    let shown = common::sorted_query(&db, "SHOW CREATE SOURCE dead").join("\n");
    assert!(!shown.contains("hunter2"), "secrets are masked: {shown}");
    let started = Instant::now();
    let e = db.start().expect_err("no broker there");
    assert!(started.elapsed() < Duration::from_secs(40), "start() gave up after {:?}", started.elapsed());
    assert!(matches!(e, LaminarError::Connector { .. }), "{e}");
    assert!(e.to_string().contains("127.0.0.1:1"), "the error names the brokers: {e}");
    assert!(!e.to_string().contains("hunter2"));
}

#[test]
fn the_log_reader_hides_aborted_transactions_and_a_zombie_producer_is_fenced() {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use rdkafka::ClientConfig;
    let t = unique("txnlog");
    create_topic(&t, 1);
    let txn = unique("zombie");
    let producer = |id: &str| -> ThreadedProducer<DefaultProducerContext> {
        let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("transactional.id", id)
            .create()
            .expect("producer");
        p.init_transactions(Duration::from_secs(30)).expect("init");
        p
    };
    let send = |p: &ThreadedProducer<DefaultProducerContext>, v: &str| {
        p.send(BaseRecord::<str, str>::to(&t).payload(v)).map_err(|(e, _)| e).expect("send");
        p.flush(Duration::from_secs(30)).expect("flush");
    };
    // A writes into a transaction and then "hangs"; B takes over the same transactional.id.
    let zombie = producer(&txn);
    zombie.begin_transaction().expect("begin");
    send(&zombie, "from the zombie");
    let fresh = producer(&txn);
    fresh.begin_transaction().expect("begin");
    send(&fresh, "committed");
    fresh.commit_transaction(Duration::from_secs(30)).expect("commit");
    // Apache Kafka answers PRODUCER_FENCED; any answer but success will do here: what matters is
    // that nothing of the zombie becomes visible.
    zombie.commit_transaction(Duration::from_secs(5)).expect_err("the zombie cannot commit");
    // An explicit abort by another producer.
    let other = producer(&unique("other"));
    other.begin_transaction().expect("begin");
    send(&other, "aborted");
    other.abort_transaction(Duration::from_secs(30)).expect("abort");
    let plain: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap()).create().expect("producer");
    send(&plain, "plain");

    let got: Vec<String> = common::kafka::committed_messages(&t).into_iter().filter_map(|m| m.value).collect();
    assert_eq!(got, vec!["committed", "plain"]);
}

/// Avro binary encoding, written by hand for the test (independent of the connector's codec).
mod avro_by_hand {
    pub fn long(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }

    pub fn string(out: &mut Vec<u8>, s: &str) {
        long(out, s.len() as i64);
        out.extend_from_slice(s.as_bytes());
    }

    pub fn read_long(b: &[u8], pos: &mut usize) -> i64 {
        let (mut z, mut shift) = (0u64, 0);
        loop {
            let x = b[*pos];
            *pos += 1;
            z |= u64::from(x & 0x7f) << shift;
            shift += 7;
            if x & 0x80 == 0 {
                return (z >> 1) as i64 ^ -((z & 1) as i64);
            }
        }
    }

    /// Decodes one record of `schema` (primitive fields, possibly `["null", T]` unions) to JSON.
    pub fn decode(schema: &serde_json::Value, b: &[u8]) -> serde_json::Value {
        let mut pos = 0;
        let mut row = serde_json::Map::new();
        for f in schema["fields"].as_array().expect("fields") {
            let mut ty = f["type"].clone();
            if let Some(branches) = ty.as_array().cloned() {
                let i = read_long(b, &mut pos) as usize;
                ty = branches[i].clone();
            }
            let v = match ty.as_str().or_else(|| ty["type"].as_str()).expect("type") {
                "null" => serde_json::Value::Null,
                "long" | "int" => read_long(b, &mut pos).into(),
                "double" => {
                    let v = f64::from_le_bytes(b[pos..pos + 8].try_into().expect("8 bytes"));
                    pos += 8;
                    v.into()
                }
                "string" => {
                    let n = read_long(b, &mut pos) as usize;
                    let s = String::from_utf8(b[pos..pos + n].to_vec()).expect("utf8");
                    pos += n;
                    s.into()
                }
                other => panic!("type {other} is not handled by the test decoder"),
            };
            row.insert(f["name"].as_str().expect("name").to_string(), v);
        }
        assert_eq!(pos, b.len(), "the whole record was read");
        serde_json::Value::Object(row)
    }
}

#[test]
fn avro_with_a_schema_registry_flows_in_and_out() {
    let reg = common::registry::Registry::start();
    let (input, output) = (unique("avro-in"), unique("avro-out"));
    create_topic(&input, 2);
    create_topic(&output, 1);
    let writer = r#"{"type":"record","name":"trade","fields":[{"name":"sym","type":"string"},{"name":"qty","type":"long"},{"name":"px","type":"double"}]}"#;
    let id = reg.register(&format!("{input}-value"), writer);
    let mut msgs = Vec::new();
    for i in 0..200i64 {
        let mut m = vec![0u8];
        m.extend_from_slice(&id.to_be_bytes());
        avro_by_hand::string(&mut m, &format!("S{}", i % 5));
        avro_by_hand::long(&mut m, i);
        m.extend_from_slice(&(i as f64 / 4.0).to_le_bytes());
        msgs.push(m);
    }
    msgs.push(vec![0, 0, 0, 0, 99, 1, 2]); // an unknown schema id: a dead letter
    produce(&input, &msgs.iter().map(|m| (None, None, Some(m.as_slice()))).collect::<Vec<_>>());

    let db = common::db_with_workers(2);
    let avro = format!(", 'format' = 'avro', 'schema.registry.url' = '{}'", reg.url);
    db.execute(&format!(
        "CREATE SOURCE trades (sym VARCHAR, qty BIGINT, px DOUBLE) WITH ({})",
        kafka_with(&input, "avro", &avro)
    ))
    .expect("avro source");
    db.execute(&format!(
        "CREATE SINK doubled AS SELECT sym, qty * 2 AS qty2, px FROM trades WHERE qty % 10 = 0 WITH (connector = 'kafka', \
         'bootstrap.servers' = '{}', 'topic' = '{output}'{avro})",
        bootstrap()
    ))
    .expect("avro sink");
    db.start().expect("start");
    wait_for("every message", Duration::from_secs(30), || {
        db.source_metrics("trades").is_some_and(|m| m.total_events == 200 && m.dead_letters == 1)
    });
    db.flush().expect("flush");
    assert_eq!(count(&db, "SELECT SUM(qty) FROM trades"), (0..200).sum::<i64>());
    assert_eq!(common::sorted_query(&db, "SELECT sym, qty, px FROM trades WHERE qty = 13"), vec!["S3|13|3.25"]);
    let letters = common::sorted_query(&db, "SELECT reason FROM trades_errors");
    assert!(letters.len() == 1 && letters[0].contains("99"), "{letters:?}");

    // The sink registered its value schema and framed every record with its id.
    let ids = reg.versions(&format!("{output}-value"));
    assert_eq!(ids.len(), 1, "one registered value schema");
    let schema: serde_json::Value = serde_json::from_str(&reg.schema(ids[0]).expect("schema")).expect("json");
    let decoded: Vec<serde_json::Value> = common::kafka::committed_records(&output)
        .iter()
        .map(|(_, r)| {
            let b = r.value.as_deref().expect("value");
            assert_eq!(b[0], 0, "Confluent magic byte");
            assert_eq!(u32::from_be_bytes(b[1..5].try_into().expect("id")), ids[0]);
            avro_by_hand::decode(&schema, &b[5..])
        })
        .collect();
    assert_eq!(decoded.len(), 20);
    let mut want: Vec<serde_json::Value> = (0..200i64)
        .filter(|i| i % 10 == 0)
        .map(|i| serde_json::json!({"sym": format!("S{}", i % 5), "qty2": i * 2, "px": i as f64 / 4.0}))
        .collect();
    let key = |v: &serde_json::Value| v["qty2"].as_i64();
    want.sort_by_key(key);
    let mut decoded = decoded;
    decoded.sort_by_key(key);
    assert_eq!(decoded, want);
    db.shutdown().expect("shutdown");
}

#[test]
fn a_slow_sink_pauses_the_partitions_and_nothing_is_lost() {
    let t = unique("slow");
    create_topic(&t, 2);
    let msgs: Vec<String> = (0..40_000).map(|i| format!(r#"{{"i": {i}}}"#)).collect();
    produce(
        &t,
        &msgs.iter().enumerate().map(|(n, m)| (Some((n % 2) as i32), None, Some(m.as_bytes()))).collect::<Vec<_>>(),
    );
    let db = Database::open_with_config(
        ":memory:",
        laminardb::LaminarConfig { workers: Some(1), buffer_size: 2_000, ..Default::default() },
    )
    .expect("open");
    db.execute(&format!(
        "CREATE SOURCE s (i BIGINT) WITH ({})",
        kafka_with(&t, "slow", ", 'batch_size' = '500', 'retention' = '0 rows'")
    ))
    .expect("source");
    db.execute("CREATE SINK slow AS SELECT i FROM s WITH (connector = 'blackhole', 'delay_ms' = '20')").expect("sink");
    db.start().expect("start");
    let (mut saw_paused, mut max_pending) = (false, 0);
    wait_for("every message through the slow sink", Duration::from_secs(60), || {
        let m = db.source_metrics("s").expect("metrics");
        max_pending = max_pending.max(m.pending);
        assert!(m.pending <= m.capacity + 500, "pending {} over capacity {}", m.pending, m.capacity);
        saw_paused |= m.is_backpressured && m.connector_state.as_deref() == Some("backpressured");
        db.sink_metrics("slow").is_some_and(|k| k.rows_written == 40_000)
    });
    assert!(saw_paused, "the source never reported backpressure");
    assert!(max_pending > 0, "pending rows were never reported");
    let m = db.source_metrics("s").expect("metrics");
    assert_eq!(m.total_events, 40_000, "every message once, none lost while paused");
    db.shutdown().expect("shutdown");
}

/// Two processes of a cluster (two databases in this test, joined over loopback): each reads
/// its half of a 4-partition topic and writes its rows to an exactly-once sink itself (with its
/// own transactional id), committed at the cluster's checkpoints; on a 1-partition topic the
/// process without a partition does not hold the event-time watermark back, so process 0's
/// windows close.
#[test]
fn a_cluster_splits_partitions_and_every_process_writes_its_sink() {
    let (input, single, out) = (unique("cluster-in"), unique("cluster-one"), unique("cluster-out"));
    create_topic(&input, 4);
    create_topic(&single, 1);
    create_topic(&out, 2);
    let nums: Vec<String> = (0..400).map(|k| format!(r#"{{"k": {k}}}"#)).collect();
    let spread: Vec<Out<'_>> =
        nums.iter().enumerate().map(|(i, j)| (Some((i % 4) as i32), None, Some(j.as_bytes()))).collect();
    produce(&input, &spread);
    let ticks: Vec<String> =
        (0..300).map(|s| format!(r#"{{"ts": "2024-01-01T00:{:02}:{:02}", "v": {s}}}"#, s / 60, s % 60)).collect();
    produce(&single, &ticks.iter().map(|t| (None, None, Some(t.as_bytes()))).collect::<Vec<Out<'_>>>());
    let addresses: Vec<String> = (0..2).map(|_| format!("127.0.0.1:{}", common::free_port())).collect();
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().expect("dir")).collect();
    let b = bootstrap();
    let nodes: Vec<_> = (0..2)
        .map(|p| {
            let (addresses, dir, b, input, single, out) = (
                addresses.clone(),
                dirs[p].path().to_path_buf(),
                b.clone(),
                input.clone(),
                single.clone(),
                out.clone(),
            );
            std::thread::spawn(move || {
                let config = laminardb::LaminarConfig {
                    workers: Some(1),
                    checkpoint_interval_ms: Some(3_600_000),
                    cluster: Some(laminardb::ClusterConfig::new(p, addresses)),
                    ..Default::default()
                };
                let db = Database::open_with_config(&dir, config).expect("open");
                db.execute(&format!("CREATE SOURCE nums (k BIGINT) WITH ({})", kafka_with(&input, "cg", "")))
                    .expect("source");
                db.execute(&format!(
                    "CREATE SOURCE ticks (ts TIMESTAMP, v BIGINT, WATERMARK FOR ts AS ts) WITH ({})",
                    kafka_with(&single, "cg", "")
                ))
                .expect("ticks");
                db.execute(&format!(
                    "CREATE SINK copied AS SELECT k FROM nums WITH (connector = 'kafka', 'bootstrap.servers' = '{b}', \
                     'topic' = '{out}', 'delivery.guarantee' = 'exactly-once')"
                ))
                .expect("sink");
                db.execute(
                    "CREATE STREAM bars AS SELECT window_start, COUNT(*) AS n FROM ticks \
                     GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE) EMIT ON WINDOW CLOSE",
                )
                .expect("stream");
                db.start().expect("start");
                wait_for("this process's partitions", Duration::from_secs(30), || {
                    db.source_metrics("nums").is_some_and(|m| m.total_events == 200)
                });
                if p == 0 {
                    // Minutes 0 to 3 close (the watermark is at minute 4:59): only if process 1,
                    // which reads no partition of `ticks`, does not hold it back.
                    wait_for("closed windows", Duration::from_secs(30), || {
                        count(&db, "SELECT COUNT(*) FROM bars") == 4
                    });
                }
                db.barrier().expect("barrier");
                let windows = count(&db, "SELECT COUNT(*) FROM bars");
                if p == 0 {
                    db.checkpoint().expect("checkpoint of the cluster");
                }
                let written = db.sink_metrics("copied").expect("metrics").rows_written;
                db.barrier().expect("barrier");
                db.shutdown().expect("shutdown");
                (windows, written)
            })
        })
        .collect();
    let results: Vec<(i64, u64)> = nodes.into_iter().map(|h| h.join().expect("node")).collect();
    assert_eq!(results[0].0, 4, "process 0 holds the closed windows");
    assert_eq!((results[0].1, results[1].1), (200, 200), "each process wrote its own rows to the sink");
    let got = consume(&out, 400, Duration::from_secs(10), true);
    let mut ks: Vec<String> = got.iter().filter_map(|m| m.value.clone()).collect();
    ks.sort();
    ks.dedup();
    assert_eq!(ks.len(), 400, "every row committed once, by the process that read it");
}
