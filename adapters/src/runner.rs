//! Drives connectors on the engine's connector runtime: polls sources into the engine with
//! backpressure, writes sink epochs in order, retries transient failures with exponential
//! backoff and keeps each connector's state and counters for metrics.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use laminar_dataflow::batch::DiffBatch;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::connector::{Change, Poll, SinkConnector, SourceConnector};
use crate::dlq::{DeadLetter, DlqTarget};
use crate::ConnectorError;

/// First retry delay after a transient failure; doubles up to [`MAX_BACKOFF`].
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a source's buffer stays full before the connector is told to pause its peer.
pub const PAUSE_AFTER: Duration = Duration::from_millis(250);
/// At most this many rows of queued epochs are written to an at-least-once sink as one.
const MAX_MERGED_ROWS: usize = 1 << 20;

/// Life-cycle state of a connector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectorState {
    /// Not started.
    Created,
    /// Moving data.
    Running,
    /// Waiting for the pipeline to drain (source buffer full).
    Backpressured,
    /// A transient failure; retrying with backoff.
    Retrying,
    /// A bounded source reached its end.
    Finished,
    /// A definite failure; the connector stopped (see `last_error`).
    Failed,
    /// Stopped by shutdown.
    Stopped,
}

impl ConnectorState {
    /// Lower-case name for metrics.
    pub fn name(self) -> &'static str {
        match self {
            ConnectorState::Created => "created",
            ConnectorState::Running => "running",
            ConnectorState::Backpressured => "backpressured",
            ConnectorState::Retrying => "retrying",
            ConnectorState::Finished => "finished",
            ConnectorState::Failed => "failed",
            ConnectorState::Stopped => "stopped",
        }
    }
}

/// Live state and counters of one connector.
#[derive(Debug)]
pub struct ConnectorStatus {
    state: Mutex<ConnectorState>,
    last_error: Mutex<Option<String>>,
    /// Rows moved (read by a source, written by a sink).
    pub rows: AtomicU64,
    /// Records sent to the dead-letter target, or rows a failed sink discarded.
    pub dropped: AtomicU64,
    /// Transient failures retried.
    pub retries: AtomicU64,
    /// Epochs committed (sinks).
    pub epochs: AtomicU64,
    /// The peer, for messages (no secrets).
    pub peer: String,
    /// Connector-specific gauges and counters (connected clients, reconnects, …).
    counters: Mutex<BTreeMap<&'static str, i64>>,
}

impl ConnectorStatus {
    /// A fresh status for a connector talking to `peer`.
    pub fn new(peer: String) -> Self {
        Self {
            state: Mutex::new(ConnectorState::Created),
            last_error: Mutex::new(None),
            rows: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            epochs: AtomicU64::new(0),
            peer,
            counters: Mutex::new(BTreeMap::new()),
        }
    }

    /// Current state.
    pub fn state(&self) -> ConnectorState {
        *self.state.lock()
    }

    /// Sets the state.
    pub fn set_state(&self, s: ConnectorState) {
        *self.state.lock() = s;
    }

    /// The most recent error, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    /// Records an error without changing the state (a connector reporting a problem it
    /// handles itself, e.g. a lost connection it re-establishes).
    pub fn set_last_error(&self, e: impl Into<String>) {
        *self.last_error.lock() = Some(e.into());
    }

    /// Sets a connector-specific gauge.
    pub fn set_counter(&self, name: &'static str, value: i64) {
        self.counters.lock().insert(name, value);
    }

    /// Adds to a connector-specific counter.
    pub fn add_counter(&self, name: &'static str, delta: i64) {
        *self.counters.lock().entry(name).or_insert(0) += delta;
    }

    /// The connector-specific gauges and counters.
    pub fn counters(&self) -> BTreeMap<String, i64> {
        self.counters.lock().iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// Records a failure and moves to `state`.
    fn fail(&self, state: ConnectorState, e: &ConnectorError) {
        *self.last_error.lock() = Some(e.to_string());
        self.set_state(state);
    }
}

/// Where a source's data goes: implemented by the engine.
pub trait SourceTarget: Send + Sync {
    /// True while the source's buffer has room.
    fn has_capacity(&self) -> bool;
    /// Applies one change (stores it and sends it into the pipeline). Must not block waiting for
    /// room: the runner awaits [`SourceTarget::has_capacity`] before each chunk, so that a
    /// full buffer never ties up a thread of the connector runtime (sinks run there too).
    fn apply(&self, change: Change) -> Result<(), String>;
    /// Held while the changes of one poll are applied and the connector's position after them
    /// is recorded; a checkpoint barrier takes it too, so that a checkpoint sees a whole chunk
    /// with its position, or none of it.
    fn chunk_lock(&self) -> Option<Arc<tokio::sync::Mutex<()>>> {
        None
    }
    /// Records the connector's position after the changes applied so far.
    fn set_position(&self, _position: serde_json::Value) {}
    /// Advances the event-time watermark (ms).
    fn watermark(&self, ts_ms: i64);
    /// Keeps dead letters in the `<source>_errors` collection.
    fn dead_letters(&self, letters: Vec<DeadLetter>);
}

/// A running source.
pub struct SourceHandle {
    stop: watch::Sender<bool>,
    join: Option<JoinHandle<Option<serde_json::Value>>>,
    commits: Option<mpsc::UnboundedSender<serde_json::Value>>,
    halted: Option<oneshot::Receiver<Option<serde_json::Value>>>,
    /// The position reported when polling stopped.
    halted_at: Option<serde_json::Value>,
}

impl SourceHandle {
    /// Tells the connector that a checkpoint holding `position` is durable (it acknowledges it
    /// to the peer: Kafka offsets committed to the group, RabbitMQ deliveries acked, …); also
    /// after [`SourceHandle::halt`], until [`SourceHandle::stop`].
    pub fn commit(&self, position: serde_json::Value) {
        if let Some(c) = &self.commits {
            let _ = c.send(position);
        }
    }

    /// Stops polling (what was read is applied) but keeps the connection, so that a last
    /// checkpoint can still be acknowledged to the peer; returns the position.
    pub fn halt(&mut self, rt: &tokio::runtime::Handle, timeout: Duration) -> Option<serde_json::Value> {
        let _ = self.stop.send(true);
        if let Some(rx) = self.halted.take() {
            if let Ok(Ok(pos)) = rt.block_on(async { tokio::time::timeout(timeout, rx).await }) {
                self.halted_at = pos;
            }
        }
        self.halted_at.clone()
    }

    /// Stops the source, disconnects and waits for it on `rt` (bounded by `timeout`); returns
    /// its position.
    pub fn stop(mut self, rt: &tokio::runtime::Handle, timeout: Duration) -> Option<serde_json::Value> {
        let halted = self.halt(rt, timeout);
        self.commits.take();
        let j = self.join.take()?;
        match rt.block_on(async { tokio::time::timeout(timeout, j).await }) {
            Ok(Ok(pos)) => pos.or(halted),
            _ => halted,
        }
    }
}

async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// Waits (asynchronously) until the source has room; false when stopped meanwhile.
async fn wait_for_capacity(
    target: &dyn SourceTarget,
    status: &ConnectorStatus,
    stop: &mut watch::Receiver<bool>,
    connector: &mut dyn SourceConnector,
) -> bool {
    if target.has_capacity() {
        return !*stop.borrow();
    }
    let before = status.state();
    status.set_state(ConnectorState::Backpressured);
    // A buffer full for a moment (epochs waiting for a sink's round trip) is not worth stopping
    // the peer (a paused Kafka consumer drops what it had fetched ahead); one that stays full is.
    let pause_at = tokio::time::Instant::now() + PAUSE_AFTER;
    let mut paused = false;
    let mut stopped = false;
    while !target.has_capacity() {
        if !paused && tokio::time::Instant::now() >= pause_at {
            let _ = connector.backpressure(true).await;
            paused = true;
        }
        if sleep_or_stop(Duration::from_micros(500), stop).await {
            stopped = true;
            break;
        }
    }
    if paused {
        let _ = connector.backpressure(false).await;
    }
    if status.state() == ConnectorState::Backpressured {
        status.set_state(if before == ConnectorState::Backpressured { ConnectorState::Running } else { before });
    }
    !stopped && !*stop.borrow()
}

/// Starts polling an opened source on `rt`. With `commit_on_apply` (no periodic checkpoints),
/// the position after each applied chunk is acknowledged to the peer right away
/// ([`SourceConnector::commit_position`]); otherwise when a checkpoint holding it is durable
/// ([`SourceHandle::commit`]).
pub fn spawn_source(
    rt: &tokio::runtime::Handle,
    source: String,
    mut connector: Box<dyn SourceConnector>,
    dlq: DlqTarget,
    target: Arc<dyn SourceTarget>,
    status: Arc<ConnectorStatus>,
    commit_on_apply: bool,
) -> SourceHandle {
    let (stop_tx, mut stop) = watch::channel(false);
    let (commits, mut commit_rx) = mpsc::unbounded_channel::<serde_json::Value>();
    let (halted_tx, halted) = oneshot::channel();
    let join = rt.spawn(async move {
        status.set_state(ConnectorState::Running);
        let mut backoff = INITIAL_BACKOFF;
        // True once the connector has closed itself (finished or failed).
        let mut closed = false;
        'run: loop {
            if *stop.borrow() {
                break;
            }
            while let Ok(position) = commit_rx.try_recv() {
                acknowledge(&mut *connector, &status, &position).await;
            }
            if !wait_for_capacity(&*target, &status, &mut stop, &mut *connector).await {
                break;
            }
            let polled = tokio::select! {
                p = connector.poll() => p,
                _ = stop.changed() => break,
            };
            match polled {
                Ok(Poll::Data(chunk)) => {
                    backoff = INITIAL_BACKOFF;
                    if status.state() == ConnectorState::Retrying {
                        status.set_state(ConnectorState::Running);
                    }
                    let mut letters = chunk.dead_letters;
                    let position = connector.checkpoint().ok().filter(|p| !p.is_null());
                    let lock = target.chunk_lock();
                    let guard = match &lock {
                        Some(l) => Some(l.lock().await),
                        None => None,
                    };
                    let mut stopped = false;
                    for change in chunk.changes {
                        // Once stopping, the rest of the chunk goes in without waiting (nothing
                        // read from the peer is lost at shutdown). A full buffer pauses the peer.
                        if !stopped && !wait_for_capacity(&*target, &status, &mut stop, &mut *connector).await {
                            stopped = true;
                        }
                        let n = change.num_rows() as u64;
                        match target.apply(change.clone()) {
                            Ok(()) => {
                                status.rows.fetch_add(n, Ordering::Relaxed);
                            }
                            Err(reason) => letters.push(rejected(&change, reason)),
                        }
                    }
                    if let Some(p) = position {
                        if commit_on_apply {
                            acknowledge(&mut *connector, &status, &p).await;
                        }
                        target.set_position(p);
                    }
                    drop(guard);
                    if !letters.is_empty() {
                        status.dropped.fetch_add(letters.len() as u64, Ordering::Relaxed);
                        route_dead_letters(&source, &dlq, &*target, &status, letters);
                    }
                    if let Some(w) = chunk.watermark {
                        target.watermark(w);
                    }
                    if stopped {
                        break;
                    }
                }
                Ok(Poll::Idle(d)) => {
                    if sleep_or_stop(d, &mut stop).await {
                        break;
                    }
                }
                Ok(Poll::Finished) => {
                    status.set_state(ConnectorState::Finished);
                    let _ = connector.close().await;
                    closed = true;
                    break 'run;
                }
                Err(e) if e.is_transient() => {
                    status.fail(ConnectorState::Retrying, &e);
                    status.retries.fetch_add(1, Ordering::Relaxed);
                    if sleep_or_stop(backoff, &mut stop).await {
                        break;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    let _ = connector.close().await;
                    if let Err(e) = connector.open().await {
                        status.fail(ConnectorState::Retrying, &e);
                    }
                }
                Err(e) => {
                    status.fail(ConnectorState::Failed, &e);
                    let _ = connector.close().await;
                    closed = true;
                    break 'run;
                }
            }
        }
        let _ = halted_tx.send(connector.checkpoint().ok());
        if closed {
            return connector.checkpoint().ok();
        }
        // Halted: positions of a last checkpoint are still acknowledged, until the handle
        // lets go.
        while let Some(position) = commit_rx.recv().await {
            acknowledge(&mut *connector, &status, &position).await;
        }
        let _ = connector.close().await;
        if status.state() != ConnectorState::Failed {
            status.set_state(ConnectorState::Stopped);
        }
        connector.checkpoint().ok()
    });
    SourceHandle { stop: stop_tx, join: Some(join), commits: Some(commits), halted: Some(halted), halted_at: None }
}

/// Acknowledges `position` to the source's peer; a failure is reported, not fatal (a later
/// position covers it, and nothing is lost meanwhile).
async fn acknowledge(connector: &mut dyn SourceConnector, status: &ConnectorStatus, position: &serde_json::Value) {
    if let Err(e) = connector.commit_position(position).await {
        status.set_last_error(format!("acknowledging a position to the peer failed: {e}"));
    }
}

/// A change the engine refused (e.g. a NULL primary key), as one dead letter holding its rows.
fn rejected(change: &Change, reason: String) -> DeadLetter {
    let b = match change {
        Change::Insert(b) | Change::Delete(b) => b,
        Change::Clear => return DeadLetter::new("clear", reason, b""),
    };
    let mut payload = Vec::new();
    {
        let mut w = arrow::json::LineDelimitedWriter::new(&mut payload);
        let _ = w.write(b);
        let _ = w.finish();
    }
    DeadLetter::new(format!("{} rows", b.num_rows()), reason, &payload)
}

fn route_dead_letters(
    source: &str,
    dlq: &DlqTarget,
    target: &dyn SourceTarget,
    status: &ConnectorStatus,
    letters: Vec<DeadLetter>,
) {
    match dlq {
        DlqTarget::Collection { .. } => target.dead_letters(letters),
        DlqTarget::File(path) => {
            if let Err(e) = DlqTarget::append_to_file(path, source, &letters) {
                // Keep them queryable rather than losing them.
                *status.last_error.lock() = Some(e.to_string());
                target.dead_letters(letters);
            }
        }
    }
}

/// What a sink's runner receives, in order.
enum SinkItem {
    /// One completed epoch's changes.
    Epoch(u64, Vec<DiffBatch>),
    /// A checkpoint of this epoch is being taken: make everything up to it durable
    /// (`pre_commit`) and report.
    PreCommit(u64, CheckpointAck),
    /// The checkpoint of this epoch is durable: make its writes visible (`commit`).
    Commit(u64),
    /// The checkpoint whose barrier passed last failed: its writes stay pending.
    CheckpointFailed,
}

/// Receives the outcome of a sink's pre-commit for a checkpoint: the state to keep in the
/// checkpoint, if any.
pub type CheckpointAck = Box<dyn FnOnce(Result<Option<Vec<u8>>, String>) + Send>;

/// A running sink (shared by the engine's delivery path and its shutdown path).
pub struct SinkHandle {
    tx: Mutex<Option<mpsc::UnboundedSender<SinkItem>>>,
    pending: Arc<Mutex<VecDeque<u64>>>,
    stopping: Arc<AtomicBool>,
    join: Mutex<Option<JoinHandle<()>>>,
}

impl SinkHandle {
    /// Queues a completed epoch (called by the engine in epoch order).
    pub fn push(&self, epoch: u64, batches: Vec<DiffBatch>) {
        if let Some(tx) = &*self.tx.lock() {
            self.pending.lock().push_back(epoch);
            if tx.send(SinkItem::Epoch(epoch, batches)).is_err() {
                self.pending.lock().retain(|e| *e != epoch);
            }
        }
    }

    /// Queues a checkpoint barrier after the epochs pushed so far; `ack` learns whether the
    /// sink made them durable.
    pub fn pre_commit(&self, epoch: u64, ack: CheckpointAck) {
        match &*self.tx.lock() {
            Some(tx) => {
                if let Err(mpsc::error::SendError(SinkItem::PreCommit(_, ack))) =
                    tx.send(SinkItem::PreCommit(epoch, ack))
                {
                    ack(Err("the sink has stopped".into()));
                }
            }
            None => ack(Err("the sink has stopped".into())),
        }
    }

    /// Tells the sink that the checkpoint of `epoch` is durable.
    pub fn commit(&self, epoch: u64) {
        if let Some(tx) = &*self.tx.lock() {
            let _ = tx.send(SinkItem::Commit(epoch));
        }
    }

    /// Tells the sink that the checkpoint whose barrier it passed last failed.
    pub fn checkpoint_failed(&self) {
        if let Some(tx) = &*self.tx.lock() {
            let _ = tx.send(SinkItem::CheckpointFailed);
        }
    }

    /// Number of queued epochs not yet written.
    pub fn pending_epochs(&self) -> usize {
        self.pending.lock().len()
    }

    /// The oldest queued epoch not yet written, if any.
    pub fn oldest_pending(&self) -> Option<u64> {
        self.pending.lock().front().copied()
    }

    /// Writes what is queued, closes the connector and waits (bounded by `timeout`).
    pub fn finish(&self, rt: &tokio::runtime::Handle, timeout: Duration) {
        self.tx.lock().take();
        let join = self.join.lock().take();
        if let Some(j) = join {
            let stopping = self.stopping.clone();
            rt.block_on(async move {
                tokio::pin!(j);
                if tokio::time::timeout(timeout, &mut j).await.is_err() {
                    // A sink stuck retrying: give up on it.
                    stopping.store(true, Ordering::Release);
                    let _ = tokio::time::timeout(Duration::from_secs(5), j).await;
                }
            });
        }
    }
}

/// Starts writing epochs into an opened sink on `rt`. With `transactional`, an epoch's writes
/// stay pending (written, not visible) until a checkpoint covering it is durable: `pre_commit`
/// at the checkpoint barrier, `commit` once it is durable. Otherwise every epoch is committed as
/// soon as it is written (at-least-once), and barriers are acknowledged in order.
pub fn spawn_sink(
    rt: &tokio::runtime::Handle,
    mut connector: Box<dyn SinkConnector>,
    status: Arc<ConnectorStatus>,
    transactional: bool,
) -> SinkHandle {
    let (tx, mut rx) = mpsc::unbounded_channel::<SinkItem>();
    let pending: Arc<Mutex<VecDeque<u64>>> = Arc::new(Mutex::new(VecDeque::new()));
    let stopping = Arc::new(AtomicBool::new(false));
    let (p2, s2) = (pending.clone(), stopping.clone());
    let join = rt.spawn(async move {
        status.set_state(ConnectorState::Running);
        let tick = connector.tick_interval();
        // An item taken while gathering epochs, handled next.
        let mut deferred: Option<SinkItem> = None;
        loop {
            let next = if let Some(item) = deferred.take() {
                Some(item)
            } else {
                match tick {
                    Some(every) => match tokio::time::timeout(every, rx.recv()).await {
                        Ok(item) => item,
                        Err(_) => {
                            if status.state() != ConnectorState::Failed {
                                if let Err(e) = connector.tick().await {
                                    status.fail(ConnectorState::Failed, &e);
                                }
                            }
                            continue;
                        }
                    },
                    None => rx.recv().await,
                }
            };
            let (mut epoch, mut batches) = match next {
                None => break,
                Some(SinkItem::Epoch(e, b)) => (e, b),
                Some(SinkItem::PreCommit(e, ack)) => {
                    let r = if status.state() == ConnectorState::Failed {
                        Err(status.last_error().unwrap_or_else(|| "the sink has failed".into()))
                    } else if transactional {
                        match connector.pre_commit(e).await {
                            Ok(()) => Ok(connector.checkpoint_state()),
                            Err(err) => {
                                status.fail(ConnectorState::Failed, &err);
                                Err(err.to_string())
                            }
                        }
                    } else {
                        Ok(None)
                    };
                    ack(r);
                    continue;
                }
                Some(SinkItem::CheckpointFailed) => {
                    if transactional && status.state() != ConnectorState::Failed {
                        if let Err(err) = connector.checkpoint_failed().await {
                            status.fail(ConnectorState::Failed, &err);
                        }
                    }
                    continue;
                }
                Some(SinkItem::Commit(e)) => {
                    if transactional && status.state() != ConnectorState::Failed {
                        if let Err(err) = connector.commit(e).await {
                            status.fail(ConnectorState::Failed, &err);
                        }
                    }
                    continue;
                }
            };
            // At-least-once: epochs that queued up while the sink was busy are written as one
            // (fewer round trips to a slow peer; the changes are the same).
            let mut merged = 1usize;
            if !transactional {
                let mut queued: usize = batches.iter().map(DiffBatch::num_rows).sum();
                while queued < MAX_MERGED_ROWS {
                    match rx.try_recv() {
                        Ok(SinkItem::Epoch(e, more)) => {
                            queued += more.iter().map(DiffBatch::num_rows).sum::<usize>();
                            epoch = e;
                            batches.extend(more);
                            merged += 1;
                        }
                        Ok(other) => {
                            deferred = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            let done = |p: &Mutex<VecDeque<u64>>| {
                let mut p = p.lock();
                for _ in 0..merged {
                    p.pop_front();
                }
            };
            let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
            if status.state() == ConnectorState::Failed {
                status.dropped.fetch_add(rows, Ordering::Relaxed);
                done(&p2);
                continue;
            }
            if transactional {
                // Pending until a checkpoint: a failure here is final for this run (recovery
                // restarts from the last checkpoint and writes these epochs again).
                match write_uncommitted(&mut *connector, epoch, &batches).await {
                    Ok(()) => {
                        status.rows.fetch_add(rows, Ordering::Relaxed);
                        status.epochs.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        let _ = connector.abort(epoch).await;
                        status.fail(ConnectorState::Failed, &e);
                        status.dropped.fetch_add(rows, Ordering::Relaxed);
                    }
                }
                p2.lock().pop_front();
                continue;
            }
            let mut backoff = INITIAL_BACKOFF;
            loop {
                match write_epoch(&mut *connector, epoch, &batches).await {
                    Ok(()) => {
                        status.rows.fetch_add(rows, Ordering::Relaxed);
                        status.epochs.fetch_add(merged as u64, Ordering::Relaxed);
                        if status.state() == ConnectorState::Retrying {
                            status.set_state(ConnectorState::Running);
                        }
                        break;
                    }
                    Err(e) => {
                        let _ = connector.abort(epoch).await;
                        if !e.is_transient() || s2.load(Ordering::Acquire) {
                            status.fail(ConnectorState::Failed, &e);
                            status.dropped.fetch_add(rows, Ordering::Relaxed);
                            break;
                        }
                        status.fail(ConnectorState::Retrying, &e);
                        status.retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        let _ = connector.close().await;
                        if let Err(e) = connector.open().await {
                            status.fail(ConnectorState::Retrying, &e);
                        }
                    }
                }
            }
            done(&p2);
        }
        if let Err(e) = connector.close().await {
            status.fail(ConnectorState::Failed, &e);
        }
        if status.state() != ConnectorState::Failed {
            status.set_state(ConnectorState::Stopped);
        }
    });
    SinkHandle { tx: Mutex::new(Some(tx)), pending, stopping, join: Mutex::new(Some(join)) }
}

async fn write_uncommitted(c: &mut dyn SinkConnector, epoch: u64, batches: &[DiffBatch]) -> Result<(), ConnectorError> {
    c.begin(epoch).await?;
    for b in batches {
        if b.num_rows() > 0 {
            c.write(b).await?;
        }
    }
    Ok(())
}

async fn write_epoch(c: &mut dyn SinkConnector, epoch: u64, batches: &[DiffBatch]) -> Result<(), ConnectorError> {
    c.begin(epoch).await?;
    for b in batches {
        if b.num_rows() > 0 {
            c.write(b).await?;
        }
    }
    c.pre_commit(epoch).await?;
    c.commit(epoch).await
}
