//! Planner errors.

/// Result alias for the planner.
pub type Result<T, E = PlanError> = std::result::Result<T, E>;

/// Errors from parsing, binding and planning SQL.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The statement does not parse.
    #[error("SQL parse error: {0}")]
    Parse(String),
    /// A referenced table, stream or column does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The statement parses but LaminarDB cannot run it (with the reason).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// Invalid schema: unknown type, duplicate column, bad watermark.
    #[error("invalid schema: {0}")]
    Schema(String),
    /// Any other planning error, as reported by the SQL binder.
    #[error("{0}")]
    Plan(String),
}

impl From<datafusion::error::DataFusionError> for PlanError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        use datafusion::error::DataFusionError as D;
        match e {
            D::SQL(p, _) => PlanError::Parse(p.to_string()),
            D::SchemaError(s, _) => PlanError::NotFound(s.to_string()),
            D::NotImplemented(s) => PlanError::Unsupported(s),
            D::Plan(s) => {
                if s.contains("not found") {
                    PlanError::NotFound(s)
                } else {
                    PlanError::Plan(s)
                }
            }
            D::Context(c, inner) => match PlanError::from(*inner) {
                PlanError::Plan(s) => PlanError::Plan(format!("{c}: {s}")),
                other => other,
            },
            other => PlanError::Plan(other.to_string()),
        }
    }
}

impl From<datafusion::sql::sqlparser::parser::ParserError> for PlanError {
    fn from(e: datafusion::sql::sqlparser::parser::ParserError) -> Self {
        PlanError::Parse(e.to_string())
    }
}

impl From<arrow::error::ArrowError> for PlanError {
    fn from(e: arrow::error::ArrowError) -> Self {
        PlanError::Plan(e.to_string())
    }
}
