//! LaminarDB's connector framework: the registry of connectors and the typed validation of
//! `WITH (…)` options.
//!
//! Option validation happens at `CREATE` time and never touches the network: an unknown
//! connector, a missing required key, a key of the wrong type or an unknown key is a
//! [`ConnectorError`] naming the key, and the catalog is left unchanged.

pub mod options;
pub mod registry;

pub use options::{OptionReader, Options};
pub use registry::{connector_names, validate_sink, validate_source, ConnectorKind};

/// Connector errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectorError {
    /// Bad configuration at CREATE time.
    #[error("{0}")]
    Config(String),
    /// The peer could not be reached.
    #[error("{0}")]
    Unavailable(String),
    /// The connector failed at run time.
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
}
