//! Typed configuration of the RabbitMQ source and sink, pulled from `WITH (…)` options.

use std::str::FromStr;

use lapin::uri::AMQPUri;

use crate::format::{FormatKind, FormatSpec};
use crate::options::OptionReader;
use crate::{ConnectorError, Result};

/// The broker to talk to.
#[derive(Clone, Debug)]
pub struct Broker {
    /// `uri`: `amqp://user:password@host:port/vhost` or `amqps://…` (holds a secret).
    pub uri: String,
    /// `tls.ca_file`: PEM certificates to trust (amqps) besides the web's roots.
    pub ca_file: Option<String>,
}

impl Broker {
    fn pull(r: &mut OptionReader<'_>) -> Result<Self> {
        let uri = r.required_str("uri")?.trim().to_string();
        let shown = crate::options::redact_uri(&uri).unwrap_or_else(|| uri.clone());
        if !(uri.starts_with("amqp://") || uri.starts_with("amqps://")) {
            return Err(r.bad(
                "uri",
                &shown,
                "an amqp:// or amqps:// URI, e.g. 'amqp://guest:guest@localhost:5672/%2f'",
            ));
        }
        if let Err(e) = AMQPUri::from_str(&uri) {
            return Err(ConnectorError::Config(format!("option 'uri' ('{shown}') is not a valid AMQP URI: {e}")));
        }
        let ca_file = r.opt_str("tls.ca_file");
        if let Some(f) = &ca_file {
            if !uri.starts_with("amqps://") {
                return Err(ConnectorError::Config("option 'tls.ca_file' needs an amqps:// 'uri'".into()));
            }
            if !std::path::Path::new(f).is_file() {
                return Err(ConnectorError::Config(format!("option 'tls.ca_file': no such file '{f}'")));
            }
        }
        Ok(Self { uri, ca_file })
    }

    /// The URI without its password, for messages and metrics.
    pub fn describe(&self) -> String {
        crate::options::redact_uri(&self.uri).unwrap_or_else(|| self.uri.clone())
    }
}

/// When deliveries are acknowledged to the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    /// On receipt (what a crash loses was not checkpointed anyway).
    Auto,
    /// Once a checkpoint holding them is durable (without periodic checkpoints: once taken in).
    Manual,
}

/// The source's configuration.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// The broker.
    pub broker: Broker,
    /// `queue`: the queue to consume.
    pub queue: String,
    /// `format`: json (default), csv, raw, avro.
    pub format: FormatSpec,
    /// `prefetch_count`: unacknowledged deliveries the broker lets this consumer have.
    pub prefetch: u16,
    /// `ack_mode`.
    pub ack_mode: AckMode,
    /// `queue.declare`: declare the queue (durable) before consuming.
    pub declare: bool,
    /// `batch_size`: deliveries per poll at most.
    pub batch_size: usize,
}

/// Keys the source reads.
pub const SOURCE_KEYS: &[&str] = &[
    "uri",
    "queue",
    "format",
    "prefetch_count",
    "ack_mode",
    "queue.declare",
    "batch_size",
    "tls.ca_file",
    "csv.header",
    "csv.delimiter",
    "avro.schema",
    "schema.registry.url",
    "schema.registry.username",
    "schema.registry.password",
];

/// Default `prefetch_count`.
pub const DEFAULT_PREFETCH: u16 = 1_000;

fn short_string(r: &OptionReader<'_>, key: &str, value: &str) -> Result<()> {
    if value.len() > 255 {
        return Err(r.bad(key, value, "at most 255 bytes (an AMQP short string)"));
    }
    Ok(())
}

impl SourceConfig {
    /// Reads and checks the options.
    pub fn pull(r: &mut OptionReader<'_>) -> Result<Self> {
        let broker = Broker::pull(r)?;
        let queue = r.required_str("queue")?;
        short_string(r, "queue", &queue)?;
        let format = FormatSpec::pull(
            r,
            FormatKind::Json,
            &[FormatKind::Json, FormatKind::Csv, FormatKind::Raw, FormatKind::Avro],
        )?;
        let prefetch = match r.opt_u64("prefetch_count")? {
            None => DEFAULT_PREFETCH,
            Some(n) if (1..=u64::from(u16::MAX)).contains(&n) => n as u16,
            Some(n) => return Err(r.bad("prefetch_count", &n.to_string(), "a number from 1 to 65535")),
        };
        let ack_mode = match r.opt_enum("ack_mode", &["auto", "manual"])?.as_deref() {
            Some("manual") => AckMode::Manual,
            _ => AckMode::Auto,
        };
        let declare = r.opt_bool("queue.declare")?.unwrap_or(false);
        let batch_size = r.opt_u64("batch_size")?.unwrap_or(10_000).max(1) as usize;
        Ok(Self { broker, queue, format, prefetch, ack_mode, declare, batch_size })
    }
}

/// Where each message is routed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoutingKey {
    /// `routing_key`: the same for every message (default empty).
    Fixed(String),
    /// `routing_key.column`: the row's value of this column.
    Column(String),
}

/// The sink's configuration.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// The broker.
    pub broker: Broker,
    /// `exchange` (default: the default exchange, `''`, which routes to the queue named by the
    /// routing key).
    pub exchange: String,
    /// Routing.
    pub routing_key: RoutingKey,
    /// `format`: json (default), csv, raw.
    pub format: FormatSpec,
    /// `mandatory`: the broker returns messages no queue is bound for (counted as errors).
    pub mandatory: bool,
    /// `persistent`: delivery mode 2, messages survive a broker restart in durable queues.
    pub persistent: bool,
    /// `max_in_flight`: published messages awaiting their confirm before publishing waits.
    pub max_in_flight: usize,
}

/// Keys the sink reads.
pub const SINK_KEYS: &[&str] = &[
    "uri",
    "exchange",
    "routing_key",
    "routing_key.column",
    "format",
    "mandatory",
    "persistent",
    "max_in_flight",
    "key.columns",
    "tls.ca_file",
    "csv.delimiter",
];

impl SinkConfig {
    /// Reads and checks the options.
    pub fn pull(r: &mut OptionReader<'_>) -> Result<Self> {
        let broker = Broker::pull(r)?;
        let exchange = r.opt_str("exchange").unwrap_or_default();
        short_string(r, "exchange", &exchange)?;
        let routing_key = match (r.opt_str("routing_key"), r.opt_str("routing_key.column")) {
            (Some(_), Some(_)) => {
                return Err(ConnectorError::Config(
                    "options 'routing_key' and 'routing_key.column' exclude each other: give one".into(),
                ))
            }
            (Some(k), None) => {
                short_string(r, "routing_key", &k)?;
                RoutingKey::Fixed(k)
            }
            (None, Some(c)) => RoutingKey::Column(c.trim().to_string()),
            (None, None) => RoutingKey::Fixed(String::new()),
        };
        if exchange.is_empty() && routing_key == RoutingKey::Fixed(String::new()) {
            return Err(ConnectorError::Config(
                "give 'exchange' (and a 'routing_key' or 'routing_key.column' if it needs one), or a 'routing_key' \
                 naming the queue to publish to through the default exchange"
                    .into(),
            ));
        }
        let format = FormatSpec::pull(r, FormatKind::Json, &[FormatKind::Json, FormatKind::Csv, FormatKind::Raw])?;
        let mandatory = r.opt_bool("mandatory")?.unwrap_or(false);
        let persistent = r.opt_bool("persistent")?.unwrap_or(true);
        let max_in_flight = r.opt_u64("max_in_flight")?.unwrap_or(10_000).max(1) as usize;
        Ok(Self { broker, exchange, routing_key, format, mandatory, persistent, max_in_flight })
    }
}
