//! LaminarDB's connector framework: the [`SourceConnector`]/[`SinkConnector`] traits, the
//! registry of connectors, typed `WITH (…)` options, the record formats shared by every
//! transport, dead-letter routing and the runners that drive connectors with backpressure and
//! retries.
//!
//! Validation happens at `CREATE` time and never touches the network: an unknown connector, a
//! missing required key, a key of the wrong type, a bad value or an unknown key is a
//! [`ConnectorError`] naming the key, and the catalog is left unchanged. Connecting happens at
//! `start()` ([`SourceConnector::open`]/[`SinkConnector::open`]).
//!
//! The adapters never see SQL: the engine hands them a [`SourceSpec`]/[`SinkSpec`] (name, Arrow
//! schema, options) and receives Arrow batches with signed multiplicities back.

pub mod blackhole;
pub mod callback;
pub mod connector;
pub mod dlq;
pub mod format;
pub mod options;
pub mod registry;
pub mod runner;
pub mod upsert;

#[cfg(any(feature = "postgres-cdc", feature = "mysql-cdc"))]
pub mod cdc;
#[cfg(feature = "console")]
pub mod console;
#[cfg(feature = "datagen")]
pub mod datagen;
#[cfg(feature = "delta-lake")]
pub mod delta;
#[cfg(feature = "file")]
pub mod file;
#[cfg(feature = "iceberg")]
pub mod iceberg;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mysql-cdc")]
pub mod mysql;
#[cfg(feature = "postgres-cdc")]
pub mod postgres;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(any(feature = "postgres-cdc", feature = "mysql-cdc"))]
pub mod text_values;
#[cfg(feature = "websocket")]
pub mod websocket;

pub use callback::Callbacks;
pub use connector::{
    Change, Poll, SinkCapabilities, SinkConnector, SinkSpec, SourceCapabilities, SourceChunk, SourceConnector,
    SourceSpec, Split,
};
pub use dlq::{DeadLetter, DlqTarget};
pub use options::{OptionReader, Options};
pub use registry::{
    build_sink, build_source, connector_names, validate_sink, validate_source, BuildContext, BuiltSink, ConnectorKind,
    DeliveryGuarantee,
};
pub use runner::{CheckpointAck, ConnectorState, ConnectorStatus, SinkHandle, SourceHandle, SourceTarget};

/// Connector errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectorError {
    /// Bad configuration at CREATE time (a definite error: fix the DDL).
    #[error("{0}")]
    Config(String),
    /// The peer could not be reached or the connection was lost (transient: retried with backoff).
    #[error("{0}")]
    Unavailable(String),
    /// The connector failed at run time (definite: the connector stops).
    #[error("{0}")]
    Failed(String),
}

impl ConnectorError {
    /// The stable error code (600-range).
    pub fn code(&self) -> i32 {
        match self {
            ConnectorError::Config(_) => 600,
            ConnectorError::Unavailable(_) => 601,
            ConnectorError::Failed(_) => 602,
        }
    }

    /// True for errors worth retrying (connection problems).
    pub fn is_transient(&self) -> bool {
        matches!(self, ConnectorError::Unavailable(_))
    }
}

impl From<arrow::error::ArrowError> for ConnectorError {
    fn from(e: arrow::error::ArrowError) -> Self {
        ConnectorError::Failed(e.to_string())
    }
}

/// Shorthand result type.
pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;
