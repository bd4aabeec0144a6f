//! The output side of a stream: its queryable snapshot, subscribers and counters.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{BooleanArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_row::{RowConverter, SortField};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use laminar_dataflow::batch::DiffBatch;
use laminar_dataflow::rowstore::RowBag;
use parking_lot::Mutex;

use crate::error::{codes, LaminarError, Result};
use crate::ingest::{concat_or_empty, History, Retention};

/// Name of the weight column added to changelog subscriptions.
pub const WEIGHT_COLUMN: &str = "_weight";

/// What a subscription delivers for each epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SubscriptionMode {
    /// The new rows of the keys that changed (insertions only).
    #[default]
    Upsert,
    /// Every change, with a signed `_weight` column (+1 insert, -1 retraction).
    Changelog,
}

/// One epoch's output delivered to a subscriber.
#[derive(Clone, Debug)]
pub struct ChangeBatch {
    /// The epoch that produced the rows.
    pub epoch: u64,
    /// The rows.
    pub batch: RecordBatch,
}

enum Snapshot {
    /// Nothing kept (a sink's query: its rows go to the connector).
    None,
    Append(History),
    Consolidated {
        converter: RowConverter,
        rows: RowBag,
    },
}

struct Subscriber {
    tx: Sender<ChangeBatch>,
    mode: SubscriptionMode,
    cancelled: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
}

/// Output state of one stream or materialized view.
pub struct StreamOutput {
    schema: SchemaRef,
    changelog_schema: SchemaRef,
    snapshot: Mutex<Snapshot>,
    subscribers: Mutex<Vec<Subscriber>>,
    /// Rows (changes) the stream produced.
    pub rows_out: AtomicU64,
    /// Epochs that produced output.
    pub epochs: AtomicU64,
    /// Rows delivered to subscribers.
    pub rows_delivered: AtomicU64,
    /// Receives every completed epoch (a sink's connector).
    forward: Mutex<Option<ForwardFn>>,
    /// The stream only inserts: rows arrive as single insertions (a join's row with
    /// multiplicity 2 becomes two rows).
    append_only: bool,
}

/// Receives a completed epoch's changes.
pub type ForwardFn = Box<dyn Fn(u64, &[DiffBatch]) + Send + Sync>;

impl StreamOutput {
    /// Output state for a stream with `schema`; `append_only` streams keep batches as they are,
    /// within `retention`.
    pub fn new(schema: SchemaRef, append_only: bool, retention: Retention) -> Result<Self> {
        let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(WEIGHT_COLUMN, DataType::Int64, false)));
        Ok(Self {
            snapshot: Mutex::new(Self::empty_snapshot(&schema, append_only.then_some(retention))?),
            changelog_schema: Arc::new(Schema::new(fields)),
            schema,
            subscribers: Mutex::new(Vec::new()),
            rows_out: AtomicU64::new(0),
            epochs: AtomicU64::new(0),
            rows_delivered: AtomicU64::new(0),
            forward: Mutex::new(None),
            append_only,
        })
    }

    /// Output state that keeps no snapshot and hands every epoch to `forward` (a sink);
    /// `append_only` as in [`StreamOutput::new`].
    pub fn forwarding(schema: SchemaRef, append_only: bool) -> Result<Self> {
        let mut out = Self::new(schema, true, Retention::Rows(0))?;
        out.append_only = append_only;
        *out.snapshot.lock() = Snapshot::None;
        Ok(out)
    }

    /// Sets (or clears) the receiver of completed epochs.
    pub fn set_forward(&self, f: Option<ForwardFn>) {
        *self.forward.lock() = f;
    }

    /// `append_only`: the retention of an append-only stream (None: an updating stream).
    fn empty_snapshot(schema: &SchemaRef, append_only: Option<Retention>) -> Result<Snapshot> {
        Ok(if let Some(retention) = append_only {
            Snapshot::Append(History::new(retention))
        } else {
            let fields = schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect();
            Snapshot::Consolidated { converter: RowConverter::new(fields)?, rows: RowBag::default() }
        })
    }

    /// The output schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Forgets the contents (the dataflow is about to recompute them from the sources).
    pub fn reset(&self) -> Result<()> {
        let mut s = self.snapshot.lock();
        let keep = match &*s {
            Snapshot::None => return Ok(()),
            Snapshot::Append(h) => Some(h.retention()),
            Snapshot::Consolidated { .. } => None,
        };
        *s = Self::empty_snapshot(&self.schema, keep)?;
        Ok(())
    }

    /// Current contents.
    pub fn snapshot(&self) -> Result<Vec<RecordBatch>> {
        match &*self.snapshot.lock() {
            Snapshot::None => Ok(Vec::new()),
            Snapshot::Append(h) => Ok(h.snapshot()),
            Snapshot::Consolidated { converter, rows } => {
                if rows.is_empty() {
                    return Ok(Vec::new());
                }
                let parser = converter.parser();
                let it = rows.iter().flat_map(|(r, c)| std::iter::repeat_n(parser.parse(r), c.max(0) as usize));
                let cols = converter.convert_rows(it)?;
                Ok(vec![RecordBatch::try_new(self.schema.clone(), cols)?])
            }
        }
    }

    /// The contents for a checkpoint: an updating stream's distinct rows with their counts in a
    /// `_weight` column, an append-only stream's retained batches; `None` when nothing is kept.
    pub fn image(&self) -> Result<Option<Vec<RecordBatch>>> {
        match &*self.snapshot.lock() {
            Snapshot::None => Ok(None),
            Snapshot::Append(h) => Ok(Some(h.snapshot())),
            Snapshot::Consolidated { converter, rows } => {
                if rows.is_empty() {
                    return Ok(Some(Vec::new()));
                }
                let parser = converter.parser();
                let mut cols = converter.convert_rows(rows.iter().map(|(r, _)| parser.parse(r)))?;
                cols.push(Arc::new(Int64Array::from_iter_values(rows.iter().map(|(_, c)| c))));
                Ok(Some(vec![RecordBatch::try_new(self.changelog_schema.clone(), cols)?]))
            }
        }
    }

    /// The schema of [`StreamOutput::image`]'s batches.
    pub fn image_schema(&self) -> SchemaRef {
        match &*self.snapshot.lock() {
            Snapshot::Consolidated { .. } => self.changelog_schema.clone(),
            _ => self.schema.clone(),
        }
    }

    /// Loads contents written by [`StreamOutput::image`] in place of the current ones.
    pub fn restore(&self, batches: &[RecordBatch]) -> Result<()> {
        self.reset()?;
        let mut snap = self.snapshot.lock();
        match &mut *snap {
            Snapshot::None => {}
            Snapshot::Append(h) => batches.iter().for_each(|b| h.push(b.clone())),
            Snapshot::Consolidated { converter, rows } => {
                for b in batches {
                    let n = b.num_columns();
                    if n == 0 {
                        continue;
                    }
                    let weights = b
                        .column(n - 1)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .ok_or_else(|| LaminarError::Internal("checkpointed stream rows lack weights".into()))?;
                    let encoded = converter.convert_columns(&b.columns()[..n - 1])?;
                    for i in 0..b.num_rows() {
                        rows.add(encoded.row(i).as_ref(), weights.value(i));
                    }
                }
            }
        }
        Ok(())
    }

    /// Number of rows in the snapshot.
    pub fn num_rows(&self) -> usize {
        match &*self.snapshot.lock() {
            Snapshot::None => 0,
            Snapshot::Append(h) => h.num_rows(),
            Snapshot::Consolidated { rows, .. } => rows.total().max(0) as usize,
        }
    }

    /// Registers a subscriber.
    pub fn subscribe(&self, mode: SubscriptionMode) -> Subscription {
        let (tx, rx) = crossbeam_channel::unbounded();
        let cancelled = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicBool::new(false));
        self.subscribers.lock().push(Subscriber { tx, mode, cancelled: cancelled.clone(), closed: closed.clone() });
        let schema = match mode {
            SubscriptionMode::Upsert => self.schema.clone(),
            SubscriptionMode::Changelog => self.changelog_schema.clone(),
        };
        Subscription { rx, cancelled, closed, schema, on_drop: None, health: None }
    }

    /// Ends every subscription (the pipeline stopped or the stream was dropped).
    pub fn close_subscribers(&self) {
        let mut subs = self.subscribers.lock();
        subs.iter().for_each(|s| s.closed.store(true, Ordering::Release));
        subs.clear();
    }

    /// Applies one completed epoch: updates the snapshot and notifies subscribers.
    pub fn deliver(&self, epoch: u64, batches: Vec<DiffBatch>) {
        let batches = if self.append_only { batches.into_iter().map(unit_insertions).collect() } else { batches };
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        self.rows_out.fetch_add(rows as u64, Ordering::Relaxed);
        self.epochs.fetch_add(1, Ordering::Relaxed);
        {
            let mut snap = self.snapshot.lock();
            match &mut *snap {
                Snapshot::None => {}
                Snapshot::Append(h) => batches.iter().for_each(|b| h.push(b.data.clone())),
                Snapshot::Consolidated { converter, rows } => {
                    for b in &batches {
                        if let Ok(encoded) = converter.convert_columns(b.data.columns()) {
                            for i in 0..b.num_rows() {
                                rows.add(encoded.row(i).as_ref(), b.diff(i));
                            }
                        }
                    }
                }
            }
        }
        if let Some(f) = &*self.forward.lock() {
            f(epoch, &batches);
        }
        let mut subs = self.subscribers.lock();
        if subs.is_empty() {
            return;
        }
        let mut upsert: Option<RecordBatch> = None;
        let mut changelog: Option<RecordBatch> = None;
        subs.retain(|s| {
            if s.cancelled.load(Ordering::Acquire) {
                return false;
            }
            let item = match s.mode {
                SubscriptionMode::Upsert => {
                    if upsert.is_none() {
                        upsert = Some(self.upsert_view(&batches));
                    }
                    upsert.clone()
                }
                SubscriptionMode::Changelog => {
                    if changelog.is_none() {
                        changelog = Some(self.changelog_view(&batches));
                    }
                    changelog.clone()
                }
            };
            match item {
                Some(batch) if batch.num_rows() > 0 => {
                    self.rows_delivered.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                    s.tx.send(ChangeBatch { epoch, batch }).is_ok()
                }
                _ => true,
            }
        });
    }

    fn upsert_view(&self, batches: &[DiffBatch]) -> RecordBatch {
        let parts: Vec<RecordBatch> = batches
            .iter()
            .filter_map(|b| match &b.diffs {
                None => Some(b.data.clone()),
                Some(d) => {
                    let mask = BooleanArray::from_iter(d.values().iter().map(|&x| Some(x > 0)));
                    arrow::compute::filter_record_batch(&b.data, &mask).ok()
                }
            })
            .filter(|b| b.num_rows() > 0)
            .collect();
        concat_or_empty(&self.schema, &parts).unwrap_or_else(|_| RecordBatch::new_empty(self.schema.clone()))
    }

    fn changelog_view(&self, batches: &[DiffBatch]) -> RecordBatch {
        let parts: Vec<RecordBatch> = batches
            .iter()
            .filter_map(|b| {
                let w = b.diffs.clone().unwrap_or_else(|| Int64Array::from_value(1, b.num_rows()));
                let mut cols = b.data.columns().to_vec();
                cols.push(Arc::new(w));
                RecordBatch::try_new(self.changelog_schema.clone(), cols).ok()
            })
            .collect();
        concat_or_empty(&self.changelog_schema, &parts)
            .unwrap_or_else(|_| RecordBatch::new_empty(self.changelog_schema.clone()))
    }
}

/// A live subscription to a stream: each item is one epoch's changes.
pub struct Subscription {
    rx: Receiver<ChangeBatch>,
    cancelled: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
    schema: SchemaRef,
    on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
    health: Option<HealthFn>,
}

/// Reports why a subscription's input stopped for good (a failed source connector), if it did.
pub type HealthFn = Box<dyn Fn() -> Option<LaminarError> + Send + Sync>;

impl Drop for Subscription {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Release);
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

impl Subscription {
    /// Runs `f` when the subscription is dropped (releases what the subscription owns).
    pub fn on_drop(mut self, f: Box<dyn FnOnce() + Send + Sync>) -> Self {
        self.on_drop = Some(f);
        self
    }

    /// Checks `f` while waiting: once it reports an error and nothing is pending, waits end
    /// with that error instead of timing out.
    pub fn with_health(mut self, f: HealthFn) -> Self {
        self.health = Some(f);
        self
    }

    /// Schema of the delivered batches.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// True until cancelled or the stream ends.
    pub fn is_active(&self) -> bool {
        let ended = self.closed.load(Ordering::Acquire) && self.rx.is_empty();
        !self.cancelled.load(Ordering::Acquire) && !ended
    }

    /// Stops the subscription; pending and future items are discarded.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    /// A handle that cancels this subscription from another thread.
    pub fn canceller(&self) -> Arc<AtomicBool> {
        self.cancelled.clone()
    }

    /// Blocks for the next epoch's changes; `None` once the subscription is closed or cancelled.
    pub fn next(&self) -> Option<ChangeBatch> {
        loop {
            match self.next_timeout(Duration::from_millis(100)) {
                Ok(item) => return Some(item),
                Err(e) if e.code() == codes::SUBSCRIPTION_TIMEOUT => continue,
                Err(_) => return None,
            }
        }
    }

    /// Waits up to `timeout`; a timeout is `SubscriptionError` code 502, a closed subscription 501.
    pub fn next_timeout(&self, timeout: Duration) -> Result<ChangeBatch> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.cancelled.load(Ordering::Acquire) {
                return Err(closed());
            }
            let now = Instant::now();
            let wait = deadline.saturating_duration_since(now).min(Duration::from_millis(50));
            match self.rx.recv_timeout(wait) {
                Ok(item) => return Ok(item),
                Err(RecvTimeoutError::Disconnected) => return Err(closed()),
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(e) = self.health.as_ref().and_then(|h| h()) {
                        return Err(e);
                    }
                    if Instant::now() >= deadline {
                        return Err(LaminarError::Subscription {
                            code: codes::SUBSCRIPTION_TIMEOUT,
                            message: format!("no data within {} ms", timeout.as_millis()),
                        });
                    }
                }
            }
        }
    }

    /// The next item if one is ready.
    pub fn try_next(&self) -> Result<Option<ChangeBatch>> {
        if self.cancelled.load(Ordering::Acquire) {
            return Err(closed());
        }
        match self.rx.try_recv() {
            Ok(item) => Ok(Some(item)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(closed()),
        }
    }
}

fn closed() -> LaminarError {
    LaminarError::Subscription { code: codes::SUBSCRIPTION_CLOSED, message: "the subscription is closed".into() }
}

impl Iterator for Subscription {
    type Item = ChangeBatch;
    fn next(&mut self) -> Option<ChangeBatch> {
        Subscription::next(self)
    }
}

/// The rows of an append-only batch as single insertions: a row with multiplicity `n` becomes `n`
/// rows (joins multiply multiplicities).
fn unit_insertions(b: DiffBatch) -> DiffBatch {
    if b.diffs.is_none() {
        return b;
    }
    let Some(d) = &b.diffs else { return b };
    if d.values().iter().all(|&x| x == 1) {
        return DiffBatch::inserts(b.data);
    }
    let idx: Vec<u32> =
        d.values().iter().enumerate().flat_map(|(i, &n)| std::iter::repeat_n(i as u32, n.max(0) as usize)).collect();
    match arrow::compute::take_record_batch(&b.data, &arrow::array::UInt32Array::from(idx)) {
        Ok(data) => DiffBatch::inserts(data),
        Err(_) => b,
    }
}
