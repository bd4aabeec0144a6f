//! RabbitMQ connector benchmark (run with `cargo bench --bench rabbitmq`, against the broker of
//! `scripts/services.sh`: `LAMINAR_TEST_RABBITMQ_URI`). Small JSON messages (~60 bytes),
//! `LAMINAR_BENCH_RABBITMQ_MESSAGES` of them (default 200,000; 20,000 in an unoptimized
//! build, as `cargo test --all-targets` runs it), publisher confirms on.
//!
//! - in: a queue filled beforehand is drained by a source (`ack_mode` `auto`, and `manual` with
//!   checkpoints every 100 ms) until every message is in the pipeline and acknowledged; next to
//!   it, a bare AMQP consumer (lapin, same prefetch, one multiple-ack per 1,000 deliveries) on
//!   the same broker, the ceiling for any client.
//! - out: rows inserted into a source go through `SELECT *` into a sink publishing to a queue,
//!   timed until every message is confirmed (`flush()` returns); next to it, a bare publisher
//!   (lapin, waiting for every confirm at the end) of the same messages with the same properties.
//!
//! Prints one line per case and the ratio to the bare client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use futures_util::StreamExt;
use laminardb::{Database, LaminarConfig};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

const PREFETCH: u16 = 1_000;

fn uri() -> String {
    std::env::var("LAMINAR_TEST_RABBITMQ_URI")
        .expect("LAMINAR_TEST_RABBITMQ_URI is not set: start the broker with `eval \"$(scripts/services.sh start)\"`")
}

fn message(i: usize) -> String {
    format!(r#"{{"id":{i},"region":"r{}","amount":{}}}"#, i % 16, i % 1000)
}

async fn channel() -> (Connection, Channel) {
    let conn = Connection::connect(&uri(), ConnectionProperties::default()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    (conn, ch)
}

async fn fresh_queue(ch: &Channel, q: &str) {
    let _ = ch.queue_delete(q.into(), QueueDeleteOptions::default()).await;
    ch.queue_declare(q.into(), QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default())
        .await
        .expect("declare");
}

/// Publishes `n` messages to `q` (pipelined, every confirm awaited); returns the time taken.
async fn publish(ch: &Channel, q: &str, n: usize) -> Duration {
    // The same properties as the sink's messages: persistent, a content type, the epoch header.
    let mut headers = FieldTable::default();
    headers.insert("laminar.epoch".into(), AMQPValue::LongLongInt(1));
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_headers(headers);
    let start = Instant::now();
    let mut confirms = Vec::with_capacity(n);
    for i in 0..n {
        let c = ch
            .basic_publish("".into(), q.into(), BasicPublishOptions::default(), message(i).as_bytes(), props.clone())
            .await
            .expect("publish");
        confirms.push(c);
    }
    for c in confirms {
        assert!(c.await.expect("confirm").is_ack());
    }
    start.elapsed()
}

/// Consumes `n` messages from `q` with acks; returns the time taken.
async fn consume(ch: &Channel, q: &str, n: usize) -> Duration {
    ch.basic_qos(PREFETCH, BasicQosOptions::default()).await.expect("qos");
    let start = Instant::now();
    let mut consumer = ch
        .basic_consume(q.into(), "bench".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    let mut seen = 0;
    while seen < n {
        let d = consumer.next().await.expect("open").expect("delivery");
        let _: serde_json::Value = serde_json::from_slice(&d.data).expect("json");
        seen += 1;
        if seen % 1000 == 0 || seen == n {
            ch.basic_ack(d.delivery_tag, BasicAckOptions { multiple: true }).await.expect("ack");
        }
    }
    start.elapsed()
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn depth(rt: &tokio::runtime::Runtime, ch: &Channel, q: &str) -> u32 {
    rt.block_on(async {
        ch.queue_declare(q.into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
            .await
            .expect("passive declare")
            .message_count()
    })
}

fn source_in(rt: &tokio::runtime::Runtime, ch: &Channel, n: usize, manual: bool) -> f64 {
    let q = format!("bench-in-{}", if manual { "manual" } else { "auto" });
    rt.block_on(async {
        fresh_queue(ch, &q).await;
        publish(ch, &q, n).await;
    });
    let dir = tempfile::tempdir().expect("dir");
    let config = if manual {
        LaminarConfig { workers: Some(1), checkpoint_interval_ms: Some(100), ..Default::default() }
    } else {
        LaminarConfig { workers: Some(1), ..Default::default() }
    };
    let path = if manual { dir.path().to_path_buf() } else { std::path::PathBuf::from(":memory:") };
    let db = Database::open_with_config(&path, config).expect("open");
    let prefetch = if manual { 20_000 } else { PREFETCH as usize };
    let ack = if manual { "manual" } else { "auto" };
    db.execute(&format!(
        "CREATE SOURCE ev (id BIGINT, region VARCHAR, amount BIGINT) WITH (connector = 'rabbitmq', 'uri' = '{}', \
         'queue' = '{q}', 'prefetch_count' = '{prefetch}', 'ack_mode' = '{ack}')",
        uri()
    ))
    .expect("source");
    let start = Instant::now();
    db.start().expect("start");
    while db.source_metrics("ev").map_or(0, |m| m.total_events) < n as u64 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let taken = start.elapsed();
    // Acknowledged: the broker holds nothing of it any more.
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.source_metrics("ev").and_then(|m| m.details.get("unacked").copied()).unwrap_or(1) > 0 {
        assert!(Instant::now() < deadline, "deliveries left unacknowledged");
        std::thread::sleep(Duration::from_millis(1));
    }
    let acked = start.elapsed();
    db.shutdown().expect("shutdown");
    assert_eq!(depth(rt, ch, &q), 0);
    let label = format!("source ({ack}{}):", if manual { ", checkpoints 100 ms" } else { "" });
    println!(
        "  {label:<36}{:>9.0} msgs/s in ({:.2} s to take all in, {:.2} s until all acknowledged)",
        rate(n, acked),
        taken.as_secs_f64(),
        acked.as_secs_f64()
    );
    rate(n, acked)
}

fn sink_out(rt: &tokio::runtime::Runtime, ch: &Channel, n: usize) -> f64 {
    let q = "bench-out";
    rt.block_on(fresh_queue(ch, q));
    let db =
        Database::open_with_config(":memory:", LaminarConfig { workers: Some(1), ..Default::default() }).expect("open");
    db.execute("CREATE SOURCE ev (id BIGINT, region VARCHAR, amount BIGINT)").expect("source");
    db.execute(&format!(
        "CREATE SINK out AS SELECT id, region, amount FROM ev WITH (connector = 'rabbitmq', 'uri' = '{}', \
         'routing_key' = '{q}')",
        uri()
    ))
    .expect("sink");
    db.start().expect("start");
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("amount", DataType::Int64, false),
    ]));
    let batches: Vec<RecordBatch> = (0..n)
        .step_by(10_000)
        .map(|s| {
            let e = (s + 10_000).min(n);
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values((s..e).map(|i| i as i64))),
                    Arc::new(StringArray::from_iter_values((s..e).map(|i| format!("r{}", i % 16)))),
                    Arc::new(Int64Array::from_iter_values((s..e).map(|i| (i % 1000) as i64))),
                ],
            )
            .expect("batch")
        })
        .collect();
    let start = Instant::now();
    for b in &batches {
        db.insert("ev", b).expect("insert");
    }
    db.flush().expect("flush");
    let took = start.elapsed();
    let m = db.sink_metrics("out").expect("metrics");
    assert_eq!(m.details.get("messages").copied(), Some(n as i64), "{m:?}");
    db.shutdown().expect("shutdown");
    let deadline = Instant::now() + Duration::from_secs(10);
    while depth(rt, ch, q) < n as u32 {
        assert!(Instant::now() < deadline, "the queue holds {} of {n}", depth(rt, ch, q));
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("  {:<36}{:>9.0} msgs/s out ({:.2} s)", "sink (confirms on):", rate(n, took), took.as_secs_f64());
    rate(n, took)
}

fn main() {
    // `cargo test --all-targets` runs this unoptimized as a smoke test: fewer messages there.
    let default = if cfg!(debug_assertions) { 20_000 } else { 200_000 };
    let n: usize =
        std::env::var("LAMINAR_BENCH_RABBITMQ_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let (_conn, ch) = rt.block_on(channel());
    println!("RabbitMQ, {n} JSON messages, publisher confirms on, 1 timely worker");

    let bare_in = rt.block_on(async {
        fresh_queue(&ch, "bench-bare").await;
        publish(&ch, "bench-bare", n).await;
        let (_c, consumer_ch) = channel().await;
        rate(n, consume(&consumer_ch, "bench-bare", n).await)
    });
    println!("  {:<36}{bare_in:>9.0} msgs/s in (prefetch {PREFETCH}, JSON parsed)", "bare lapin consumer:");
    let auto = source_in(&rt, &ch, n, false);
    let manual = source_in(&rt, &ch, n, true);

    let bare_out = rt.block_on(async {
        fresh_queue(&ch, "bench-bare").await;
        rate(n, publish(&ch, "bench-bare", n).await)
    });
    println!("  {:<36}{bare_out:>9.0} msgs/s out", "bare lapin publisher:");
    let out = sink_out(&rt, &ch, n);
    println!(
        "ratios to the bare client: in (auto) {:.2}, in (manual) {:.2}, out {:.2}",
        auto / bare_in,
        manual / bare_in,
        out / bare_out
    );
    rt.block_on(async {
        for q in ["bench-bare", "bench-in-auto", "bench-in-manual", "bench-out"] {
            let _ = ch.queue_delete(q.into(), QueueDeleteOptions::default()).await;
        }
    });
}
