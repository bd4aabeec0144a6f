//! Python generators as sources and Python functions as sinks (`connector = 'python'`).
//!
//! Source: the generator runs on a thread of its own (an async generator on an event loop that
//! thread owns). It holds the GIL only while Python runs: each yielded item is queued as it is —
//! dicts and lists of dicts as Python objects, RecordBatches/Tables/DataFrames converted to Arrow
//! at once (zero-copy for pyarrow) — and the connector's poll turns queued rows into one Arrow
//! batch per poll with a single pyarrow call. The queue holds at most [`QUEUE_ROWS`] rows: when
//! the pipeline is backpressured the queue fills and the generator's `yield` blocks. A row that
//! does not fit the schema is a dead letter; an exception ends the source with a
//! `ConnectorError` carrying the traceback.
//!
//! Sink: calls run one at a time on a thread of the sink's own (coroutine functions are awaited
//! on that thread's event loop), with a pyarrow RecordBatch each.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use laminardb::connectors::callback::Deliver;
use laminardb::connectors::dlq::DeadLetter;
use laminardb::connectors::{
    Change, ConnectorError, Poll, SinkSpec, SourceCapabilities, SourceChunk, SourceConnector, SourceSpec,
};
use parking_lot::{Condvar, Mutex};
use pyo3::exceptions::{PyStopAsyncIteration, PyStopIteration};
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyDict, PyList};
use pyo3_arrow::{PyRecordBatch, PyTable};

/// Rows a source queues before its generator's `yield` blocks.
pub const QUEUE_ROWS: usize = 65_536;

/// The exception each failing callback raised last, keyed `Python source 'name'` /
/// `Python sink 'name'` (as the engine's messages name them), kept to become the `__cause__` of
/// the `ConnectorError` that `shutdown()` raises. A successful call clears its entry.
pub type LastError = Arc<Mutex<std::collections::HashMap<String, Py<PyAny>>>>;

/// The exception behind the first failure named in `message`, if one was kept.
pub fn cause_of(errors: &LastError, message: &str) -> Option<Py<PyAny>> {
    let mut errors = errors.lock();
    let key = errors.keys().filter_map(|k| message.find(k.as_str()).map(|at| (at, k.clone()))).min()?.1;
    errors.remove(&key)
}

/// `Traceback (most recent call last): …` of `err`.
fn format_error(py: Python<'_>, err: &PyErr) -> String {
    let formatted = (|| -> PyResult<String> {
        let tb = py.import("traceback")?;
        let lines = tb.call_method1("format_exception", (err.get_type(py), err.value(py), err.traceback(py)))?;
        let parts: Vec<String> = lines.extract()?;
        Ok(parts.concat())
    })();
    formatted.map(|s| s.trim_end().to_string()).unwrap_or_else(|_| err.to_string())
}

/// Runs `f` on a daemon thread of Python's `threading` module: the interpreter knows the thread,
/// so exiting while it is blocked in user code is safe.
fn spawn_python_thread(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), ConnectorError> {
    Python::attach(|py| -> PyResult<()> {
        let once = Mutex::new(Some(f));
        let target = PyCFunction::new_closure(py, None, None, move |_args, _kwargs| {
            if let Some(f) = once.lock().take() {
                f();
            }
        })?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("target", target)?;
        kwargs.set_item("name", name)?;
        kwargs.set_item("daemon", true)?;
        let thread = py.import("threading")?.getattr("Thread")?.call((), Some(&kwargs))?;
        thread.call_method0("start")?;
        // Joined at interpreter exit (see `laminardb._join_threads`): a thread that re-takes the
        // GIL once finalization has begun is ended by the interpreter mid-frame, which aborts.
        py.import("laminardb._laminardb")?.getattr("_threads")?.call_method1("append", (thread,))?;
        Ok(())
    })
    .map_err(|e| ConnectorError::Failed(format!("cannot start the Python thread {name}: {e}")))
}

enum Item {
    /// One row (a dict).
    Row(Py<PyAny>),
    /// Rows (a list of dicts).
    Rows(Py<PyList>),
    /// Arrow data.
    Batch(RecordBatch),
    /// Something that is not data (an object of the wrong type).
    Dead(DeadLetter),
}

enum GenState {
    Running,
    Finished,
    Failed(String),
}

struct Queue {
    items: VecDeque<Item>,
    rows: usize,
    state: GenState,
}

struct Shared {
    queue: Mutex<Queue>,
    room: Condvar,
    data: tokio::sync::Notify,
    stop: AtomicBool,
}

/// What a registered Python source needs to start.
pub struct SourceDef {
    /// The source name.
    pub name: String,
    /// The generator function (called with no arguments).
    pub function: Py<PyAny>,
    /// The pyarrow schema rows are converted with.
    pub schema: Py<PyAny>,
    /// Where its exception goes.
    pub last_error: LastError,
}

/// A running Python generator.
pub struct PySource {
    def: Arc<SourceDef>,
    shared: Arc<Shared>,
    started: bool,
}

impl PySource {
    /// A source for `spec` driven by `def` (started at `open`).
    pub fn new(def: Arc<SourceDef>, _spec: &SourceSpec) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { items: VecDeque::new(), rows: 0, state: GenState::Running }),
            room: Condvar::new(),
            data: tokio::sync::Notify::new(),
            stop: AtomicBool::new(false),
        });
        Self { def, shared, started: false }
    }
}

/// Runs the generator, queueing what it yields, until it ends, fails or is stopped.
fn run_generator(def: Arc<SourceDef>, shared: Arc<Shared>) {
    let outcome = Python::attach(|py| -> Result<(), PyErr> {
        let gen = def.function.bind(py).call0()?;
        let is_async = gen.hasattr("__anext__")?;
        let event_loop = if is_async { Some(py.import("asyncio")?.call_method0("new_event_loop")?) } else { None };
        let to_arrow = py.import("laminardb")?.getattr("_to_arrow")?;
        let result = (|| -> Result<(), PyErr> {
            loop {
                if shared.stop.load(Ordering::Acquire) {
                    return Ok(());
                }
                // Room in the queue, or wait for it without the GIL (this is where `yield` blocks).
                if shared.queue.lock().rows >= QUEUE_ROWS {
                    py.detach(|| {
                        let mut q = shared.queue.lock();
                        while q.rows >= QUEUE_ROWS && !shared.stop.load(Ordering::Acquire) {
                            shared.room.wait_for(&mut q, Duration::from_millis(100));
                        }
                    });
                    continue;
                }
                let next = match &event_loop {
                    Some(l) => l.call_method1("run_until_complete", (gen.call_method0("__anext__")?,)),
                    None => gen.call_method0("__next__"),
                };
                let item = match next {
                    Ok(v) => v,
                    Err(e)
                        if e.is_instance_of::<PyStopIteration>(py) || e.is_instance_of::<PyStopAsyncIteration>(py) =>
                    {
                        return Ok(())
                    }
                    Err(e) => return Err(e),
                };
                let (item, rows) = if let Ok(d) = item.cast::<PyDict>() {
                    (Item::Row(d.clone().into_any().unbind()), 1)
                } else if let Ok(l) = item.cast::<PyList>() {
                    let n = l.len();
                    if n == 0 {
                        continue;
                    }
                    (Item::Rows(l.clone().unbind()), n)
                } else if item.is_none() {
                    continue;
                } else {
                    match to_arrow.call1((&item, def.schema.bind(py))).and_then(|t| t.extract::<PyTable>()) {
                        Ok(table) => {
                            let (batches, schema) = table.into_inner();
                            let batch = arrow::compute::concat_batches(&schema, &batches)
                                .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
                            let n = batch.num_rows();
                            if n == 0 {
                                continue;
                            }
                            (Item::Batch(batch), n)
                        }
                        Err(e) => {
                            let payload = item.repr().map(|r| r.to_string()).unwrap_or_default();
                            let letter = DeadLetter::new(
                                format!("python source '{}'", def.name),
                                format!("{}", e.value(py)),
                                payload.as_bytes(),
                            );
                            (Item::Dead(letter), 1)
                        }
                    }
                };
                {
                    let mut q = shared.queue.lock();
                    q.items.push_back(item);
                    q.rows += rows;
                }
                shared.data.notify_one();
            }
        })();
        if let (Some(l), true) = (&event_loop, is_async) {
            let _ = gen.call_method0("aclose").and_then(|c| l.call_method1("run_until_complete", (c,)));
            let _ = l.call_method0("close");
        }
        result
    });
    let state = match outcome {
        Ok(()) => GenState::Finished,
        Err(e) => Python::attach(|py| {
            let text = format_error(py, &e);
            let key = format!("Python source '{}'", def.name);
            def.last_error.lock().insert(key.clone(), e.value(py).clone().into_any().unbind());
            GenState::Failed(format!("{key} raised an exception:\n{text}"))
        }),
    };
    shared.queue.lock().state = state;
    shared.data.notify_one();
}

/// Turns queued items into Arrow batches (rows through one pyarrow call per run of rows); rows
/// pyarrow cannot convert become dead letters.
fn convert(py: Python<'_>, def: &SourceDef, items: Vec<Item>) -> PyResult<(Vec<RecordBatch>, Vec<DeadLetter>)> {
    let pa = py.import("pyarrow")?;
    let from_pylist = pa.getattr("RecordBatch")?.getattr("from_pylist")?;
    let schema = def.schema.bind(py);
    let mut out = Vec::new();
    let mut letters = Vec::new();
    let mut pending = PyList::empty(py);
    let flush =
        |pending: &Bound<'_, PyList>, out: &mut Vec<RecordBatch>, letters: &mut Vec<DeadLetter>| -> PyResult<()> {
            if pending.is_empty() {
                return Ok(());
            }
            match from_pylist.call1((pending, schema)) {
                Ok(b) => out.push(b.extract::<PyRecordBatch>()?.into_inner()),
                Err(_) => {
                    // Find the rows that do not fit.
                    for row in pending.iter() {
                        let one = PyList::new(py, [&row])?;
                        match from_pylist.call1((one, schema)) {
                            Ok(b) => out.push(b.extract::<PyRecordBatch>()?.into_inner()),
                            Err(e) => {
                                let payload = row.repr().map(|r| r.to_string()).unwrap_or_default();
                                letters.push(DeadLetter::new(
                                    format!("python source '{}'", def.name),
                                    format!("row does not fit the schema: {}", e.value(py)),
                                    payload.as_bytes(),
                                ));
                            }
                        }
                    }
                }
            }
            Ok(())
        };
    for item in items {
        match item {
            Item::Row(d) => pending.append(d.bind(py))?,
            Item::Rows(l) => {
                for r in l.bind(py).iter() {
                    pending.append(r)?;
                }
            }
            Item::Batch(b) => {
                flush(&pending, &mut out, &mut letters)?;
                pending = PyList::empty(py);
                out.push(b);
            }
            Item::Dead(l) => letters.push(l),
        }
    }
    flush(&pending, &mut out, &mut letters)?;
    Ok((out, letters))
}

#[async_trait::async_trait]
impl SourceConnector for PySource {
    fn capabilities(&self) -> SourceCapabilities {
        SourceCapabilities {
            replayable: false,
            changelog: false,
            bounded: false,
            watermarks: false,
            key_from_peer: false,
            partitioned: false,
        }
    }

    async fn open(&mut self) -> Result<(), ConnectorError> {
        if !self.started {
            self.started = true;
            let (def, shared) = (self.def.clone(), self.shared.clone());
            spawn_python_thread(&format!("laminardb-source-{}", self.def.name), move || run_generator(def, shared))?;
        }
        Ok(())
    }

    async fn poll(&mut self) -> Result<Poll, ConnectorError> {
        let items: Vec<Item> = {
            let mut q = self.shared.queue.lock();
            if q.items.is_empty() {
                match &q.state {
                    GenState::Finished => return Ok(Poll::Finished),
                    GenState::Failed(e) => return Err(ConnectorError::Failed(e.clone())),
                    GenState::Running => {}
                }
            }
            q.rows = 0;
            q.items.drain(..).collect()
        };
        if items.is_empty() {
            let _ = tokio::time::timeout(Duration::from_millis(50), self.shared.data.notified()).await;
            return Ok(Poll::Idle(Duration::ZERO));
        }
        self.shared.room.notify_all();
        let def = self.def.clone();
        let converted = tokio::task::spawn_blocking(move || Python::attach(|py| convert(py, &def, items)))
            .await
            .map_err(|e| ConnectorError::Failed(format!("Python source '{}': {e}", self.def.name)))?;
        let (batches, dead_letters) = converted.map_err(|e| {
            ConnectorError::Failed(format!("Python source '{}' cannot convert its rows: {e}", self.def.name))
        })?;
        Ok(Poll::Data(SourceChunk {
            changes: batches.into_iter().map(Change::Insert).collect(),
            dead_letters,
            watermark: None,
        }))
    }

    async fn close(&mut self) -> Result<(), ConnectorError> {
        // A generator blocked in Python stops at its next yield; shutdown does not wait for it.
        self.shared.stop.store(true, Ordering::Release);
        self.shared.room.notify_all();
        Ok(())
    }

    fn describe(&self) -> String {
        format!("python source '{}'", self.def.name)
    }
}

type Call = (RecordBatch, tokio::sync::oneshot::Sender<Result<(), String>>);

/// What a registered Python sink needs.
pub struct SinkDef {
    /// The registered name.
    pub name: String,
    /// The function (or coroutine function) taking a pyarrow RecordBatch.
    pub function: Py<PyAny>,
    /// Where its exception goes.
    pub last_error: LastError,
}

/// Delivers batches to a Python function on a thread of its own.
pub struct PySink {
    def: Arc<SinkDef>,
    tx: Option<std::sync::mpsc::Sender<Call>>,
}

impl PySink {
    /// A sink calling `def`'s function.
    pub fn new(def: Arc<SinkDef>, _spec: &SinkSpec) -> Self {
        Self { def, tx: None }
    }
}

fn run_sink(def: Arc<SinkDef>, rx: std::sync::mpsc::Receiver<Call>) {
    let mut event_loop: Option<Py<PyAny>> = None;
    let rx = Mutex::new(rx);
    // Runs on a Python thread: wait for work without the GIL.
    while let Ok((batch, reply)) = Python::attach(|py| py.detach(|| rx.lock().recv())) {
        let result = Python::attach(|py| -> Result<(), String> {
            let call = || -> PyResult<()> {
                let arg = PyRecordBatch::new(batch).into_pyarrow(py)?;
                let r = def.function.bind(py).call1((arg,))?;
                if py.import("inspect")?.call_method1("isawaitable", (&r,))?.is_truthy()? {
                    let l = match &event_loop {
                        Some(l) => l.bind(py).clone(),
                        None => {
                            let l = py.import("asyncio")?.call_method0("new_event_loop")?;
                            event_loop = Some(l.clone().unbind());
                            l
                        }
                    };
                    l.call_method1("run_until_complete", (r,))?;
                }
                Ok(())
            };
            let key = format!("Python sink '{}'", def.name);
            match call() {
                Ok(()) => {
                    def.last_error.lock().remove(&key);
                    Ok(())
                }
                Err(e) => {
                    def.last_error.lock().insert(key, e.value(py).clone().into_any().unbind());
                    Err(format_error(py, &e))
                }
            }
        });
        let _ = reply.send(result);
    }
    if let Some(l) = event_loop {
        Python::attach(|py| {
            let _ = l.bind(py).call_method0("close");
        });
    }
}

#[async_trait::async_trait]
impl Deliver for PySink {
    async fn open(&mut self) -> Result<(), ConnectorError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let def = self.def.clone();
        spawn_python_thread(&format!("laminardb-sink-{}", self.def.name), move || run_sink(def, rx))?;
        self.tx = Some(tx);
        Ok(())
    }

    async fn deliver(&mut self, batch: RecordBatch) -> Result<(), String> {
        let tx = self.tx.as_ref().ok_or("the sink is not open")?;
        let (reply, wait) = tokio::sync::oneshot::channel();
        tx.send((batch, reply)).map_err(|_| "the sink thread ended".to_string())?;
        wait.await.map_err(|_| "the sink thread ended".to_string())?
    }

    async fn close(&mut self) -> Result<(), ConnectorError> {
        self.tx = None;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("python sink '{}'", self.def.name)
    }
}
