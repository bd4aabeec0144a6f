//! Test kit for the Kafka tests: the broker started by `scripts/services.sh`
//! (`LAMINAR_TEST_KAFKA_BOOTSTRAP`), topics, an independent producer and consumer.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The broker's address. A missing broker is a setup failure, not a skipped test.
pub fn bootstrap() -> String {
    std::env::var("LAMINAR_TEST_KAFKA_BOOTSTRAP").unwrap_or_else(|_| {
        panic!("LAMINAR_TEST_KAFKA_BOOTSTRAP is not set: start the broker with `eval \"$(scripts/services.sh start)\"`")
    })
}

/// A topic name no other test uses.
pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{n}-{nanos}", std::process::id())
}

/// Creates `topic` with `partitions` partitions.
pub fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap()).create().expect("admin client");
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let r =
        rt.block_on(admin.create_topics([&t], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))));
    for res in r.expect("create topics") {
        res.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
    // Wait until the metadata shows it.
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap()).create().expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(2)) {
            if md.topics().iter().any(|t| t.name() == topic && t.partitions().len() == partitions as usize) {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("topic {topic} did not appear");
}

/// A message to produce: partition (None: the producer chooses), key, value (None: a tombstone).
pub type Out<'a> = (Option<i32>, Option<&'a str>, Option<&'a [u8]>);

/// Produces messages.
pub fn produce(topic: &str, msgs: &[Out<'_>]) {
    let p: BaseProducer = ClientConfig::new().set("bootstrap.servers", bootstrap()).create().expect("producer");
    for (part, key, value) in msgs {
        let mut rec: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic);
        if let Some(k) = key {
            rec = rec.key(*k);
        }
        if let Some(v) = value {
            rec = rec.payload(*v);
        }
        if let Some(pt) = part {
            rec = rec.partition(*pt);
        }
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    p.poll(Duration::from_millis(10));
                    rec = r;
                }
            }
        }
    }
    p.flush(Duration::from_secs(30)).expect("flush");
}

/// One consumed message.
#[derive(Clone, Debug)]
pub struct Consumed {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key as text.
    pub key: Option<String>,
    /// Value as text (None: a tombstone).
    pub value: Option<String>,
    /// The `laminar.epoch` header.
    pub epoch: Option<u64>,
    /// Every header key.
    pub headers: Vec<(String, String)>,
}

/// Reads every message of `topic` from the start until `want` messages arrived or nothing
/// new came for `quiet`. With `committed`, only committed transactions are read.
pub fn consume(topic: &str, want: usize, quiet: Duration, committed: bool) -> Vec<Consumed> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", if committed { "read_committed" } else { "read_uncommitted" })
        .create()
        .expect("consumer");
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let parts = md.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut last = Instant::now();
    while out.len() < want && last.elapsed() < quiet {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last = Instant::now();
                let headers: Vec<(String, String)> = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| {
                                (x.key.to_string(), String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let epoch = headers.iter().find(|(k, _)| k == "laminar.epoch").and_then(|(_, v)| v.parse().ok());
                out.push(Consumed {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
                    epoch,
                    headers,
                });
            }
            Some(Err(e)) => panic!("consume {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// Every record of `topic` whose transaction committed (and every non-transactional one), with
/// its partition, read from the raw log with its transaction markers, so that aborted
/// transactions stay hidden even on brokers whose read_committed consumers would show them.
pub fn committed_records(topic: &str) -> Vec<(i32, laminar_adapters::kafka::txnlog::LogRecord)> {
    use laminar_adapters::kafka::txnlog;
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap()).create().expect("client");
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let t = md.topics().iter().find(|t| t.name() == topic).expect("topic");
    let mut out = Vec::new();
    for p in t.partitions() {
        let b = md.brokers().iter().find(|b| b.id() == p.leader()).expect("leader");
        let log = txnlog::read_partition(&format!("{}:{}", b.host(), b.port()), topic, p.id(), 0).expect("read log");
        out.extend(txnlog::committed(&log).into_iter().map(|r| (p.id(), r.clone())));
    }
    out
}

/// [`committed_records`] as consumed messages (text). Nothing is deduplicated.
pub fn committed_messages(topic: &str) -> Vec<Consumed> {
    committed_records(topic)
        .into_iter()
        .map(|(partition, r)| Consumed {
            partition,
            offset: r.offset,
            key: r.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()),
            value: r.value.as_deref().map(|v| String::from_utf8_lossy(v).into_owned()),
            epoch: r.header("laminar.epoch").and_then(|v| v.parse().ok()),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v.as_deref().unwrap_or_default()).into_owned()))
                .collect(),
        })
        .collect()
}

/// Whether the broker hides aborted transactions from read_committed consumers (Apache Kafka
/// does; some Kafka-protocol brokers do not), found out with a probe topic.
pub fn broker_hides_aborted() -> bool {
    use rdkafka::producer::ThreadedProducer;
    let topic = unique("probe");
    create_topic(&topic, 1);
    let p: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("transactional.id", unique("probe-txn"))
        .create()
        .expect("producer");
    p.init_transactions(Duration::from_secs(30)).expect("init");
    p.begin_transaction().expect("begin");
    p.send(BaseRecord::<str, str>::to(&topic).payload("aborted")).map_err(|(e, _)| e).expect("send");
    p.flush(Duration::from_secs(30)).expect("flush");
    p.abort_transaction(Duration::from_secs(30)).expect("abort");
    p.begin_transaction().expect("begin");
    p.send(BaseRecord::<str, str>::to(&topic).payload("committed")).map_err(|(e, _)| e).expect("send");
    p.commit_transaction(Duration::from_secs(30)).expect("commit");
    let seen = consume(&topic, 2, Duration::from_secs(3), true);
    seen.iter().all(|m| m.value.as_deref() != Some("aborted"))
}
