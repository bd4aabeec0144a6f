//! Wiring of a RabbitMQ consumer into the source framework.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};

use super::client::{connect, error};
use super::config::{AckMode, SourceConfig, SOURCE_KEYS};
use crate::connector::{Poll, SourceCapabilities, SourceChunk, SourceConnector, SourceSpec};
use crate::format::Decoder;
use crate::options::OptionReader;
use crate::registry::SourceFactory;
use crate::runner::ConnectorStatus;
use crate::{ConnectorError, Result};

/// Registration.
pub const SOURCE: SourceFactory = SourceFactory { name: "rabbitmq", keys: SOURCE_KEYS, build };

/// How long one poll gathers deliveries.
const POLL_WINDOW: Duration = Duration::from_millis(20);

fn build(
    spec: &SourceSpec,
    r: &mut OptionReader<'_>,
    _ctx: &crate::registry::BuildContext<'_>,
) -> Result<Box<dyn SourceConnector>> {
    let config = SourceConfig::pull(r)?;
    let decoder = Decoder::new(&config.format, &spec.schema, &spec.primary_key)?;
    Ok(Box::new(RabbitMqSource {
        name: spec.name.clone(),
        config,
        decoder,
        status: Arc::new(ConnectorStatus::new(String::new())),
        session: None,
        generation: 0,
        delivered: 0,
        acked: 0,
    }))
}

/// An open connection with its consuming channel.
struct Session {
    connection: Connection,
    channel: Channel,
    consumer: Consumer,
}

/// Consumes one queue. Deliveries are acknowledged with `multiple` up to a delivery tag: on
/// receipt (`auto`), or when the checkpoint holding them is durable (`manual`).
pub struct RabbitMqSource {
    name: String,
    config: SourceConfig,
    decoder: Decoder,
    status: Arc<ConnectorStatus>,
    session: Option<Session>,
    /// Which connection the delivery tags belong to (tags restart with every channel; what
    /// an earlier one left unacknowledged the broker has requeued).
    generation: u64,
    /// Tag of the last delivery handed to the pipeline.
    delivered: u64,
    /// Tag up to which deliveries are acknowledged.
    acked: u64,
}

impl RabbitMqSource {
    /// Acknowledges every delivery up to `tag` of the current channel.
    async fn ack_through(&mut self, tag: u64) -> Result<()> {
        if tag <= self.acked {
            return Ok(());
        }
        let Some(s) = &self.session else { return Ok(()) };
        s.channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await
            .map_err(|e| error("acknowledging deliveries failed", e))?;
        self.acked = tag;
        self.status.set_counter("unacked", (self.delivered - self.acked) as i64);
        Ok(())
    }
}

#[async_trait]
impl SourceConnector for RabbitMqSource {
    fn capabilities(&self) -> SourceCapabilities {
        // Unacknowledged deliveries come back after a crash, but the broker cannot seek: a
        // checkpoint restores the rows taken in before it, the broker redelivers the rest.
        SourceCapabilities {
            replayable: false,
            changelog: self.decoder.is_changelog(),
            bounded: false,
            watermarks: false,
            key_from_peer: false,
            partitioned: false,
        }
    }

    fn attach(&mut self, status: Arc<ConnectorStatus>) {
        self.status = status;
    }

    async fn open(&mut self) -> Result<()> {
        let broker = &self.config.broker;
        let connection = connect(broker, &format!("source {}", self.name)).await?;
        let channel = connection.create_channel().await.map_err(|e| error("cannot open a channel", e))?;
        channel
            .basic_qos(self.config.prefetch, BasicQosOptions { global: false })
            .await
            .map_err(|e| error("cannot set the prefetch count", e))?;
        let queue = self.config.queue.as_str();
        if self.config.declare {
            channel
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| error(&format!("cannot declare queue '{queue}'"), e))?;
        }
        let consumer = channel
            .basic_consume(
                queue.into(),
                format!("laminardb-{}", self.name).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| match error(&format!("cannot consume queue '{queue}'"), e) {
                ConnectorError::Failed(m) if m.contains("NOT_FOUND") => {
                    ConnectorError::Failed(format!("{m}, or set 'queue.declare' = 'true'"))
                }
                other => other,
            })?;
        self.generation += 1;
        self.delivered = 0;
        self.acked = 0;
        self.status.add_counter("connections", 1);
        self.status.set_counter("connected", 1);
        self.status.set_counter("unacked", 0);
        self.session = Some(Session { connection, channel, consumer });
        Ok(())
    }

    async fn poll(&mut self) -> Result<Poll> {
        let batch_size = self.config.batch_size;
        let broker = self.config.broker.clone();
        let auto = self.config.ack_mode == AckMode::Auto;
        // Auto mode acknowledges on receipt, in steps of half the prefetch count, so that the
        // broker never waits for this poll to end before sending more.
        let step = u64::from(self.config.prefetch / 2).max(1);
        let mut acked = self.acked;
        let s =
            self.session.as_mut().ok_or_else(|| ConnectorError::Failed("the RabbitMQ source is not open".into()))?;
        let deadline = Instant::now() + POLL_WINDOW;
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        let mut tags: Vec<u64> = Vec::new();
        let mut redelivered = 0i64;
        let mut lost: Option<ConnectorError> = None;
        while payloads.len() < batch_size {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() && !payloads.is_empty() {
                break;
            }
            match tokio::time::timeout(left.max(Duration::from_millis(1)), s.consumer.next()).await {
                Err(_) => break,
                Ok(Some(Ok(d))) => {
                    redelivered += i64::from(d.redelivered);
                    let tag = d.delivery_tag;
                    tags.push(tag);
                    payloads.push(d.data);
                    if auto && tag - acked >= step {
                        if let Err(e) = s.channel.basic_ack(tag, BasicAckOptions { multiple: true }).await {
                            lost = Some(error("acknowledging deliveries failed", e));
                            break;
                        }
                        acked = tag;
                    }
                }
                Ok(Some(Err(e))) => {
                    lost = Some(error("the connection was lost", e));
                    break;
                }
                Ok(None) => {
                    lost = Some(ConnectorError::Unavailable(format!(
                        "rabbitmq {}: the broker cancelled the consumer of queue '{}' (queue deleted?)",
                        broker.describe(),
                        self.config.queue
                    )));
                    break;
                }
            }
        }
        self.acked = acked;
        if payloads.is_empty() {
            if let Some(e) = lost {
                self.status.set_counter("connected", 0);
                return Err(e);
            }
            return Ok(Poll::Idle(Duration::from_millis(1)));
        }
        if let Some(&last) = tags.last() {
            self.delivered = last;
        }
        match lost {
            // Deliveries received before a failure are kept; the failure shows at the next
            // poll (what they leave unacknowledged, the broker sends again).
            Some(e) => self.status.set_last_error(e.to_string()),
            None if auto => self.ack_through(self.delivered).await?,
            None => {}
        }
        self.status.add_counter("messages", payloads.len() as i64);
        if redelivered > 0 {
            self.status.add_counter("redelivered", redelivered);
        }
        self.status.set_counter("unacked", (self.delivered - self.acked) as i64);
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        self.decoder.prepare(&refs).await?;
        let queue = &self.config.queue;
        let (changes, dead_letters) = self.decoder.decode(&refs, &|i| format!("{queue}#{}", tags[i]));
        Ok(Poll::Data(SourceChunk { changes, dead_letters, watermark: None }))
    }

    fn checkpoint(&self) -> Result<serde_json::Value> {
        if self.session.is_none() && self.delivered == 0 {
            return Ok(serde_json::Value::Null);
        }
        Ok(serde_json::json!({ "connection": self.generation, "delivery_tag": self.delivered }))
    }

    fn restore(&mut self, _position: &serde_json::Value) -> Result<()> {
        // Nothing to seek: what was not acknowledged before the restart is delivered again.
        Ok(())
    }

    async fn commit_position(&mut self, position: &serde_json::Value) -> Result<()> {
        let generation = position.get("connection").and_then(serde_json::Value::as_u64);
        let tag = position.get("delivery_tag").and_then(serde_json::Value::as_u64);
        match (generation, tag) {
            // Tags of an earlier connection: those deliveries were requeued when it closed.
            (Some(g), Some(t)) if g == self.generation => self.ack_through(t).await,
            _ => Ok(()),
        }
    }

    async fn close(&mut self) -> Result<()> {
        if self.config.ack_mode == AckMode::Auto {
            // Everything handed out has been taken in by the pipeline.
            let tag = self.delivered;
            let _ = self.ack_through(tag).await;
        }
        if let Some(s) = self.session.take() {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), s.connection.close(200, "laminardb source closed".into()))
                    .await;
        }
        self.status.set_counter("connected", 0);
        Ok(())
    }

    fn describe(&self) -> String {
        format!("rabbitmq {} queue {}", self.config.broker.describe(), self.config.queue)
    }
}
