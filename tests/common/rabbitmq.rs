//! Test kit for the RabbitMQ tests: the broker started by `scripts/services.sh`
//! (`LAMINAR_TEST_RABBITMQ_URI`), and a plain AMQP client to declare, publish and read.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

/// The broker's URI. A missing broker is a setup failure, not a skipped test.
pub fn uri() -> String {
    std::env::var("LAMINAR_TEST_RABBITMQ_URI").unwrap_or_else(|_| {
        panic!("LAMINAR_TEST_RABBITMQ_URI is not set: start the broker with `eval \"$(scripts/services.sh start)\"`")
    })
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    super::kafka::unique(prefix)
}

/// Runs `rabbitmqctl` against the test node; returns its standard output.
pub fn ctl(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh");
    let out =
        std::process::Command::new("bash").arg(script).arg("rabbitmqctl").args(args).output().expect("run rabbitmqctl");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Closes, from the broker's side, every connection whose client-given name contains `name`
/// (LaminarDB names its connections `laminardb source <name>` / `laminardb sink <name>`);
/// returns how many. Connections of other tests running meanwhile are left alone.
pub fn close_connections_named(name: &str) -> usize {
    let mut n = 0;
    for line in ctl(&["list_connections", "pid", "client_properties"]).lines() {
        if !line.contains(name) {
            continue;
        }
        let Some(pid) = line.split_whitespace().next() else { continue };
        ctl(&["close_connection", pid, "test: dropped on purpose"]);
        n += 1;
    }
    n
}

/// A message read back: payload and headers (as text).
#[derive(Debug, Clone)]
pub struct Got {
    /// Body.
    pub payload: String,
    /// Routing key it was published with.
    pub routing_key: String,
    /// Headers, values rendered as text.
    pub headers: BTreeMap<String, String>,
    /// Content type.
    pub content_type: Option<String>,
}

/// A plain AMQP client (its own connection) for setting up and checking.
pub struct Client {
    rt: tokio::runtime::Runtime,
    conn: Connection,
    ch: Channel,
}

impl Client {
    /// Connects to the test broker.
    pub fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
        let (conn, ch) = rt.block_on(async {
            let conn = Connection::connect(&uri(), ConnectionProperties::default()).await.expect("connect");
            let ch = conn.create_channel().await.expect("channel");
            ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
            (conn, ch)
        });
        Self { rt, conn, ch }
    }

    /// Declares a durable queue (purged, in case it exists).
    pub fn queue(&self, name: &str) {
        self.rt.block_on(async {
            self.ch
                .queue_declare(
                    name.into(),
                    QueueDeclareOptions { durable: true, ..Default::default() },
                    FieldTable::default(),
                )
                .await
                .expect("declare queue");
            self.ch.queue_purge(name.into(), QueuePurgeOptions::default()).await.expect("purge");
        });
    }

    /// Declares an exchange of `kind`.
    pub fn exchange(&self, name: &str, kind: ExchangeKind) {
        self.rt.block_on(async {
            self.ch
                .exchange_declare(name.into(), kind, ExchangeDeclareOptions::default(), FieldTable::default())
                .await
                .expect("declare exchange");
        });
    }

    /// Binds `queue` to `exchange` with `key`.
    pub fn bind(&self, queue: &str, exchange: &str, key: &str) {
        self.rt.block_on(async {
            self.ch
                .queue_bind(
                    queue.into(),
                    exchange.into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bind");
        });
    }

    /// Publishes `payloads` to `queue` through the default exchange and waits for the confirms.
    pub fn publish<P: AsRef<[u8]>>(&self, queue: &str, payloads: &[P]) {
        self.rt.block_on(async {
            let mut confirms = Vec::with_capacity(payloads.len());
            for p in payloads {
                let c = self
                    .ch
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions::default(),
                        p.as_ref(),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .expect("publish");
                confirms.push(c);
            }
            for c in confirms {
                assert!(c.await.expect("confirm").is_ack(), "the broker refused a test message");
            }
        });
    }

    /// Reads (and acknowledges) every message of `queue` until `n` are read or `timeout` passes.
    pub fn get(&self, queue: &str, n: usize, timeout: Duration) -> Vec<Got> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        self.rt.block_on(async {
            while out.len() < n && Instant::now() < deadline {
                match self.ch.basic_get(queue.into(), BasicGetOptions { no_ack: false }).await.expect("get") {
                    Some(m) => {
                        let d = &m.delivery;
                        let headers = d
                            .properties
                            .headers()
                            .as_ref()
                            .map(|h| h.inner().iter().map(|(k, v)| (k.to_string(), text(v))).collect())
                            .unwrap_or_default();
                        out.push(Got {
                            payload: String::from_utf8_lossy(&d.data).into_owned(),
                            routing_key: d.routing_key.to_string(),
                            headers,
                            content_type: d.properties.content_type().as_ref().map(|c| c.to_string()),
                        });
                        d.acker.ack(BasicAckOptions::default()).await.expect("ack");
                    }
                    None => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
        out
    }

    /// Ready and unacknowledged messages of `queue`, as the broker reports them.
    pub fn depth(&self, queue: &str) -> (u64, u64) {
        let out = ctl(&["list_queues", "name", "messages_ready", "messages_unacknowledged"]);
        for line in out.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 3 && f[0] == queue {
                return (f[1].parse().unwrap_or(0), f[2].parse().unwrap_or(0));
            }
        }
        panic!("queue {queue} not listed: {out}");
    }
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let conn = &self.conn;
        self.rt.block_on(async {
            let _ = conn.close(200, "done".into()).await;
        });
    }
}

fn text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::LongLongInt(i) => i.to_string(),
        AMQPValue::LongInt(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}
