//! Python bindings of LaminarDB (`laminardb._laminardb`), built by maturin.
//!
//! Thin by design: each method calls the Rust embedding API with the GIL released and converts
//! Arrow data through the Arrow C data interface (zero-copy). The user-facing classes live in the
//! pure-Python package `laminardb`, which wraps these.

#![allow(unsafe_code)] // pyo3's macros expand to unsafe FFI glue

mod custom;

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use laminardb::{codes, Database, ExecuteResult, LaminarConfig, LaminarError, Subscription, SubscriptionMode};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use pyo3_arrow::{PyRecordBatch, PySchema, PyTable};

create_exception!(
    _laminardb,
    PyLaminarError,
    PyException,
    "Base class of every LaminarDB error; `.code` is an integer."
);
create_exception!(_laminardb, ConnectionError, PyLaminarError, "Opening, locking or using a closed connection.");
create_exception!(_laminardb, QueryError, PyLaminarError, "Planning or running a query failed.");
create_exception!(_laminardb, IngestionError, PyLaminarError, "Inserting data failed.");
create_exception!(_laminardb, SchemaError, PyLaminarError, "Data or declared schema is invalid.");
create_exception!(_laminardb, SubscriptionError, PyLaminarError, "A subscription failed, closed or timed out.");
create_exception!(_laminardb, StreamError, PyLaminarError, "The pipeline is shutting down or failed.");
create_exception!(_laminardb, CheckpointError, PyLaminarError, "Checkpoint storage failed.");
create_exception!(_laminardb, ConnectorError, PyLaminarError, "A connector is misconfigured or failed.");

/// The one mapping from engine errors to Python exceptions (the class follows the code range).
fn to_py(py: Python<'_>, e: LaminarError) -> PyErr {
    let code = e.code();
    let msg = e.to_string();
    let err = match code {
        100..=199 => ConnectionError::new_err(msg),
        200 | 201 | 400..=499 => QueryError::new_err(msg),
        202..=299 | codes::BATCH_SCHEMA_MISMATCH => SchemaError::new_err(msg),
        300..=399 => IngestionError::new_err(msg),
        500..=599 => SubscriptionError::new_err(msg),
        600..=699 => ConnectorError::new_err(msg),
        700..=799 => CheckpointError::new_err(msg),
        codes::SHUTDOWN => StreamError::new_err(msg),
        _ => PyLaminarError::new_err(msg),
    };
    let _ = err.value(py).setattr("code", code);
    err
}

trait OrPy<T> {
    fn or_py(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> OrPy<T> for Result<T, LaminarError> {
    fn or_py(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}

/// How often a wait checks for Ctrl-C (well inside the 100 ms a user may expect).
const SIGNAL_POLL: Duration = Duration::from_millis(20);

/// Runs `f` on a helper thread with the GIL released, checking for Ctrl-C every
/// [`SIGNAL_POLL`]: an interrupt raises `KeyboardInterrupt` at once (the call itself finishes in
/// the background; what it did stays done). For calls that can wait long (flush, checkpoint,
/// queries, statements with a backfill); the hot calls (inserts) run inline.
fn interruptible<T: Send + 'static>(
    py: Python<'_>,
    f: impl FnOnce() -> Result<T, LaminarError> + Send + 'static,
) -> PyResult<T> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("laminar-call".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| to_py(py, LaminarError::Internal(format!("cannot start a call: {e}"))))?;
    loop {
        match py.detach(|| rx.recv_timeout(SIGNAL_POLL)) {
            Ok(r) => return r.or_py(py),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => py.check_signals()?,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                return Err(to_py(py, LaminarError::Internal("the call ended without an answer".into())))
            }
        }
    }
}

fn table<'py>(
    py: Python<'py>,
    schema: arrow::datatypes::SchemaRef,
    batches: Vec<RecordBatch>,
) -> PyResult<Bound<'py, PyAny>> {
    PyTable::try_new(batches, schema)?.into_pyarrow(py)
}

/// A connection to an embedded database.
#[pyclass(frozen, name = "Connection", module = "laminardb._laminardb")]
struct PyConnection {
    db: Database,
    /// The last exception raised by one of this connection's Python sources or sinks.
    last_error: custom::LastError,
}

#[pymethods]
impl PyConnection {
    /// Opens (or creates) the database in directory `path` (":memory:" keeps nothing).
    #[staticmethod]
    #[pyo3(signature = (path, buffer_size=65536, storage_dir=None, checkpoint_interval_ms=None, workers=None,
                        processes=None, process_index=None))]
    #[allow(clippy::too_many_arguments)]
    fn open(
        py: Python<'_>,
        path: String,
        buffer_size: usize,
        storage_dir: Option<String>,
        checkpoint_interval_ms: Option<u64>,
        workers: Option<usize>,
        processes: Option<Vec<String>>,
        process_index: Option<usize>,
    ) -> PyResult<Self> {
        let cluster = match (processes, process_index) {
            (Some(addresses), Some(p)) => Some(laminardb::ClusterConfig::new(p, addresses)),
            (None, None) => None,
            _ => return Err(pyo3::exceptions::PyValueError::new_err("processes and process_index go together")),
        };
        let config = LaminarConfig {
            buffer_size,
            storage_dir: storage_dir.map(Into::into),
            checkpoint_interval_ms,
            workers,
            cluster,
            ..Default::default()
        };
        let db = py.detach(|| Database::open_with_config(&path, config)).or_py(py)?;
        Ok(Self { db, last_error: Default::default() })
    }

    /// Registers a Python generator function as the source `name` with `schema` (a pyarrow
    /// schema), creating the source if it does not exist.
    #[pyo3(signature = (name, function, schema, watermark=None, watermark_delay_ms=0, replace=false, options=None))]
    #[allow(clippy::too_many_arguments)]
    fn register_source(
        &self,
        py: Python<'_>,
        name: &str,
        function: Py<PyAny>,
        schema: Bound<'_, PyAny>,
        watermark: Option<String>,
        watermark_delay_ms: i64,
        replace: bool,
        options: Option<Vec<(String, String)>>,
    ) -> PyResult<()> {
        let arrow_schema = schema.extract::<PySchema>()?.into_inner();
        let def = Arc::new(custom::SourceDef {
            name: name.to_string(),
            function,
            schema: schema.unbind(),
            last_error: self.last_error.clone(),
        });
        let builder: laminardb::connectors::callback::SourceBuilder = Arc::new(move |spec| {
            Ok(Box::new(custom::PySource::new(def.clone(), spec)) as Box<dyn laminardb::connectors::SourceConnector>)
        });
        let watermark = watermark.map(|column| laminardb::WatermarkSpec { column, delay_ms: watermark_delay_ms });
        let options = options.unwrap_or_default();
        py.detach(|| self.db.register_source_callback(name, arrow_schema, watermark, &options, builder, replace))
            .or_py(py)
    }

    /// Registers a Python function (or coroutine function) taking a pyarrow RecordBatch as the
    /// sink callback `name` (`CREATE SINK … WITH (connector = 'python', 'name' = …)`).
    #[pyo3(signature = (name, function, replace=false))]
    fn register_sink(&self, py: Python<'_>, name: &str, function: Py<PyAny>, replace: bool) -> PyResult<()> {
        let def = Arc::new(custom::SinkDef { name: name.to_string(), function, last_error: self.last_error.clone() });
        let builder: laminardb::connectors::callback::SinkBuilder = Arc::new(move |spec| {
            Ok(Box::new(custom::PySink::new(def.clone(), spec)) as Box<dyn laminardb::connectors::callback::Deliver>)
        });
        py.detach(|| self.db.register_sink_callback(name, builder, replace)).or_py(py)
    }

    /// Names of the registered Python sources and sinks.
    fn registered_callbacks(&self) -> (Vec<String>, Vec<String>) {
        self.db.registered_callbacks()
    }

    /// Executes one statement: `(result_type, ddl_type, ddl_object, rows_affected, table)`.
    fn execute<'py>(&self, py: Python<'py>, sql: &str) -> PyResult<Bound<'py, PyTuple>> {
        let (db, sql) = (self.db.clone(), sql.to_string());
        let r = interruptible(py, move || db.execute(&sql))?;
        let kind = r.result_type();
        let none = py.None().into_bound(py);
        let items: Vec<Bound<'py, PyAny>> = match r {
            ExecuteResult::Ddl { ddl_type, ddl_object } => vec![
                kind.into_pyobject(py)?.into_any(),
                ddl_type.into_pyobject(py)?.into_any(),
                ddl_object.into_pyobject(py)?.into_any(),
                0u64.into_pyobject(py)?.into_any(),
                none,
            ],
            ExecuteResult::RowsAffected(n) => vec![
                kind.into_pyobject(py)?.into_any(),
                none.clone(),
                none.clone(),
                n.into_pyobject(py)?.into_any(),
                none,
            ],
            ExecuteResult::Query(q) | ExecuteResult::Metadata(q) => vec![
                kind.into_pyobject(py)?.into_any(),
                none.clone(),
                none.clone(),
                (q.num_rows() as u64).into_pyobject(py)?.into_any(),
                table(py, q.schema, q.batches)?,
            ],
        };
        PyTuple::new(py, items)
    }

    /// Runs a query; returns a pyarrow Table.
    fn query<'py>(&self, py: Python<'py>, sql: &str) -> PyResult<Bound<'py, PyAny>> {
        let (db, sql) = (self.db.clone(), sql.to_string());
        let r = interruptible(py, move || db.query(&sql))?;
        table(py, r.schema, r.batches)
    }

    /// Inserts a record batch (all or nothing); returns the number of rows.
    fn insert_batch(&self, py: Python<'_>, name: &str, batch: PyRecordBatch) -> PyResult<usize> {
        let batch = batch.into_inner();
        py.detach(|| self.db.insert(name, &batch)).or_py(py)
    }

    /// Inserts a table (all or nothing); returns the number of rows.
    fn insert_table(&self, py: Python<'_>, name: &str, data: PyTable) -> PyResult<usize> {
        let (batches, schema) = data.into_inner();
        py.detach(|| {
            let one = laminardb::ingest::concat_or_empty(&schema, &batches)?;
            self.db.insert(name, &one)
        })
        .or_py(py)
    }

    /// Inserts one row given as a dict of plain Python values without going through pyarrow.
    /// Returns None when a value needs pyarrow's conversion (the caller then falls back).
    fn insert_row(&self, py: Python<'_>, name: &str, row: &Bound<'_, PyDict>) -> PyResult<Option<usize>> {
        let schema = self.db.schema(name).or_py(py)?;
        let Some(batch) = row_to_batch(&schema, row)? else { return Ok(None) };
        py.detach(|| self.db.insert(name, &batch)).or_py(py).map(Some)
    }

    /// Inserts JSON rows (an object, an array of objects, or newline-delimited objects).
    fn insert_json(&self, py: Python<'_>, name: &str, json: &str) -> PyResult<usize> {
        py.detach(|| self.db.insert_json(name, json)).or_py(py)
    }

    /// Inserts CSV text with a header line.
    fn insert_csv(&self, py: Python<'_>, name: &str, csv: &str) -> PyResult<usize> {
        py.detach(|| self.db.insert_csv(name, csv)).or_py(py)
    }

    /// Deletes rows of an upsert source by primary key.
    fn delete(&self, py: Python<'_>, name: &str, keys: PyRecordBatch) -> PyResult<usize> {
        let keys = keys.into_inner();
        py.detach(|| self.db.delete(name, &keys)).or_py(py)
    }

    /// Advances a source's event-time watermark (milliseconds).
    fn advance_watermark(&self, py: Python<'_>, name: &str, ts_ms: i64) -> PyResult<()> {
        py.detach(|| self.db.advance_watermark(name, ts_ms)).or_py(py)
    }

    /// Starts the pipeline.
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.db.start()).or_py(py)
    }

    /// Drains and stops the pipeline. A connector that failed is raised here as a
    /// ConnectorError (with the Python exception of a failed Python source or sink as its cause).
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        match py.detach(|| self.db.shutdown()) {
            Ok(()) => Ok(()),
            Err(e) => {
                let connector = matches!(e, LaminarError::Connector { .. });
                let err = to_py(py, e);
                if connector {
                    let message = err.value(py).to_string();
                    if let Some(cause) = custom::cause_of(&self.last_error, &message) {
                        err.set_cause(py, Some(PyErr::from_value(cause.into_bound(py))));
                    }
                }
                Err(err)
            }
        }
    }

    /// Shuts down and releases the database.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.db.close()).or_py(py)
    }

    /// Waits until everything inserted so far is reflected in every stream.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let db = self.db.clone();
        interruptible(py, move || db.flush())
    }

    /// Waits until every process of the cluster has called `barrier`, then flushes process 0.
    fn barrier(&self, py: Python<'_>) -> PyResult<()> {
        let db = self.db.clone();
        interruptible(py, move || db.barrier())
    }

    /// Takes a checkpoint: (epoch, full, bytes, files, seconds, directory).
    fn checkpoint(&self, py: Python<'_>) -> PyResult<(u64, bool, u64, usize, f64, String)> {
        let db = self.db.clone();
        let r = interruptible(py, move || db.checkpoint())?;
        Ok((r.epoch, r.full, r.bytes, r.files, r.duration.as_secs_f64(), r.path.display().to_string()))
    }

    /// True when periodic checkpoints are on (an interval and somewhere to store them).
    fn is_checkpoint_enabled(&self) -> bool {
        self.db.is_checkpoint_enabled()
    }

    /// True after close().
    #[getter]
    fn is_closed(&self) -> bool {
        self.db.is_closed()
    }

    /// Pipeline state name.
    #[getter]
    fn pipeline_state(&self) -> &'static str {
        self.db.pipeline_state().name()
    }

    /// Minimum source watermark (ms), if any.
    #[getter]
    fn pipeline_watermark(&self) -> Option<i64> {
        self.db.pipeline_watermark()
    }

    /// Subscribes to a stream; `changelog` adds a signed `_weight` column.
    #[pyo3(signature = (name, changelog=None))]
    fn subscribe(&self, py: Python<'_>, name: &str, changelog: Option<bool>) -> PyResult<PySubscription> {
        let sub = match changelog {
            None => self.db.subscribe(name),
            Some(true) => self.db.subscribe_with_mode(name, SubscriptionMode::Changelog),
            Some(false) => self.db.subscribe_with_mode(name, SubscriptionMode::Upsert),
        }
        .or_py(py)?;
        Ok(PySubscription { sub })
    }

    /// Subscribes to an ad-hoc continuous query (removed when the subscription is dropped).
    #[pyo3(signature = (sql, changelog=false))]
    fn subscribe_query(&self, py: Python<'_>, sql: &str, changelog: bool) -> PyResult<PySubscription> {
        let mode = if changelog { SubscriptionMode::Changelog } else { SubscriptionMode::Upsert };
        let sub = py.detach(|| self.db.subscribe_query(sql, mode)).or_py(py)?;
        Ok(PySubscription { sub })
    }

    /// `[(name, schema, watermark_column, connector, primary_key)]`.
    fn sources<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let items = self
            .db
            .sources()
            .into_iter()
            .map(|s| {
                let schema = PySchema::new(s.schema).into_pyarrow(py)?;
                Ok((s.name, schema, s.watermark_column, s.connector, s.primary_key).into_pyobject(py)?.into_any())
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    /// `[(name, sql, schema, materialized)]`.
    fn streams<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let items = self
            .db
            .streams()
            .into_iter()
            .map(|s| {
                let schema = PySchema::new(s.schema).into_pyarrow(py)?;
                Ok((s.name, s.sql, schema, s.materialized).into_pyobject(py)?.into_any())
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    /// `[(name, sql, connector)]`.
    fn sinks(&self) -> Vec<(String, String, String)> {
        self.db.sinks().into_iter().map(|s| (s.name, s.sql, s.connector)).collect()
    }

    /// Schema of a source or stream, as a pyarrow Schema.
    fn schema<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let s = self.db.schema(name).or_py(py)?;
        PySchema::new(s).into_pyarrow(py)
    }

    /// Whole-pipeline counters as a dict.
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let m = py.detach(|| self.db.metrics());
        let d = PyDict::new(py);
        d.set_item("total_events_ingested", m.total_events_ingested)?;
        d.set_item("total_events_emitted", m.total_events_emitted)?;
        d.set_item("total_events_dropped", m.total_events_dropped)?;
        d.set_item("total_cycles", m.total_cycles)?;
        d.set_item("total_batches", m.total_batches)?;
        d.set_item("uptime_secs", m.uptime_secs)?;
        d.set_item("state", m.state)?;
        d.set_item("source_count", m.source_count)?;
        d.set_item("stream_count", m.stream_count)?;
        d.set_item("sink_count", m.sink_count)?;
        d.set_item("pipeline_watermark", m.pipeline_watermark)?;
        Ok(d)
    }

    /// One source's counters as a dict, or None.
    fn source_metrics<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(m) = py.detach(|| self.db.source_metrics(name)) else { return Ok(None) };
        let d = PyDict::new(py);
        d.set_item("name", m.name)?;
        d.set_item("total_events", m.total_events)?;
        d.set_item("pending", m.pending)?;
        d.set_item("capacity", m.capacity)?;
        d.set_item("is_backpressured", m.is_backpressured)?;
        d.set_item("watermark", m.watermark)?;
        d.set_item("utilization", m.utilization)?;
        d.set_item("connector_state", m.connector_state)?;
        d.set_item("last_error", m.last_error)?;
        d.set_item("dead_letters", m.dead_letters)?;
        d.set_item("retries", m.retries)?;
        d.set_item("details", m.details)?;
        Ok(Some(d))
    }

    /// One sink's counters as a dict, or None.
    fn sink_metrics<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(m) = py.detach(|| self.db.sink_metrics(name)) else { return Ok(None) };
        let d = PyDict::new(py);
        d.set_item("name", m.name)?;
        d.set_item("connector", m.connector)?;
        d.set_item("peer", m.peer)?;
        d.set_item("state", m.state)?;
        d.set_item("rows_written", m.rows_written)?;
        d.set_item("epochs_committed", m.epochs_committed)?;
        d.set_item("pending_epochs", m.pending_epochs)?;
        d.set_item("dropped", m.dropped)?;
        d.set_item("retries", m.retries)?;
        d.set_item("last_error", m.last_error)?;
        d.set_item("details", m.details)?;
        Ok(Some(d))
    }

    /// One stream's counters as a dict, or None.
    fn stream_metrics<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(m) = py.detach(|| self.db.stream_metrics(name)) else { return Ok(None) };
        let d = PyDict::new(py);
        d.set_item("name", m.name)?;
        d.set_item("total_events", m.total_events)?;
        d.set_item("epochs", m.epochs)?;
        d.set_item("current_rows", m.current_rows)?;
        d.set_item("dropped", m.dropped)?;
        d.set_item("late_rows", m.late_rows)?;
        d.set_item("state_rows", m.state_rows)?;
        d.set_item("last_error", m.last_error)?;
        d.set_item("sql", m.sql)?;
        Ok(Some(d))
    }

    /// `(nodes=[(name, node_type, schema, sql)], edges=[(from, to)])`.
    fn topology<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let t = self.db.topology();
        let nodes = t
            .nodes
            .into_iter()
            .map(|n| {
                let schema = PySchema::new(n.schema).into_pyarrow(py)?;
                Ok((n.name, n.node_type, schema, n.sql).into_pyobject(py)?.into_any())
            })
            .collect::<PyResult<Vec<_>>>()?;
        let edges: Vec<(String, String)> = t.edges.into_iter().map(|e| (e.from_node, e.to_node)).collect();
        (PyList::new(py, nodes)?, edges).into_pyobject(py)
    }
}

/// One row of plain Python values as a batch of the source's schema, or None when a value or
/// type is outside the fast path (ints, floats, bools, strings, bytes, None).
fn row_to_batch(schema: &arrow::datatypes::SchemaRef, row: &Bound<'_, PyDict>) -> PyResult<Option<RecordBatch>> {
    use arrow::array::{
        ArrayRef, BinaryArray, BooleanArray, Float32Array, Float64Array, Int16Array, Int32Array, Int64Array, Int8Array,
        StringArray,
    };
    use arrow::datatypes::DataType as T;
    use std::sync::Arc;
    let mut known = 0usize;
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let v = row.get_item(f.name())?;
        if v.is_some() {
            known += 1;
        }
        let v = v.filter(|v| !v.is_none());
        macro_rules! int {
            ($arr:ty, $t:ty) => {{
                match &v {
                    None => Arc::new(<$arr>::from(vec![None::<$t>])) as ArrayRef,
                    Some(x) if x.is_instance_of::<PyInt>() && !x.is_instance_of::<PyBool>() => {
                        match x.extract::<$t>() {
                            Ok(n) => Arc::new(<$arr>::from(vec![n])),
                            Err(_) => return Ok(None),
                        }
                    }
                    _ => return Ok(None),
                }
            }};
        }
        let col: ArrayRef = match f.data_type() {
            T::Int8 => int!(Int8Array, i8),
            T::Int16 => int!(Int16Array, i16),
            T::Int32 => int!(Int32Array, i32),
            T::Int64 => int!(Int64Array, i64),
            T::Float64 | T::Float32 => {
                let x: Option<f64> = match &v {
                    None => None,
                    Some(x)
                        if x.is_instance_of::<PyFloat>()
                            || (x.is_instance_of::<PyInt>() && !x.is_instance_of::<PyBool>()) =>
                    {
                        Some(x.extract::<f64>()?)
                    }
                    _ => return Ok(None),
                };
                if f.data_type() == &T::Float32 {
                    Arc::new(Float32Array::from(vec![x.map(|x| x as f32)]))
                } else {
                    Arc::new(Float64Array::from(vec![x]))
                }
            }
            T::Boolean => match &v {
                None => Arc::new(BooleanArray::from(vec![None])),
                Some(x) if x.is_instance_of::<PyBool>() => Arc::new(BooleanArray::from(vec![x.extract::<bool>()?])),
                _ => return Ok(None),
            },
            T::Utf8 => match &v {
                None => Arc::new(StringArray::from(vec![None::<&str>])),
                Some(x) if x.is_instance_of::<PyString>() => {
                    Arc::new(StringArray::from(vec![x.cast::<PyString>()?.to_str()?]))
                }
                _ => return Ok(None),
            },
            T::Binary => match &v {
                None => Arc::new(BinaryArray::from(vec![None::<&[u8]>])),
                Some(x) if x.is_instance_of::<PyBytes>() => {
                    Arc::new(BinaryArray::from(vec![x.cast::<PyBytes>()?.as_bytes()]))
                }
                _ => return Ok(None),
            },
            _ => return Ok(None),
        };
        cols.push(col);
    }
    if known != row.len() {
        return Ok(None); // unknown keys: the general path reports them by name
    }
    let fields: Vec<_> = schema.fields().iter().map(|f| Arc::new(f.as_ref().clone().with_nullable(true))).collect();
    let relaxed = Arc::new(arrow::datatypes::Schema::new(fields));
    Ok(Some(RecordBatch::try_new(relaxed, cols).map_err(|e| SchemaError::new_err(e.to_string()))?))
}

/// A live subscription; items are `(epoch, pyarrow.RecordBatch)`.
#[pyclass(frozen, name = "Subscription", module = "laminardb._laminardb")]
struct PySubscription {
    sub: Subscription,
}

fn item<'py>(py: Python<'py>, c: laminardb::ChangeBatch) -> PyResult<Bound<'py, PyTuple>> {
    let batch = PyRecordBatch::new(c.batch).into_pyarrow(py)?;
    PyTuple::new(py, [c.epoch.into_pyobject(py)?.into_any(), batch])
}

#[pymethods]
impl PySubscription {
    /// Waits up to `timeout_ms` (None: forever) for the next item; Ctrl-C interrupts the wait.
    /// Raises SubscriptionError (code 502) on timeout and (code 501) once closed.
    #[pyo3(signature = (timeout_ms=None))]
    fn next_timeout<'py>(&self, py: Python<'py>, timeout_ms: Option<u64>) -> PyResult<Bound<'py, PyTuple>> {
        let deadline = timeout_ms.map(|ms| std::time::Instant::now() + Duration::from_millis(ms));
        loop {
            let slice = match deadline {
                Some(d) => d.saturating_duration_since(std::time::Instant::now()).min(SIGNAL_POLL),
                None => SIGNAL_POLL,
            };
            match py.detach(|| self.sub.next_timeout(slice)) {
                Ok(c) => return item(py, c),
                Err(e) if e.code() == codes::SUBSCRIPTION_TIMEOUT => {
                    py.check_signals()?;
                    if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                        let ms = timeout_ms.unwrap_or(0);
                        return Err(to_py(
                            py,
                            LaminarError::Subscription {
                                code: codes::SUBSCRIPTION_TIMEOUT,
                                message: format!("no data within {ms} ms"),
                            },
                        ));
                    }
                }
                Err(e) => return Err(to_py(py, e)),
            }
        }
    }

    /// The next item if one is ready, else None.
    fn try_next<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        match self.sub.try_next().or_py(py)? {
            Some(c) => Ok(Some(item(py, c)?)),
            None => Ok(None),
        }
    }

    /// Stops the subscription (safe from any thread).
    fn cancel(&self) {
        self.sub.cancel();
    }

    /// True until cancelled or the stream ends.
    #[getter]
    fn is_active(&self) -> bool {
        self.sub.is_active()
    }

    /// Schema of delivered batches.
    #[getter]
    fn schema<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        PySchema::new(self.sub.schema()).into_pyarrow(py)
    }
}

/// Runs the `laminardb` command line with `argv` (without the program name); returns the exit
/// code. Ctrl-C stops a running pipeline gracefully.
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.detach(|| {
        let interrupted = || Python::attach(|py| py.check_signals().is_err());
        laminardb::cli::main_with(&argv, &interrupted, &mut std::io::stdout())
    })
}

/// The `laminardb._laminardb` extension module.
#[pymodule]
fn _laminardb(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PyConnection>()?;
    // The Python threads the extension started (custom sources and sinks), joined at exit.
    m.add("_threads", pyo3::types::PyList::empty(py))?;
    m.add_class::<PySubscription>()?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add("LaminarError", py.get_type::<PyLaminarError>())?;
    m.add("ConnectionError", py.get_type::<ConnectionError>())?;
    m.add("QueryError", py.get_type::<QueryError>())?;
    m.add("IngestionError", py.get_type::<IngestionError>())?;
    m.add("SchemaError", py.get_type::<SchemaError>())?;
    m.add("SubscriptionError", py.get_type::<SubscriptionError>())?;
    m.add("StreamError", py.get_type::<StreamError>())?;
    m.add("CheckpointError", py.get_type::<CheckpointError>())?;
    m.add("ConnectorError", py.get_type::<ConnectorError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
