//! The registry of connectors, keyed by the SQL `connector` value.

use crate::options::Options;
use crate::ConnectorError;

/// Whether a connector is used as a source or a sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectorKind {
    /// `CREATE SOURCE … WITH (connector = …)`.
    Source,
    /// `CREATE SINK … WITH (connector = …)`.
    Sink,
}

/// Names of the connectors compiled into this build, for the given direction.
pub fn connector_names(_kind: ConnectorKind) -> Vec<&'static str> {
    Vec::new()
}

fn unknown(kind: ConnectorKind, name: &str) -> ConnectorError {
    let avail = connector_names(kind);
    let list = if avail.is_empty() { "none in this build".to_string() } else { avail.join(", ") };
    ConnectorError::Config(format!(
        "unknown {} connector '{name}' (available: {list})",
        if kind == ConnectorKind::Source { "source" } else { "sink" }
    ))
}

fn connector_name(options: &Options) -> Result<&str, ConnectorError> {
    options
        .get("connector")
        .map(String::as_str)
        .ok_or_else(|| ConnectorError::Config("option 'connector' is required in WITH (…)".into()))
}

/// Validates a source's options at CREATE time (no network I/O).
pub fn validate_source(options: &Options) -> Result<(), ConnectorError> {
    let name = connector_name(options)?;
    Err(unknown(ConnectorKind::Source, name))
}

/// Validates a sink's options at CREATE time (no network I/O).
pub fn validate_sink(options: &Options) -> Result<(), ConnectorError> {
    let name = connector_name(options)?;
    Err(unknown(ConnectorKind::Sink, name))
}
