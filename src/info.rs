//! Catalog descriptions, metrics and topology returned by the engine.

use arrow::datatypes::SchemaRef;

/// A source in the catalog.
#[derive(Clone, Debug)]
pub struct SourceInfo {
    /// Name.
    pub name: String,
    /// Schema.
    pub schema: SchemaRef,
    /// The `WATERMARK FOR` column, if any.
    pub watermark_column: Option<String>,
    /// The connector, if any.
    pub connector: Option<String>,
    /// `PRIMARY KEY` columns (upsert source) or empty (append-only).
    pub primary_key: Vec<String>,
}

/// A stream or materialized view in the catalog.
#[derive(Clone, Debug)]
pub struct StreamInfo {
    /// Name.
    pub name: String,
    /// The defining query.
    pub sql: String,
    /// Output schema.
    pub schema: SchemaRef,
    /// True for materialized views.
    pub materialized: bool,
}

/// A sink in the catalog.
#[derive(Clone, Debug)]
pub struct SinkInfo {
    /// Name.
    pub name: String,
    /// The query feeding the sink.
    pub sql: String,
    /// The connector.
    pub connector: String,
}

/// Whole-pipeline counters.
#[derive(Clone, Debug, Default)]
pub struct PipelineMetrics {
    /// Rows accepted by sources.
    pub total_events_ingested: u64,
    /// Rows delivered to sinks and subscribers.
    pub total_events_emitted: u64,
    /// Rows dropped (evaluation errors, undecodable records, late data).
    pub total_events_dropped: u64,
    /// Epochs closed.
    pub total_cycles: u64,
    /// Batches ingested.
    pub total_batches: u64,
    /// Seconds since `start()` (0 when not running).
    pub uptime_secs: f64,
    /// Pipeline state name.
    pub state: String,
    /// Number of sources.
    pub source_count: usize,
    /// Number of streams and materialized views.
    pub stream_count: usize,
    /// Number of sinks.
    pub sink_count: usize,
    /// Minimum event-time watermark over sources with one (milliseconds), if any.
    pub pipeline_watermark: Option<i64>,
}

/// Counters of one source.
#[derive(Clone, Debug, Default)]
pub struct SourceMetrics {
    /// Name.
    pub name: String,
    /// Rows accepted.
    pub total_events: u64,
    /// Rows buffered, not yet taken by the pipeline.
    pub pending: u64,
    /// Buffer capacity in rows.
    pub capacity: u64,
    /// True when the buffer is full and the source is paused.
    pub is_backpressured: bool,
    /// Event-time watermark (milliseconds), if the source declares one.
    pub watermark: Option<i64>,
    /// `pending / capacity`.
    pub utilization: f64,
    /// State of the source's connector (`running`, `backpressured`, `retrying`, `finished`,
    /// `failed`, `stopped`), `None` for sources fed by inserts.
    pub connector_state: Option<String>,
    /// The connector's most recent error.
    pub last_error: Option<String>,
    /// Records that could not be decoded (sent to the dead-letter target).
    pub dead_letters: u64,
    /// Transient failures retried (for connectors that keep their own connection: reconnects).
    pub retries: u64,
    /// Connector-specific gauges and counters (e.g. `connected`, `clients`, `reconnects`).
    pub details: std::collections::BTreeMap<String, i64>,
}

/// Counters of one sink.
#[derive(Clone, Debug, Default)]
pub struct SinkMetrics {
    /// Name.
    pub name: String,
    /// The connector.
    pub connector: String,
    /// Where it writes (no secrets).
    pub peer: String,
    /// Connector state (`created` before the first start).
    pub state: String,
    /// Rows written (insertions and retractions).
    pub rows_written: u64,
    /// Epochs committed.
    pub epochs_committed: u64,
    /// Epochs waiting to be written.
    pub pending_epochs: u64,
    /// Rows discarded after the sink failed.
    pub dropped: u64,
    /// Transient failures retried.
    pub retries: u64,
    /// The most recent error.
    pub last_error: Option<String>,
    /// Connector-specific gauges and counters (e.g. `clients`, `slow_client_drops`).
    pub details: std::collections::BTreeMap<String, i64>,
}

/// Counters of one stream.
#[derive(Clone, Debug, Default)]
pub struct StreamMetrics {
    /// Name.
    pub name: String,
    /// Output changes produced (insertions and retractions).
    pub total_events: u64,
    /// Epochs that produced output.
    pub epochs: u64,
    /// Rows in the current result.
    pub current_rows: u64,
    /// Rows dropped by evaluation errors.
    pub dropped: u64,
    /// Rows dropped because they arrived behind the watermark (windows, time-bounded joins).
    pub late_rows: u64,
    /// Rows held in join and window state.
    pub state_rows: u64,
    /// The last evaluation error.
    pub last_error: Option<String>,
    /// The defining query.
    pub sql: String,
}

/// A node of the pipeline graph.
#[derive(Clone, Debug)]
pub struct PipelineNode {
    /// Name.
    pub name: String,
    /// `source`, `stream` or `sink`.
    pub node_type: String,
    /// Output schema (sinks: their input's).
    pub schema: SchemaRef,
    /// Defining query for streams and sinks.
    pub sql: Option<String>,
}

/// A directed edge of the pipeline graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineEdge {
    /// Upstream node.
    pub from_node: String,
    /// Downstream node.
    pub to_node: String,
}

/// The pipeline graph.
#[derive(Clone, Debug, Default)]
pub struct PipelineTopology {
    /// Nodes.
    pub nodes: Vec<PipelineNode>,
    /// Edges.
    pub edges: Vec<PipelineEdge>,
}

/// The lifecycle state of the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipelineState {
    /// Defined, never started.
    Created,
    /// `start()` in progress.
    Starting,
    /// Processing.
    Running,
    /// `shutdown()` in progress.
    ShuttingDown,
    /// Stopped after `shutdown()`.
    Stopped,
    /// Running, but a connector failed for good (see the source and sink metrics; `shutdown()`
    /// raises the failure).
    Failed,
}

impl PipelineState {
    /// The name used by the Python API.
    pub fn name(self) -> &'static str {
        match self {
            PipelineState::Created => "Created",
            PipelineState::Starting => "Starting",
            PipelineState::Running => "Running",
            PipelineState::ShuttingDown => "ShuttingDown",
            PipelineState::Stopped => "Stopped",
            PipelineState::Failed => "Failed",
        }
    }
}

/// The result of `execute`.
#[derive(Clone, Debug)]
pub enum ExecuteResult {
    /// A DDL statement succeeded.
    Ddl {
        /// E.g. `CREATE SOURCE`.
        ddl_type: String,
        /// The object created or dropped.
        ddl_object: String,
    },
    /// Rows were inserted.
    RowsAffected(u64),
    /// A query's result.
    Query(QueryResult),
    /// SHOW / DESCRIBE / EXPLAIN output.
    Metadata(QueryResult),
}

impl ExecuteResult {
    /// `ddl`, `rows_affected`, `query` or `metadata`.
    pub fn result_type(&self) -> &'static str {
        match self {
            ExecuteResult::Ddl { .. } => "ddl",
            ExecuteResult::RowsAffected(_) => "rows_affected",
            ExecuteResult::Query(_) => "query",
            ExecuteResult::Metadata(_) => "metadata",
        }
    }
}

/// Rows returned by a query.
#[derive(Clone, Debug)]
pub struct QueryResult {
    /// Schema of the rows.
    pub schema: SchemaRef,
    /// The rows.
    pub batches: Vec<arrow::array::RecordBatch>,
}

impl QueryResult {
    /// Total rows.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }

    /// All rows in one batch.
    pub fn to_batch(&self) -> crate::Result<arrow::array::RecordBatch> {
        crate::ingest::concat_or_empty(&self.schema, &self.batches)
    }

    /// The rows as a text table.
    pub fn pretty(&self) -> String {
        arrow::util::pretty::pretty_format_batches(&self.batches).map(|t| t.to_string()).unwrap_or_default()
    }
}
