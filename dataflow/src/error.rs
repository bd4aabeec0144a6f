//! Errors raised by the runtime.

use arrow::error::ArrowError;

/// Result alias for the dataflow crate.
pub type Result<T, E = DataflowError> = std::result::Result<T, E>;

/// Errors of the dataflow runtime.
#[derive(Debug, thiserror::Error)]
pub enum DataflowError {
    /// An Arrow kernel failed.
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    /// Evaluating a user expression failed (division by zero, bad cast, ...).
    #[error("evaluation failed: {0}")]
    Eval(String),
    /// The runtime is not running or was shut down.
    #[error("runtime is not running")]
    NotRunning,
    /// The processes of a cluster could not connect or coordinate.
    #[error("cluster: {0}")]
    Cluster(String),
    /// An invariant was violated; this is a bug.
    #[error("internal error: {0}")]
    Internal(String),
}
