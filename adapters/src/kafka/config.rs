//! Typed configuration of the Kafka source and sink, pulled from `WITH (…)` options, and the
//! librdkafka client settings it becomes.

use std::time::Duration;

use rdkafka::ClientConfig;

use crate::format::{FormatKind, FormatSpec};
use crate::options::OptionReader;
use crate::{ConnectorError, Result};

/// Options shared by the source and the sink: brokers, security, pass-through settings.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// `security.protocol`, `sasl.mechanism`, `sasl.username`, `sasl.password`, and every
    /// `kafka.<setting>` (passed to librdkafka as `<setting>`), in the order given.
    pub settings: Vec<(String, String)>,
}

/// Settings the connector manages itself: `kafka.` may not override them.
const MANAGED: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "transactional.id",
    "enable.idempotence",
];

impl ClientOptions {
    /// Reads the options; `what` names the connector in messages.
    pub fn pull(r: &mut OptionReader<'_>) -> Result<Self> {
        let bootstrap = r.required_str("bootstrap.servers")?;
        if bootstrap.trim().is_empty() {
            return Err(r.bad("bootstrap.servers", &bootstrap, "a comma-separated list of host:port"));
        }
        let mut settings = Vec::new();
        if let Some(p) = r.opt_enum("security.protocol", &["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"])? {
            settings.push(("security.protocol".into(), p));
        }
        if let Some(m) = r.opt_enum("sasl.mechanism", &["plain", "scram-sha-256", "scram-sha-512"])? {
            settings.push(("sasl.mechanism".into(), m.to_ascii_uppercase()));
        }
        let user = r.opt_str("sasl.username");
        let password = r.opt_str("sasl.password");
        let sasl = settings.iter().any(|(k, v)| k == "security.protocol" && v.starts_with("sasl"));
        if sasl && (user.is_none() || password.is_none()) {
            return Err(ConnectorError::Config(
                "security.protocol SASL_* needs 'sasl.username' and 'sasl.password'".into(),
            ));
        }
        if let Some(u) = user {
            settings.push(("sasl.username".into(), u));
        }
        if let Some(p) = password {
            settings.push(("sasl.password".into(), p));
        }
        for (k, v) in r.take_prefixed("kafka.") {
            if MANAGED.contains(&k.as_str()) {
                return Err(ConnectorError::Config(format!(
                    "option 'kafka.{k}' is set by the connector itself (use the connector's own option)"
                )));
            }
            settings.push((k, v));
        }
        Ok(Self { bootstrap: bootstrap.trim().to_string(), settings })
    }

    /// A librdkafka client configuration with these settings.
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in &self.settings {
            c.set(k, v);
        }
        c
    }
}

/// Where the source starts in a partition that has neither a checkpointed nor a committed offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    /// The oldest message kept.
    Earliest,
    /// Only messages produced from now on.
    Latest,
}

/// The Kafka source's configuration.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// Brokers and security.
    pub client: ClientOptions,
    /// `topic`.
    pub topic: String,
    /// `group.id`: offsets are committed to this group.
    pub group: String,
    /// `format` and its options.
    pub format: FormatSpec,
    /// `auto.offset.reset` (default latest).
    pub start: StartFrom,
    /// `batch_size`: messages per poll at most (default 10,000).
    pub batch_size: usize,
    /// `watermark.idle_timeout_ms`: a partition without messages this long stops holding the
    /// watermark back (default 5,000).
    pub idle_timeout: Duration,
    /// `dlq.topic`: dead letters are produced there (else they go to the source's errors).
    pub dlq_topic: Option<String>,
}

/// Keys the source reads.
pub const SOURCE_KEYS: &[&str] = &[
    "bootstrap.servers",
    "security.protocol",
    "sasl.mechanism",
    "sasl.username",
    "sasl.password",
    "kafka.<librdkafka setting>",
    "topic",
    "group.id",
    "format",
    "auto.offset.reset",
    "batch_size",
    "watermark.idle_timeout_ms",
    "dlq.topic",
    "csv.header",
    "csv.delimiter",
    "avro.schema",
    "schema.registry.url",
    "schema.registry.username",
    "schema.registry.password",
];

impl SourceConfig {
    /// Reads the source options.
    pub fn pull(r: &mut OptionReader<'_>) -> Result<Self> {
        let client = ClientOptions::pull(r)?;
        let topic = r.required_str("topic")?;
        let group = r.required_str("group.id")?;
        let format = FormatSpec::pull(
            r,
            FormatKind::Json,
            &[FormatKind::Json, FormatKind::Csv, FormatKind::Avro, FormatKind::Raw, FormatKind::Debezium],
        )?;
        if format.kind == FormatKind::Avro && format.registry.is_none() && format.avro_schema.is_none() {
            return Err(ConnectorError::Config(
                "format 'avro' needs 'schema.registry.url' (Confluent wire format) or 'avro.schema' (plain records)"
                    .into(),
            ));
        }
        let start = match r.opt_enum("auto.offset.reset", &["earliest", "latest"])?.as_deref() {
            Some("earliest") => StartFrom::Earliest,
            _ => StartFrom::Latest,
        };
        let batch_size = r.opt_u64("batch_size")?.unwrap_or(10_000).max(1) as usize;
        let idle_timeout = Duration::from_millis(r.opt_u64("watermark.idle_timeout_ms")?.unwrap_or(5_000));
        let dlq_topic = r.opt_str("dlq.topic");
        Ok(Self { client, topic, group, format, start, batch_size, idle_timeout, dlq_topic })
    }
}

/// How the sink chooses a message's partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partitioner {
    /// By the hash of the key columns (the key of every message).
    KeyHash,
    /// Each message to the next partition.
    RoundRobin,
    /// A whole epoch to one partition, the next epoch to the next one.
    Sticky,
}

/// The Kafka sink's configuration.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// Brokers and security.
    pub client: ClientOptions,
    /// `topic`.
    pub topic: String,
    /// `format` (json, csv, avro) and its options.
    pub format: FormatSpec,
    /// `partitioner` (default round-robin).
    pub partitioner: Partitioner,
    /// `key.columns` (default: the query's key, else the first column).
    pub key_columns: Option<Vec<String>>,
    /// `transactional.id` for exactly-once (default `laminardb-<sink name>`).
    pub transactional_id: Option<String>,
}

/// Keys the sink reads.
pub const SINK_KEYS: &[&str] = &[
    "bootstrap.servers",
    "security.protocol",
    "sasl.mechanism",
    "sasl.username",
    "sasl.password",
    "kafka.<librdkafka setting>",
    "topic",
    "format",
    "partitioner",
    "key.columns",
    "transactional.id",
    "csv.delimiter",
    "schema.registry.url",
    "schema.registry.username",
    "schema.registry.password",
];

impl SinkConfig {
    /// Reads the sink options.
    pub fn pull(r: &mut OptionReader<'_>) -> Result<Self> {
        let client = ClientOptions::pull(r)?;
        let topic = r.required_str("topic")?;
        let format = FormatSpec::pull(r, FormatKind::Json, &[FormatKind::Json, FormatKind::Csv, FormatKind::Avro])?;
        let partitioner = match r.opt_enum("partitioner", &["key-hash", "round-robin", "sticky"])?.as_deref() {
            Some("key-hash") => Partitioner::KeyHash,
            Some("sticky") => Partitioner::Sticky,
            _ => Partitioner::RoundRobin,
        };
        let key_columns = r
            .opt_str("key.columns")
            .map(|s| s.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect());
        let transactional_id = r.opt_str("transactional.id");
        Ok(Self { client, topic, format, partitioner, key_columns, transactional_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Options;

    fn reader(pairs: &[(&str, &str)]) -> OptionReader<'static> {
        let o: Options = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        OptionReader::new("kafka", o)
    }

    #[test]
    fn required_keys_pass_through_and_managed_settings() {
        let mut r = reader(&[("bootstrap.servers", "b:9092"), ("group.id", "g")]);
        let e = SourceConfig::pull(&mut r).expect_err("no topic");
        assert!(e.to_string().contains("topic"), "{e}");
        let mut r = reader(&[
            ("bootstrap.servers", "b:9092"),
            ("topic", "t"),
            ("group.id", "g"),
            ("kafka.fetch.min.bytes", "1"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-256"),
            ("sasl.username", "u"),
            ("sasl.password", "p"),
        ]);
        let c = SourceConfig::pull(&mut r).expect("config");
        assert!(c.client.settings.contains(&("fetch.min.bytes".into(), "1".into())));
        assert!(c.client.settings.contains(&("sasl.mechanism".into(), "SCRAM-SHA-256".into())));
        assert_eq!(c.start, StartFrom::Latest);
        let mut r = reader(&[("bootstrap.servers", "b"), ("topic", "t"), ("kafka.group.id", "x")]);
        assert!(SinkConfig::pull(&mut r).expect_err("managed").to_string().contains("kafka.group.id"));
        let mut r = reader(&[("bootstrap.servers", "b"), ("topic", "t"), ("group.id", "g"), ("format", "avro")]);
        assert!(SourceConfig::pull(&mut r).expect_err("avro").to_string().contains("schema.registry.url"));
        let mut r = reader(&[("bootstrap.servers", "b"), ("topic", "t"), ("security.protocol", "sasl_plaintext")]);
        assert!(SinkConfig::pull(&mut r).expect_err("sasl").to_string().contains("sasl.username"));
    }
}
