//! Wiring of a Kafka producer into the sink framework.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use async_trait::async_trait;
use laminar_dataflow::batch::DiffBatch;
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::config::{Partitioner, SinkConfig, SINK_KEYS};
use super::pending::{read_messages, write_messages, Message as Pending};
use crate::connector::{SinkCapabilities, SinkConnector, SinkSpec};
use crate::format::registry::SchemaRegistry;
use crate::format::{Encoder, FormatKind};
use crate::options::OptionReader;
use crate::registry::SinkFactory;
use crate::{ConnectorError, Result};

/// Registration.
pub const SINK: SinkFactory = SinkFactory { name: "kafka", keys: SINK_KEYS, build };

/// The header holding the epoch that produced a message.
pub const EPOCH_HEADER: &str = "laminar.epoch";

const TIMEOUT: Duration = Duration::from_secs(30);

fn build(
    spec: &SinkSpec,
    r: &mut OptionReader<'_>,
    _ctx: &crate::registry::BuildContext<'_>,
) -> Result<Box<dyn SinkConnector>> {
    let config = SinkConfig::pull(r)?;
    let transactional = spec.options.get("delivery.guarantee").is_some_and(|g| g.trim() == "exactly-once");
    let encoder = Encoder::new(config.format.kind, &spec.schema, false, config.format.csv_delimiter)?;
    // The message key: the configured columns, else the query's key, else the first column.
    let names: Vec<String> = match &config.key_columns {
        Some(k) => k.clone(),
        None if !spec.key_columns.is_empty() => spec.key_columns.clone(),
        None => spec.schema.fields().first().map(|f| vec![f.name().clone()]).unwrap_or_default(),
    };
    let key = crate::upsert::key_indices(&spec.schema, &names)?;
    if !spec.append_only && key.is_empty() {
        return Err(ConnectorError::Config("an updating query needs a key for its upserts: set 'key.columns'".into()));
    }
    // One producer per process of a cluster: each needs its own transactional id.
    let transactional_id =
        config.transactional_id.clone().unwrap_or_else(|| format!("laminardb-{}", spec.name)) + &spec.part.suffix();
    Ok(Box::new(KafkaSink {
        config,
        transactional,
        transactional_id,
        append_only: spec.append_only,
        encoder,
        key,
        producer: None,
        partitions: 1,
        next_partition: 0,
        epoch: 0,
        upserts: HashMap::new(),
        pending: Vec::new(),
        in_transaction: false,
        sealed: false,
        held: Vec::new(),
        failure: Arc::new(Mutex::new(None)),
    }))
}

/// Records the first delivery failure.
struct Delivery {
    failure: Arc<Mutex<Option<String>>>,
}

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        if let Err((e, _)) = result {
            let mut f = self.failure.lock();
            if f.is_none() {
                *f = Some(e.to_string());
            }
        }
    }
}

/// Writes query results to a topic.
pub struct KafkaSink {
    config: SinkConfig,
    transactional: bool,
    transactional_id: String,
    append_only: bool,
    encoder: Encoder,
    key: Vec<usize>,
    producer: Option<ThreadedProducer<Delivery>>,
    partitions: i32,
    next_partition: i32,
    /// The epoch being written.
    epoch: u64,
    /// An updating query's changes of the current epoch, by key: the last value (None: deleted).
    upserts: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Exactly-once: the messages of the open transaction (kept in checkpoints).
    pending: Vec<Pending>,
    in_transaction: bool,
    /// Exactly-once: a checkpoint barrier passed and its transaction waits for the checkpoint to
    /// be durable; messages of later epochs are held back meanwhile (one transaction at a time).
    sealed: bool,
    held: Vec<Pending>,
    failure: Arc<Mutex<Option<String>>>,
}

fn unavailable(what: &str, brokers: &str, e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Unavailable(format!("kafka {what} (brokers {brokers}): {e}"))
}

impl KafkaSink {
    fn producer(&self) -> Result<&ThreadedProducer<Delivery>> {
        self.producer.as_ref().ok_or_else(|| ConnectorError::Failed("the Kafka producer is not open".into()))
    }

    fn brokers(&self) -> &str {
        &self.config.client.bootstrap
    }

    /// The keys of `rows` as JSON objects of the key columns.
    fn keys(&self, rows: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        if self.key.is_empty() {
            return Ok(vec![Vec::new(); rows.num_rows()]);
        }
        let projected = rows.project(&self.key)?;
        let mut out = Vec::new();
        {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
            w.write(&projected)?;
            w.finish()?;
        }
        Ok(out.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect())
    }

    /// Hands one message to the producer (waiting while its queue is full), or holds it while
    /// a sealed transaction waits for its checkpoint.
    fn produce(&mut self, msg: Pending) -> Result<()> {
        if self.sealed {
            self.held.push(msg);
            return Ok(());
        }
        self.send(msg)
    }

    fn send(&mut self, msg: Pending) -> Result<()> {
        let partition = match self.config.partitioner {
            Partitioner::KeyHash => None,
            _ if !self.append_only => None,
            Partitioner::RoundRobin => {
                self.next_partition = (self.next_partition + 1) % self.partitions.max(1);
                Some(self.next_partition)
            }
            Partitioner::Sticky => Some((msg.epoch % self.partitions.max(1) as u64) as i32),
        };
        let epoch = msg.epoch.to_string();
        let headers = OwnedHeaders::new().insert(Header { key: EPOCH_HEADER, value: Some(epoch.as_bytes()) });
        let producer = self.producer()?;
        let started = Instant::now();
        loop {
            let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.config.topic).headers(headers.clone());
            if let Some(v) = &msg.value {
                rec = rec.payload(&v[..]);
            }
            if let Some(k) = msg.key.as_deref().filter(|k| !k.is_empty()) {
                rec = rec.key(k);
            }
            if let Some(p) = partition {
                rec = rec.partition(p);
            }
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) if started.elapsed() < TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(unavailable("produce failed", self.brokers(), e)),
            }
        }
        if self.transactional {
            self.pending.push(msg);
        }
        Ok(())
    }

    fn begin_transaction(&mut self) -> Result<()> {
        self.producer()?.begin_transaction().map_err(|e| ConnectorError::Failed(format!("begin_transaction: {e}")))?;
        self.in_transaction = true;
        Ok(())
    }

    /// Sends what was held back while a transaction was sealed (into a new transaction if none
    /// is open).
    fn release_held(&mut self) -> Result<()> {
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return Ok(());
        }
        if !self.in_transaction {
            self.begin_transaction()?;
        }
        for m in held {
            self.send(m)?;
        }
        Ok(())
    }

    /// Produces the buffered upserts of the current epoch.
    fn flush_upserts(&mut self) -> Result<()> {
        let upserts: Vec<(Vec<u8>, Option<Vec<u8>>)> = self.upserts.drain().collect();
        let epoch = self.epoch;
        for (key, value) in upserts {
            self.produce(Pending { epoch, key: Some(key), value })?;
        }
        Ok(())
    }

    /// Waits until every message handed over is acknowledged; fails with the first failure.
    fn flush(&mut self) -> Result<()> {
        self.flush_upserts()?;
        let producer = self.producer()?;
        producer.flush(TIMEOUT).map_err(|e| unavailable("flush failed", self.brokers(), e))?;
        if let Some(f) = self.failure.lock().take() {
            return Err(unavailable("delivery failed", self.brokers(), f));
        }
        Ok(())
    }

    /// The largest epoch in the `laminar.epoch` headers of the last committed messages of each
    /// partition (what a previous run's transactions made visible). Over plain connections the
    /// log is read with its transaction markers ([`super::txnlog`]), which is right on every
    /// broker; otherwise (or if that fails) a read_committed consumer asks the broker.
    fn last_committed_epoch(&self) -> Result<Option<u64>> {
        let plain = self
            .config
            .client
            .settings
            .iter()
            .all(|(k, v)| k != "security.protocol" || v.eq_ignore_ascii_case("plaintext"));
        if plain {
            // A broker or log the reader cannot handle (e.g. compressed batches) falls through.
            if let Ok(e) = self.last_committed_epoch_from_markers() {
                return Ok(e);
            }
        }
        self.last_committed_epoch_read_committed()
    }

    fn last_committed_epoch_from_markers(&self) -> Result<Option<u64>> {
        let c: BaseConsumer =
            self.config.client.client().create().map_err(|e| ConnectorError::Config(e.to_string()))?;
        let topic = &self.config.topic;
        let md = c
            .fetch_metadata(Some(topic), TIMEOUT)
            .map_err(|e| unavailable("metadata request failed", self.brokers(), e))?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| ConnectorError::Failed(format!("topic '{topic}' has no metadata")))?;
        let mut best: Option<u64> = None;
        for p in t.partitions() {
            let leader = md
                .brokers()
                .iter()
                .find(|b| b.id() == p.leader())
                .map(|b| format!("{}:{}", b.host(), b.port()))
                .ok_or_else(|| ConnectorError::Failed(format!("partition {} of '{topic}' has no leader", p.id())))?;
            let (low, high) = c
                .fetch_watermarks(topic, p.id(), TIMEOUT)
                .map_err(|e| unavailable("offset request failed", self.brokers(), e))?;
            // Look back from the end until a committed message turns up.
            let mut back = 256;
            loop {
                let from = (high - back).max(low);
                let log = super::txnlog::read_partition(&leader, topic, p.id(), from)
                    .map_err(|e| ConnectorError::Failed(format!("reading {topic}/{}: {e}", p.id())))?;
                let last = super::txnlog::committed(&log)
                    .iter()
                    .filter_map(|r| r.header(EPOCH_HEADER).and_then(|v| v.parse::<u64>().ok()))
                    .max();
                if last.is_some() || from == low {
                    best = best.max(last);
                    break;
                }
                back *= 8;
            }
        }
        Ok(best)
    }

    fn last_committed_epoch_read_committed(&self) -> Result<Option<u64>> {
        let mut c = self.config.client.client();
        c.set("group.id", format!("{}-recovery", self.transactional_id))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
        let consumer: BaseConsumer = c.create().map_err(|e| ConnectorError::Config(e.to_string()))?;
        let topic = &self.config.topic;
        let mut best: Option<u64> = None;
        for p in 0..self.partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, TIMEOUT)
                .map_err(|e| unavailable("offset request failed", self.brokers(), e))?;
            // Look back until a message turns up (transaction markers take offsets too).
            let mut back = 1;
            while high - back >= low && high > low {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(topic, p, Offset::Offset(high - back))
                    .map_err(|e| ConnectorError::Failed(e.to_string()))?;
                consumer.assign(&tpl).map_err(|e| ConnectorError::Failed(e.to_string()))?;
                let deadline = Instant::now() + Duration::from_secs(2);
                let mut found = false;
                while Instant::now() < deadline {
                    match consumer.poll(Duration::from_millis(100)) {
                        Some(Ok(m)) => {
                            found = true;
                            let e = m.headers().and_then(|h| {
                                h.iter()
                                    .find(|h| h.key == EPOCH_HEADER)
                                    .and_then(|h| h.value)
                                    .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                            });
                            best = best.max(e);
                            if m.offset() + 1 >= high {
                                break;
                            }
                        }
                        Some(Err(_)) | None => {
                            if found {
                                break;
                            }
                        }
                    }
                }
                if found {
                    break;
                }
                back *= 8;
            }
        }
        Ok(best)
    }
}

#[async_trait]
impl SinkConnector for KafkaSink {
    fn capabilities(&self) -> SinkCapabilities {
        SinkCapabilities { upsert: true, changelog: false, exactly_once: true, parallel: true }
    }

    async fn open(&mut self) -> Result<()> {
        let mut c = self.config.client.client();
        c.set("message.timeout.ms", "30000").set("linger.ms", "5");
        if self.transactional {
            c.set("transactional.id", &self.transactional_id).set("enable.idempotence", "true");
        }
        *self.failure.lock() = None;
        let producer: ThreadedProducer<Delivery> = c
            .create_with_context(Delivery { failure: self.failure.clone() })
            .map_err(|e| ConnectorError::Config(format!("kafka producer settings: {e}")))?;
        let md = producer
            .client()
            .fetch_metadata(Some(&self.config.topic), Duration::from_secs(10))
            .map_err(|e| unavailable("metadata request failed", self.brokers(), e))?;
        self.partitions = md
            .topics()
            .iter()
            .find(|t| t.name() == self.config.topic)
            .map(|t| t.partitions().len() as i32)
            .filter(|&n| n > 0)
            .unwrap_or(1);
        if self.transactional {
            // Fences an earlier producer with the same id and aborts its open transaction.
            producer
                .init_transactions(TIMEOUT)
                .map_err(|e| unavailable("init_transactions failed", self.brokers(), e))?;
        }
        if self.config.format.kind == FormatKind::Avro {
            if let Some(reg) = self.config.format.registry.clone() {
                let mut registry = SchemaRegistry::new(reg)?;
                let schema = self.encoder.avro().map(|a| a.avro_schema().to_string()).unwrap_or_default();
                let id = registry.register(&format!("{}-value", self.config.topic), &schema).await?;
                if let Some(a) = self.encoder.avro() {
                    a.use_schema_id(id)?;
                }
            }
        }
        self.producer = Some(producer);
        self.in_transaction = false;
        Ok(())
    }

    async fn begin(&mut self, epoch: u64) -> Result<()> {
        // The previous epoch's upserts go out first.
        self.flush_upserts()?;
        self.epoch = epoch;
        if self.transactional && !self.in_transaction && !self.sealed {
            self.begin_transaction()?;
        }
        Ok(())
    }

    async fn write(&mut self, batch: &DiffBatch) -> Result<()> {
        let rows = self.encoder.prepare(batch)?;
        if self.append_only {
            let values = self.encoder.encode_rows(&DiffBatch::inserts(rows.clone()))?;
            let keys = if self.config.partitioner == Partitioner::KeyHash { Some(self.keys(&rows)?) } else { None };
            let epoch = self.epoch;
            for (i, v) in values.into_iter().enumerate() {
                let key = keys.as_ref().map(|k| k[i].clone());
                self.produce(Pending { epoch, key, value: Some(v) })?;
            }
            return Ok(());
        }
        // Updating query: the last change of each key wins (a retraction followed by the new
        // row is an upsert; a retraction alone a tombstone; the retraction of a row already
        // replaced changes nothing).
        let keys_all = self.keys(&batch.data)?;
        let values = self.encoder.encode_rows(&DiffBatch::inserts(batch.data.clone()))?;
        for (i, (key, value)) in keys_all.into_iter().zip(values).enumerate() {
            crate::upsert::fold(&mut self.upserts, key, value, batch.diff(i) > 0);
        }
        Ok(())
    }

    async fn pre_commit(&mut self, _epoch: u64) -> Result<()> {
        // Everything written so far is in the log (uncommitted, with exactly-once); later epochs
        // wait for this transaction's commit.
        self.flush()?;
        if self.transactional {
            self.sealed = true;
        }
        Ok(())
    }

    async fn commit(&mut self, _epoch: u64) -> Result<()> {
        if !self.transactional {
            return Ok(());
        }
        if self.in_transaction {
            self.producer()?
                .commit_transaction(TIMEOUT)
                .map_err(|e| ConnectorError::Failed(format!("commit_transaction: {e}")))?;
            self.in_transaction = false;
        }
        self.pending.clear();
        self.sealed = false;
        self.release_held()
    }

    async fn checkpoint_failed(&mut self) -> Result<()> {
        // The sealed transaction stays open and grows; the next checkpoint covers it.
        self.sealed = false;
        self.release_held()
    }

    async fn abort(&mut self, _epoch: u64) -> Result<()> {
        if self.transactional && self.in_transaction {
            let _ = self.producer()?.abort_transaction(TIMEOUT);
            self.in_transaction = false;
            self.pending.clear();
            self.held.clear();
            self.sealed = false;
        }
        self.upserts.clear();
        Ok(())
    }

    fn checkpoint_state(&mut self) -> Option<Vec<u8>> {
        self.transactional.then(|| write_messages(&self.pending))
    }

    async fn recover(&mut self, checkpoint: u64, state: Option<&[u8]>) -> Result<()> {
        let _ = checkpoint;
        let Some(state) = state.filter(|_| self.transactional) else { return Ok(()) };
        let pending = read_messages(state)?;
        let Some(last) = pending.iter().map(|m| m.epoch).max() else { return Ok(()) };
        if self.last_committed_epoch()?.is_some_and(|m| m >= last) {
            return Ok(()); // The transaction was committed before the crash.
        }
        // The checkpoint was durable but its transaction was aborted by the restart: write its
        // messages again, in a new transaction.
        self.begin_transaction()?;
        for m in pending {
            self.send(m)?;
        }
        self.flush()?;
        self.commit(checkpoint).await
    }

    async fn close(&mut self) -> Result<()> {
        if self.producer.is_some() {
            if self.transactional {
                // Not covered by a checkpoint: the next run writes these epochs again.
                if self.in_transaction {
                    let _ = self.producer()?.abort_transaction(TIMEOUT);
                }
            } else {
                self.flush_upserts()?;
                let _ = self.producer()?.flush(TIMEOUT);
            }
        }
        self.producer = None;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("kafka {} topic {}", self.config.client.bootstrap, self.config.topic)
    }
}
