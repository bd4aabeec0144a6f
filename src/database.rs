//! [`Database`]: the embedding API — catalog, DDL, ingestion, subscriptions, ad-hoc queries and
//! the pipeline lifecycle.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::MemTable;
use datafusion::common::TableReference;
use datafusion::prelude::SessionContext;
use laminar_adapters::runner::{spawn_sink, spawn_source};
use laminar_adapters::{
    BuildContext, Change, ConnectorStatus, DeadLetter, DeliveryGuarantee, DlqTarget, SinkHandle, SinkSpec,
    SourceHandle, SourceSpec, SourceTarget, Split,
};
use laminar_dataflow::batch::DiffBatch;
use laminar_dataflow::checkpoint::RestoreState;
use laminar_dataflow::merge::EpochMerger;
use laminar_dataflow::runtime::{InstallRequest, Runtime, RuntimeConfig};

pub use laminar_dataflow::cluster::ClusterConfig;
use laminar_dataflow::stats::DataflowStats;
use laminar_sql::ddl::{CreateSink, CreateSource, CreateStream, EmitMode, ObjectKind};
use laminar_sql::{
    parse_statement, plan_query, plan_query_with, CatalogView, PlannedQuery, SourceBinding, Statement, StreamBinding,
};
use parking_lot::{Mutex, RwLock};

mod callbacks;
mod checkpointing;

pub use callbacks::WatermarkSpec;

use crate::catalog::{Catalog, CatalogEntry};
use crate::checkpoint::{self, CheckpointResult, Loaded};
use crate::error::{codes, LaminarError, Result};
use crate::info::*;
use crate::ingest::{batch_from_json_rows, coerce_batch, concat_or_empty, Retention, SourceData};
use crate::output::{StreamOutput, Subscription, SubscriptionMode};

/// Engine settings.
#[derive(Clone, Debug)]
pub struct LaminarConfig {
    /// Per-source buffer capacity in rows.
    pub buffer_size: usize,
    /// Where checkpoints go (defaults to the database directory).
    pub storage_dir: Option<PathBuf>,
    /// Checkpoint interval; `None` disables periodic checkpoints.
    pub checkpoint_interval_ms: Option<u64>,
    /// Timely worker threads (default: number of cores).
    pub workers: Option<usize>,
    /// How often an epoch that received data is closed.
    pub epoch_interval: Duration,
    /// Run the pipeline as one process of a cluster (see [`laminar_dataflow::cluster`]): every
    /// process opens its database with the same addresses and `workers` (required), runs the same
    /// statements in the same order, and feeds its own part of the sources; streams, views and
    /// sinks of process 0 see the whole result. `None`: this process alone.
    pub cluster: Option<ClusterConfig>,
}

impl Default for LaminarConfig {
    fn default() -> Self {
        Self {
            buffer_size: 65_536,
            storage_dir: None,
            checkpoint_interval_ms: None,
            workers: None,
            epoch_interval: Duration::from_millis(1),
            cluster: None,
        }
    }
}

struct SourceEntry {
    def: CreateSource,
    sql: String,
    name: Arc<str>,
    schema: SchemaRef,
    append_only: bool,
    data: Mutex<SourceData>,
    total: AtomicU64,
    /// Largest event time seen minus the watermark delay (ms); i64::MIN when none.
    watermark: AtomicI64,
    /// Rows sent to the pipeline whose epoch is not yet complete: (epoch bound, rows).
    inflight: Mutex<std::collections::VecDeque<(u64, usize)>>,
    /// Sum of the rows in `inflight`.
    pending: AtomicU64,
    /// Small inserts waiting to be sent as one batch (at most `STAGE_ROWS` rows or ~1 ms), with
    /// their row count.
    staged: Mutex<(Vec<RecordBatch>, usize)>,
    /// The connector's spec (validated at CREATE), if the source has a connector.
    connector: Option<SourceSpec>,
    /// Rows kept in `<source>_errors` (0: dead letters go elsewhere).
    errors_max: usize,
    /// The connector of the current run.
    run: Mutex<Option<SourceRun>>,
    /// The connector status of the current (or last) run.
    status: Mutex<Option<Arc<ConnectorStatus>>>,
    /// The connector's position after the last change it applied (resumed by the next
    /// `start()`, and saved by checkpoints).
    position: Mutex<Option<serde_json::Value>>,
    /// Held while a connector's chunk of changes is applied with its position, and by a
    /// checkpoint barrier: a checkpoint includes a whole chunk and its position, or neither.
    chunk: Arc<tokio::sync::Mutex<()>>,
    /// The connector can seek back to a saved position (a replayable source).
    replayable: bool,
    /// The connector reports the watermark itself (not derived from the largest event time).
    connector_watermarks: bool,
    /// The most recent dead letters (the `<source>_errors` collection).
    errors: Mutex<std::collections::VecDeque<DeadLetter>>,
    /// A cluster's follower: the connector cannot split its input and runs on process 0 only.
    elsewhere: AtomicBool,
}

struct SourceRun {
    handle: SourceHandle,
}

/// Suffix of the queryable dead-letter collection of a source.
pub const ERRORS_SUFFIX: &str = "_errors";

/// How long `start()` waits for a connector to connect.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// The connector state of a source or sink whose connector runs on another process of the
/// cluster.
pub const ELSEWHERE: &str = "on process 0";

/// How long a cluster barrier (at shutdown, or [`Database::barrier`]) waits for the other
/// processes.
const CLUSTER_BARRIER_TIMEOUT: Duration = Duration::from_secs(600);

/// Inserts smaller than this are staged and sent together, at the latest ~1 ms later.
const STAGE_ROWS: usize = 1024;
/// Inserts are sliced ([`Database::ingest`]) into parts of at least this many rows.
const MIN_SLICE_ROWS: usize = 4096;

/// Wakes the thread that sends staged rows.
#[derive(Default)]
struct StageSignal {
    pending: Mutex<bool>,
    wake: parking_lot::Condvar,
    stop: AtomicBool,
}

impl StageSignal {
    fn notify(&self) {
        let mut p = self.pending.lock();
        if !*p {
            *p = true;
            self.wake.notify_one();
        }
    }
}

struct Running {
    id: u64,
    merger: Arc<EpochMerger>,
    /// Stateful operators the dataflow runs itself (not read from a stream it shares them with).
    operators: u32,
}

/// Checkpointed state to start a dataflow from: operator snapshots and the stream's contents.
type Restore = (RestoreState, Option<Vec<RecordBatch>>);

/// A stream to install, its dataflow id and what it restores.
type Member = (Arc<StreamEntry>, u64, Option<Restore>);

struct StreamEntry {
    def: CreateStream,
    /// The sink connector fed by this dataflow (sinks only).
    sink: Mutex<Option<Arc<SinkHandle>>>,
    /// Sources the stream's dataflow reads (after inlining streams it reads).
    sources: BTreeSet<String>,
    sql: String,
    planned: PlannedQuery,
    output: Arc<StreamOutput>,
    stats: Arc<DataflowStats>,
    running: Mutex<Option<Running>>,
    /// A sink every process of a cluster writes: this process's output gets what its own
    /// workers computed (otherwise a cluster gathers the whole result on process 0).
    per_process: AtomicBool,
}

impl StreamEntry {
    /// Every epoch below this has reached the output (and the sink connector, if any).
    fn progress(&self) -> Option<u64> {
        let delivered = self.running.lock().as_ref().map(|r| r.merger.delivered())?;
        let sink = self.sink.lock().as_ref().and_then(|h| h.oldest_pending());
        Some(sink.map_or(delivered, |p| p.min(delivered)))
    }

    /// Removes the stream's dataflow from the runtime, if it has one there.
    fn stop(&self, rt: Option<&Arc<Runtime>>) -> Result<()> {
        if let (Some(rt), Some(r)) = (rt, self.running.lock().take()) {
            rt.remove(r.id)?;
        }
        Ok(())
    }

    /// Stops the dataflow and ends every subscription (the stream is going away).
    fn retire(&self, rt: Option<&Arc<Runtime>>) -> Result<()> {
        self.stop(rt)?;
        self.output.close_subscribers();
        Ok(())
    }
}

struct SinkEntry {
    def: CreateSink,
    planned: PlannedQuery,
    spec: SinkSpec,
    /// The dataflow computing the sink's query.
    entry: Arc<StreamEntry>,
    /// The connector status of the current (or last) run.
    status: Mutex<Option<Arc<ConnectorStatus>>>,
    /// True once the sink has run: later runs do not replay the sources' history into it.
    has_run: AtomicBool,
    /// What the sink promises (exactly-once sinks commit at checkpoints).
    guarantee: DeliveryGuarantee,
    /// A cluster's follower: the connector cannot be written by several processes, and only
    /// process 0's instance runs.
    elsewhere: AtomicBool,
}

struct State {
    catalog: Catalog,
    sources: BTreeMap<String, Arc<SourceEntry>>,
    streams: BTreeMap<String, Arc<StreamEntry>>,
    sinks: BTreeMap<String, Arc<SinkEntry>>,
    /// Ad-hoc continuous queries behind `subscribe_query`: not in the catalog, gone with their
    /// subscription.
    queries: BTreeMap<String, Arc<StreamEntry>>,
    pipeline: PipelineState,
    started_at: Option<Instant>,
    next_id: u64,
}

impl CatalogView for State {
    fn source(&self, name: &str) -> Option<SourceBinding> {
        self.sources.get(name).map(|s| SourceBinding {
            schema: s.schema.clone(),
            append_only: s.append_only,
            watermark: s.def.watermark.as_ref().map(|w| w.column.clone()),
        })
    }

    fn stream(&self, name: &str) -> Option<StreamBinding> {
        self.streams.get(name).map(|s| StreamBinding { schema: s.planned.schema.clone(), plan: s.planned.plan.clone() })
    }

    fn relations(&self) -> Vec<(String, SchemaRef)> {
        self.sources
            .iter()
            .map(|(n, s)| (n.clone(), s.schema.clone()))
            .chain(self.streams.iter().map(|(n, s)| (n.clone(), s.planned.schema.clone())))
            .collect()
    }
}

struct Inner {
    config: LaminarConfig,
    dir: Option<PathBuf>,
    lock_file: Mutex<Option<File>>,
    state: Mutex<State>,
    /// Orders "store + send" of ingested data against "snapshot + install" of dataflows.
    ingest: Mutex<()>,
    runtime: RwLock<Option<Arc<Runtime>>>,
    closed: AtomicBool,
    batches: AtomicU64,
    query_rt: OnceLock<tokio::runtime::Runtime>,
    /// Runs connectors.
    connector_rt: OnceLock<tokio::runtime::Runtime>,
    /// Sources and sinks registered at run time (`connector = 'python'`).
    callbacks: laminar_adapters::Callbacks,
    stage: Arc<StageSignal>,
    /// The chain of checkpoints taken in this run (one checkpoint at a time).
    checkpoints: Mutex<CheckpointChain>,
    /// A checkpoint found at open, applied by the next `start()`.
    restore: Mutex<Option<Arc<Loaded>>>,
    /// Stops the periodic checkpoints of the current run.
    checkpoint_timer: Mutex<Option<Arc<AtomicBool>>>,
    /// Why the last periodic checkpoint failed, if it did.
    last_checkpoint_error: Mutex<Option<String>>,
}

/// The incremental checkpoints written since the last full one in this run.
#[derive(Default)]
struct CheckpointChain {
    /// Epochs, the full one first.
    epochs: Vec<u64>,
    /// Operator-state bytes of the full one, and of the incremental ones after it (a new full
    /// checkpoint is taken once the changes outweigh it twice, which bounds what a restart reads).
    full_bytes: u64,
    delta_bytes: u64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stage.stop.store(true, Ordering::Release);
        self.stage.notify();
        if let Some(rt) = self.runtime.write().take() {
            rt.shutdown();
        }
        // May run on a connector thread: never block on a runtime here.
        for rt in [self.connector_rt.take(), self.query_rt.take()].into_iter().flatten() {
            rt.shutdown_background();
        }
    }
}

/// An embedded LaminarDB database. Cheap to clone; clones share the same engine.
///
/// # Examples
/// ```
/// use laminardb::Database;
/// let db = Database::open(":memory:").unwrap();
/// db.execute("CREATE SOURCE trades (symbol VARCHAR, price DOUBLE)").unwrap();
/// db.execute("CREATE STREAM agg AS SELECT symbol, COUNT(*) AS n FROM trades GROUP BY symbol").unwrap();
/// db.start().unwrap();
/// db.insert_json("trades", r#"[{"symbol":"A","price":1.0},{"symbol":"A","price":2.0}]"#).unwrap();
/// db.flush().unwrap();
/// let r = db.query("SELECT n FROM agg WHERE symbol = 'A'").unwrap();
/// assert_eq!(r.pretty().lines().nth(3).unwrap().trim(), "| 2 |");
/// db.shutdown().unwrap();
/// ```
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

/// The Python API calls the handle a connection; it is the same object.
pub type Connection = Database;

impl Database {
    /// Opens (or creates) the database in directory `path`; `":memory:"` keeps nothing on disk.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with_config(path, LaminarConfig::default())
    }

    /// Opens with explicit settings.
    pub fn open_with_config(path: impl AsRef<Path>, config: LaminarConfig) -> Result<Self> {
        let path = path.as_ref();
        if let Some(c) = &config.cluster {
            c.validate().map_err(|message| LaminarError::Connection { code: codes::CONNECTION_FAILED, message })?;
            if config.workers.is_none() {
                return Err(LaminarError::Connection {
                    code: codes::CONNECTION_FAILED,
                    message: "a cluster needs `workers` set, to the same number on every process".into(),
                });
            }
        }
        let dir = if path.as_os_str() == ":memory:" { None } else { Some(path.to_path_buf()) };
        let lock_file = match &dir {
            None => None,
            Some(d) => Some(lock_dir(d)?),
        };
        let catalog = Catalog::load(dir.as_deref())?;
        let replay: Vec<CatalogEntry> = catalog.entries().to_vec();
        let db = Database {
            inner: Arc::new(Inner {
                config,
                dir,
                lock_file: Mutex::new(lock_file),
                state: Mutex::new(State {
                    catalog,
                    sources: BTreeMap::new(),
                    streams: BTreeMap::new(),
                    sinks: BTreeMap::new(),
                    queries: BTreeMap::new(),
                    pipeline: PipelineState::Created,
                    started_at: None,
                    next_id: 1,
                }),
                ingest: Mutex::new(()),
                runtime: RwLock::new(None),
                closed: AtomicBool::new(false),
                batches: AtomicU64::new(0),
                query_rt: OnceLock::new(),
                connector_rt: OnceLock::new(),
                callbacks: Default::default(),
                stage: Arc::new(StageSignal::default()),
                checkpoints: Mutex::new(CheckpointChain::default()),
                restore: Mutex::new(None),
                checkpoint_timer: Mutex::new(None),
                last_checkpoint_error: Mutex::new(None),
            }),
        };
        db.spawn_stager()?;
        for entry in replay {
            db.execute_inner(&entry.sql, false).map_err(|e| LaminarError::Connection {
                code: codes::CONNECTION_FAILED,
                message: format!("cannot restore '{}' from the catalog: {e}", entry.name),
            })?;
        }
        // A cluster's follower restores the checkpoint process 0 names when they connect.
        if db.process() == 0 {
            db.load_checkpoint()?;
        }
        Ok(db)
    }

    /// Where checkpoints are kept: `storage_dir`, else the database directory.
    fn storage_root(&self) -> Option<PathBuf> {
        self.inner.config.storage_dir.clone().or_else(|| self.inner.dir.clone())
    }

    /// True when the pipeline takes checkpoints on its own (`checkpoint_interval_ms`) and has a
    /// place to keep them.
    pub fn is_checkpoint_enabled(&self) -> bool {
        self.inner.config.checkpoint_interval_ms.is_some() && self.storage_root().is_some()
    }

    /// Loads the newest intact checkpoint: the sources get their contents, watermarks and
    /// positions back now; streams get their state at the next `start()`.
    fn load_checkpoint(&self) -> Result<()> {
        let Some(root) = self.storage_root() else { return Ok(()) };
        let store = checkpoint::Store::new(&root);
        let Some(loaded) = store.load_latest()? else { return Ok(()) };
        checkpoint::ClusterPart::check(loaded.head().cluster, self.cluster_part(), loaded.head().epoch)?;
        Self::restore_sources(&self.inner.state.lock(), &loaded)?;
        *self.inner.restore.lock() = Some(Arc::new(loaded));
        Ok(())
    }

    /// This process's part of the cluster's sources and sinks ([`Split::WHOLE`] alone).
    fn split(&self) -> Split {
        let part = |c: &ClusterConfig| Split { index: c.process, count: c.processes(), clock_ms: None };
        self.inner.config.cluster.as_ref().map_or(Split::WHOLE, part)
    }

    /// This process's index in its cluster (0 alone).
    fn process(&self) -> usize {
        self.inner.config.cluster.as_ref().map_or(0, |c| c.process)
    }

    /// The part of a cluster's checkpoints this process writes (none alone).
    fn cluster_part(&self) -> Option<checkpoint::ClusterPart> {
        let c = self.inner.config.cluster.as_ref()?;
        checkpoint::ClusterPart::of(c.process, c.processes(), self.inner.config.workers.unwrap_or(1))
    }

    /// A cluster's follower: its own part of the checkpoint of `epoch`, which process 0 restores;
    /// the sources get their part back now.
    fn load_cluster_part(&self, st: &State, epoch: u64) -> Result<Arc<Loaded>> {
        let process = self.process();
        let fail = |why: String| {
            LaminarError::Checkpoint(format!(
                "process {process} cannot restore the cluster's checkpoint of epoch {epoch}, which process 0 restores: \
                 {why}"
            ))
        };
        let root = self.storage_root().ok_or_else(|| fail("it is in memory".into()))?;
        let loaded = checkpoint::Store::new(&root).load_epoch(epoch).map_err(|e| fail(e.to_string()))?;
        checkpoint::ClusterPart::check(loaded.head().cluster, self.cluster_part(), epoch)?;
        Self::restore_sources(st, &loaded)?;
        Ok(Arc::new(loaded))
    }

    /// Refuses `'delivery.guarantee' = 'exactly-once'` where it cannot hold.
    fn check_exactly_once(&self, st: &State, sink: &str, sources: &BTreeSet<String>) -> Result<()> {
        if !self.is_checkpoint_enabled() {
            return Err(laminar_adapters::ConnectorError::Config(format!(
                "sink '{sink}': 'delivery.guarantee' = 'exactly-once' needs checkpoints: open a directory (or set \
                 storage_dir) and set checkpoint_interval_ms"
            ))
            .into());
        }
        for name in sources {
            if let Some(src) = st.sources.get(name) {
                if !src.replayable {
                    return Err(laminar_adapters::ConnectorError::Config(format!(
                        "sink '{sink}': 'delivery.guarantee' = 'exactly-once' needs every source it reads to be \
                         replayable, and source '{name}' is not (rows inserted directly or by a connector that \
                         cannot seek back); use 'at-least-once'"
                    ))
                    .into());
                }
            }
        }
        Ok(())
    }

    /// The database directory, if not in memory.
    pub fn path(&self) -> Option<&Path> {
        self.inner.dir.as_deref()
    }

    /// The settings the database was opened with.
    pub fn config(&self) -> &LaminarConfig {
        &self.inner.config
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(LaminarError::closed())
        } else {
            Ok(())
        }
    }

    /// True after [`Database::close`].
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Executes one statement.
    pub fn execute(&self, sql: &str) -> Result<ExecuteResult> {
        self.check_open()?;
        self.execute_inner(sql, true)
    }

    fn execute_inner(&self, sql: &str, persist: bool) -> Result<ExecuteResult> {
        match parse_statement(sql)? {
            Statement::CreateSource(def) => self.create_source(def, sql, persist),
            Statement::CreateStream(def) => self.create_stream(def, sql, persist),
            Statement::CreateSink(def) => self.create_sink(def, sql, persist),
            Statement::Drop { kind, name, if_exists, cascade } => self.drop_object(kind, &name, if_exists, cascade),
            Statement::Show(kind) => self.show(kind).map(ExecuteResult::Metadata),
            Statement::Describe(name) => self.describe(&name).map(ExecuteResult::Metadata),
            Statement::ShowCreate { kind, name } => self.show_create(kind, &name).map(ExecuteResult::Metadata),
            Statement::Explain(q) => self.explain(&q).map(ExecuteResult::Metadata),
            Statement::Insert { table, columns, query } => {
                self.insert_sql(&table, &columns, &query).map(|n| ExecuteResult::RowsAffected(n as u64))
            }
            Statement::Query(q) => self.run_query(&q).map(ExecuteResult::Query),
        }
    }

    fn name_taken(st: &State, name: &str) -> Option<&'static str> {
        if st.sources.contains_key(name) {
            Some("source")
        } else if st.streams.contains_key(name) {
            Some("stream")
        } else if st.sinks.contains_key(name) {
            Some("sink")
        } else {
            None
        }
    }

    fn create_source(&self, def: CreateSource, sql: &str, persist: bool) -> Result<ExecuteResult> {
        let mut st = self.inner.state.lock();
        let obj = def.name.clone();
        let ddl = move || ExecuteResult::Ddl { ddl_type: "CREATE SOURCE".into(), ddl_object: obj.clone() };
        if let Some(kind) = Self::name_taken(&st, &def.name) {
            if def.if_not_exists {
                return Ok(ddl());
            }
            if !(def.or_replace && kind == "source") {
                return Err(LaminarError::AlreadyExists(format!("a {kind} named '{}' already exists", def.name)));
            }
            let deps = dependents(&st, &def.name);
            if !deps.is_empty() {
                return Err(LaminarError::Query(format!(
                    "cannot replace source '{}': {} depend on it",
                    def.name,
                    deps.join(", ")
                )));
            }
        }
        // Engine-level options; the rest belongs to the connector.
        let mut connector_options = def.options.clone();
        let retention = match connector_options.remove("retention") {
            Some(v) => Retention::parse(&v)?,
            None => Retention::Unbounded,
        };
        let schema = Arc::new(Schema::new(
            def.columns.iter().map(|c| Field::new(&c.name, c.data_type.clone(), c.nullable)).collect::<Vec<_>>(),
        ));
        let (connector, errors_max, replayable, connector_watermarks, key_from_peer) = if connector_options.is_empty() {
            (None, 0, false, false, false)
        } else {
            let spec = SourceSpec {
                name: def.name.clone(),
                schema: schema.clone(),
                primary_key: def.primary_key.clone(),
                split: self.split(),
                watermark_column: def.watermark.as_ref().map(|w| w.column.clone()),
                watermark_delay_ms: def.watermark.as_ref().map_or(0, |w| w.delay_ms),
                options: connector_options,
            };
            let ctx = BuildContext { callbacks: &self.inner.callbacks, resolve: persist };
            let caps = laminar_adapters::validate_source(&spec, &ctx)?;
            let max = match laminar_adapters::build_source(&spec, &ctx)?.dlq {
                DlqTarget::Collection { max_rows } => max_rows,
                DlqTarget::File(_) => 0,
            };
            (Some(spec), max, caps.replayable, caps.watermarks, caps.key_from_peer)
        };
        let pk: Vec<usize> =
            def.primary_key.iter().filter_map(|k| def.columns.iter().position(|c| &c.name == k)).collect();
        // A CDC source without a declared key is keyed by the upstream table's key at start.
        let unkeyed = pk.is_empty() && key_from_peer;
        let data = if unkeyed {
            if retention != Retention::Unbounded {
                return Err(LaminarError::Schema {
                    code: codes::INVALID_SCHEMA,
                    message: format!(
                        "'retention' applies to append-only sources; '{}' receives updates and deletes",
                        def.name
                    ),
                });
            }
            SourceData::unkeyed(&schema)
        } else {
            SourceData::new(&schema, &pk, retention)?
        };
        let entry = Arc::new(SourceEntry {
            name: Arc::from(def.name.as_str()),
            sql: sql.trim().to_string(),
            append_only: pk.is_empty() && !unkeyed,
            schema,
            data: Mutex::new(data),
            total: AtomicU64::new(0),
            watermark: AtomicI64::new(i64::MIN),
            inflight: Mutex::new(Default::default()),
            pending: AtomicU64::new(0),
            staged: Mutex::new((Vec::new(), 0)),
            connector,
            errors_max,
            run: Mutex::new(None),
            status: Mutex::new(None),
            position: Mutex::new(None),
            chunk: Arc::new(tokio::sync::Mutex::new(())),
            replayable,
            connector_watermarks,
            errors: Mutex::new(Default::default()),
            elsewhere: AtomicBool::new(false),
            def,
        });
        let name = entry.def.name.clone();
        if persist {
            let e = CatalogEntry { name: name.clone(), kind: "SOURCE".into(), sql: entry.sql.clone() };
            st.catalog.update(|v| {
                v.retain(|x| x.name != name);
                v.push(e)
            })?;
        }
        let old = st.sources.insert(name, entry.clone());
        let running = st.pipeline == PipelineState::Running;
        drop(st);
        if let Some(old) = old {
            self.stop_source(&old);
        }
        if running {
            if let Err(e) = self.start_source(&entry) {
                let _ = self.drop_object(ObjectKind::Source, &entry.def.name, true, false);
                return Err(e);
            }
        }
        Ok(ddl())
    }

    fn create_stream(&self, def: CreateStream, sql: &str, persist: bool) -> Result<ExecuteResult> {
        let mut st = self.inner.state.lock();
        let ddl_type = if def.materialized { "CREATE MATERIALIZED VIEW" } else { "CREATE STREAM" };
        let obj = def.name.clone();
        let ddl = move || ExecuteResult::Ddl { ddl_type: ddl_type.into(), ddl_object: obj.clone() };
        if let Some(kind) = Self::name_taken(&st, &def.name) {
            if def.if_not_exists {
                return Ok(ddl());
            }
            return Err(LaminarError::AlreadyExists(format!("a {kind} named '{}' already exists", def.name)));
        }
        let planned = plan_query_with(&def.query, &*st, def.emit == EmitMode::OnWindowClose)?;
        let retention = stream_retention(&def, planned.plan.is_append_only())?;
        let output = Arc::new(StreamOutput::new(planned.schema.clone(), planned.plan.is_append_only(), retention)?);
        let entry = Arc::new(StreamEntry {
            sources: planned.plan.sources(),
            sql: sql.trim().to_string(),
            planned,
            output,
            stats: Arc::new(DataflowStats::default()),
            running: Mutex::new(None),
            per_process: AtomicBool::new(false),
            sink: Mutex::new(None),
            def,
        });
        let name = entry.def.name.clone();
        let rt = self.inner.runtime.read().clone();
        if let Some(rt) = &rt {
            let id = st.next_id;
            st.next_id += 1;
            if let Err(e) = self.install(&st, rt, &entry, id, true, None) {
                let _ = rt.remove(id);
                return Err(e);
            }
        }
        if persist {
            let kind = if entry.def.materialized { "MATERIALIZED VIEW" } else { "STREAM" };
            let e = CatalogEntry { name: name.clone(), kind: kind.into(), sql: entry.sql.clone() };
            if let Err(e) = st.catalog.update(|v| v.push(e)) {
                let _ = entry.stop(rt.as_ref());
                return Err(e);
            }
        }
        st.streams.insert(name, entry);
        Ok(ddl())
    }

    fn create_sink(&self, def: CreateSink, sql: &str, persist: bool) -> Result<ExecuteResult> {
        let mut st = self.inner.state.lock();
        let obj = def.name.clone();
        let ddl = move || ExecuteResult::Ddl { ddl_type: "CREATE SINK".into(), ddl_object: obj.clone() };
        if let Some(kind) = Self::name_taken(&st, &def.name) {
            if def.if_not_exists {
                return Ok(ddl());
            }
            return Err(LaminarError::AlreadyExists(format!("a {kind} named '{}' already exists", def.name)));
        }
        laminar_adapters::registry::require_connector(laminar_adapters::ConnectorKind::Sink, &def.options)?;
        let planned = plan_query_with(&def.query, &*st, def.emit == EmitMode::OnWindowClose)?;
        let spec = SinkSpec {
            name: def.name.clone(),
            schema: planned.schema.clone(),
            append_only: planned.plan.is_append_only(),
            key_columns: sink_key(&planned, &st),
            options: def.options.clone(),
            part: self.split(),
        };
        let (_, guarantee) = laminar_adapters::validate_sink(
            &spec,
            &BuildContext { callbacks: &self.inner.callbacks, resolve: persist },
        )?;
        if guarantee == DeliveryGuarantee::ExactlyOnce {
            self.check_exactly_once(&st, &def.name, &planned.plan.sources())?;
        }
        let name = def.name.clone();
        let entry = Arc::new(StreamEntry {
            def: CreateStream {
                name: name.clone(),
                query: def.query.clone(),
                materialized: false,
                emit: def.emit,
                options: Default::default(),
                if_not_exists: false,
                or_replace: false,
            },
            sink: Mutex::new(None),
            sources: planned.plan.sources(),
            sql: sql.trim().to_string(),
            output: Arc::new(StreamOutput::forwarding(planned.schema.clone(), planned.plan.is_append_only())?),
            planned: planned.clone(),
            stats: Arc::new(DataflowStats::default()),
            running: Mutex::new(None),
            per_process: AtomicBool::new(false),
        });
        let sink = Arc::new(SinkEntry {
            def,
            planned,
            spec,
            entry,
            status: Mutex::new(None),
            has_run: AtomicBool::new(false),
            guarantee,
            elsewhere: AtomicBool::new(false),
        });
        if persist {
            let e = CatalogEntry { name: name.clone(), kind: "SINK".into(), sql: sql.trim().to_string() };
            st.catalog.update(|v| v.push(e))?;
        }
        st.sinks.insert(name.clone(), sink.clone());
        if let Some(rt) = self.inner.runtime.read().clone() {
            if let Err(e) = self.start_sink(&mut st, &rt, &sink, None) {
                drop(st);
                let _ = self.drop_object(ObjectKind::Sink, &name, true, false);
                return Err(e);
            }
        }
        Ok(ddl())
    }

    fn drop_object(&self, kind: ObjectKind, name: &str, if_exists: bool, cascade: bool) -> Result<ExecuteResult> {
        let mut st = self.inner.state.lock();
        let ddl = ExecuteResult::Ddl { ddl_type: format!("DROP {}", kind.sql()), ddl_object: name.to_string() };
        let exists = match kind {
            ObjectKind::Source => st.sources.contains_key(name),
            ObjectKind::Stream | ObjectKind::MaterializedView => st.streams.contains_key(name),
            ObjectKind::Sink => st.sinks.contains_key(name),
        };
        if !exists {
            if if_exists {
                return Ok(ddl);
            }
            return Err(LaminarError::NotFound(format!("{} '{name}' does not exist", kind.sql().to_lowercase())));
        }
        // Everything that (transitively) reads `name`, dropped first.
        let mut doomed: Vec<String> = Vec::new();
        let mut frontier = vec![name.to_string()];
        while let Some(n) = frontier.pop() {
            for d in dependents(&st, &n) {
                if !doomed.contains(&d) {
                    frontier.push(d.clone());
                    doomed.push(d);
                }
            }
        }
        if !doomed.is_empty() && !cascade {
            return Err(LaminarError::Query(format!(
                "cannot drop '{name}': {} depend on it (use DROP … CASCADE)",
                doomed.join(", ")
            )));
        }
        doomed.insert(0, name.to_string());
        let gone: BTreeSet<String> = doomed.iter().cloned().collect();
        st.catalog.update(|v| v.retain(|e| !gone.contains(&e.name)))?;
        let rt = self.inner.runtime.read().clone();
        let orphans: Vec<String> = st
            .queries
            .iter()
            .filter(|(_, q)| q.sources.iter().any(|x| gone.contains(x)))
            .map(|(n, _)| n.clone())
            .collect();
        for n in orphans {
            if let Some(q) = st.queries.remove(&n) {
                q.retire(rt.as_ref())?;
            }
        }
        let mut removed_sources = Vec::new();
        for n in doomed.iter().rev() {
            if let Some(src) = st.sources.remove(n) {
                removed_sources.push(src);
            }
            if let Some(sink) = st.sinks.remove(n) {
                self.stop_sink(&sink);
                sink.entry.stop(rt.as_ref())?;
            }
            if let Some(s) = st.streams.remove(n) {
                s.retire(rt.as_ref())?;
            }
        }
        drop(st);
        for src in removed_sources {
            self.stop_source(&src);
        }
        Ok(ddl)
    }

    /// Installs a dataflow; `replay` feeds it the sources' current contents first, unless it
    /// starts from checkpointed state (`restore`: operator snapshots and the stream's contents).
    fn install(
        &self,
        st: &State,
        rt: &Arc<Runtime>,
        entry: &Arc<StreamEntry>,
        id: u64,
        replay: bool,
        restore: Option<Restore>,
    ) -> Result<()> {
        self.install_group(st, rt, vec![(entry.clone(), id, restore)], replay)
    }

    /// Installs the dataflows of several streams as one (see [`Runtime::install_group`]): a
    /// stream that reads another reads its operators' output instead of running a copy of
    /// them. Members are in dependency order and either all restore or none does.
    fn install_group(&self, st: &State, rt: &Arc<Runtime>, members: Vec<Member>, replay: bool) -> Result<()> {
        let plans: Vec<&laminar_dataflow::plan::PlanNode> = members.iter().map(|(e, ..)| &e.planned.plan).collect();
        let operators = laminar_dataflow::build::operators_built(&plans);
        let mut reqs = Vec::with_capacity(members.len());
        let mut running = Vec::with_capacity(members.len());
        let guard = self.inner.ingest.lock();
        let mut backfilled = false;
        let mut contents: std::collections::HashMap<String, Vec<DiffBatch>> = std::collections::HashMap::new();
        for ((entry, id, restore), operators) in members.into_iter().zip(operators) {
            let output = entry.output.clone();
            let restore = match restore {
                Some((state, contents)) => {
                    output.restore(contents.as_deref().unwrap_or_default())?;
                    Some(Arc::new(state))
                }
                None => {
                    output.reset()?;
                    None
                }
            };
            let merger = Arc::new(EpochMerger::new(rt.workers(), Box::new(move |e, b| output.deliver(e, b))));
            let mut backfill = Vec::new();
            for name in entry.planned.plan.sources().into_iter().filter(|_| replay && restore.is_none()) {
                // Each source's contents are read once for the group (the batches are shared).
                let batches = match contents.get(&name) {
                    Some(b) => b,
                    None => {
                        let src = st
                            .sources
                            .get(&name)
                            .ok_or_else(|| LaminarError::Internal(format!("stream reads unknown source '{name}'")))?;
                        let batches: Vec<DiffBatch> =
                            src.data.lock().snapshot()?.into_iter().map(DiffBatch::inserts).collect();
                        contents.entry(name.clone()).or_insert(batches)
                    }
                };
                backfill.push((name, batches.clone()));
            }
            backfilled |= backfill.iter().any(|(_, b)| !b.is_empty());
            reqs.push(InstallRequest {
                id,
                plan: entry.planned.plan.clone(),
                output: merger.clone(),
                backfill,
                stats: entry.stats.clone(),
                restore,
                per_process: entry.per_process.load(Ordering::Acquire),
            });
            running.push((entry, Running { id, merger, operators }));
        }
        rt.install_group(reqs)?;
        let mergers: Vec<(String, Arc<EpochMerger>)> =
            running.iter().map(|(e, r)| (e.def.name.clone(), r.merger.clone())).collect();
        for (entry, r) in running {
            *entry.running.lock() = Some(r);
        }
        drop(guard);
        if backfilled {
            // Return once the sources' existing contents are reflected in the new streams.
            let epoch = rt.close_epoch()?;
            for (name, merger) in mergers {
                if !merger.wait_delivered(epoch, Duration::from_secs(300)) {
                    return Err(LaminarError::Internal(format!("backfilling '{name}' did not finish within 300 s")));
                }
            }
        }
        Ok(())
    }

    /// The checkpointed state of a dataflow, if the checkpoint being restored has it (and for the
    /// same definition).
    fn restored_state(
        loaded: Option<&Loaded>,
        name: &str,
        sql: &str,
    ) -> Result<Option<(RestoreState, Option<Vec<RecordBatch>>)>> {
        let Some(l) = loaded else { return Ok(None) };
        let Some(saved) = l.head().streams.get(name) else { return Ok(None) };
        if saved.sql != sql {
            return Ok(None);
        }
        let contents = match saved.output.as_ref().and_then(|f| l.head_file(f)) {
            Some(bytes) => Some(checkpoint::ipc_batches(&bytes)?),
            None => None,
        };
        Ok(Some((RestoreState { operators: l.operator_state(name) }, contents)))
    }

    /// Starts the pipeline: every stream begins processing (existing source contents first).
    pub fn start(&self) -> Result<()> {
        self.check_open()?;
        // Staged rows go into the sources' contents first, so the new dataflows backfill them.
        self.flush_all_staged()?;
        let mut st = self.inner.state.lock();
        if st.pipeline == PipelineState::Running || st.pipeline == PipelineState::Starting {
            return Ok(());
        }
        st.pipeline = PipelineState::Starting;
        // A checkpoint found at open: the dataflows resume from it, at the epoch after it.
        let restore = self.inner.restore.lock().take();
        *self.inner.checkpoints.lock() = CheckpointChain::default();
        let cfg = RuntimeConfig {
            workers: self.inner.config.workers.unwrap_or_else(|| RuntimeConfig::default().workers),
            epoch_interval: self.inner.config.epoch_interval,
            initial_epoch: restore.as_ref().map_or(1, |l| l.head().epoch + 1),
            checkpoints: self.storage_root().is_some(),
            cluster: self.inner.config.cluster.clone(),
            restored: restore.as_ref().map(|l| l.head().epoch),
        };
        let rt = match Runtime::start(cfg) {
            Ok(rt) => Arc::new(rt),
            Err(e) => {
                st.pipeline = PipelineState::Stopped;
                return Err(e.into());
            }
        };
        // A follower restores its part of the checkpoint process 0 restores, and answers its
        // checkpoint requests.
        let follower = rt.process().0 > 0;
        let prepared = (|| -> Result<Option<Arc<Loaded>>> {
            if !follower {
                return Ok(restore);
            }
            let part = match rt.restored() {
                Some(epoch) => Some(self.load_cluster_part(&st, epoch)?),
                None => None,
            };
            self.spawn_checkpoint_follower(&rt)?;
            Ok(part)
        })();
        let restore = match prepared {
            Ok(r) => r,
            Err(e) => {
                st.pipeline = PipelineState::Stopped;
                rt.abandon_cluster(&format!("failed to start ({e})"));
                rt.shutdown();
                return Err(e);
            }
        };
        // The sources' stored contents are replayed into the new dataflows: their watermarks
        // carry over.
        for src in st.sources.values().filter(|s| s.def.watermark.is_some()) {
            let w = src.watermark.load(Ordering::Acquire);
            if w != i64::MIN {
                rt.advance_watermark(&src.def.name, w);
            }
        }
        *self.inner.runtime.write() = Some(rt.clone());
        let streams: Vec<Arc<StreamEntry>> = catalog_order(&st)
            .into_iter()
            .filter_map(|n| st.streams.get(&n).cloned())
            .chain(st.queries.values().cloned())
            .collect();
        let mut result = Ok(());
        // Streams that read one another run as one dataflow, each reading the operators of the
        // streams it reads (instead of a copy of them); a group either restores or backfills.
        let mut groups: Vec<Vec<Member>> = Vec::new();
        let mut group_of: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for s in streams {
            let id = st.next_id;
            st.next_id += 1;
            let state = match Self::restored_state(restore.as_deref(), &s.def.name, &s.sql) {
                Ok(state) => state,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let restores = state.is_some();
            let mut joined: Vec<usize> = s
                .planned
                .references
                .iter()
                .filter_map(|r| group_of.get(r).copied())
                .filter(|&g| groups[g].first().is_some_and(|m| m.2.is_some() == restores))
                .collect();
            joined.sort_unstable();
            joined.dedup();
            let g = match joined.split_first() {
                Some((&g, rest)) => {
                    for &other in rest {
                        let moved = std::mem::take(&mut groups[other]);
                        for m in &moved {
                            group_of.insert(m.0.def.name.clone(), g);
                        }
                        groups[g].extend(moved);
                    }
                    g
                }
                None => {
                    groups.push(Vec::new());
                    groups.len() - 1
                }
            };
            if st.streams.contains_key(&s.def.name) {
                group_of.insert(s.def.name.clone(), g);
            }
            groups[g].push((s, id, state));
        }
        if result.is_ok() {
            for members in groups.into_iter().filter(|g| !g.is_empty()) {
                if let Err(e) = self.install_group(&st, &rt, members, true) {
                    result = Err(e);
                    break;
                }
            }
        }
        // Sinks next, so that they see everything the sources produce.
        if result.is_ok() {
            let sinks: Vec<Arc<SinkEntry>> =
                catalog_order(&st).into_iter().filter_map(|n| st.sinks.get(&n).cloned()).collect();
            for sink in sinks {
                if let Err(e) = self.start_sink(&mut st, &rt, &sink, restore.as_deref()) {
                    result = Err(e);
                    break;
                }
            }
        }
        let sources: Vec<Arc<SourceEntry>> = st.sources.values().filter(|s| s.connector.is_some()).cloned().collect();
        st.pipeline = PipelineState::Running;
        st.started_at = Some(Instant::now());
        drop(st);
        if result.is_ok() {
            self.start_checkpoint_timer();
        }
        if result.is_ok() {
            for src in &sources {
                if let Err(e) = self.start_source(src) {
                    result = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = &result {
            // The other processes of a cluster are not shutting down: do not wait for them.
            if let Some(rt) = self.inner.runtime.read().as_ref() {
                rt.abandon_cluster(&format!("failed to start ({e})"));
            }
            let _ = self.shutdown();
        }
        result
    }

    fn build_context(&self) -> BuildContext<'_> {
        BuildContext { callbacks: &self.inner.callbacks, resolve: true }
    }

    fn connector_runtime(&self) -> Result<&tokio::runtime::Runtime> {
        if let Some(rt) = self.inner.connector_rt.get() {
            return Ok(rt);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("laminar-connector")
            .enable_all()
            .build()
            .map_err(|e| LaminarError::Internal(format!("cannot start the connector runtime: {e}")))?;
        Ok(self.inner.connector_rt.get_or_init(|| rt))
    }

    /// Opens a source's connector and starts polling it (the pipeline is running).
    fn start_source(&self, src: &Arc<SourceEntry>) -> Result<()> {
        let Some(spec) = &src.connector else { return Ok(()) };
        let crt = self.connector_runtime()?;
        let mut spec = spec.clone();
        spec.split.clock_ms = self.inner.runtime.read().as_ref().and_then(|rt| rt.cluster_clock_ms());
        let spec = &spec;
        let built = laminar_adapters::build_source(spec, &self.build_context())?;
        let mut connector = built.connector;
        if spec.split.index > 0 && !connector.capabilities().partitioned {
            // A cluster's follower: a connector that cannot split its input runs on process 0
            // only, and this process never holds the source's watermark back.
            if let Some(rt) = self.inner.runtime.read().as_ref() {
                rt.advance_watermark(&src.def.name, i64::MAX);
            }
            src.elsewhere.store(true, Ordering::Release);
            return Ok(());
        }
        if let Some(pos) = src.position.lock().clone() {
            connector.restore(&pos)?;
        }
        let peer = connector.describe();
        let status = Arc::new(ConnectorStatus::new(peer.clone()));
        connector.attach(status.clone());
        open_connector(crt, &format!("source '{}'", src.def.name), &peer, connector.open())?;
        if let Some(key) = connector.key_columns().filter(|_| src.def.primary_key.is_empty()) {
            let idx: Vec<usize> = key.iter().filter_map(|k| src.schema.index_of(k).ok()).collect();
            let keyed = if idx.len() == key.len() && !idx.is_empty() {
                let _g = self.inner.ingest.lock();
                src.data.lock().set_key(&idx)
            } else {
                Err(LaminarError::Internal(format!("source '{}': key {key:?} is not among its columns", src.def.name)))
            };
            if let Err(e) = keyed {
                if let Some(crt) = self.inner.connector_rt.get() {
                    let _ = crt.block_on(connector.close());
                }
                return Err(e);
            }
        }
        let target = Arc::new(EngineTarget { inner: Arc::downgrade(&self.inner), src: src.clone() });
        let commit_on_apply = !self.is_checkpoint_enabled();
        let handle = spawn_source(
            crt.handle(),
            src.def.name.clone(),
            connector,
            built.dlq,
            target,
            status.clone(),
            commit_on_apply,
        );
        *src.status.lock() = Some(status);
        *src.run.lock() = Some(SourceRun { handle });
        Ok(())
    }

    /// Stops a source's connector, remembering where it stopped. Call without the state lock.
    fn stop_source(&self, src: &SourceEntry) {
        let run = src.run.lock().take();
        if let (Some(run), Some(crt)) = (run, self.inner.connector_rt.get()) {
            if let Some(pos) = run.handle.stop(crt.handle(), Duration::from_secs(10)) {
                *src.position.lock() = Some(pos);
            }
        }
    }

    /// Stops a source's polling but keeps its connection until [`Database::stop_source`], so
    /// that a last checkpoint is still acknowledged to its peer. Call without the state lock.
    fn halt_source(&self, src: &SourceEntry) {
        let Some(crt) = self.inner.connector_rt.get() else { return };
        let mut run = src.run.lock();
        if let Some(run) = run.as_mut() {
            if let Some(pos) = run.handle.halt(crt.handle(), Duration::from_secs(10)) {
                *src.position.lock() = Some(pos);
            }
        }
    }

    /// Opens a sink's connector and installs its dataflow.
    fn start_sink(
        &self,
        st: &mut State,
        rt: &Arc<Runtime>,
        sink: &Arc<SinkEntry>,
        restore: Option<&Loaded>,
    ) -> Result<()> {
        let crt = self.connector_runtime()?;
        let mut connector = laminar_adapters::build_sink(&sink.spec, &self.build_context())?.connector;
        let state = Self::restored_state(restore, &sink.def.name, &sink.entry.sql)?;
        let (process, processes) = rt.process();
        let parallel = connector.capabilities().parallel;
        // Only the rows of an append-only query: a key's update and the retraction before it may
        // come from workers of different processes, whose writers would race.
        let parallel = parallel && sink.spec.append_only;
        sink.entry.per_process.store(processes > 1 && parallel, Ordering::Release);
        if process > 0 && !parallel {
            // Only process 0's instance writes (the whole result is gathered there); this
            // process still runs the dataflow, as every process must.
            sink.elsewhere.store(true, Ordering::Release);
            let id = st.next_id;
            st.next_id += 1;
            let first_run = !sink.has_run.swap(true, Ordering::AcqRel);
            return self.install(st, rt, &sink.entry, id, first_run, state);
        }
        let peer = connector.describe();
        let what = format!("sink '{}'", sink.def.name);
        let status = Arc::new(ConnectorStatus::new(peer.clone()));
        connector.attach(status.clone());
        open_connector(crt, &what, &peer, connector.open())?;
        if let (Some(_), Some(l)) = (&state, restore) {
            // Writes pre-committed up to the checkpoint become visible; later ones go.
            let saved = l.head().streams.get(&sink.def.name).and_then(|s| s.sink_state.as_ref());
            let sink_state = saved.and_then(|f| l.head_file(f));
            open_connector(
                crt,
                &what,
                &peer,
                connector.recover(l.head().epoch, sink_state.as_deref().map(|v| v.as_slice())),
            )?;
            sink.has_run.store(true, Ordering::Release);
        }
        let transactional = sink.guarantee == DeliveryGuarantee::ExactlyOnce;
        let handle = Arc::new(spawn_sink(crt.handle(), connector, status.clone(), transactional));
        let h = handle.clone();
        sink.entry.output.set_forward(Some(Box::new(move |epoch, batches| h.push(epoch, batches.to_vec()))));
        *sink.entry.sink.lock() = Some(handle);
        *sink.status.lock() = Some(status);
        let id = st.next_id;
        st.next_id += 1;
        let first_run = !sink.has_run.swap(true, Ordering::AcqRel);
        if let Err(e) = self.install(st, rt, &sink.entry, id, first_run, state) {
            self.stop_sink(sink);
            return Err(e);
        }
        Ok(())
    }

    /// Writes what a sink has queued and closes its connector.
    fn stop_sink(&self, sink: &SinkEntry) {
        sink.entry.output.set_forward(None);
        let handle = sink.entry.sink.lock().take();
        if let (Some(h), Some(crt)) = (handle, self.inner.connector_rt.get()) {
            h.finish(crt.handle(), Duration::from_secs(30));
        }
    }

    /// Applies a change from a source connector. Never waits for room: the connector's runner
    /// waits (without blocking a thread) until the source has capacity.
    fn apply_change(&self, src: &SourceEntry, change: Change) -> Result<()> {
        match change {
            Change::Insert(batch) => {
                let batch = coerce_batch(&src.def.name, &batch, &src.schema)?;
                if batch.num_rows() == 0 {
                    return Ok(());
                }
                self.note_insert(src, &batch, false);
                self.ingest_now(src, batch)
            }
            Change::Delete(keys) => {
                let _g = self.inner.ingest.lock();
                let change = src.data.lock().delete(&src.def.name, &keys)?;
                match change {
                    Some(c) => self.send_change(src, c),
                    None => Ok(()),
                }
            }
            Change::Clear => {
                let _g = self.inner.ingest.lock();
                let change = src.data.lock().clear(&src.def.name)?;
                match change {
                    Some(c) => self.send_change(src, c),
                    None => Ok(()),
                }
            }
        }
    }

    /// Counts inserted rows and advances the source's watermark.
    /// Counts an insert; `watermark`: also moves the source's watermark now (rows that are sent
    /// at once move it in [`Database::send_change`]).
    fn note_insert(&self, src: &SourceEntry, batch: &RecordBatch, watermark: bool) {
        if let Some(w) = src.def.watermark.as_ref().filter(|_| watermark && !src.connector_watermarks) {
            if let Some(max) = max_event_time_ms(batch, &w.column) {
                src.watermark.fetch_max(max.saturating_sub(w.delay_ms), Ordering::AcqRel);
            }
        }
        src.total.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        self.inner.batches.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a checkpoint: the consistent state of the running pipeline at an epoch boundary
    /// (operator state, source contents and positions, stream contents), written durably under
    /// the storage directory; exactly-once sinks then commit the epochs it covers. The pipeline
    /// keeps running meanwhile, apart from the instant of the barrier. In a cluster only process
    /// 0 takes checkpoints, for every process (see the `checkpointing` module).
    pub fn checkpoint(&self) -> Result<CheckpointResult> {
        self.check_open()?;
        self.take_checkpoint()
    }

    /// Starts periodic checkpoints for this run when `checkpoint_interval_ms` is set.
    fn start_checkpoint_timer(&self) {
        let Some(ms) = self.inner.config.checkpoint_interval_ms else { return };
        // A cluster's checkpoints are taken by process 0, for every process.
        if self.storage_root().is_none() || self.process() > 0 {
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        if let Some(old) = self.inner.checkpoint_timer.lock().replace(stop.clone()) {
            old.store(true, Ordering::Release);
        }
        let weak = Arc::downgrade(&self.inner);
        let every = Duration::from_millis(ms.max(10));
        let spawned = std::thread::Builder::new().name("laminar-checkpoints".into()).spawn(move || loop {
            let deadline = Instant::now() + every;
            while Instant::now() < deadline {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10).min(every));
            }
            let Some(inner) = weak.upgrade() else { return };
            let db = Database { inner };
            if !matches!(db.pipeline_state(), PipelineState::Running | PipelineState::Failed) {
                return;
            }
            if let Err(e) = db.checkpoint() {
                *db.inner.last_checkpoint_error.lock() = Some(e.to_string());
            }
        });
        if spawned.is_err() {
            *self.inner.last_checkpoint_error.lock() = Some("cannot start the checkpoint thread".into());
        }
    }

    /// Stops the pipeline after draining in-flight data; subscriptions end.
    pub fn shutdown(&self) -> Result<()> {
        self.flush_all_staged()?;
        // Connectors first: sources stop, the pipeline drains into the sinks, sinks flush.
        let (sources, sinks) = {
            let st = self.inner.state.lock();
            if st.pipeline != PipelineState::Running {
                return Ok(());
            }
            (st.sources.values().cloned().collect::<Vec<_>>(), st.sinks.values().cloned().collect::<Vec<_>>())
        };
        if let Some(stop) = self.inner.checkpoint_timer.lock().take() {
            stop.store(true, Ordering::Release);
        }
        for src in &sources {
            self.halt_source(src);
        }
        // In a cluster, every process's last rows reach process 0's results before its sinks stop.
        let drained = self.cluster_barrier();
        let cluster = self.inner.runtime.read().clone().filter(|rt| rt.process().1 > 1);
        // A last checkpoint: the next run resumes exactly here (and exactly-once sinks commit);
        // the sources, still connected, acknowledge it to their peers. In a cluster process 0
        // takes it for every process.
        let leads = cluster.as_ref().is_none_or(|rt| rt.process().0 == 0);
        if drained.is_ok() && self.is_checkpoint_enabled() && leads {
            if let Err(e) = self.take_checkpoint() {
                *self.inner.last_checkpoint_error.lock() = Some(e.to_string());
            }
        }
        // The other processes keep running (and take part in that checkpoint) until it is done.
        // (Counted even after a failure, as every process counts the same barriers.)
        let drained = match &cluster {
            Some(rt) => drained.and(rt.barrier(CLUSTER_BARRIER_TIMEOUT).map_err(LaminarError::from)),
            None => drained,
        };
        // A follower's part of that checkpoint ends (its sinks commit) before its sinks stop.
        drop(self.inner.checkpoints.lock());
        for src in &sources {
            self.stop_source(src);
        }
        for sink in &sinks {
            self.stop_sink(sink);
        }
        let mut st = self.inner.state.lock();
        if st.pipeline != PipelineState::Running {
            return drained;
        }
        st.pipeline = PipelineState::ShuttingDown;
        let rt = {
            let _g = self.inner.ingest.lock();
            self.inner.runtime.write().take()
        };
        if let Some(rt) = rt {
            rt.shutdown();
        }
        for s in st.dataflows() {
            *s.running.lock() = None;
            s.output.close_subscribers();
        }
        for s in st.sources.values() {
            s.inflight.lock().clear();
            s.pending.store(0, Ordering::Release);
        }
        st.pipeline = PipelineState::Stopped;
        st.started_at = None;
        let failed = connector_failures(&st);
        drop(st);
        drained?;
        if failed.is_empty() {
            Ok(())
        } else {
            Err(LaminarError::Connector { code: codes::CONNECTOR_FAILED, message: failed.join("; ") })
        }
    }

    /// Shuts down and releases the database directory; every later call fails. Connector
    /// failures are not raised here (`shutdown()` raises them; metrics keep them).
    pub fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let r = self.shutdown();
        self.inner.lock_file.lock().take();
        match r {
            Err(LaminarError::Connector { .. }) => Ok(()),
            other => other,
        }
    }

    /// Waits until every row inserted before this call is reflected in every stream.
    /// Sinks included: returns once their connectors have committed those rows.
    pub fn flush(&self) -> Result<()> {
        self.check_open()?;
        self.flush_inner()
    }

    /// Flushes, waits until every process of the cluster has reached this call (as many times),
    /// and flushes again: process 0's results (and every process's sinks written per process)
    /// then hold every row any process fed before its call. Alone, the same as
    /// [`Database::flush`].
    pub fn barrier(&self) -> Result<()> {
        self.check_open()?;
        self.cluster_barrier()
    }

    fn cluster_barrier(&self) -> Result<()> {
        let flushed = self.flush_inner();
        let Some(rt) = self.inner.runtime.read().clone() else { return flushed };
        if rt.process().1 == 1 {
            return flushed;
        }
        // Even after a failed flush: every process counts the same barriers.
        rt.barrier(CLUSTER_BARRIER_TIMEOUT)?;
        flushed?;
        // Every process's rows are in epochs process 0 closes now: each waits for its own
        // results (process 0's streams, and every process's sinks written per process).
        // Process 0 still closes epochs: it stops only after the barrier of `shutdown` that
        // follows its last checkpoint.
        self.flush_inner()
    }

    fn flush_inner(&self) -> Result<()> {
        self.flush_all_staged()?;
        let Some(rt) = self.inner.runtime.read().clone() else { return Ok(()) };
        let epoch = rt.close_epoch()?;
        let flows: Vec<Arc<StreamEntry>> = self.inner.state.lock().dataflows().cloned().collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        for f in flows {
            let merger = f.running.lock().as_ref().map(|r| r.merger.clone());
            let Some(m) = merger else { continue };
            // In slices: a cluster that lost a process fails the flush at once.
            while !m.wait_delivered(epoch, Duration::from_millis(200)) {
                if let Some(why) = rt.cluster_failure() {
                    return Err(laminar_dataflow::DataflowError::Cluster(why).into());
                }
                if Instant::now() > deadline {
                    return Err(LaminarError::Internal("flush timed out after 60 s".into()));
                }
            }
            loop {
                let pending = f.sink.lock().as_ref().and_then(|h| h.oldest_pending());
                if pending.is_none_or(|p| p >= epoch) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(LaminarError::Internal(format!("sink '{}' did not write within 60 s", f.def.name)));
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        Ok(())
    }

    fn source(&self, name: &str) -> Result<Arc<SourceEntry>> {
        let st = self.inner.state.lock();
        st.sources
            .get(&name.to_lowercase())
            .or_else(|| st.sources.get(name))
            .cloned()
            .ok_or_else(|| LaminarError::NotFound(format!("source '{name}' does not exist")))
    }

    /// Inserts a batch into a source; returns the number of rows. All or nothing.
    pub fn insert(&self, source: &str, batch: &RecordBatch) -> Result<usize> {
        self.check_open()?;
        let src = self.source(source)?;
        let batch = coerce_batch(&src.def.name, batch, &src.schema)?;
        let n = batch.num_rows();
        if n == 0 {
            return Ok(0);
        }
        // Stage small inserts (bounded by a quarter of the buffer, so that backpressure stays fine-grained).
        let stage_limit = STAGE_ROWS.min(self.inner.config.buffer_size / 4).max(1);
        self.note_insert(&src, &batch, n < stage_limit);
        if n < stage_limit {
            let staged_rows = {
                let mut staged = src.staged.lock();
                staged.0.push(batch);
                staged.1 += n;
                staged.1
            };
            if staged_rows >= stage_limit {
                self.flush_staged(&src)?;
            } else {
                self.inner.stage.notify();
            }
            return Ok(n);
        }
        self.flush_staged(&src)?;
        self.ingest(&src, batch)?;
        Ok(n)
    }

    /// Sends a source's staged small inserts as one batch.
    fn flush_staged(&self, src: &SourceEntry) -> Result<()> {
        // Held until the rows are sent: whoever finds the stage empty knows nothing is in transit.
        let mut staged = src.staged.lock();
        if staged.0.is_empty() {
            return Ok(());
        }
        let (batches, _) = std::mem::take(&mut *staged);
        let batch = concat_or_empty(&src.schema, &batches)?;
        self.ingest(src, batch)
    }

    /// Sends every source's staged inserts.
    fn flush_all_staged(&self) -> Result<()> {
        let sources: Vec<Arc<SourceEntry>> = self.inner.state.lock().sources.values().cloned().collect();
        sources.iter().try_for_each(|s| self.flush_staged(s))
    }

    /// The thread that sends staged inserts about 1 ms after they arrive.
    fn spawn_stager(&self) -> Result<()> {
        let signal = self.inner.stage.clone();
        let weak = Arc::downgrade(&self.inner);
        std::thread::Builder::new()
            .name("laminar-stager".into())
            .spawn(move || loop {
                {
                    let mut pending = signal.pending.lock();
                    while !*pending && !signal.stop.load(Ordering::Acquire) {
                        signal.wake.wait(&mut pending);
                    }
                    *pending = false;
                }
                if signal.stop.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
                let Some(inner) = weak.upgrade() else { return };
                let db = Database { inner };
                if !db.is_closed() {
                    let _ = db.flush_all_staged();
                }
            })
            .map_err(|e| LaminarError::Internal(format!("cannot start the staging thread: {e}")))?;
        Ok(())
    }

    /// Sends a batch, waiting for room first. A batch much larger than a quarter of the buffer
    /// goes in slices of that size, checked as a whole beforehand (so it is still all or
    /// nothing): the inserting thread prepares the next slice (an upsert source's key lookups)
    /// while the workers process the previous one, and backpressure stays fine-grained.
    fn ingest(&self, src: &SourceEntry, batch: RecordBatch) -> Result<()> {
        let slice = (self.inner.config.buffer_size / 4).max(MIN_SLICE_ROWS);
        let n = batch.num_rows();
        if n < 2 * slice {
            self.wait_for_capacity(src);
            return self.ingest_now(src, batch);
        }
        src.data.lock().check(&batch)?;
        let parts = n.div_ceil(slice);
        for i in 0..parts {
            let (from, to) = (n * i / parts, n * (i + 1) / parts);
            self.wait_for_capacity(src);
            self.ingest_now(src, batch.slice(from, to - from))?;
        }
        Ok(())
    }

    /// Ingests without waiting for room (connector sources wait asynchronously beforehand).
    fn ingest_now(&self, src: &SourceEntry, batch: RecordBatch) -> Result<()> {
        let _g = self.inner.ingest.lock();
        let change = src.data.lock().insert(batch)?;
        self.send_change(src, change)
    }

    /// A writer bound to one source, with event-time watermark control.
    pub fn writer(&self, source: &str) -> Result<Writer> {
        self.check_open()?;
        let src = self.source(source)?;
        Ok(Writer { db: self.clone(), source: src.def.name.clone(), closed: AtomicBool::new(false) })
    }

    /// Advances a source's event-time watermark to `ts_ms` (milliseconds; it never moves back).
    /// Rows inserted before the call are sent first, so they are not late for it.
    pub fn advance_watermark(&self, source: &str, ts_ms: i64) -> Result<()> {
        self.check_open()?;
        let src = self.source(source)?;
        self.flush_staged(&src)?;
        src.watermark.fetch_max(ts_ms, Ordering::AcqRel);
        if let Some(rt) = self.inner.runtime.read().as_ref() {
            rt.advance_watermark(&src.def.name, ts_ms);
        }
        Ok(())
    }

    /// Deletes rows of an upsert source (one with a PRIMARY KEY) by key; returns rows removed.
    pub fn delete(&self, source: &str, keys: &RecordBatch) -> Result<usize> {
        self.check_open()?;
        let src = self.source(source)?;
        self.flush_staged(&src)?;
        let _g = self.inner.ingest.lock();
        let change = src.data.lock().delete(&src.def.name, keys)?;
        let Some(change) = change else { return Ok(0) };
        let n = change.num_rows();
        self.send_change(&src, change)?;
        Ok(n)
    }

    /// Sends a source change into the running pipeline (caller holds the ingest lock). The
    /// source's watermark moves with it, never ahead of the rows that justify it.
    fn send_change(&self, src: &SourceEntry, change: DiffBatch) -> Result<()> {
        let watermark = src.def.watermark.as_ref().filter(|_| !src.connector_watermarks).and_then(|w| {
            let col = change.data.column_by_name(&w.column)?;
            laminar_dataflow::watermark::max_event_time_ms(col).map(|m| m.saturating_sub(w.delay_ms))
        });
        if let Some(wm) = watermark {
            src.watermark.fetch_max(wm, Ordering::AcqRel);
        }
        let Some(rt) = self.inner.runtime.read().clone() else { return Ok(()) };
        let n = change.num_rows();
        rt.send_with_watermark(&src.name, change, watermark)?;
        // The change lands in this epoch or an earlier one.
        let bound = rt.current_epoch();
        src.inflight.lock().push_back((bound, n));
        src.pending.fetch_add(n as u64, Ordering::AcqRel);
        Ok(())
    }

    /// Forgets in-flight rows whose epoch every stream reading `src` has delivered; returns
    /// the rows still pending.
    fn release_inflight(&self, src: &SourceEntry) -> u64 {
        let delivered: Option<u64> = {
            let st = self.inner.state.lock();
            st.dataflows().filter(|s| s.sources.contains(&src.def.name)).filter_map(|s| s.progress()).min()
        };
        let mut q = src.inflight.lock();
        while let Some(&(epoch, n)) = q.front() {
            if delivered.is_some_and(|d| d <= epoch) {
                break;
            }
            q.pop_front();
            src.pending.fetch_sub(n as u64, Ordering::AcqRel);
        }
        // Rows recorded against the open epoch (the send raced with a close) are delivered only
        // after that epoch closes: make sure it does, even if no more data arrives.
        if let (Some(&(epoch, _)), Some(rt)) = (q.front(), self.inner.runtime.read().as_ref()) {
            if epoch >= rt.current_epoch() {
                rt.request_advance();
            }
        }
        src.pending.load(Ordering::Acquire)
    }

    /// Backpressure: blocks while the source has `buffer_size` rows or more in flight.
    fn wait_for_capacity(&self, src: &SourceEntry) {
        let capacity = self.inner.config.buffer_size.max(1) as u64;
        if src.pending.load(Ordering::Acquire) < capacity {
            return;
        }
        while self.release_inflight(src) >= capacity {
            let Some(rt) = self.inner.runtime.read().clone() else { return };
            let Some(front) = src.inflight.lock().front().map(|&(e, _)| e) else {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            };
            // The oldest rows in flight wait for their epoch to close: close it now rather than
            // at the coordinator's next tick.
            if front >= rt.current_epoch() && rt.close_epoch().is_err() {
                return;
            }
            // Wait for the slowest dataflow reading the source to deliver that epoch (woken as
            // soon as it does); a sink still committing it is polled.
            let slowest = {
                let st = self.inner.state.lock();
                st.dataflows()
                    .filter(|s| s.sources.contains(&src.def.name))
                    .filter_map(|s| Some((s.progress()?, s.running.lock().as_ref()?.merger.clone())))
                    .min_by_key(|(p, _)| *p)
            };
            match slowest {
                Some((_, merger)) if merger.delivered() <= front => {
                    merger.wait_delivered(front + 1, Duration::from_millis(2));
                }
                _ => std::thread::sleep(Duration::from_micros(200)),
            }
        }
    }

    /// Inserts rows given as a JSON object, an array of objects, or newline-delimited objects.
    pub fn insert_json(&self, source: &str, json: &str) -> Result<usize> {
        let src = self.source(source)?;
        let batch = batch_from_json_rows(&src.schema, json)?;
        self.insert(source, &batch)
    }

    /// Inserts rows given as CSV text with a header line.
    pub fn insert_csv(&self, source: &str, csv: &str) -> Result<usize> {
        let src = self.source(source)?;
        let reader = arrow::csv::ReaderBuilder::new(src.schema.clone())
            .with_header(true)
            .build(std::io::Cursor::new(csv.as_bytes().to_vec()))
            .map_err(|e| LaminarError::schema(format!("CSV does not match source '{source}': {e}")))?;
        let batches = reader
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| LaminarError::schema(format!("CSV does not match source '{source}': {e}")))?;
        let batch = concat_or_empty(&src.schema, &batches)?;
        self.insert(source, &batch)
    }

    fn insert_sql(&self, table: &str, columns: &[String], query: &str) -> Result<usize> {
        let src = self.source(table)?;
        let result = self.run_query(query)?;
        let data = result.to_batch()?;
        let names: Vec<String> = if columns.is_empty() {
            src.schema.fields().iter().map(|f| f.name().clone()).collect()
        } else {
            columns.to_vec()
        };
        if data.num_columns() != names.len() {
            return Err(LaminarError::schema(format!(
                "INSERT INTO {table} has {} values per row but {} columns",
                data.num_columns(),
                names.len()
            )));
        }
        let fields: Vec<Field> = data
            .schema()
            .fields()
            .iter()
            .zip(&names)
            .map(|(f, n)| Field::new(n, f.data_type().clone(), true))
            .collect();
        let renamed = RecordBatch::try_new(Arc::new(Schema::new(fields)), data.columns().to_vec())?;
        self.insert(table, &renamed)
    }

    /// Subscribes to a stream's changes (upsert view by default; `EMIT CHANGES` streams and
    /// [`SubscriptionMode::Changelog`] give every change with a `_weight` column).
    pub fn subscribe(&self, stream: &str) -> Result<Subscription> {
        let mode = {
            let st = self.inner.state.lock();
            match st.streams.get(stream) {
                Some(s) if s.def.emit == EmitMode::Changes => SubscriptionMode::Changelog,
                _ => SubscriptionMode::Upsert,
            }
        };
        self.subscribe_with_mode(stream, mode)
    }

    /// Subscribes with an explicit delivery mode.
    pub fn subscribe_with_mode(&self, stream: &str, mode: SubscriptionMode) -> Result<Subscription> {
        self.check_open()?;
        let st = self.inner.state.lock();
        let s = st.streams.get(stream).ok_or_else(|| LaminarError::Subscription {
            code: codes::SUBSCRIPTION_FAILED,
            message: format!("stream '{stream}' does not exist"),
        })?;
        Ok(s.output.subscribe(mode).with_health(self.upstream_health(&s.sources)))
    }

    /// Reports the first failed source connector among `sources` (for subscriptions waiting on
    /// them).
    fn upstream_health(&self, sources: &BTreeSet<String>) -> crate::output::HealthFn {
        let weak = Arc::downgrade(&self.inner);
        let names: Vec<String> = sources.iter().cloned().collect();
        Box::new(move || {
            let inner = weak.upgrade()?;
            let st = inner.state.lock();
            names.iter().find_map(|n| {
                let status = st.sources.get(n)?.status.lock().clone()?;
                (status.state() == laminar_adapters::ConnectorState::Failed).then(|| LaminarError::Connector {
                    code: codes::CONNECTOR_FAILED,
                    message: format!("source '{n}' failed: {}", status.last_error().unwrap_or_default()),
                })
            })
        })
    }

    /// Subscribes to the changes of an ad-hoc continuous query. The query runs (and backfills
    /// from its sources) like a stream, but is not in the catalog; it is removed when the
    /// subscription is dropped.
    pub fn subscribe_query(&self, sql: &str, mode: SubscriptionMode) -> Result<Subscription> {
        self.check_open()?;
        if self.inner.config.cluster.is_some() {
            // Its dataflow would exist on this process only; every process must build the same.
            return Err(LaminarError::Subscription {
                code: codes::SUBSCRIPTION_FAILED,
                message: "ad-hoc continuous queries cannot run in a cluster: create a stream (on every process) \
                          and subscribe to it"
                    .into(),
            });
        }
        let sql = match parse_statement(sql)? {
            Statement::Query(q) => q,
            other => {
                return Err(LaminarError::Query(format!("subscribe needs a SELECT, got {}", statement_kind(&other))))
            }
        };
        let mut st = self.inner.state.lock();
        let planned = plan_query(&sql, &*st)?;
        let id = st.next_id;
        st.next_id += 1;
        let name = format!("__query_{id}");
        let entry = Arc::new(StreamEntry {
            def: CreateStream {
                name: name.clone(),
                query: sql.clone(),
                materialized: false,
                emit: EmitMode::OnUpdate,
                options: Default::default(),
                if_not_exists: false,
                or_replace: false,
            },
            sources: planned.plan.sources(),
            sql,
            output: Arc::new(StreamOutput::new(
                planned.schema.clone(),
                planned.plan.is_append_only(),
                Retention::Unbounded,
            )?),
            planned,
            stats: Arc::new(DataflowStats::default()),
            running: Mutex::new(None),
            per_process: AtomicBool::new(false),
            sink: Mutex::new(None),
        });
        // Subscribe before installing so that the backfilled result is delivered too.
        let sub = entry.output.subscribe(mode).with_health(self.upstream_health(&entry.sources));
        if let Some(rt) = self.inner.runtime.read().clone() {
            self.install(&st, &rt, &entry, id, true, None)?;
        }
        st.queries.insert(name.clone(), entry);
        let weak = Arc::downgrade(&self.inner);
        Ok(sub.on_drop(Box::new(move || {
            if let Some(inner) = weak.upgrade() {
                Database { inner }.remove_query(&name);
            }
        })))
    }

    fn remove_query(&self, name: &str) {
        let mut st = self.inner.state.lock();
        if let Some(q) = st.queries.remove(name) {
            let _ = q.stop(self.inner.runtime.read().as_ref());
        }
    }

    /// Runs an ad-hoc query over the current contents of sources, streams and views.
    pub fn query(&self, sql: &str) -> Result<QueryResult> {
        self.check_open()?;
        match parse_statement(sql)? {
            Statement::Query(q) => self.run_query(&q),
            other => match self.execute_inner(sql, true)? {
                ExecuteResult::Query(r) | ExecuteResult::Metadata(r) => Ok(r),
                _ => Err(LaminarError::Query(format!("not a query: {}", statement_kind(&other)))),
            },
        }
    }

    fn query_runtime(&self) -> Result<&tokio::runtime::Runtime> {
        if let Some(rt) = self.inner.query_rt.get() {
            return Ok(rt);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("laminar-query")
            .enable_all()
            .build()
            .map_err(|e| LaminarError::Internal(e.to_string()))?;
        Ok(self.inner.query_rt.get_or_init(|| rt))
    }

    fn run_query(&self, sql: &str) -> Result<QueryResult> {
        self.flush_all_staged()?;
        let ctx = SessionContext::new();
        {
            let st = self.inner.state.lock();
            for (name, s) in &st.sources {
                let data = s.data.lock().snapshot()?;
                let t = MemTable::try_new(s.schema.clone(), vec![data])?;
                ctx.register_table(TableReference::bare(name.as_str()), Arc::new(t))?;
            }
            for (name, s) in &st.streams {
                let t = MemTable::try_new(s.planned.schema.clone(), vec![s.output.snapshot()?])?;
                ctx.register_table(TableReference::bare(name.as_str()), Arc::new(t))?;
            }
            for (name, s) in st.sources.iter().filter(|(_, s)| s.errors_max > 0) {
                let errors = format!("{name}{ERRORS_SUFFIX}");
                if Self::name_taken(&st, &errors).is_some() {
                    continue;
                }
                let letters: Vec<DeadLetter> = s.errors.lock().iter().cloned().collect();
                let batch = laminar_adapters::dlq::to_batch(&letters)?;
                let t = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
                ctx.register_table(TableReference::bare(errors.as_str()), Arc::new(t))?;
            }
        }
        let rt = self.query_runtime()?;
        let sql = sql.to_string();
        let (schema, batches) = rt.block_on(async move {
            let df = ctx.sql(&sql).await?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let batches = df.collect().await?;
            Ok::<_, datafusion::error::DataFusionError>((schema, batches))
        })?;
        Ok(QueryResult { schema, batches })
    }

    fn explain(&self, query: &str) -> Result<QueryResult> {
        let st = self.inner.state.lock();
        let planned = plan_query(query, &*st)?;
        metadata(
            &["plan_type", "plan"],
            vec![vec!["dataflow".into(), planned.plan.explain()], vec!["logical".into(), planned.logical.clone()]],
        )
    }

    fn show(&self, kind: ObjectKind) -> Result<QueryResult> {
        let st = self.inner.state.lock();
        match kind {
            ObjectKind::Source => metadata(
                &["name", "connector", "watermark_column"],
                st.sources
                    .values()
                    .map(|s| {
                        vec![
                            s.def.name.clone(),
                            s.def.options.get("connector").cloned().unwrap_or_default(),
                            s.def.watermark.as_ref().map(|w| w.column.clone()).unwrap_or_default(),
                        ]
                    })
                    .collect(),
            ),
            ObjectKind::Stream | ObjectKind::MaterializedView => {
                let want_mv = kind == ObjectKind::MaterializedView;
                metadata(
                    &["name", "sql"],
                    st.streams
                        .values()
                        .filter(|s| s.def.materialized == want_mv)
                        .map(|s| vec![s.def.name.clone(), s.def.query.clone()])
                        .collect(),
                )
            }
            ObjectKind::Sink => metadata(
                &["name", "connector", "sql"],
                st.sinks
                    .values()
                    .map(|s| {
                        vec![
                            s.def.name.clone(),
                            s.def.options.get("connector").cloned().unwrap_or_default(),
                            s.def.query.clone(),
                        ]
                    })
                    .collect(),
            ),
        }
    }

    fn describe(&self, name: &str) -> Result<QueryResult> {
        let st = self.inner.state.lock();
        let schema = st
            .sources
            .get(name)
            .map(|s| s.schema.clone())
            .or_else(|| st.streams.get(name).map(|s| s.planned.schema.clone()))
            .or_else(|| st.sinks.get(name).map(|s| s.planned.schema.clone()))
            .ok_or_else(|| LaminarError::NotFound(format!("'{name}' does not exist")))?;
        metadata(
            &["column_name", "data_type", "is_nullable"],
            schema
                .fields()
                .iter()
                .map(|f| {
                    vec![
                        f.name().clone(),
                        laminar_sql::types::arrow_to_sql_type(f.data_type()),
                        if f.is_nullable() { "YES".into() } else { "NO".into() },
                    ]
                })
                .collect(),
        )
    }

    /// `SHOW CREATE [kind] name`: the statement that defined `name`, secrets masked.
    fn show_create(&self, kind: Option<ObjectKind>, name: &str) -> Result<QueryResult> {
        let st = self.inner.state.lock();
        let entry = st
            .catalog
            .entries()
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| LaminarError::NotFound(format!("'{name}' does not exist")))?;
        if let Some(k) = kind {
            if k.sql() != entry.kind {
                return Err(LaminarError::NotFound(format!(
                    "'{name}' is a {}, not a {}",
                    entry.kind.to_ascii_lowercase(),
                    k.sql().to_ascii_lowercase()
                )));
            }
        }
        let options = st
            .sources
            .get(name)
            .map(|s| &s.def.options)
            .or_else(|| st.sinks.get(name).map(|s| &s.def.options))
            .or_else(|| st.streams.get(name).map(|s| &s.def.options));
        let sql = match options {
            Some(o) => laminar_adapters::options::redact_sql(&entry.sql, o),
            None => entry.sql.clone(),
        };
        metadata(&["name", "kind", "create_statement"], vec![vec![name.to_string(), entry.kind.clone(), sql]])
    }

    /// Every source.
    pub fn sources(&self) -> Vec<SourceInfo> {
        let st = self.inner.state.lock();
        catalog_order(&st)
            .iter()
            .filter_map(|n| st.sources.get(n))
            .map(|s| SourceInfo {
                name: s.def.name.clone(),
                schema: s.schema.clone(),
                watermark_column: s.def.watermark.as_ref().map(|w| w.column.clone()),
                connector: s.def.options.get("connector").cloned(),
                primary_key: s.def.primary_key.clone(),
            })
            .collect()
    }

    /// Every stream and materialized view.
    pub fn streams(&self) -> Vec<StreamInfo> {
        let st = self.inner.state.lock();
        catalog_order(&st)
            .iter()
            .filter_map(|n| st.streams.get(n))
            .map(|s| StreamInfo {
                name: s.def.name.clone(),
                sql: s.def.query.clone(),
                schema: s.planned.schema.clone(),
                materialized: s.def.materialized,
            })
            .collect()
    }

    /// Every sink.
    pub fn sinks(&self) -> Vec<SinkInfo> {
        let st = self.inner.state.lock();
        catalog_order(&st)
            .iter()
            .filter_map(|n| st.sinks.get(n))
            .map(|s| SinkInfo {
                name: s.def.name.clone(),
                sql: s.def.query.clone(),
                connector: s.def.options.get("connector").cloned().unwrap_or_default(),
            })
            .collect()
    }

    /// Schema of a source or stream.
    pub fn schema(&self, name: &str) -> Result<SchemaRef> {
        let st = self.inner.state.lock();
        st.sources
            .get(name)
            .map(|s| s.schema.clone())
            .or_else(|| st.streams.get(name).map(|s| s.planned.schema.clone()))
            .ok_or_else(|| LaminarError::NotFound(format!("'{name}' does not exist")))
    }

    /// Current pipeline state.
    pub fn pipeline_state(&self) -> PipelineState {
        let st = self.inner.state.lock();
        if st.pipeline == PipelineState::Running {
            let lost = self.inner.runtime.read().as_ref().is_some_and(|rt| rt.cluster_failure().is_some());
            if lost || !connector_failures(&st).is_empty() {
                return PipelineState::Failed;
            }
        }
        st.pipeline
    }

    /// Minimum event-time watermark over sources that declare one (milliseconds).
    pub fn pipeline_watermark(&self) -> Option<i64> {
        let st = self.inner.state.lock();
        st.sources
            .values()
            .filter(|s| s.def.watermark.is_some())
            .map(|s| s.watermark.load(Ordering::Acquire))
            .min()
            .filter(|&w| w != i64::MIN)
    }

    /// Whole-pipeline counters.
    pub fn metrics(&self) -> PipelineMetrics {
        let watermark = self.pipeline_watermark();
        let st = self.inner.state.lock();
        let rt = self.inner.runtime.read().clone();
        PipelineMetrics {
            total_events_ingested: st.sources.values().map(|s| s.total.load(Ordering::Relaxed)).sum(),
            total_events_emitted: st
                .streams
                .values()
                .map(|s| s.output.rows_delivered.load(Ordering::Relaxed))
                .sum::<u64>()
                + sink_statuses(&st).map(|s| s.rows.load(Ordering::Relaxed)).sum::<u64>(),
            total_events_dropped: st.dataflows().map(|s| s.stats.dropped() + s.stats.late_rows()).sum::<u64>()
                + sink_statuses(&st).map(|s| s.dropped.load(Ordering::Relaxed)).sum::<u64>()
                + st.sources
                    .values()
                    .filter_map(|s| s.status.lock().clone())
                    .map(|s| s.dropped.load(Ordering::Relaxed))
                    .sum::<u64>(),
            total_cycles: rt.map(|r| r.current_epoch().saturating_sub(1)).unwrap_or(0),
            total_batches: self.inner.batches.load(Ordering::Relaxed),
            uptime_secs: st.started_at.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0),
            state: if st.pipeline == PipelineState::Running && !connector_failures(&st).is_empty() {
                PipelineState::Failed.name().to_string()
            } else {
                st.pipeline.name().to_string()
            },
            source_count: st.sources.len(),
            stream_count: st.streams.len(),
            sink_count: st.sinks.len(),
            pipeline_watermark: watermark,
        }
    }

    /// Counters of one source, `None` if it does not exist.
    pub fn source_metrics(&self, name: &str) -> Option<SourceMetrics> {
        let s = self.inner.state.lock().sources.get(name)?.clone();
        let capacity = self.inner.config.buffer_size.max(1) as u64;
        let pending = self.release_inflight(&s);
        let w = s.watermark.load(Ordering::Acquire);
        let status = s.status.lock().clone();
        Some(SourceMetrics {
            connector_state: match (&s.connector, &status) {
                (None, _) => None,
                (Some(_), None) if s.elsewhere.load(Ordering::Acquire) => Some(ELSEWHERE.into()),
                (Some(_), None) => Some("created".into()),
                (Some(_), Some(st)) => Some(st.state().name().into()),
            },
            last_error: status.as_ref().and_then(|s| s.last_error()),
            dead_letters: status.as_ref().map_or(0, |s| s.dropped.load(Ordering::Relaxed)),
            retries: status.as_ref().map_or(0, |s| s.retries.load(Ordering::Relaxed)),
            details: status.as_ref().map(|s| s.counters()).unwrap_or_default(),
            name: s.def.name.clone(),
            total_events: s.total.load(Ordering::Relaxed),
            pending,
            capacity,
            is_backpressured: pending >= capacity,
            watermark: (w != i64::MIN).then_some(w),
            utilization: (pending as f64 / capacity as f64).min(1.0),
        })
    }

    /// Counters of every source.
    pub fn all_source_metrics(&self) -> Vec<SourceMetrics> {
        let names: Vec<String> = self.sources().into_iter().map(|s| s.name).collect();
        names.iter().filter_map(|n| self.source_metrics(n)).collect()
    }

    /// Counters of one stream, `None` if it does not exist.
    pub fn stream_metrics(&self, name: &str) -> Option<StreamMetrics> {
        let st = self.inner.state.lock();
        let s = st.streams.get(name)?;
        Some(StreamMetrics {
            name: s.def.name.clone(),
            total_events: s.output.rows_out.load(Ordering::Relaxed),
            epochs: s.output.epochs.load(Ordering::Relaxed),
            current_rows: s.output.num_rows() as u64,
            dropped: s.stats.dropped(),
            late_rows: s.stats.late_rows(),
            state_rows: s.stats.state_rows(),
            last_error: s.stats.last_error(),
            sql: s.def.query.clone(),
        })
    }

    /// Counters of one sink, `None` if it does not exist.
    pub fn sink_metrics(&self, name: &str) -> Option<SinkMetrics> {
        let sink = self.inner.state.lock().sinks.get(name)?.clone();
        let status = sink.status.lock().clone();
        let load = |f: fn(&ConnectorStatus) -> &AtomicU64| status.as_ref().map_or(0, |s| f(s).load(Ordering::Relaxed));
        let pending = sink.entry.sink.lock().as_ref().map_or(0, |h| h.pending_epochs() as u64);
        Some(SinkMetrics {
            name: sink.def.name.clone(),
            connector: sink.def.options.get("connector").cloned().unwrap_or_default(),
            peer: status.as_ref().map(|s| s.peer.clone()).unwrap_or_default(),
            state: match &status {
                _ if sink.elsewhere.load(Ordering::Acquire) => ELSEWHERE,
                Some(s) => s.state().name(),
                None => "created",
            }
            .to_string(),
            rows_written: load(|s| &s.rows),
            epochs_committed: load(|s| &s.epochs),
            pending_epochs: pending,
            dropped: load(|s| &s.dropped),
            retries: load(|s| &s.retries),
            last_error: status.as_ref().and_then(|s| s.last_error()),
            details: status.as_ref().map(|s| s.counters()).unwrap_or_default(),
        })
    }

    /// Counters of every sink.
    pub fn all_sink_metrics(&self) -> Vec<SinkMetrics> {
        let names: Vec<String> = self.sinks().into_iter().map(|s| s.name).collect();
        names.iter().filter_map(|n| self.sink_metrics(n)).collect()
    }

    /// The dead letters a source keeps in its `<source>_errors` collection, oldest first.
    pub fn dead_letters(&self, source: &str) -> Result<Vec<DeadLetter>> {
        let src = self.source(source)?;
        let letters = src.errors.lock().iter().cloned().collect();
        Ok(letters)
    }

    /// Counters of every stream.
    pub fn all_stream_metrics(&self) -> Vec<StreamMetrics> {
        let names: Vec<String> = self.streams().into_iter().map(|s| s.name).collect();
        names.iter().filter_map(|n| self.stream_metrics(n)).collect()
    }

    /// The pipeline graph: sources, streams and sinks with the edges between them.
    pub fn topology(&self) -> PipelineTopology {
        let st = self.inner.state.lock();
        let mut topo = PipelineTopology::default();
        for n in catalog_order(&st) {
            if let Some(s) = st.sources.get(&n) {
                topo.nodes.push(PipelineNode {
                    name: n.clone(),
                    node_type: "source".into(),
                    schema: s.schema.clone(),
                    sql: None,
                });
            } else if let Some(s) = st.streams.get(&n) {
                topo.nodes.push(PipelineNode {
                    name: n.clone(),
                    node_type: "stream".into(),
                    schema: s.planned.schema.clone(),
                    sql: Some(s.def.query.clone()),
                });
                for r in &s.planned.references {
                    topo.edges.push(PipelineEdge { from_node: r.clone(), to_node: n.clone() });
                }
            } else if let Some(s) = st.sinks.get(&n) {
                topo.nodes.push(PipelineNode {
                    name: n.clone(),
                    node_type: "sink".into(),
                    schema: s.planned.schema.clone(),
                    sql: Some(s.def.query.clone()),
                });
                for r in &s.planned.references {
                    topo.edges.push(PipelineEdge { from_node: r.clone(), to_node: n.clone() });
                }
            }
        }
        topo
    }
}

/// The `'retention'` of a stream's queryable history (its only `WITH` option).
/// The key of a sink's query (its GROUP BY columns, or a keyed source's primary key), named as
/// the query's output names them; empty when unknown.
fn sink_key(planned: &PlannedQuery, st: &State) -> Vec<String> {
    let pk = |name: &str| st.sources.get(name).map(|s| s.def.primary_key.clone()).unwrap_or_default();
    let Some(key) = planned.plan.unique_key(&pk) else { return Vec::new() };
    let inner = planned.plan.schema();
    let mut out = Vec::with_capacity(key.len());
    for k in &key {
        match inner.index_of(k).ok().and_then(|i| planned.schema.fields().get(i)) {
            Some(f) => out.push(f.name().clone()),
            None => return Vec::new(),
        }
    }
    out
}

fn stream_retention(def: &CreateStream, append_only: bool) -> Result<Retention> {
    let mut retention = Retention::Unbounded;
    for (key, value) in &def.options {
        match key.as_str() {
            "retention" if append_only => retention = Retention::parse(value)?,
            "retention" => {
                return Err(LaminarError::Schema {
                    code: codes::INVALID_SCHEMA,
                    message: format!(
                        "'retention' applies to append-only streams; '{}' is an updating result (one row per key)",
                        def.name
                    ),
                })
            }
            other => {
                return Err(LaminarError::Query(format!(
                    "unknown option '{other}' for CREATE {} (known: 'retention')",
                    if def.materialized { "MATERIALIZED VIEW" } else { "STREAM" }
                )))
            }
        }
    }
    Ok(retention)
}

fn statement_kind(s: &Statement) -> &'static str {
    match s {
        Statement::CreateSource(_) => "CREATE SOURCE",
        Statement::CreateStream(_) => "CREATE STREAM",
        Statement::CreateSink(_) => "CREATE SINK",
        Statement::Drop { .. } => "DROP",
        Statement::Show(_) => "SHOW",
        Statement::Describe(_) => "DESCRIBE",
        Statement::ShowCreate { .. } => "SHOW CREATE",
        Statement::Explain(_) => "EXPLAIN",
        Statement::Insert { .. } => "INSERT",
        Statement::Query(_) => "query",
    }
}

impl State {
    /// Streams, views and ad-hoc queries: everything with a dataflow.
    fn dataflows(&self) -> impl Iterator<Item = &Arc<StreamEntry>> {
        self.streams.values().chain(self.queries.values()).chain(self.sinks.values().map(|s| &s.entry))
    }
}

/// Names of the streams and sinks that read `name` directly.
fn dependents(st: &State, name: &str) -> Vec<String> {
    let mut out: Vec<String> =
        st.streams.iter().filter(|(_, s)| s.planned.references.contains(name)).map(|(n, _)| n.clone()).collect();
    out.extend(st.sinks.iter().filter(|(_, s)| s.planned.references.contains(name)).map(|(n, _)| n.clone()));
    out
}

/// Runs a connector's `open` on the connector runtime, bounded by [`OPEN_TIMEOUT`]; a failure
/// names the connector (`what`) and its peer.
fn open_connector(
    crt: &tokio::runtime::Runtime,
    what: &str,
    peer: &str,
    open: impl std::future::Future<Output = laminar_adapters::Result<()>>,
) -> Result<()> {
    let opened = crt.block_on(async {
        match tokio::time::timeout(OPEN_TIMEOUT, open).await {
            Ok(r) => r,
            Err(_) => Err(laminar_adapters::ConnectorError::Unavailable(format!(
                "timed out after {} s",
                OPEN_TIMEOUT.as_secs()
            ))),
        }
    });
    opened.map_err(|e| LaminarError::Connector {
        code: e.code().max(codes::CONNECTOR_UNAVAILABLE),
        message: format!("{what} cannot connect to {peer}: {e}"),
    })
}

/// "source 'x' failed: …" for every connector that stopped on a definite error.
fn connector_failures(st: &State) -> Vec<String> {
    let mut out = Vec::new();
    for (kind, name, status) in st
        .sources
        .iter()
        .map(|(n, s)| ("source", n, s.status.lock().clone()))
        .chain(st.sinks.iter().map(|(n, s)| ("sink", n, s.status.lock().clone())))
    {
        if let Some(status) = status.filter(|s| s.state() == laminar_adapters::ConnectorState::Failed) {
            out.push(format!("{kind} '{name}' failed: {}", status.last_error().unwrap_or_default()));
        }
    }
    out
}

fn sink_statuses(st: &State) -> impl Iterator<Item = Arc<ConnectorStatus>> + '_ {
    st.sinks.values().filter_map(|s| s.status.lock().clone())
}

fn catalog_order(st: &State) -> Vec<String> {
    let mut names: Vec<String> = st.catalog.entries().iter().map(|e| e.name.clone()).collect();
    // In-memory databases have no persisted catalog: fall back to name order.
    for n in st.sources.keys().chain(st.streams.keys()).chain(st.sinks.keys()) {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

fn metadata(columns: &[&str], rows: Vec<Vec<String>>) -> Result<QueryResult> {
    let schema =
        Arc::new(Schema::new(columns.iter().map(|c| Field::new(*c, DataType::Utf8, false)).collect::<Vec<_>>()));
    let cols: Vec<ArrayRef> = (0..columns.len())
        .map(|i| Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r[i].as_str()))) as ArrayRef)
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), cols)?;
    Ok(QueryResult { schema, batches: vec![batch] })
}

fn lock_dir(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir).map_err(|e| LaminarError::Connection {
        code: codes::CONNECTION_FAILED,
        message: format!("cannot create database directory {}: {e}", dir.display()),
    })?;
    let path = dir.join("LOCK");
    let file =
        File::options().create(true).truncate(false).write(true).open(&path).map_err(|e| LaminarError::Connection {
            code: codes::CONNECTION_FAILED,
            message: format!("cannot open {}: {e}", path.display()),
        })?;
    // A database of this process that was just dropped may still be closing on one of its own
    // threads (which held the last handle): give it a moment to let go.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => {
                return Err(LaminarError::Connection {
                    code: codes::CONNECTION_IN_USE,
                    message: format!(
                        "database {} is in use by another process (lock file {})",
                        dir.display(),
                        path.display()
                    ),
                })
            }
        }
    }
}

/// Largest value of the event-time column, in milliseconds.
fn max_event_time_ms(batch: &RecordBatch, column: &str) -> Option<i64> {
    let col = batch.column_by_name(column)?;
    let as_i64 = |a: &dyn Array| -> Option<i64> {
        let c = arrow::compute::cast(a, &DataType::Int64).ok()?;
        arrow::compute::max(c.as_primitive::<arrow::datatypes::Int64Type>())
    };
    match col.data_type() {
        DataType::Timestamp(unit, _) => {
            let v = as_i64(col.as_ref())?;
            Some(match unit {
                TimeUnit::Second => v.saturating_mul(1000),
                TimeUnit::Millisecond => v,
                TimeUnit::Microsecond => v / 1000,
                TimeUnit::Nanosecond => v / 1_000_000,
            })
        }
        DataType::Date32 => as_i64(col.as_ref()).map(|d| d * 86_400_000),
        _ => as_i64(col.as_ref()),
    }
}

/// Feeds a source connector's output into the engine.
struct EngineTarget {
    inner: Weak<Inner>,
    src: Arc<SourceEntry>,
}

impl SourceTarget for EngineTarget {
    fn has_capacity(&self) -> bool {
        let Some(inner) = self.inner.upgrade() else { return true };
        let capacity = inner.config.buffer_size.max(1) as u64;
        let db = Database { inner };
        self.src.pending.load(Ordering::Acquire) < capacity || db.release_inflight(&self.src) < capacity
    }

    fn apply(&self, change: Change) -> std::result::Result<(), String> {
        let Some(inner) = self.inner.upgrade() else { return Err("the database is closed".into()) };
        Database { inner }.apply_change(&self.src, change).map_err(|e| e.to_string())
    }

    fn chunk_lock(&self) -> Option<Arc<tokio::sync::Mutex<()>>> {
        Some(self.src.chunk.clone())
    }

    fn set_position(&self, position: serde_json::Value) {
        *self.src.position.lock() = Some(position);
    }

    fn watermark(&self, ts_ms: i64) {
        self.src.watermark.fetch_max(ts_ms, Ordering::AcqRel);
        if let Some(inner) = self.inner.upgrade() {
            if let Some(rt) = inner.runtime.read().as_ref() {
                rt.advance_watermark(&self.src.def.name, ts_ms);
            }
        }
    }

    fn dead_letters(&self, letters: Vec<DeadLetter>) {
        let mut q = self.src.errors.lock();
        q.extend(letters);
        while q.len() > self.src.errors_max.max(1) {
            q.pop_front();
        }
    }
}

/// Writes into one source; obtained from [`Database::writer`].
pub struct Writer {
    db: Database,
    source: String,
    closed: AtomicBool,
}

impl Writer {
    fn check(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LaminarError::Ingestion {
                code: codes::WRITER_CLOSED,
                message: format!("the writer for '{}' is closed", self.source),
            });
        }
        Ok(())
    }

    /// The source this writer feeds.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Inserts a batch (all or nothing); returns the number of rows.
    pub fn insert(&self, batch: &RecordBatch) -> Result<usize> {
        self.check()?;
        self.db.insert(&self.source, batch)
    }

    /// Inserts JSON rows.
    pub fn insert_json(&self, json: &str) -> Result<usize> {
        self.check()?;
        self.db.insert_json(&self.source, json)
    }

    /// Declares that no event older than `ts_ms` (milliseconds) will follow.
    pub fn watermark(&self, ts_ms: i64) -> Result<()> {
        self.check()?;
        self.db.advance_watermark(&self.source, ts_ms)
    }

    /// Waits until everything written so far is reflected in every stream.
    pub fn flush(&self) -> Result<()> {
        self.check()?;
        self.db.flush()
    }

    /// Closes the writer; later calls fail with `WRITER_CLOSED`.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// True after [`Writer::close`].
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}
