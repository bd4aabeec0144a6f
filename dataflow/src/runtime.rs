//! The runtime: timely worker threads, the epoch coordinator, and the command channels through
//! which the engine installs dataflows and feeds source data.
//!
//! Epochs are the timely timestamps. Source data is sent to one worker (round robin) as a
//! command; a coordinator closes the current epoch every `epoch_interval` when data arrived,
//! by broadcasting `Advance` to every worker through the same FIFO channels, so all data sent
//! before a close belongs to an earlier epoch on every worker.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use parking_lot::{Mutex, RwLock};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::Input;
use timely::dataflow::InputHandle;
use timely::WorkerConfig;

use crate::batch::DiffBatch;
use crate::build::{build_plan, BuildContext, Built};
use crate::checkpoint::{CheckpointFeed, CheckpointRequest, RestoreState, SnapshotSink};
use crate::error::{DataflowError, Result};
use crate::operators::capture::{CaptureExt, EpochSink};
use crate::plan::PlanNode;
use crate::stats::DataflowStats;
use crate::watermark::{WatermarkFeed, WatermarkSnapshot, WatermarkTable};

/// Runtime settings.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Number of timely worker threads.
    pub workers: usize,
    /// How often the coordinator closes an epoch that received data.
    pub epoch_interval: Duration,
    /// The first epoch (a restart from a checkpoint of epoch `E` starts at `E + 1`, so that
    /// epoch numbers keep growing across runs).
    pub initial_epoch: u64,
    /// Whether checkpoints can be asked for; when not, operators may skip the bookkeeping of
    /// incremental snapshots (the join no longer records which keys changed since the last).
    pub checkpoints: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            workers: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            epoch_interval: Duration::from_millis(1),
            initial_epoch: INITIAL_EPOCH,
            checkpoints: true,
        }
    }
}

/// A dataflow to install on every worker.
pub struct InstallRequest {
    /// Engine-chosen id, used to remove the dataflow.
    pub id: u64,
    /// What to compute.
    pub plan: PlanNode,
    /// Where each worker reports completed epochs.
    pub output: Arc<dyn EpochSink>,
    /// Existing source contents fed into the new dataflow (by worker 0) before live data.
    pub backfill: Vec<(String, Vec<DiffBatch>)>,
    /// Error counters of the dataflow.
    pub stats: Arc<DataflowStats>,
    /// Operator state to start from instead of the backfill (a restart from a checkpoint).
    pub restore: Option<Arc<RestoreState>>,
}

enum Command {
    Install(Arc<[Arc<InstallRequest>]>),
    Remove(u64),
    Data(Arc<str>, DiffBatch),
    /// Opens epoch `.0`; `.1` holds the watermarks at the close of the epoch before it; `.2`
    /// asks for a checkpoint of that epoch.
    Advance(u64, Arc<WatermarkSnapshot>, Option<Arc<CheckpointRequest>>),
}

type Handle = InputHandle<u64, CapacityContainerBuilder<Vec<DiffBatch>>>;

/// The epoch open when the runtime starts.
const INITIAL_EPOCH: u64 = 1;

struct Shared {
    epoch: AtomicU64,
    dirty: AtomicBool,
    stop: AtomicBool,
    threads: Mutex<Vec<Option<Thread>>>,
    /// Held shared by data sends and exclusively by epoch advances, so that an `Advance` reaches
    /// every worker's channel at one point in the sequence of sends: data sent before an advance
    /// lands in an earlier epoch than data sent after it, on every worker.
    advance_lock: RwLock<()>,
    /// Event-time watermarks of the sources, moved under the advance lock together with the data.
    watermarks: WatermarkTable,
}

/// A running set of timely workers.
pub struct Runtime {
    shared: Arc<Shared>,
    senders: Mutex<Option<Vec<Sender<Command>>>>,
    guards: Mutex<Option<timely::communication::WorkerGuards<()>>>,
    coordinator: Mutex<Option<JoinHandle<()>>>,
    next: AtomicUsize,
    workers: usize,
}

impl Runtime {
    /// Starts the workers and the epoch coordinator.
    pub fn start(config: RuntimeConfig) -> Result<Self> {
        let workers = config.workers.max(1);
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers).map(|_| crossbeam_channel::unbounded()).unzip();
        let receivers: Arc<Mutex<Vec<Option<Receiver<Command>>>>> =
            Arc::new(Mutex::new(receivers.into_iter().map(Some).collect()));
        let initial_epoch = config.initial_epoch.max(INITIAL_EPOCH);
        let checkpoints = config.checkpoints;
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(initial_epoch),
            dirty: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            threads: Mutex::new(vec![None; workers]),
            advance_lock: RwLock::new(()),
            watermarks: WatermarkTable::default(),
        });
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<()>(workers);
        let comm = if workers == 1 {
            timely::CommunicationConfig::Thread
        } else {
            timely::CommunicationConfig::Process(workers)
        };
        let (builders, other) = comm.try_build().map_err(DataflowError::Internal)?;
        let w_shared = shared.clone();
        let guards = timely::execute::execute_from(builders, other, WorkerConfig::default(), move |worker| {
            let index = worker.index();
            let rx = receivers.lock()[index].take();
            w_shared.threads.lock()[index] = Some(std::thread::current());
            let _ = ready_tx.send(());
            if let Some(rx) = rx {
                worker_loop(worker, rx, initial_epoch, checkpoints);
            }
        })
        .map_err(DataflowError::Internal)?;
        for _ in 0..workers {
            ready_rx
                .recv_timeout(Duration::from_secs(30))
                .map_err(|_| DataflowError::Internal("timely workers did not start".into()))?;
        }
        let rt = Self {
            shared: shared.clone(),
            senders: Mutex::new(Some(senders)),
            guards: Mutex::new(Some(guards)),
            coordinator: Mutex::new(None),
            next: AtomicUsize::new(0),
            workers,
        };
        let interval = config.epoch_interval;
        let c_senders = rt.senders.lock().clone().unwrap_or_default();
        let handle = std::thread::Builder::new()
            .name("laminar-epochs".into())
            .spawn(move || {
                while !shared.stop.load(Ordering::Acquire) {
                    std::thread::park_timeout(interval);
                    if shared.dirty.swap(false, Ordering::AcqRel) {
                        advance(&shared, &c_senders, None);
                    }
                }
            })
            .map_err(|e| DataflowError::Internal(e.to_string()))?;
        *rt.coordinator.lock() = Some(handle);
        Ok(rt)
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The epoch currently open for new data.
    pub fn current_epoch(&self) -> u64 {
        self.shared.epoch.load(Ordering::Acquire)
    }

    /// Asks the coordinator to close the open epoch at its next tick even if no data arrived
    /// since the last close (a writer waiting for its rows to be delivered needs that epoch to
    /// close).
    pub fn request_advance(&self) {
        self.shared.dirty.store(true, Ordering::Release);
    }

    fn with_senders<R>(&self, f: impl FnOnce(&[Sender<Command>]) -> R) -> Result<R> {
        let guard = self.senders.lock();
        let senders = guard.as_ref().ok_or(DataflowError::NotRunning)?;
        Ok(f(senders))
    }

    fn unpark(&self, worker: Option<usize>) {
        let threads = self.shared.threads.lock();
        match worker {
            Some(w) => {
                if let Some(Some(t)) = threads.get(w) {
                    t.unpark()
                }
            }
            None => threads.iter().flatten().for_each(|t| t.unpark()),
        }
    }

    /// Installs a dataflow on every worker.
    pub fn install(&self, req: InstallRequest) -> Result<()> {
        self.install_group(vec![req])
    }

    /// Installs several dataflows as one timely dataflow, in order: where a plan shares a
    /// subtree with an earlier one (a stream that reads a stream carries the other's plan), its
    /// operators are built once and feed both. Each request keeps its id (for
    /// [`Runtime::remove`] and checkpoints), output, counters and restored state; the requests
    /// must all backfill or all restore.
    pub fn install_group(&self, reqs: Vec<InstallRequest>) -> Result<()> {
        if reqs.is_empty() {
            return Ok(());
        }
        let reqs: Arc<[Arc<InstallRequest>]> = reqs.into_iter().map(Arc::new).collect();
        // Under the advance lock like data: every worker installs at the same epoch.
        self.with_senders(|s| {
            let _order = self.shared.advance_lock.read();
            s.iter().try_for_each(|tx| tx.send(Command::Install(reqs.clone())).map_err(|_| DataflowError::NotRunning))
        })??;
        self.unpark(None);
        Ok(())
    }

    /// Removes a dataflow: its inputs close and its operators finish. A member of a group
    /// ([`Runtime::install_group`]) stops reporting output; the group's operators run until
    /// its last member is removed.
    pub fn remove(&self, id: u64) -> Result<()> {
        self.with_senders(|s| s.iter().for_each(|tx| drop(tx.send(Command::Remove(id)))))?;
        self.unpark(None);
        Ok(())
    }

    /// Sends a batch of source data to one worker; it joins the currently open epoch.
    pub fn send(&self, source: &Arc<str>, batch: DiffBatch) -> Result<()> {
        self.send_with_watermark(source, batch, None)
    }

    /// Sends a batch and then moves the source's watermark to `watermark` (if given), atomically
    /// with respect to epoch closes: the epoch that holds the rows is the first whose recorded
    /// watermark may include them.
    pub fn send_with_watermark(&self, source: &Arc<str>, batch: DiffBatch, watermark: Option<i64>) -> Result<()> {
        let w = self.next.fetch_add(1, Ordering::Relaxed) % self.workers;
        // Lock order everywhere: senders, then advance_lock.
        self.with_senders(|s| {
            let _order = self.shared.advance_lock.read();
            s[w].send(Command::Data(source.clone(), batch)).map_err(|_| DataflowError::NotRunning)?;
            if let Some(ts) = watermark {
                self.shared.watermarks.advance(source, ts);
            }
            Ok::<_, DataflowError>(())
        })??;
        self.shared.dirty.store(true, Ordering::Release);
        self.unpark(Some(w));
        Ok(())
    }

    /// Moves a source's watermark forward without data (`Writer.watermark`, idle connectors);
    /// the open epoch is closed soon so that operators waiting on the watermark see it.
    pub fn advance_watermark(&self, source: &str, ts: i64) {
        let moved = {
            let _order = self.shared.advance_lock.read();
            self.shared.watermarks.advance(source, ts)
        };
        if moved {
            self.request_advance();
        }
    }

    /// The current watermark of `source` in the runtime (milliseconds of event time).
    pub fn watermark(&self, source: &str) -> i64 {
        self.shared.watermarks.get(source)
    }

    /// Closes the open epoch now; every batch sent before this call belongs to an epoch below the
    /// returned one.
    pub fn close_epoch(&self) -> Result<u64> {
        self.with_senders(|s| advance(&self.shared, s, None))
    }

    /// Closes the open epoch `E` and asks every stateful operator of the dataflows installed
    /// now for a snapshot as of `E` (delivered to `sink`). Returns `E`: every batch sent before
    /// this call belongs to it or an earlier epoch.
    /// `before(E)` runs first, while no epoch can close (to set up barriers downstream).
    pub fn checkpoint(&self, full: bool, sink: Arc<dyn SnapshotSink>, before: impl FnOnce(u64)) -> Result<u64> {
        self.with_senders(|s| {
            let _g = self.shared.advance_lock.write();
            let epoch = self.shared.epoch.load(Ordering::Acquire);
            before(epoch);
            let req = Arc::new(CheckpointRequest { epoch, full, sink });
            advance_locked(&self.shared, s, Some(req)) - 1
        })
    }

    /// Closes all inputs, lets every dataflow drain, and joins the workers.
    pub fn shutdown(&self) {
        // The coordinator holds sender clones: stop it first so the channels can close.
        self.shared.stop.store(true, Ordering::Release);
        if let Some(h) = self.coordinator.lock().take() {
            h.thread().unpark();
            drop(h.join());
        }
        let senders = self.senders.lock().take();
        if let Some(s) = &senders {
            advance(&self.shared, s, None);
        }
        drop(senders);
        self.unpark(None);
        if let Some(g) = self.guards.lock().take() {
            drop(g.join());
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn advance(shared: &Shared, senders: &[Sender<Command>], checkpoint: Option<Arc<CheckpointRequest>>) -> u64 {
    let _g = shared.advance_lock.write();
    advance_locked(shared, senders, checkpoint)
}

/// [`advance`] with the advance lock held by the caller.
fn advance_locked(shared: &Shared, senders: &[Sender<Command>], checkpoint: Option<Arc<CheckpointRequest>>) -> u64 {
    let next = shared.epoch.fetch_add(1, Ordering::AcqRel) + 1;
    let snapshot = shared.watermarks.snapshot();
    debug_assert!(checkpoint.as_ref().is_none_or(|r| r.epoch == next - 1));
    for tx in senders {
        let _ = tx.send(Command::Advance(next, snapshot.clone(), checkpoint.clone()));
    }
    for t in shared.threads.lock().iter().flatten() {
        t.unpark();
    }
    next
}

struct Installed {
    inputs: Vec<(String, Handle)>,
    watermarks: WatermarkFeed,
    checkpoints: CheckpointFeed,
    /// Per member id: set when it is removed, which silences its output.
    members: HashMap<u64, Arc<AtomicBool>>,
}

/// An output that stops reporting once its dataflow is removed from a group that goes on.
struct Detachable {
    sink: Arc<dyn EpochSink>,
    removed: Arc<AtomicBool>,
}

impl EpochSink for Detachable {
    fn report(&self, worker: usize, frontier: Option<u64>, ready: Vec<(u64, Vec<DiffBatch>)>) {
        if !self.removed.load(Ordering::Acquire) {
            self.sink.report(worker, frontier, ready);
        }
    }
}

fn worker_loop(worker: &mut timely::worker::Worker, rx: Receiver<Command>, initial_epoch: u64, checkpoints: bool) {
    let index = worker.index();
    // Every epoch change reaches this worker as an `Advance` command in its channel, which exists
    // since the runtime started: start from the initial epoch, not from the shared counter, which
    // may already count advances still queued behind earlier commands.
    let mut epoch = initial_epoch;
    // By the id of a group's first member; `group_of` maps the other members' ids to it.
    let mut installed: HashMap<u64, Installed> = HashMap::new();
    let mut group_of: HashMap<u64, u64> = HashMap::new();
    loop {
        let mut worked = false;
        let mut closed = false;
        for _ in 0..1024 {
            match rx.try_recv() {
                Ok(cmd) => {
                    worked = true;
                    match cmd {
                        Command::Data(source, batch) => {
                            for df in installed.values_mut() {
                                for (name, h) in df.inputs.iter_mut() {
                                    if name.as_str() == &*source {
                                        h.send(batch.clone());
                                    }
                                }
                            }
                        }
                        Command::Advance(e, snapshot, checkpoint) => {
                            if e > epoch {
                                for df in installed.values_mut() {
                                    // Before the frontier moves: an operator that sees epoch
                                    // `e - 1` complete finds its watermark (and checkpoint
                                    // request) queued.
                                    if !df.watermarks.is_empty() {
                                        df.watermarks.push(e - 1, &snapshot);
                                    }
                                    if let Some(req) = &checkpoint {
                                        df.checkpoints.push(req);
                                    }
                                    df.inputs.iter_mut().for_each(|(_, h)| h.advance_to(e));
                                }
                                epoch = e;
                            }
                        }
                        Command::Install(reqs) => {
                            let df = install(worker, &reqs, epoch, index, checkpoints);
                            let first = reqs[0].id;
                            for r in &reqs[1..] {
                                group_of.insert(r.id, first);
                            }
                            installed.insert(first, df);
                        }
                        Command::Remove(id) => {
                            let group = group_of.remove(&id).unwrap_or(id);
                            if let Some(df) = installed.get_mut(&group) {
                                if let Some(removed) = df.members.remove(&id) {
                                    removed.store(true, Ordering::Release);
                                }
                                if df.members.is_empty() {
                                    installed.remove(&group);
                                }
                            }
                        }
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            installed.clear();
            while worker.has_dataflows() {
                worker.step_or_park(Some(Duration::from_millis(10)));
            }
            return;
        }
        if worked {
            for df in installed.values_mut() {
                df.inputs.iter_mut().for_each(|(_, h)| h.flush());
            }
            worker.step();
        } else {
            worker.step_or_park(Some(Duration::from_millis(100)));
        }
    }
}

fn install(
    worker: &mut timely::worker::Worker,
    reqs: &[Arc<InstallRequest>],
    epoch: u64,
    index: usize,
    track_changes: bool,
) -> Installed {
    let mut inputs: Vec<(String, Handle)> = Vec::new();
    let watermarks = WatermarkFeed::default();
    let checkpoints = CheckpointFeed::default();
    let mut members = HashMap::new();
    let peers = worker.peers();
    worker.dataflow::<u64, _, _>(|scope| {
        let mut streams = HashMap::new();
        let names: BTreeSet<String> = reqs.iter().flat_map(|r| r.plan.sources()).collect();
        for name in names {
            let mut h: Handle = InputHandle::new();
            let s = scope.input_from(&mut h);
            streams.insert(name.clone(), s);
            inputs.push((name, h));
        }
        let mut built = Built::default();
        for req in reqs {
            let ctx = BuildContext {
                stats: req.stats.clone(),
                watermarks: watermarks.clone(),
                checkpoints: checkpoints.clone(),
                dataflow: req.id,
                worker: index,
                peers,
                restore: req.restore.clone(),
                next_ordinal: std::cell::Cell::new(0),
                track_changes,
            };
            let removed = Arc::new(AtomicBool::new(false));
            members.insert(req.id, removed.clone());
            if let Some(out) = build_plan(&req.plan, &streams, &ctx, &mut built) {
                out.capture_epochs(index, Arc::new(Detachable { sink: req.output.clone(), removed }));
            }
        }
    });
    for (_, h) in inputs.iter_mut() {
        h.advance_to(epoch);
    }
    if index == 0 {
        // Each source's existing contents once, however many members read it.
        let mut fed = BTreeSet::new();
        for req in reqs.iter().filter(|r| r.restore.is_none()) {
            for (source, batches) in &req.backfill {
                if !fed.insert(source.clone()) {
                    continue;
                }
                if let Some((_, h)) = inputs.iter_mut().find(|(n, _)| n == source) {
                    batches.iter().for_each(|b| h.send(b.clone()));
                }
            }
        }
    }
    Installed { inputs, watermarks, checkpoints, members }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::EpochMerger;
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};

    /// Data sent before `close_epoch` is delivered once that epoch completes, even when the
    /// commands reach a worker before its thread has started (a past race: workers read the
    /// shared epoch counter instead of replaying the queued advances).
    #[test]
    fn data_sent_before_close_epoch_belongs_to_an_earlier_epoch() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        for _ in 0..100 {
            let rt = Runtime::start(RuntimeConfig { workers: 2, ..Default::default() }).expect("start");
            let seen = Arc::new(Mutex::new(0usize));
            let s2 = seen.clone();
            let merger = Arc::new(EpochMerger::new(
                2,
                Box::new(move |_, batches| *s2.lock() += batches.iter().map(|b| b.num_rows()).sum::<usize>()),
            ));
            let plan = PlanNode::Source { name: "t".into(), schema: schema.clone(), append_only: true };
            rt.install(InstallRequest {
                id: 1,
                plan,
                output: merger.clone(),
                backfill: vec![],
                stats: Default::default(),
                restore: None,
            })
            .expect("install");
            let batch =
                RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).expect("b");
            rt.send(&Arc::from("t"), DiffBatch::inserts(batch)).expect("send");
            let e = rt.close_epoch().expect("close");
            assert!(merger.wait_delivered(e, Duration::from_secs(10)));
            assert_eq!(*seen.lock(), 3);
            rt.shutdown();
        }
    }
}
