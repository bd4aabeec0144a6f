//! The engine's error type, with the stable integer codes the Python package exposes.

use laminar_sql::PlanError;

/// Result alias for the engine.
pub type Result<T, E = LaminarError> = std::result::Result<T, E>;

/// Stable error codes (the Python `laminardb.codes` namespace mirrors these).
pub mod codes {
    /// Opening the database failed.
    pub const CONNECTION_FAILED: i32 = 100;
    /// The connection is closed.
    pub const CONNECTION_CLOSED: i32 = 101;
    /// Another process holds the database directory.
    pub const CONNECTION_IN_USE: i32 = 102;
    /// Unknown source, stream or sink.
    pub const TABLE_NOT_FOUND: i32 = 200;
    /// The name is taken.
    pub const TABLE_EXISTS: i32 = 201;
    /// Data does not match the declared schema.
    pub const SCHEMA_MISMATCH: i32 = 202;
    /// The declared schema is invalid.
    pub const INVALID_SCHEMA: i32 = 203;
    /// Ingestion failed.
    pub const INGESTION_FAILED: i32 = 300;
    /// The writer was closed.
    pub const WRITER_CLOSED: i32 = 301;
    /// A batch's schema does not match the source.
    pub const BATCH_SCHEMA_MISMATCH: i32 = 302;
    /// A query failed.
    pub const QUERY_FAILED: i32 = 400;
    /// SQL does not parse.
    pub const SQL_PARSE_ERROR: i32 = 401;
    /// The query was cancelled.
    pub const QUERY_CANCELLED: i32 = 402;
    /// Subscribing failed.
    pub const SUBSCRIPTION_FAILED: i32 = 500;
    /// The subscription is closed.
    pub const SUBSCRIPTION_CLOSED: i32 = 501;
    /// No data arrived before the timeout.
    pub const SUBSCRIPTION_TIMEOUT: i32 = 502;
    /// Bad connector configuration (at CREATE).
    pub const CONNECTOR_CONFIG: i32 = 600;
    /// The connector's peer is unreachable.
    pub const CONNECTOR_UNAVAILABLE: i32 = 601;
    /// The connector failed while running.
    pub const CONNECTOR_FAILED: i32 = 602;
    /// Checkpoint storage failed.
    pub const CHECKPOINT_FAILED: i32 = 700;
    /// A bug.
    pub const INTERNAL_ERROR: i32 = 900;
    /// The pipeline is shutting down.
    pub const SHUTDOWN: i32 = 901;
}

/// Every error the engine reports.
#[derive(Debug, thiserror::Error)]
pub enum LaminarError {
    /// Opening, locking or using the database failed.
    #[error("{message}")]
    Connection {
        /// One of the 1xx codes.
        code: i32,
        /// What happened.
        message: String,
    },
    /// Unknown object.
    #[error("{0}")]
    NotFound(String),
    /// Name already taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// Schema problems (declared schema or data vs. schema).
    #[error("{message}")]
    Schema {
        /// One of the 2xx codes.
        code: i32,
        /// What happened.
        message: String,
    },
    /// Ingestion problems.
    #[error("{message}")]
    Ingestion {
        /// One of the 3xx codes.
        code: i32,
        /// What happened.
        message: String,
    },
    /// SQL that does not parse.
    #[error("{0}")]
    Parse(String),
    /// Query planning or execution failed.
    #[error("{0}")]
    Query(String),
    /// Subscription problems.
    #[error("{message}")]
    Subscription {
        /// One of the 5xx codes.
        code: i32,
        /// What happened.
        message: String,
    },
    /// Connector problems (configuration at CREATE, connection at start, failures at run time).
    #[error("{message}")]
    Connector {
        /// One of the 6xx codes.
        code: i32,
        /// What happened.
        message: String,
    },
    /// Checkpoint storage problems.
    #[error("{0}")]
    Checkpoint(String),
    /// The pipeline is shutting down or stopped.
    #[error("{0}")]
    Shutdown(String),
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl LaminarError {
    /// The stable integer code.
    pub fn code(&self) -> i32 {
        match self {
            LaminarError::Connection { code, .. }
            | LaminarError::Schema { code, .. }
            | LaminarError::Ingestion { code, .. }
            | LaminarError::Subscription { code, .. }
            | LaminarError::Connector { code, .. } => *code,
            LaminarError::NotFound(_) => codes::TABLE_NOT_FOUND,
            LaminarError::AlreadyExists(_) => codes::TABLE_EXISTS,
            LaminarError::Parse(_) => codes::SQL_PARSE_ERROR,
            LaminarError::Query(_) => codes::QUERY_FAILED,
            LaminarError::Checkpoint(_) => codes::CHECKPOINT_FAILED,
            LaminarError::Shutdown(_) => codes::SHUTDOWN,
            LaminarError::Internal(_) => codes::INTERNAL_ERROR,
        }
    }

    pub(crate) fn schema(message: impl Into<String>) -> Self {
        LaminarError::Schema { code: codes::SCHEMA_MISMATCH, message: message.into() }
    }

    pub(crate) fn ingestion(message: impl Into<String>) -> Self {
        LaminarError::Ingestion { code: codes::INGESTION_FAILED, message: message.into() }
    }

    pub(crate) fn closed() -> Self {
        LaminarError::Connection { code: codes::CONNECTION_CLOSED, message: "the connection is closed".into() }
    }
}

impl From<PlanError> for LaminarError {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::Parse(m) => LaminarError::Parse(format!("SQL parse error: {m}")),
            PlanError::NotFound(m) => LaminarError::NotFound(m),
            PlanError::Schema(m) => {
                LaminarError::Schema { code: codes::INVALID_SCHEMA, message: format!("invalid schema: {m}") }
            }
            e @ (PlanError::Unsupported(_) | PlanError::Plan(_)) => LaminarError::Query(e.to_string()),
        }
    }
}

impl From<laminar_dataflow::DataflowError> for LaminarError {
    fn from(e: laminar_dataflow::DataflowError) -> Self {
        match e {
            laminar_dataflow::DataflowError::NotRunning => LaminarError::Shutdown("the pipeline is not running".into()),
            laminar_dataflow::DataflowError::Cluster(message) => {
                LaminarError::Connection { code: codes::CONNECTION_FAILED, message }
            }
            other => LaminarError::Internal(other.to_string()),
        }
    }
}

impl From<arrow::error::ArrowError> for LaminarError {
    fn from(e: arrow::error::ArrowError) -> Self {
        LaminarError::Internal(e.to_string())
    }
}

impl From<datafusion::error::DataFusionError> for LaminarError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        match PlanError::from(e) {
            PlanError::Plan(m) => LaminarError::Query(m),
            other => other.into(),
        }
    }
}

impl From<laminar_adapters::ConnectorError> for LaminarError {
    fn from(e: laminar_adapters::ConnectorError) -> Self {
        LaminarError::Connector { code: e.code(), message: e.to_string() }
    }
}
