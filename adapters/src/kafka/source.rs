//! Wiring of a Kafka consumer into the source framework.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::config::{SourceConfig, StartFrom, SOURCE_KEYS};
use super::watermark::PartitionWatermarks;
use crate::connector::{Change, Poll, SourceCapabilities, SourceChunk, SourceConnector, SourceSpec};
use crate::dlq::DeadLetter;
use crate::format::{Decoder, FormatKind};
use crate::options::OptionReader;
use crate::registry::SourceFactory;
use crate::{ConnectorError, Result};

/// Registration.
pub const SOURCE: SourceFactory = SourceFactory { name: "kafka", keys: SOURCE_KEYS, build };

/// How long metadata and offset requests may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one poll gathers messages.
const POLL_WINDOW: Duration = Duration::from_millis(20);

fn build(
    spec: &SourceSpec,
    r: &mut OptionReader<'_>,
    _ctx: &crate::registry::BuildContext<'_>,
) -> Result<Box<dyn SourceConnector>> {
    let config = SourceConfig::pull(r)?;
    let decoder = Decoder::new(&config.format, &spec.schema, &spec.primary_key)?;
    let watermark_column = spec
        .watermark_column
        .as_ref()
        .and_then(|c| spec.schema.fields().iter().position(|f| f.name().eq_ignore_ascii_case(c)));
    Ok(Box::new(KafkaSource {
        watermarks: PartitionWatermarks::new(config.idle_timeout),
        config,
        decoder,
        watermark_column,
        delay_ms: spec.watermark_delay_ms,
        consumer: None,
        dlq: None,
        positions: BTreeMap::new(),
        restored: None,
        paused: false,
        split: spec.split,
        owns_nothing: None,
    }))
}

/// Reads a topic: every partition assigned to this consumer, from the checkpointed offsets (or
/// the group's committed ones, or `auto.offset.reset`).
pub struct KafkaSource {
    config: SourceConfig,
    decoder: Decoder,
    watermark_column: Option<usize>,
    delay_ms: i64,
    consumer: Option<StreamConsumer>,
    dlq: Option<FutureProducer>,
    /// Partition → offset of the next message to read.
    positions: BTreeMap<i32, i64>,
    /// Offsets to start from (a restore from a checkpoint).
    restored: Option<BTreeMap<i32, i64>>,
    watermarks: PartitionWatermarks,
    paused: bool,
    /// The partitions this process reads (a cluster: partition `p` goes to process
    /// `p % processes`).
    split: crate::connector::Split,
    /// A cluster's process that got no partition (fewer partitions than processes): whether it
    /// has said so, with a watermark that holds nothing back.
    owns_nothing: Option<bool>,
}

fn unavailable(what: &str, brokers: &str, e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Unavailable(format!("kafka {what} (brokers {brokers}): {e}"))
}

impl KafkaSource {
    fn consumer(&self) -> Result<&StreamConsumer> {
        self.consumer.as_ref().ok_or_else(|| ConnectorError::Failed("the Kafka consumer is not open".into()))
    }

    /// The assignment with the offsets to start from.
    async fn assignment(&self, consumer: &StreamConsumer) -> Result<TopicPartitionList> {
        let topic = &self.config.topic;
        let brokers = &self.config.client.bootstrap;
        let md = consumer
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
            .map_err(|e| unavailable("metadata request failed", brokers, e))?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| unavailable("metadata has no topic", brokers, topic))?;
        if let Some(err) = t.error() {
            return Err(unavailable(&format!("topic '{topic}' is not available"), brokers, format!("{err:?}")));
        }
        if t.partitions().is_empty() {
            return Err(unavailable(&format!("topic '{topic}' has no partitions"), brokers, "create it first"));
        }
        let mine: Vec<_> = t.partitions().iter().filter(|p| self.split.owns(p.id() as u64)).collect();
        let mut all = TopicPartitionList::new();
        for p in &mine {
            all.add_partition(topic, p.id());
        }
        let committed = match &self.restored {
            Some(_) => None,
            None => consumer.committed_offsets(all.clone(), REQUEST_TIMEOUT).ok(),
        };
        let mut tpl = TopicPartitionList::new();
        for p in mine {
            let id = p.id();
            let from_group = committed.as_ref().and_then(|c| {
                c.find_partition(topic, id).and_then(|e| match e.offset() {
                    Offset::Offset(o) if o >= 0 => Some(o),
                    _ => None,
                })
            });
            let offset = match (self.restored.as_ref().and_then(|r| r.get(&id)), from_group) {
                (Some(&o), _) => Offset::Offset(o),
                (None, Some(o)) => Offset::Offset(o),
                (None, None) if self.restored.is_some() => Offset::Beginning,
                (None, None) => match self.config.start {
                    StartFrom::Earliest => Offset::Beginning,
                    StartFrom::Latest => Offset::End,
                },
            };
            tpl.add_partition_offset(topic, id, offset).map_err(|e| ConnectorError::Failed(e.to_string()))?;
        }
        Ok(tpl)
    }

    /// Commits a position (partition → next offset) to the consumer group.
    fn commit(&self, position: &serde_json::Value, mode: CommitMode) -> Result<()> {
        let Some(obj) = position.as_object() else { return Ok(()) };
        let mut tpl = TopicPartitionList::new();
        for (p, o) in obj {
            if let (Ok(p), Some(o)) = (p.parse::<i32>(), o.as_i64()) {
                tpl.add_partition_offset(&self.config.topic, p, Offset::Offset(o))
                    .map_err(|e| ConnectorError::Failed(e.to_string()))?;
            }
        }
        self.consumer()?
            .commit(&tpl, mode)
            .map_err(|e| unavailable("offset commit failed", &self.config.client.bootstrap, e))
    }

    /// Sends dead letters to `dlq.topic` with their position and reason as headers; returns
    /// those it could not send (they go to the source's errors instead).
    async fn send_dead_letters(&self, letters: Vec<DeadLetter>) -> Vec<DeadLetter> {
        let (Some(p), Some(topic)) = (&self.dlq, &self.config.dlq_topic) else { return letters };
        let mut failed = Vec::new();
        for l in letters {
            let headers = OwnedHeaders::new()
                .insert(Header { key: "laminar.source.position", value: Some(l.position.as_bytes()) })
                .insert(Header { key: "laminar.error", value: Some(l.reason.as_bytes()) });
            let rec: FutureRecord<'_, (), [u8]> = FutureRecord::to(topic).payload(&l.payload[..]).headers(headers);
            if p.send(rec, Duration::from_secs(5)).await.is_err() {
                failed.push(l);
            }
        }
        failed
    }
}

#[async_trait]
impl SourceConnector for KafkaSource {
    fn capabilities(&self) -> SourceCapabilities {
        SourceCapabilities {
            replayable: true,
            changelog: self.decoder.is_changelog(),
            bounded: false,
            watermarks: self.watermark_column.is_some(),
            key_from_peer: false,
            partitioned: true,
        }
    }

    async fn open(&mut self) -> Result<()> {
        // Reconnecting after a failure resumes where this consumer was.
        if !self.positions.is_empty() {
            self.restored = Some(self.positions.clone());
        }
        let mut c = self.config.client.client();
        c.set("group.id", &self.config.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("socket.timeout.ms", "10000")
            .set("auto.offset.reset", if self.config.start == StartFrom::Earliest { "earliest" } else { "latest" });
        let consumer: StreamConsumer =
            c.create().map_err(|e| ConnectorError::Config(format!("kafka consumer settings: {e}")))?;
        let tpl = self.assignment(&consumer).await?;
        consumer.assign(&tpl).map_err(|e| unavailable("assignment failed", &self.config.client.bootstrap, e))?;
        self.owns_nothing = (tpl.count() == 0).then_some(false);
        for e in tpl.elements() {
            if let Offset::Offset(o) = e.offset() {
                self.positions.insert(e.partition(), o);
            }
        }
        if self.config.dlq_topic.is_some() {
            let p: FutureProducer = self
                .config
                .client
                .client()
                .create()
                .map_err(|e| ConnectorError::Config(format!("kafka dead-letter producer settings: {e}")))?;
            self.dlq = Some(p);
        }
        self.consumer = Some(consumer);
        self.paused = false;
        Ok(())
    }

    async fn poll(&mut self) -> Result<Poll> {
        if let Some(told) = self.owns_nothing.as_mut() {
            // No rows can come from this process: its watermark must not hold the cluster's back.
            if !std::mem::replace(told, true) && self.watermark_column.is_some() {
                return Ok(Poll::Data(SourceChunk { watermark: Some(i64::MAX), ..Default::default() }));
            }
            return Ok(Poll::Idle(Duration::from_millis(200)));
        }
        let consumer = self.consumer()?;
        let deadline = Instant::now() + POLL_WINDOW;
        // Payloads per partition in arrival order: (offset, payload).
        let mut by_partition: BTreeMap<i32, Vec<(i64, Option<Vec<u8>>)>> = BTreeMap::new();
        let mut n = 0;
        while n < self.config.batch_size {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() && n > 0 {
                break;
            }
            let m = match tokio::time::timeout(left.max(Duration::from_millis(1)), consumer.recv()).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(unavailable("receive failed", &self.config.client.bootstrap, e)),
                Ok(Ok(m)) => m,
            };
            by_partition.entry(m.partition()).or_default().push((m.offset(), m.payload().map(<[u8]>::to_vec)));
            n += 1;
        }
        if n == 0 {
            return Ok(Poll::Idle(Duration::from_millis(5)));
        }
        let mut chunk = SourceChunk::default();
        let topic = self.config.topic.clone();
        for (p, msgs) in by_partition {
            let mut payloads: Vec<&[u8]> = Vec::with_capacity(msgs.len());
            let mut offsets = Vec::with_capacity(msgs.len());
            for (o, payload) in &msgs {
                match payload {
                    Some(b) => {
                        payloads.push(b);
                        offsets.push(*o);
                    }
                    // A tombstone: the end of a deleted key's history (Debezium emits one after
                    // each delete); nothing to decode.
                    None if self.config.format.kind == FormatKind::Debezium => {}
                    None => chunk.dead_letters.push(DeadLetter::new(
                        format!("{topic}/{p}@{o}"),
                        "empty message (a tombstone) where a record was expected",
                        &[],
                    )),
                }
            }
            if let Some(&(last, _)) = msgs.last() {
                self.positions.insert(p, last + 1);
            }
            self.watermarks.touch(p);
            if payloads.is_empty() {
                continue;
            }
            self.decoder.prepare(&payloads).await?;
            let (changes, letters) = self.decoder.decode(&payloads, &|i| format!("{topic}/{p}@{}", offsets[i]));
            if let Some(col) = self.watermark_column {
                let max = changes
                    .iter()
                    .filter_map(|c| match c {
                        Change::Insert(b) => laminar_dataflow::watermark::max_event_time_ms(b.column(col)),
                        Change::Delete(_) | Change::Clear => None,
                    })
                    .max();
                if let Some(max) = max {
                    self.watermarks.observe(p, max);
                }
            }
            chunk.changes.extend(changes);
            chunk.dead_letters.extend(letters);
        }
        if !chunk.dead_letters.is_empty() {
            let letters = std::mem::take(&mut chunk.dead_letters);
            chunk.dead_letters = self.send_dead_letters(letters).await;
        }
        if self.watermark_column.is_some() {
            chunk.watermark = self.watermarks.current().map(|w| w.saturating_sub(self.delay_ms));
        }
        Ok(Poll::Data(chunk))
    }

    fn checkpoint(&self) -> Result<serde_json::Value> {
        let m: serde_json::Map<String, serde_json::Value> =
            self.positions.iter().map(|(p, o)| (p.to_string(), serde_json::Value::from(*o))).collect();
        Ok(serde_json::Value::Object(m))
    }

    fn restore(&mut self, position: &serde_json::Value) -> Result<()> {
        let obj =
            position.as_object().ok_or_else(|| ConnectorError::Failed(format!("not a Kafka position: {position}")))?;
        let mut offsets = BTreeMap::new();
        for (p, o) in obj {
            let (Ok(p), Some(o)) = (p.parse::<i32>(), o.as_i64()) else {
                return Err(ConnectorError::Failed(format!("not a Kafka position: {position}")));
            };
            offsets.insert(p, o);
        }
        self.restored = Some(offsets);
        Ok(())
    }

    async fn commit_position(&mut self, position: &serde_json::Value) -> Result<()> {
        self.commit(position, CommitMode::Async)
    }

    async fn backpressure(&mut self, full: bool) -> Result<()> {
        if full == self.paused {
            return Ok(());
        }
        let consumer = self.consumer()?;
        let assignment = consumer.assignment().map_err(|e| ConnectorError::Failed(e.to_string()))?;
        let r = if full { consumer.pause(&assignment) } else { consumer.resume(&assignment) };
        r.map_err(|e| ConnectorError::Failed(format!("kafka pause/resume failed: {e}")))?;
        self.paused = full;
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        // What was read is committed to the group (a later run without a checkpoint resumes
        // there; with checkpoints the checkpointed offsets win).
        if self.consumer.is_some() && !self.positions.is_empty() {
            let pos = self.checkpoint()?;
            let _ = self.commit(&pos, CommitMode::Sync);
        }
        self.consumer = None;
        self.dlq = None;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("kafka {} topic {}", self.config.client.bootstrap, self.config.topic)
    }
}
