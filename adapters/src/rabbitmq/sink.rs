//! Wiring of a RabbitMQ publisher (with publisher confirms) into the sink framework.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use async_trait::async_trait;
use laminar_dataflow::batch::DiffBatch;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use super::client::{connect, error};
use super::config::{RoutingKey, SinkConfig, SINK_KEYS};
use crate::connector::{SinkCapabilities, SinkConnector, SinkSpec};
use crate::format::{Encoder, FormatKind};
use crate::options::OptionReader;
use crate::registry::SinkFactory;
use crate::runner::ConnectorStatus;
use crate::{ConnectorError, Result};

/// Registration.
pub const SINK: SinkFactory = SinkFactory { name: "rabbitmq", keys: SINK_KEYS, build };

fn build(
    spec: &SinkSpec,
    r: &mut OptionReader<'_>,
    _ctx: &crate::registry::BuildContext<'_>,
) -> Result<Box<dyn SinkConnector>> {
    let key_names = r.opt_str("key.columns");
    let config = SinkConfig::pull(r)?;
    let kind = config.format.kind;
    let encoder = match kind {
        FormatKind::Raw => {
            crate::format::raw::check_sink(&spec.schema, spec.append_only)?;
            None
        }
        _ => Some(Encoder::new(kind, &spec.schema, false, config.format.csv_delimiter)?),
    };
    let route = match &config.routing_key {
        RoutingKey::Column(c) => {
            Route::Column(spec.schema.fields().iter().position(|f| f.name().eq_ignore_ascii_case(c)).ok_or_else(
                || ConnectorError::Config(format!("'routing_key.column': the query has no column '{c}'")),
            )?)
        }
        RoutingKey::Fixed(k) => Route::Fixed(k.clone()),
    };
    let key = crate::upsert::sink_key(spec, key_names)?;
    let content_type = match kind {
        FormatKind::Csv => "text/csv",
        FormatKind::Raw if matches!(spec.schema.field(0).data_type(), DataType::Binary | DataType::LargeBinary) => {
            "application/octet-stream"
        }
        FormatKind::Raw => "text/plain",
        _ => "application/json",
    };
    Ok(Box::new(RabbitMqSink {
        name: spec.name.clone(),
        config,
        encoder,
        kind,
        append_only: spec.append_only,
        key,
        route,
        content_type,
        status: Arc::new(ConnectorStatus::new(String::new())),
        session: None,
        epoch: 0,
        in_flight: VecDeque::new(),
        pending: HashMap::new(),
    }))
}

/// Where each message is routed, resolved against the query's columns.
enum Route {
    /// The same routing key for every message.
    Fixed(String),
    /// The value of this column.
    Column(usize),
}

/// A publish on its way: resolves when the broker confirms it (or returns or refuses it).
type InFlight = Pin<Box<dyn Future<Output = lapin::Result<Confirmation>> + Send>>;

/// One message: payload, routing key, and (updating queries) its operation.
struct Outgoing {
    payload: Vec<u8>,
    routing_key: String,
    op: Option<&'static str>,
}

/// An updating query's changes of one key within an epoch.
#[derive(Default)]
struct KeyChange {
    /// Insertions minus retractions.
    net: i64,
    /// The key's row after the changes so far (None: none).
    row: Option<Row>,
    /// A retracted row that this epoch did not insert: the key's row before the epoch.
    before: Option<Row>,
}

#[derive(Clone, PartialEq)]
struct Row {
    payload: Vec<u8>,
    routing_key: String,
}

struct Session {
    connection: Connection,
    channel: Channel,
}

/// Publishes every row (append-only queries) or every key's change per epoch (updating
/// queries) to an exchange; an epoch is delivered once the broker has confirmed all of it.
pub struct RabbitMqSink {
    name: String,
    config: SinkConfig,
    encoder: Option<Encoder>,
    kind: FormatKind,
    append_only: bool,
    key: Vec<usize>,
    route: Route,
    content_type: &'static str,
    status: Arc<ConnectorStatus>,
    session: Option<Session>,
    epoch: u64,
    in_flight: VecDeque<InFlight>,
    /// Updating queries: the epoch's changes by key (the key columns as JSON).
    pending: HashMap<String, KeyChange>,
}

impl RabbitMqSink {
    /// Payloads of the rows, one per row.
    fn payloads(&mut self, rows: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        if let Some(e) = self.encoder.as_mut() {
            return e.encode_rows(&DiffBatch::inserts(rows.clone()));
        }
        crate::format::raw::payloads(rows.column(0))
    }

    /// The routing key of every row.
    fn routing_keys(&self, rows: &RecordBatch) -> Result<Vec<String>> {
        match &self.route {
            Route::Column(c) => {
                let col = arrow::compute::cast(rows.column(*c), &DataType::Utf8)?;
                let s = col
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| ConnectorError::Failed("routing key column is not text".into()))?;
                Ok((0..s.len()).map(|i| if s.is_null(i) { String::new() } else { s.value(i).to_string() }).collect())
            }
            Route::Fixed(k) => Ok(vec![k.clone(); rows.num_rows()]),
        }
    }

    /// The payload of a change: the row with its operation (`"op"` in JSON, a last field in CSV).
    fn with_op(&self, mut payload: Vec<u8>, op: &str) -> Vec<u8> {
        match self.kind {
            FormatKind::Csv => {
                payload.push(self.config.format.csv_delimiter);
                payload.extend_from_slice(op.as_bytes());
            }
            _ => {
                if payload.last() == Some(&b'}') {
                    payload.pop();
                    if payload.len() > 1 {
                        payload.push(b',');
                    }
                    payload.extend_from_slice(format!("\"op\":\"{op}\"}}").as_bytes());
                }
            }
        }
        payload
    }

    fn channel(&self) -> Result<Channel> {
        self.session
            .as_ref()
            .map(|s| s.channel.clone())
            .ok_or_else(|| ConnectorError::Failed("the RabbitMQ sink is not open".into()))
    }

    /// Publishes `messages` in order without waiting for the broker; waits only when more than
    /// `max_in_flight` publishes await their confirm.
    async fn publish(&mut self, messages: Vec<Outgoing>) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let channel = self.channel()?;
        let exchange: ShortString = self.config.exchange.as_str().into();
        let options = BasicPublishOptions { mandatory: self.config.mandatory, immediate: false };
        let mut headers = FieldTable::default();
        headers.insert("laminar.epoch".into(), AMQPValue::LongLongInt(self.epoch as i64));
        let mut base = BasicProperties::default().with_content_type(self.content_type.into());
        if self.config.persistent {
            base = base.with_delivery_mode(2);
        }
        let n = messages.len() as i64;
        for m in messages {
            let mut h = headers.clone();
            if let Some(op) = m.op {
                h.insert("laminar.op".into(), AMQPValue::LongString(op.into()));
            }
            let props = base.clone().with_headers(h);
            let routing_key = ShortString::try_new(m.routing_key)
                .map_err(|e| ConnectorError::Failed(format!("a row's routing key cannot be sent: {e}")))?;
            let ch = channel.clone();
            let exchange = exchange.clone();
            let mut publish: InFlight =
                Box::pin(
                    async move { ch.basic_publish(exchange, routing_key, options, &m.payload, props).await?.await },
                );
            // The first poll hands the frames to the connection, so messages leave in order;
            // the confirm is awaited later.
            let first = publish.as_mut().poll(&mut Context::from_waker(Waker::noop()));
            match first {
                std::task::Poll::Ready(r) => self.settle(r)?,
                std::task::Poll::Pending => self.in_flight.push_back(publish),
            }
            while self.in_flight.len() > self.config.max_in_flight {
                if let Some(f) = self.in_flight.pop_front() {
                    let r = f.await;
                    self.settle(r)?;
                }
            }
        }
        self.status.add_counter("messages", n);
        Ok(())
    }

    /// Accounts for one confirm: a returned message is counted (unroutable with `mandatory`);
    /// a refusal or a lost connection fails the epoch.
    fn settle(&self, r: lapin::Result<Confirmation>) -> Result<()> {
        match r {
            Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Ok(()),
            Ok(Confirmation::Ack(Some(returned))) => {
                self.status.add_counter("returned", 1);
                self.status.set_last_error(format!(
                    "a message to exchange '{}' with routing key '{}' was returned as unroutable: {} {}",
                    returned.delivery.exchange, returned.delivery.routing_key, returned.reply_code, returned.reply_text
                ));
                Ok(())
            }
            Ok(Confirmation::Nack(_)) => {
                self.status.add_counter("nacked", 1);
                Err(ConnectorError::Unavailable(format!(
                    "rabbitmq {}: the broker refused a message (nack); the epoch is sent again",
                    self.config.broker.describe()
                )))
            }
            Err(e) => Err(error("publishing failed", e)),
        }
    }

    /// Updating queries: the epoch's change of every key as messages.
    fn settle_keys(&mut self) -> Vec<Outgoing> {
        let pending = std::mem::take(&mut self.pending);
        let mut out = Vec::with_capacity(pending.len());
        for (_, c) in pending {
            let after = i64::from(c.row.is_some());
            let before = after - c.net;
            let (op, row) = match (before > 0, c.row) {
                (false, Some(row)) => ("insert", row),
                (true, Some(row)) => {
                    if c.before.as_ref() == Some(&row) {
                        continue;
                    }
                    ("update", row)
                }
                (true, None) => match c.before {
                    Some(old) => ("delete", old),
                    None => continue,
                },
                (false, None) => continue,
            };
            let payload = self.with_op(row.payload, op);
            out.push(Outgoing { payload, routing_key: row.routing_key, op: Some(op) });
        }
        out
    }
}

#[async_trait]
impl SinkConnector for RabbitMqSink {
    fn capabilities(&self) -> SinkCapabilities {
        SinkCapabilities { upsert: false, changelog: true, exactly_once: false, parallel: true }
    }

    fn attach(&mut self, status: Arc<ConnectorStatus>) {
        self.status = status;
    }

    async fn open(&mut self) -> Result<()> {
        let broker = &self.config.broker;
        let connection = connect(broker, &format!("sink {}", self.name)).await?;
        let channel = connection.create_channel().await.map_err(|e| error("cannot open a channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| error("cannot turn on publisher confirms", e))?;
        if !self.config.exchange.is_empty() {
            // Fails now, naming the exchange, rather than at the first publish.
            channel
                .exchange_declare(
                    self.config.exchange.as_str().into(),
                    lapin::ExchangeKind::Direct,
                    lapin::options::ExchangeDeclareOptions { passive: true, ..Default::default() },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| error(&format!("exchange '{}' is not usable", self.config.exchange), e))?;
        }
        self.status.add_counter("connections", 1);
        self.status.set_counter("connected", 1);
        self.session = Some(Session { connection, channel });
        Ok(())
    }

    async fn begin(&mut self, epoch: u64) -> Result<()> {
        self.epoch = epoch;
        self.pending.clear();
        Ok(())
    }

    async fn write(&mut self, batch: &DiffBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.append_only {
            let rows = crate::upsert::expand_inserts(batch)?;
            let payloads = self.payloads(&rows)?;
            let keys = self.routing_keys(&rows)?;
            let messages = payloads.into_iter().zip(keys).map(|(payload, routing_key)| Outgoing {
                payload,
                routing_key,
                op: None,
            });
            return self.publish(messages.collect()).await;
        }
        let keys = crate::upsert::key_strings(&batch.data, &self.key)?;
        let payloads = self.payloads(&batch.data)?;
        let routing = self.routing_keys(&batch.data)?;
        for (i, ((key, payload), routing_key)) in keys.into_iter().zip(payloads).zip(routing).enumerate() {
            let row = Row { payload, routing_key };
            let d = batch.diff(i);
            let c = self.pending.entry(key).or_default();
            c.net += d;
            if d > 0 {
                c.row = Some(row);
            } else if c.row.as_ref() == Some(&row) {
                // Retracts what this epoch inserted.
                c.row = None;
            } else {
                // Retracts the row the key had before (an update's old row, or a delete).
                c.before = Some(row);
            }
        }
        Ok(())
    }

    async fn commit(&mut self, _epoch: u64) -> Result<()> {
        if !self.append_only {
            let messages = self.settle_keys();
            self.publish(messages).await?;
        }
        // Delivered once the broker has confirmed every message of the epoch.
        while let Some(f) = self.in_flight.pop_front() {
            let r = f.await;
            self.settle(r)?;
        }
        Ok(())
    }

    async fn abort(&mut self, _epoch: u64) -> Result<()> {
        self.pending.clear();
        self.in_flight.clear();
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        self.in_flight.clear();
        if let Some(s) = self.session.take() {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), s.connection.close(200, "laminardb sink closed".into()))
                    .await;
        }
        self.status.set_counter("connected", 0);
        Ok(())
    }

    fn describe(&self) -> String {
        let ex = if self.config.exchange.is_empty() { "(default)" } else { self.config.exchange.as_str() };
        format!("rabbitmq {} exchange {ex}", self.config.broker.describe())
    }
}
