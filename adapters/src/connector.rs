//! The [`SourceConnector`] and [`SinkConnector`] traits every connector implements.
//!
//! A source is polled by the framework ([`crate::runner`]); each poll returns decoded Arrow
//! changes, dead letters and an optional event-time watermark. A sink receives the changes of one
//! epoch at a time between [`SinkConnector::begin`] and [`SinkConnector::commit`]; the
//! `pre_commit`/`commit`/`abort` hooks let exactly-once sinks take part in checkpoints.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use laminar_dataflow::batch::DiffBatch;

use crate::dlq::DeadLetter;
use crate::options::{Options, Redacted};
use crate::runner::ConnectorStatus;
use crate::{ConnectorError, Result};

/// What the engine tells a source connector about the source it feeds.
#[derive(Clone)]
pub struct SourceSpec {
    /// Source name.
    pub name: String,
    /// Columns declared in the DDL.
    pub schema: SchemaRef,
    /// `PRIMARY KEY` columns (empty: append-only).
    pub primary_key: Vec<String>,
    /// The part of the input this process reads when the pipeline runs on several processes
    /// (a connector that can split its input, [`SourceCapabilities::partitioned`], reads only
    /// this part).
    pub split: Split,
    /// The `WATERMARK FOR` column, if any.
    pub watermark_column: Option<String>,
    /// The `WATERMARK FOR … AS col - INTERVAL …` delay (ms).
    pub watermark_delay_ms: i64,
    /// The `WITH` options meant for the connector (`connector` included).
    pub options: Options,
}

/// What the engine tells a sink connector about the sink it drains.
#[derive(Clone)]
pub struct SinkSpec {
    /// Sink name.
    pub name: String,
    /// Columns of the query feeding the sink.
    pub schema: SchemaRef,
    /// True when the query only ever inserts (no updates or deletes).
    pub append_only: bool,
    /// The key of an updating query (its GROUP BY columns), if known.
    pub key_columns: Vec<String>,
    /// The `WITH` options meant for the connector (`connector` included).
    pub options: Options,
    /// Which process of a cluster writes through this instance ([`Split::WHOLE`] alone). A
    /// [`SinkCapabilities::parallel`] sink makes what must be unique per writer (file names,
    /// transactional ids) unique per part.
    pub part: Split,
}

impl std::fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSpec")
            .field("name", &self.name)
            .field("schema", &self.schema)
            .field("primary_key", &self.primary_key)
            .field("watermark_column", &self.watermark_column)
            .field("watermark_delay_ms", &self.watermark_delay_ms)
            .field("options", &Redacted(&self.options))
            .finish()
    }
}

impl std::fmt::Debug for SinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkSpec")
            .field("name", &self.name)
            .field("schema", &self.schema)
            .field("append_only", &self.append_only)
            .field("key_columns", &self.key_columns)
            .field("options", &Redacted(&self.options))
            .finish()
    }
}

/// What a source can do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceCapabilities {
    /// Can seek back to a checkpointed position (replay after a crash).
    pub replayable: bool,
    /// Emits deletions/updates (needs a PRIMARY KEY on the source).
    pub changelog: bool,
    /// Ends by itself (a bounded input).
    pub bounded: bool,
    /// Reports the event-time watermark itself ([`SourceChunk::watermark`], e.g. the minimum over
    /// partitions); the engine then does not derive it from the largest event time seen.
    pub watermarks: bool,
    /// Learns the key of its changes from the peer when it opens (a CDC source reads the
    /// upstream table's primary key), so the DDL need not declare a PRIMARY KEY; see
    /// [`SourceConnector::key_columns`].
    pub key_from_peer: bool,
    /// Reads only its [`SourceSpec::split`] of the input, so that every process of a cluster
    /// can run it; a connector that cannot split its input runs on process 0 only.
    pub partitioned: bool,
}

/// One of `count` disjoint parts of a source's input (process `index` of a cluster of `count`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    /// This part.
    pub index: usize,
    /// Number of parts.
    pub count: usize,
    /// A cluster's common start time (ms since the Unix epoch, process 0's clock when the run
    /// began), for connectors that derive values from the time they start: every process then
    /// derives the same ones. `None` alone.
    pub clock_ms: Option<i64>,
}

impl Split {
    /// The whole input (one process).
    pub const WHOLE: Split = Split { index: 0, count: 1, clock_ms: None };

    /// True when item `n` of a numbered input (a partition, a generated row) is in this part.
    pub fn owns(&self, n: u64) -> bool {
        self.count <= 1 || n % self.count as u64 == self.index as u64
    }

    /// What a writer of this part adds to names that must be unique per writer: `-p<index>`
    /// in a cluster, nothing alone.
    pub fn suffix(&self) -> String {
        if self.count <= 1 {
            String::new()
        } else {
            format!("-p{}", self.index)
        }
    }
}

impl Default for Split {
    fn default() -> Self {
        Self::WHOLE
    }
}

/// What a sink can do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkCapabilities {
    /// Applies retractions by key (upsert).
    pub upsert: bool,
    /// Writes every change with its operation (changelog).
    pub changelog: bool,
    /// Commits epochs transactionally (exactly-once with checkpoints).
    pub exactly_once: bool,
    /// Every process of a cluster can write its own part of the output at once (each its
    /// workers' rows, committed at the cluster's checkpoints); otherwise the whole output is
    /// gathered on process 0 and only its instance runs.
    pub parallel: bool,
}

impl SinkCapabilities {
    /// True if the sink can take the output of an updating query.
    pub fn accepts_updates(&self) -> bool {
        self.upsert || self.changelog
    }
}

/// One change of a source: rows inserted, rows deleted (matched by primary key), or all rows
/// removed.
#[derive(Clone, Debug)]
pub enum Change {
    /// Rows to insert (replacing the current row of their key on PRIMARY KEY sources).
    Insert(RecordBatch),
    /// Rows whose primary key is to be deleted.
    Delete(RecordBatch),
    /// Every current row is deleted (an upstream TRUNCATE, or a CDC source starting a fresh
    /// snapshot); keyed sources only.
    Clear,
}

impl Change {
    /// Number of rows carried (0 for [`Change::Clear`]).
    pub fn num_rows(&self) -> usize {
        match self {
            Change::Insert(b) | Change::Delete(b) => b.num_rows(),
            Change::Clear => 0,
        }
    }
}

/// The result of one poll.
#[derive(Debug, Default)]
pub struct SourceChunk {
    /// Decoded changes, in order.
    pub changes: Vec<Change>,
    /// Records that could not be decoded.
    pub dead_letters: Vec<DeadLetter>,
    /// New event-time watermark (ms), if the connector tracks one itself.
    pub watermark: Option<i64>,
}

impl SourceChunk {
    /// A chunk holding one inserted batch.
    pub fn insert(batch: RecordBatch) -> Self {
        Self { changes: vec![Change::Insert(batch)], ..Self::default() }
    }

    /// Rows in the chunk.
    pub fn num_rows(&self) -> usize {
        self.changes.iter().map(Change::num_rows).sum()
    }
}

/// What a poll produced.
#[derive(Debug)]
pub enum Poll {
    /// Data (possibly only dead letters or a watermark).
    Data(SourceChunk),
    /// Nothing now; poll again after this long.
    Idle(Duration),
    /// The input is exhausted (bounded sources).
    Finished,
}

/// A source connector. Created (validated) at CREATE, opened at `start()`, polled until
/// shutdown. Implementations keep protocol code apart from this wiring.
#[async_trait]
pub trait SourceConnector: Send {
    /// What this source can do.
    fn capabilities(&self) -> SourceCapabilities;

    /// Hands the connector its live status before `open` (a connector that manages its own
    /// connections reports their state, reconnects and gauges there).
    fn attach(&mut self, _status: Arc<ConnectorStatus>) {}

    /// Connects to the peer. Errors name the peer's address.
    async fn open(&mut self) -> Result<()> {
        Ok(())
    }

    /// Returns the next data. Should return within ~100 ms (return `Idle` rather than blocking).
    async fn poll(&mut self) -> Result<Poll>;

    /// The position after everything returned so far (checkpointed with the epoch).
    fn checkpoint(&self) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }

    /// Seeks to a checkpointed position before `open`.
    fn restore(&mut self, _position: &serde_json::Value) -> Result<()> {
        if self.capabilities().replayable {
            return Err(ConnectorError::Failed("restore is not implemented for this connector".into()));
        }
        Err(ConnectorError::Failed("this source cannot replay from a checkpoint".into()))
    }

    /// The key columns learnt from the peer in `open` (sources with
    /// [`SourceCapabilities::key_from_peer`]); the engine keys the source's rows by them when
    /// the DDL declares no PRIMARY KEY.
    fn key_columns(&self) -> Option<Vec<String>> {
        None
    }

    /// Called once the checkpoint holding `position` is durable (acknowledge to the peer).
    async fn commit_position(&mut self, _position: &serde_json::Value) -> Result<()> {
        Ok(())
    }

    /// The source's buffer has stayed full for [`crate::runner::PAUSE_AFTER`] (`true`) or has
    /// room again (`false`): a connector that can, stops fetching from the peer meanwhile (Kafka
    /// pauses its partitions).
    async fn backpressure(&mut self, _full: bool) -> Result<()> {
        Ok(())
    }

    /// Disconnects.
    async fn close(&mut self) -> Result<()> {
        Ok(())
    }

    /// A short description of the peer for messages and metrics (never contains secrets).
    fn describe(&self) -> String;
}

/// A sink connector. Each epoch's changes arrive between `begin` and `commit`.
#[async_trait]
pub trait SinkConnector: Send {
    /// What this sink can do.
    fn capabilities(&self) -> SinkCapabilities;

    /// Hands the connector its live status before `open` (see [`SourceConnector::attach`]).
    fn attach(&mut self, _status: Arc<ConnectorStatus>) {}

    /// Connects to the peer. Errors name the peer's address.
    async fn open(&mut self) -> Result<()> {
        Ok(())
    }

    /// Starts epoch `epoch`.
    async fn begin(&mut self, _epoch: u64) -> Result<()> {
        Ok(())
    }

    /// Writes changes of the current epoch. Append-only sinks only ever see insertions.
    async fn write(&mut self, batch: &DiffBatch) -> Result<()>;

    /// Makes the epoch's writes durable but not yet visible (first phase of a commit).
    async fn pre_commit(&mut self, _epoch: u64) -> Result<()> {
        Ok(())
    }

    /// Makes the epoch visible.
    async fn commit(&mut self, _epoch: u64) -> Result<()> {
        Ok(())
    }

    /// Discards the epoch's writes.
    async fn abort(&mut self, _epoch: u64) -> Result<()> {
        Ok(())
    }

    /// State to keep in the checkpoint whose barrier just passed (called right after
    /// `pre_commit` at a barrier): what `recover` needs to finish that checkpoint's writes.
    fn checkpoint_state(&mut self) -> Option<Vec<u8>> {
        None
    }

    /// The checkpoint whose barrier passed could not be completed: the writes since the previous
    /// checkpoint stay pending and the next checkpoint covers them.
    async fn checkpoint_failed(&mut self) -> Result<()> {
        Ok(())
    }

    /// Called after `open` when the pipeline resumes from the checkpoint of `checkpoint` (two-
    /// phase commit recovery), with the state [`SinkConnector::checkpoint_state`] gave for it:
    /// writes pre-committed for epochs up to it become visible, later ones are discarded, since
    /// the pipeline produces them again.
    async fn recover(&mut self, _checkpoint: u64, _state: Option<&[u8]>) -> Result<()> {
        Ok(())
    }

    /// How often [`SinkConnector::tick`] runs while no epoch arrives (None: never).
    fn tick_interval(&self) -> Option<Duration> {
        None
    }

    /// Periodic work between epochs (delivering rows held for a batch).
    async fn tick(&mut self) -> Result<()> {
        Ok(())
    }

    /// Flushes and disconnects.
    async fn close(&mut self) -> Result<()> {
        Ok(())
    }

    /// A short description of the peer for messages and metrics (never contains secrets).
    fn describe(&self) -> String;
}
