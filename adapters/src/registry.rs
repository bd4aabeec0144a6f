//! The registry of connectors: one explicit list, keyed by the SQL `connector` value.
//!
//! Building a connector pulls its options into a typed config and fails with a
//! [`ConnectorError`] naming the key on any problem; building never does I/O, so the engine
//! builds once at CREATE (validation) and again at `start()` (to run it).

use crate::callback::Callbacks;
use crate::connector::{SinkCapabilities, SinkConnector, SinkSpec, SourceCapabilities, SourceConnector, SourceSpec};
use crate::dlq::DlqTarget;
use crate::options::OptionReader;
use crate::{ConnectorError, Result};

/// Whether a connector is used as a source or a sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectorKind {
    /// `CREATE SOURCE … WITH (connector = …)`.
    Source,
    /// `CREATE SINK … WITH (connector = …)`.
    Sink,
}

/// What building a connector may look at besides its options.
#[derive(Clone, Copy)]
pub struct BuildContext<'a> {
    /// Sources and sinks registered at run time (`connector = 'python'`).
    pub callbacks: &'a Callbacks,
    /// False while the catalog is replayed at open: callbacks are registered later, so a missing
    /// one is reported at `start()` instead.
    pub resolve: bool,
}

impl BuildContext<'static> {
    /// A context with no registered callbacks (for programs and tests that use only the
    /// built-in connectors).
    pub fn without_callbacks() -> Self {
        static NONE: std::sync::OnceLock<Callbacks> = std::sync::OnceLock::new();
        BuildContext { callbacks: NONE.get_or_init(Callbacks::default), resolve: true }
    }
}

/// Builds a source connector from its options.
pub struct SourceFactory {
    /// SQL name.
    pub name: &'static str,
    /// Every option key the connector reads (for "did you mean").
    pub keys: &'static [&'static str],
    /// Pulls options (the reader is checked for leftovers afterwards) and builds, without I/O.
    pub build: fn(&SourceSpec, &mut OptionReader<'_>, &BuildContext<'_>) -> Result<Box<dyn SourceConnector>>,
}

/// Builds a sink connector from its options.
pub struct SinkFactory {
    /// SQL name.
    pub name: &'static str,
    /// Every option key the connector reads.
    pub keys: &'static [&'static str],
    /// Pulls options and builds, without I/O.
    pub build: fn(&SinkSpec, &mut OptionReader<'_>, &BuildContext<'_>) -> Result<Box<dyn SinkConnector>>,
}

/// Option keys every source accepts (dead-letter routing).
pub const SOURCE_COMMON_KEYS: &[&str] = &["dlq", "dlq.max_rows"];

/// Option keys every sink accepts.
pub const SINK_COMMON_KEYS: &[&str] = &["delivery.guarantee"];

/// What a sink promises about each change (`'delivery.guarantee'`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeliveryGuarantee {
    /// Every change arrives; after a crash some may arrive twice (the default).
    #[default]
    AtLeastOnce,
    /// Every change arrives once: writes become visible only when a checkpoint covering them is
    /// durable (needs checkpoints and replayable sources).
    ExactlyOnce,
}

/// A sink connector ready to open, with its delivery guarantee.
pub struct BuiltSink {
    /// The connector (not yet opened).
    pub connector: Box<dyn SinkConnector>,
    /// What it promises.
    pub guarantee: DeliveryGuarantee,
}

fn sources() -> Vec<&'static SourceFactory> {
    vec![
        &crate::callback::SOURCE,
        #[cfg(feature = "datagen")]
        &crate::datagen::SOURCE,
        #[cfg(feature = "file")]
        &crate::file::SOURCE,
        #[cfg(feature = "kafka")]
        &crate::kafka::SOURCE,
        #[cfg(feature = "websocket")]
        &crate::websocket::SOURCE,
        #[cfg(feature = "rabbitmq")]
        &crate::rabbitmq::SOURCE,
        #[cfg(feature = "postgres-cdc")]
        &crate::postgres::SOURCE,
        #[cfg(feature = "mysql-cdc")]
        &crate::mysql::SOURCE,
        #[cfg(feature = "delta-lake")]
        &crate::delta::SOURCE,
    ]
}

fn sinks() -> Vec<&'static SinkFactory> {
    vec![
        &crate::callback::SINK,
        &crate::blackhole::SINK,
        #[cfg(feature = "console")]
        &crate::console::SINK,
        #[cfg(feature = "file")]
        &crate::file::SINK,
        #[cfg(feature = "kafka")]
        &crate::kafka::SINK,
        #[cfg(feature = "websocket")]
        &crate::websocket::SINK,
        #[cfg(feature = "rabbitmq")]
        &crate::rabbitmq::SINK,
        #[cfg(feature = "delta-lake")]
        &crate::delta::SINK,
        #[cfg(feature = "iceberg")]
        &crate::iceberg::SINK,
    ]
}

/// Names of the connectors compiled into this build, for the given direction.
pub fn connector_names(kind: ConnectorKind) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = match kind {
        ConnectorKind::Source => sources().iter().map(|f| f.name).collect(),
        ConnectorKind::Sink => sinks().iter().map(|f| f.name).collect(),
    };
    names.sort_unstable();
    names
}

fn unknown(kind: ConnectorKind, name: &str) -> ConnectorError {
    let avail = connector_names(kind);
    let list = if avail.is_empty() { "none in this build".to_string() } else { avail.join(", ") };
    ConnectorError::Config(format!(
        "unknown {} connector '{name}' (available: {list})",
        if kind == ConnectorKind::Source { "source" } else { "sink" }
    ))
}

fn connector_name(options: &crate::Options) -> Result<String> {
    options
        .get("connector")
        .map(|s| s.trim().to_ascii_lowercase())
        .ok_or_else(|| ConnectorError::Config("option 'connector' is required in WITH (…)".into()))
}

/// Checks that the `connector` option names a connector of this build (before anything else
/// about the statement is looked at).
pub fn require_connector(kind: ConnectorKind, options: &crate::Options) -> Result<()> {
    let name = connector_name(options)?;
    if connector_names(kind).contains(&name.as_str()) {
        Ok(())
    } else {
        Err(unknown(kind, &name))
    }
}

/// A source connector ready to open, with where its dead letters go.
pub struct BuiltSource {
    /// The connector (not yet opened).
    pub connector: Box<dyn SourceConnector>,
    /// Dead-letter target.
    pub dlq: DlqTarget,
}

/// Builds a source from its spec (no I/O).
pub fn build_source(spec: &SourceSpec, ctx: &BuildContext<'_>) -> Result<BuiltSource> {
    let name = connector_name(&spec.options)?;
    let factory =
        sources().into_iter().find(|f| f.name == name).ok_or_else(|| unknown(ConnectorKind::Source, &name))?;
    let mut r = OptionReader::new(factory.name, spec.options.clone());
    let dlq = DlqTarget::pull(&mut r)?;
    let connector = (factory.build)(spec, &mut r, ctx)?;
    let known: Vec<&str> = factory.keys.iter().chain(SOURCE_COMMON_KEYS).copied().collect();
    r.finish(&known)?;
    Ok(BuiltSource { connector, dlq })
}

/// Validates a source's options at CREATE time (no network I/O); returns its capabilities.
pub fn validate_source(spec: &SourceSpec, ctx: &BuildContext<'_>) -> Result<SourceCapabilities> {
    let built = build_source(spec, ctx)?;
    let caps = built.connector.capabilities();
    if caps.changelog && spec.primary_key.is_empty() && !caps.key_from_peer {
        return Err(ConnectorError::Config(format!(
            "source '{}' receives updates and deletes: declare a PRIMARY KEY",
            spec.name
        )));
    }
    Ok(caps)
}

/// Builds a sink from its spec (no I/O).
pub fn build_sink(spec: &SinkSpec, ctx: &BuildContext<'_>) -> Result<BuiltSink> {
    let name = connector_name(&spec.options)?;
    let factory = sinks().into_iter().find(|f| f.name == name).ok_or_else(|| unknown(ConnectorKind::Sink, &name))?;
    let mut r = OptionReader::new(factory.name, spec.options.clone());
    let guarantee = match r.opt_enum("delivery.guarantee", &["at-least-once", "exactly-once"])?.as_deref() {
        Some("exactly-once") => DeliveryGuarantee::ExactlyOnce,
        _ => DeliveryGuarantee::AtLeastOnce,
    };
    let connector = (factory.build)(spec, &mut r, ctx)?;
    let known: Vec<&str> = factory.keys.iter().chain(SINK_COMMON_KEYS).copied().collect();
    r.finish(&known)?;
    if guarantee == DeliveryGuarantee::ExactlyOnce && !connector.capabilities().exactly_once {
        return Err(ConnectorError::Config(format!(
            "'delivery.guarantee' = 'exactly-once' is not available for connector '{name}' (it cannot hold \
             writes until a checkpoint commits them); use 'at-least-once'"
        )));
    }
    Ok(BuiltSink { connector, guarantee })
}

/// Validates a sink's options at CREATE time (no network I/O), including whether it can take
/// the query's changes; returns its capabilities.
pub fn validate_sink(spec: &SinkSpec, ctx: &BuildContext<'_>) -> Result<(SinkCapabilities, DeliveryGuarantee)> {
    let sink = build_sink(spec, ctx)?;
    let caps = sink.connector.capabilities();
    if !spec.append_only && !caps.accepts_updates() {
        return Err(ConnectorError::Config(format!(
            "sink '{}' (connector '{}') is append-only, but its query produces updates and deletes \
             (an aggregate or a PRIMARY KEY source): write the query so it only inserts, or use a sink \
             that accepts changelogs",
            spec.name,
            spec.options.get("connector").map(String::as_str).unwrap_or("")
        )));
    }
    Ok((caps, sink.guarantee))
}
