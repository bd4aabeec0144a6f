//! The runtime: timely worker threads, the epoch coordinator, and the command channels through
//! which the engine installs dataflows and feeds source data.
//!
//! Epochs are the timely timestamps. Source data is sent to one worker (round robin) as a
//! command; a coordinator closes the current epoch every `epoch_interval` when data arrived,
//! by broadcasting `Advance` to every worker through the same FIFO channels, so all data sent
//! before a close belongs to an earlier epoch on every worker.
//!
//! With [`RuntimeConfig::cluster`] the workers of several processes form one timely cluster;
//! process 0's coordinator then closes the epochs of all of them (see [`crate::cluster`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use parking_lot::{Mutex, RwLock};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::Input;
use timely::dataflow::InputHandle;
use timely::WorkerConfig;

use crate::batch::DiffBatch;
use crate::build::{build_plan, BuildContext, Built};
use crate::checkpoint::{CheckpointFeed, CheckpointRequest, RestoreState, SnapshotSink};
use crate::cluster::{
    build_allocators, build_control, connect_peers, from_wire, to_wire, watch, ClusterConfig, ClusterStart,
    ClusterState, Control, ControlInput, PendingCheckpoint,
};
use crate::error::{DataflowError, Result};
use crate::operators::capture::{CaptureExt, EpochSink, GatherExt};
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
    /// Run as one process of a cluster (`workers` threads in each process); `None`: alone.
    pub cluster: Option<ClusterConfig>,
    /// The checkpoint this run restores (its epoch), if any. In a cluster the leader's counts:
    /// it tells every follower which checkpoint to restore and the first epoch
    /// ([`Runtime::restored`]).
    pub restored: Option<u64>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            workers: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            epoch_interval: Duration::from_millis(1),
            initial_epoch: INITIAL_EPOCH,
            checkpoints: true,
            cluster: None,
            restored: None,
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
    /// In a cluster: each process's output gets what its own workers computed (a sink that
    /// every process writes) instead of the whole result on process 0.
    pub per_process: bool,
}

enum Command {
    Install(Arc<[Arc<InstallRequest>]>),
    Remove(u64),
    Data(Arc<str>, DiffBatch),
    /// Opens epoch `.0`; `.1` holds the watermarks at the close of the epoch before it; `.2`
    /// asks for a checkpoint of that epoch.
    Advance(u64, Arc<WatermarkSnapshot>, Option<Arc<CheckpointRequest>>),
    /// Messages for other processes' coordinators (sent by this process's first worker).
    Control(Vec<(u64, Control)>),
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
    /// Set when this process is one of a cluster.
    cluster: Option<Arc<ClusterState>>,
}

impl Shared {
    /// This process is a follower of a cluster: its epochs are closed by process 0.
    fn follower(&self) -> Option<&Arc<ClusterState>> {
        self.cluster.as_ref().filter(|c| !c.is_leader())
    }
}

/// A running set of timely workers.
pub struct Runtime {
    shared: Arc<Shared>,
    senders: Mutex<Option<Vec<Sender<Command>>>>,
    guards: Mutex<Option<timely::communication::WorkerGuards<()>>>,
    coordinator: Mutex<Option<JoinHandle<()>>>,
    next: AtomicUsize,
    workers: usize,
    restored: Option<u64>,
    clock_ms: Option<i64>,
}

impl Runtime {
    /// Starts the workers and the epoch coordinator.
    pub fn start(config: RuntimeConfig) -> Result<Self> {
        let workers = config.workers.max(1);
        if let Some(c) = &config.cluster {
            c.validate().map_err(DataflowError::Cluster)?;
        }
        let cluster = config.cluster.as_ref().map(|c| Arc::new(ClusterState::new(c, workers)));
        if let Some(c) = &cluster {
            watch(c);
        }
        let process = config.cluster.as_ref().map_or(0, |c| c.process);
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers).map(|_| crossbeam_channel::unbounded()).unzip();
        let receivers: Arc<Mutex<Vec<Option<Receiver<Command>>>>> =
            Arc::new(Mutex::new(receivers.into_iter().map(Some).collect()));
        let clock_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let own_start =
            ClusterStart { epoch: config.initial_epoch.max(INITIAL_EPOCH), restored: config.restored, clock_ms };
        // Connect first: a follower starts where the leader says.
        let (comm, start) = match &config.cluster {
            Some(c) => {
                let (sockets, start) = connect_peers(c, workers, own_start)?;
                (Some(build_allocators(sockets, c.process, workers)?), start)
            }
            None => (None, own_start),
        };
        let initial_epoch = start.epoch.max(INITIAL_EPOCH);
        let checkpoints = config.checkpoints;
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(initial_epoch),
            dirty: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            threads: Mutex::new(vec![None; workers]),
            advance_lock: RwLock::new(()),
            watermarks: WatermarkTable::default(),
            cluster: cluster.clone(),
        });
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<()>(workers);
        let (builders, other) = match comm {
            Some(built) => built,
            None if workers == 1 => timely::CommunicationConfig::Thread.try_build().map_err(DataflowError::Internal)?,
            None => timely::CommunicationConfig::Process(workers).try_build().map_err(DataflowError::Internal)?,
        };
        let w_shared = shared.clone();
        let guards = timely::execute::execute_from(builders, other, WorkerConfig::default(), move |worker| {
            // Timely numbers the workers of all processes; channels and threads are per process.
            let local = worker.index() - process * workers;
            let rx = receivers.lock()[local].take();
            w_shared.threads.lock()[local] = Some(std::thread::current());
            // Before any other dataflow, in the same order on every worker of every process.
            let control = w_shared.cluster.clone().map(|c| build_control(worker, c));
            let _ = ready_tx.send(());
            if let Some(rx) = rx {
                let cluster = w_shared.cluster.clone();
                let setup = WorkerSetup { local, initial_epoch, checkpoints, gather: control.is_some(), cluster };
                worker_loop(worker, rx, setup, control);
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
            restored: start.restored,
            clock_ms: config.cluster.is_some().then_some(start.clock_ms),
        };
        let interval = config.epoch_interval;
        let c_senders = rt.senders.lock().clone().unwrap_or_default();
        let handle = std::thread::Builder::new()
            .name("laminar-epochs".into())
            .spawn(move || {
                if let Some(c) = &shared.cluster {
                    *c.coordinator.lock() = Some(std::thread::current());
                }
                while !shared.stop.load(Ordering::Acquire) {
                    std::thread::park_timeout(interval);
                    coordinate(&shared, &c_senders);
                }
            })
            .map_err(|e| DataflowError::Internal(e.to_string()))?;
        *rt.coordinator.lock() = Some(handle);
        Ok(rt)
    }

    /// Number of workers (of this process).
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// This process's index in its cluster and the number of processes (`(0, 1)` alone).
    pub fn process(&self) -> (usize, usize) {
        self.shared.cluster.as_ref().map_or((0, 1), |c| (c.process, c.processes))
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
    /// returned one. A follower of a cluster asks the leader and waits for it.
    pub fn close_epoch(&self) -> Result<u64> {
        if let Some(c) = self.shared.follower() {
            let open = self.current_epoch();
            let deadline = Instant::now() + FOLLOW_TIMEOUT;
            self.request_advance();
            if let Some(t) = c.coordinator.lock().as_ref() {
                t.unpark();
            }
            loop {
                self.with_senders(|_| ())?;
                c.check()?;
                let now = self.current_epoch();
                if now > open {
                    return Ok(now);
                }
                if Instant::now() > deadline {
                    return Err(DataflowError::Cluster(format!(
                        "process 0 did not close epoch {open} within {FOLLOW_TIMEOUT:?}"
                    )));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        self.with_senders(|s| advance(&self.shared, s, None))
    }

    /// Waits until every process of the cluster has called `barrier` as many times as this one
    /// (at once when alone). Rows a process sent before its call, and flushed, are then in
    /// epochs below the leader's open epoch. Fails after `timeout`.
    pub fn barrier(&self, timeout: Duration) -> Result<()> {
        let Some(c) = self.shared.cluster.clone() else { return Ok(()) };
        let seq = c.barriers.fetch_add(1, Ordering::AcqRel) + 1;
        self.with_senders(|s| {
            if c.is_leader() {
                arrive(&c, s, seq);
            } else if let Some(tx) = s.first() {
                let _ = tx.send(Command::Control(vec![(0, Control::Arrived { process: c.process, seq })]));
            }
        })?;
        self.unpark(Some(0));
        let deadline = Instant::now() + timeout;
        while c.released.load(Ordering::Acquire) < seq {
            self.with_senders(|_| ())?;
            c.check()?;
            if Instant::now() > deadline {
                return Err(DataflowError::Cluster(format!(
                    "process {}: not every process reached barrier {seq} within {timeout:?}",
                    c.process
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Closes the open epoch `E` and asks every stateful operator of the dataflows installed
    /// now for a snapshot as of `E` (delivered to `sink`). Returns `E`: every batch sent before
    /// this call belongs to it or an earlier epoch.
    /// `before(E)` runs first, while no epoch can close (to set up barriers downstream).
    ///
    /// The leader of a cluster first asks every follower to get ready (each stops sending data
    /// and answers); `E` is then the same cut on every process, and each follower's operators
    /// snapshot into the sink it gave [`Runtime::follow_checkpoint`]. The leader then waits for
    /// the followers' parts with [`Runtime::cluster_saved`] and ends the checkpoint with
    /// [`Runtime::cluster_finish`]. A follower cannot start a checkpoint.
    pub fn checkpoint(&self, full: bool, sink: Arc<dyn SnapshotSink>, before: impl FnOnce(u64)) -> Result<u64> {
        let id = match &self.shared.cluster {
            None => None,
            Some(c) if !c.is_leader() => {
                return Err(DataflowError::Cluster(format!(
                    "process {}: the checkpoints of a cluster are taken by process 0",
                    c.process
                )))
            }
            Some(c) => Some(self.prepare_followers(c, full)?),
        };
        self.with_senders(|s| {
            let _g = self.shared.advance_lock.write();
            let epoch = self.shared.epoch.load(Ordering::Acquire);
            before(epoch);
            if let (Some(c), Some(id)) = (&self.shared.cluster, id) {
                c.update_checkpoints(|k| {
                    k.ids.insert(epoch, id);
                });
            }
            let req = Arc::new(CheckpointRequest { epoch, full, sink });
            advance_locked(&self.shared, s, Some(req)) - 1
        })
    }

    /// The leader: asks every follower to get ready for a new checkpoint; returns its id once
    /// all are, or fails (and abandons it) when one cannot or does not answer in time.
    fn prepare_followers(&self, c: &Arc<ClusterState>, full: bool) -> Result<u64> {
        let mut id = 0;
        c.update_checkpoints(|k| {
            k.last_id += 1;
            id = k.last_id;
            // Late answers about earlier checkpoints are of no use any more.
            k.ready.retain(|&i, _| i >= id);
            k.saved.retain(|&i, _| i >= id);
        });
        let msgs = c.followers().map(|p| (c.first_worker_of(p), Control::Prepare { id, full })).collect();
        self.send_control(msgs)?;
        let followers = c.processes - 1;
        let answers =
            c.wait_checkpoints(CHECKPOINT_PREPARE_TIMEOUT, "every process getting ready for a checkpoint", |k| {
                k.ready.get(&id).filter(|r| r.len() >= followers)?;
                k.ready.remove(&id)
            });
        let failed = match answers {
            Ok(answers) => refusals(&answers),
            Err(e) => vec![e.to_string()],
        };
        if failed.is_empty() {
            return Ok(id);
        }
        // (The refusal is the error to report, even if telling the followers fails too.)
        let _ = self.finish_followers(id, false, 0);
        Err(DataflowError::Cluster(format!("checkpoint abandoned: {}", failed.join("; "))))
    }

    /// The leader: waits until every follower's part of the checkpoint of `epoch` is durable.
    pub fn cluster_saved(&self, epoch: u64, timeout: Duration) -> Result<()> {
        let Some(c) = self.shared.cluster.as_ref().filter(|c| c.is_leader()) else { return Ok(()) };
        let id = c.checkpoints.lock().ids.get(&epoch).copied().ok_or_else(|| {
            DataflowError::Cluster(format!("no checkpoint of the cluster was taken as of epoch {epoch}"))
        })?;
        let followers = c.processes - 1;
        let answers = c.wait_checkpoints(timeout, "every process saving its part of the checkpoint", |k| {
            k.saved.get(&id).filter(|r| r.len() >= followers)?;
            k.saved.remove(&id)
        })?;
        let failed = refusals(&answers);
        if failed.is_empty() {
            Ok(())
        } else {
            Err(DataflowError::Cluster(format!("checkpoint of epoch {epoch}: {}", failed.join("; "))))
        }
    }

    /// The leader: ends the checkpoint of `epoch` on every follower: `committed` (the leader's
    /// own part is durable too: it is the cluster's newest) or abandoned. Checkpoints older than
    /// `keep_from` are no longer needed.
    pub fn cluster_finish(&self, epoch: u64, committed: bool, keep_from: u64) -> Result<()> {
        let Some(c) = self.shared.cluster.as_ref().filter(|c| c.is_leader()) else { return Ok(()) };
        let mut id = None;
        c.update_checkpoints(|k| {
            id = k.ids.remove(&epoch);
            if let Some(id) = id {
                k.saved.remove(&id);
            }
        });
        match id {
            Some(id) => self.finish_followers(id, committed, keep_from),
            None => Ok(()),
        }
    }

    fn finish_followers(&self, id: u64, committed: bool, keep_from: u64) -> Result<()> {
        let Some(c) = self.shared.cluster.as_ref() else { return Ok(()) };
        let msgs =
            c.followers().map(|p| (c.first_worker_of(p), Control::Finished { id, committed, keep_from })).collect();
        self.send_control(msgs)
    }

    /// A follower: the checkpoints the leader asks for, `(id, full)`, in order. Each must be
    /// answered, with [`Runtime::follow_checkpoint`] or [`Runtime::refuse_checkpoint`].
    pub fn checkpoint_requests(&self) -> Option<Receiver<(u64, bool)>> {
        self.shared.follower().map(|c| c.requests.1.clone())
    }

    /// A follower: tells the leader it is ready for checkpoint `id` (the caller sends no data
    /// until this returns) and waits for the epoch closed for it, `E`; `before(E)` runs then,
    /// and this process's operators snapshot into `sink`. Fails when the leader abandons the
    /// checkpoint or does not take it within `timeout`.
    pub fn follow_checkpoint(
        &self,
        id: u64,
        full: bool,
        sink: Arc<dyn SnapshotSink>,
        before: Box<dyn FnOnce(u64) + Send>,
        timeout: Duration,
    ) -> Result<u64> {
        let Some(c) = self.shared.follower().cloned() else {
            return Err(DataflowError::Cluster("only a cluster's follower follows a checkpoint".into()));
        };
        c.update_checkpoints(|k| {
            k.pending = Some(PendingCheckpoint { id, full, sink, before });
            // Verdicts and epochs of earlier checkpoints nobody waits for any more.
            k.finished.retain(|&i, _| i >= id);
            k.applied.retain(|&i, _| i >= id);
        });
        self.send_control(vec![(0, Control::Ready { process: c.process, id, error: None })])?;
        let taken = c.wait_checkpoints(timeout, "the checkpoint's epoch closing", |k| {
            if let Some(epoch) = k.applied.remove(&id) {
                return Some(Ok(epoch));
            }
            k.finished.get(&id).map(|_| Err(()))
        });
        match taken {
            Ok(Ok(epoch)) => Ok(epoch),
            other => {
                c.update_checkpoints(|k| {
                    if k.pending.as_ref().is_some_and(|p| p.id == id) {
                        k.pending = None;
                    }
                });
                Err(match other {
                    Err(e) => e,
                    _ => DataflowError::Cluster(format!("process 0 abandoned checkpoint {id}")),
                })
            }
        }
    }

    /// A follower: tells the leader it cannot take checkpoint `id`, and why.
    pub fn refuse_checkpoint(&self, id: u64, error: String) -> Result<()> {
        let Some(c) = self.shared.follower() else { return Ok(()) };
        self.send_control(vec![(0, Control::Ready { process: c.process, id, error: Some(error) })])
    }

    /// A follower: its part of checkpoint `id` is durable (`None`) or failed.
    pub fn checkpoint_saved(&self, id: u64, error: Option<String>) -> Result<()> {
        let Some(c) = self.shared.follower() else { return Ok(()) };
        self.send_control(vec![(0, Control::Saved { process: c.process, id, error })])
    }

    /// A follower: waits for the leader's verdict on checkpoint `id`: `(committed, keep_from)`.
    pub fn checkpoint_finished(&self, id: u64, timeout: Duration) -> Result<(bool, u64)> {
        let Some(c) = self.shared.follower() else { return Ok((true, 0)) };
        c.wait_checkpoints(timeout, "process 0 ending the checkpoint", |k| k.finished.remove(&id))
    }

    /// This process gives up on its cluster (it failed to start, say): waits for other
    /// processes fail at once from now on, and shutting down does not wait for them. The
    /// others learn of it when this process's connections close.
    pub fn abandon_cluster(&self, why: &str) {
        if let Some(c) = &self.shared.cluster {
            c.fail(why);
        }
    }

    /// Why this process's cluster cannot go on (a peer process went away), if it cannot.
    pub fn cluster_failure(&self) -> Option<String> {
        self.shared.cluster.as_ref().and_then(|c| c.failure())
    }

    /// A cluster's common start time: the leader's wall clock when the run began (ms since the
    /// Unix epoch). `None` alone.
    pub fn cluster_clock_ms(&self) -> Option<i64> {
        self.clock_ms
    }

    /// The checkpoint this run restores: in a cluster, the one the leader chose.
    pub fn restored(&self) -> Option<u64> {
        self.restored
    }

    /// Sends control messages to other processes through this process's first worker.
    fn send_control(&self, msgs: Vec<(u64, Control)>) -> Result<()> {
        self.with_senders(|s| s.first().map(|tx| tx.send(Command::Control(msgs)).is_ok()))?
            .filter(|&sent| sent)
            .ok_or(DataflowError::NotRunning)?;
        self.unpark(Some(0));
        Ok(())
    }

    /// Closes all inputs, lets every dataflow drain, and joins the workers (a cluster that lost
    /// a process: stops them without draining, and does not wait for timely's threads).
    pub fn shutdown(&self) {
        // The coordinator holds sender clones: stop it first so the channels can close.
        self.shared.stop.store(true, Ordering::Release);
        if let Some(h) = self.coordinator.lock().take() {
            h.thread().unpark();
            drop(h.join());
        }
        let senders = self.senders.lock().take();
        if let (Some(s), None) = (&senders, self.shared.follower()) {
            advance(&self.shared, s, None);
        }
        drop(senders);
        self.unpark(None);
        if let Some(g) = self.guards.lock().take() {
            if self.cluster_failure().is_some() {
                // Timely's guard of its communication threads panics when it joins the ones a
                // lost connection stopped; the workers have returned (or stopped) already.
                std::mem::forget(g);
            } else {
                // A connection lost while joining makes that guard panic here.
                let joined = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(g.join())));
                if joined.is_err() {
                    if let Some(c) = &self.shared.cluster {
                        c.fail("lost a connection while shutting down");
                    }
                }
            }
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How long a follower waits for the leader to close an epoch it asked for.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the leader waits for every follower to get ready for a checkpoint.
const CHECKPOINT_PREPARE_TIMEOUT: Duration = Duration::from_secs(120);

/// The failures among followers' answers, as "process P: why".
fn refusals(answers: &[(usize, Option<String>)]) -> Vec<String> {
    answers.iter().filter_map(|(p, e)| e.as_ref().map(|e| format!("process {p}: {e}"))).collect()
}

/// One tick of the epoch coordinator.
fn coordinate(shared: &Shared, senders: &[Sender<Command>]) {
    match &shared.cluster {
        None => {
            if shared.dirty.swap(false, Ordering::AcqRel) {
                advance(shared, senders, None);
            }
        }
        Some(c) if c.is_leader() => {
            for m in c.take_inbox() {
                match m {
                    Control::Report { process, watermarks, advance } => c.record(process, &watermarks, advance),
                    Control::Arrived { seq, .. } => arrive(c, senders, seq),
                    Control::Ready { process, id, error } => {
                        c.update_checkpoints(|k| k.ready.entry(id).or_default().push((process, error)))
                    }
                    Control::Saved { process, id, error } => {
                        c.update_checkpoints(|k| k.saved.entry(id).or_default().push((process, error)))
                    }
                    Control::Advance { .. }
                    | Control::Release { .. }
                    | Control::Prepare { .. }
                    | Control::Finished { .. } => {}
                }
            }
            let local = shared.dirty.swap(false, Ordering::AcqRel);
            if c.remote_dirty.swap(false, Ordering::AcqRel) | local {
                advance(shared, senders, None);
            }
        }
        Some(c) => {
            for m in c.take_inbox() {
                match m {
                    Control::Advance { epoch, watermarks, checkpoint } => {
                        follow(shared, c, senders, epoch, Arc::new(from_wire(&watermarks)), checkpoint);
                    }
                    Control::Release { seq } => {
                        c.released.fetch_max(seq, Ordering::AcqRel);
                    }
                    Control::Prepare { id, full } => {
                        let _ = c.requests.0.send((id, full));
                    }
                    Control::Finished { id, committed, keep_from } => c.update_checkpoints(|k| {
                        if k.pending.as_ref().is_some_and(|p| p.id == id) {
                            k.pending = None;
                        }
                        k.finished.insert(id, (committed, keep_from));
                    }),
                    Control::Report { .. }
                    | Control::Arrived { .. }
                    | Control::Ready { .. }
                    | Control::Saved { .. } => {}
                }
            }
            if shared.dirty.swap(false, Ordering::AcqRel) {
                let watermarks = to_wire(&shared.watermarks.snapshot());
                let report = Control::Report { process: c.process, watermarks, advance: true };
                if let Some(tx) = senders.first() {
                    let _ = tx.send(Command::Control(vec![(0, report)]));
                }
                if let Some(Some(t)) = shared.threads.lock().first() {
                    t.unpark();
                }
            }
        }
    }
}

/// The leader: a process reached barrier `seq`; the last one releases it on every process.
fn arrive(c: &ClusterState, senders: &[Sender<Command>], seq: u64) {
    if c.arrive(seq) {
        let msgs = (1..c.processes).map(|p| (c.first_worker_of(p), Control::Release { seq })).collect();
        if let Some(tx) = senders.first() {
            let _ = tx.send(Command::Control(msgs));
        }
    }
}

/// A follower opens `epoch` as the leader did, with the cluster's watermarks; with
/// `checkpoint`, this process's part of that checkpoint is taken as of `epoch - 1`.
fn follow(
    shared: &Shared,
    c: &ClusterState,
    senders: &[Sender<Command>],
    epoch: u64,
    snapshot: Arc<WatermarkSnapshot>,
    checkpoint: Option<u64>,
) {
    let _g = shared.advance_lock.write();
    if epoch <= shared.epoch.load(Ordering::Acquire) {
        return;
    }
    shared.epoch.store(epoch, Ordering::Release);
    let mut req = None;
    if let Some(id) = checkpoint {
        let pending = {
            let mut k = c.checkpoints.lock();
            k.pending.take_if(|p| p.id == id)
        };
        // Without a pending part (this process gave up waiting) the leader learns of it when
        // this process's part is never saved.
        if let Some(p) = pending {
            (p.before)(epoch - 1);
            req = Some(Arc::new(CheckpointRequest { epoch: epoch - 1, full: p.full, sink: p.sink }));
            c.update_checkpoints(|k| {
                k.applied.insert(id, epoch - 1);
            });
        }
    }
    for tx in senders {
        let _ = tx.send(Command::Advance(epoch, snapshot.clone(), req.clone()));
    }
    for t in shared.threads.lock().iter().flatten() {
        t.unpark();
    }
}

fn advance(shared: &Shared, senders: &[Sender<Command>], checkpoint: Option<Arc<CheckpointRequest>>) -> u64 {
    let _g = shared.advance_lock.write();
    advance_locked(shared, senders, checkpoint)
}

/// [`advance`] with the advance lock held by the caller.
fn advance_locked(shared: &Shared, senders: &[Sender<Command>], checkpoint: Option<Arc<CheckpointRequest>>) -> u64 {
    let next = shared.epoch.fetch_add(1, Ordering::AcqRel) + 1;
    let snapshot = match &shared.cluster {
        Some(c) => Arc::new(c.combined(&shared.watermarks.snapshot())),
        None => shared.watermarks.snapshot(),
    };
    debug_assert!(checkpoint.as_ref().is_none_or(|r| r.epoch == next - 1));
    for tx in senders {
        let _ = tx.send(Command::Advance(next, snapshot.clone(), checkpoint.clone()));
    }
    // The leader of a cluster: every follower opens the same epoch with the same watermarks.
    if let (Some(c), Some(tx)) = (&shared.cluster, senders.first()) {
        let id = checkpoint.as_ref().and_then(|r| c.checkpoints.lock().ids.get(&r.epoch).copied());
        let msgs: Vec<_> =
            c.followers().map(|p| (c.first_worker_of(p), Control::advance(next, &snapshot, id))).collect();
        let _ = tx.send(Command::Control(msgs));
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

/// What a worker thread is told at start.
struct WorkerSetup {
    /// Its index among this process's workers.
    local: usize,
    initial_epoch: u64,
    /// Checkpoints can be asked for.
    checkpoints: bool,
    /// Gather each dataflow's output on worker 0 (a cluster).
    gather: bool,
    /// The cluster this worker's process is part of.
    cluster: Option<Arc<ClusterState>>,
}

fn worker_loop(
    worker: &mut timely::worker::Worker,
    rx: Receiver<Command>,
    setup: WorkerSetup,
    mut control: Option<ControlInput>,
) {
    let initial_epoch = setup.initial_epoch;
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
                            let df = install(worker, &reqs, epoch, &setup);
                            let first = reqs[0].id;
                            for r in &reqs[1..] {
                                group_of.insert(r.id, first);
                            }
                            installed.insert(first, df);
                        }
                        Command::Control(msgs) => {
                            if let Some(c) = control.as_mut() {
                                msgs.into_iter().for_each(|m| c.send(m));
                                // Exchanged messages leave this worker when its input moves on.
                                let next = *c.time() + 1;
                                c.advance_to(next);
                            }
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
            drop(control.take());
            // A cluster that lost a process never completes its dataflows: stop at once.
            let lost = || setup.cluster.as_ref().is_some_and(|c| c.failure().is_some());
            while worker.has_dataflows() && !lost() {
                worker.step_or_park(Some(Duration::from_millis(10)));
            }
            return;
        }
        if worked {
            for df in installed.values_mut() {
                df.inputs.iter_mut().for_each(|(_, h)| h.flush());
            }
            if let Some(c) = control.as_mut() {
                c.flush();
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
    setup: &WorkerSetup,
) -> Installed {
    let index = worker.index();
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
                track_changes: setup.checkpoints,
            };
            let removed = Arc::new(AtomicBool::new(false));
            members.insert(req.id, removed.clone());
            if let Some(out) = build_plan(&req.plan, &streams, &ctx, &mut built) {
                let out = if setup.gather && !req.per_process { out.gather_to_first() } else { out };
                out.capture_epochs(setup.local, Arc::new(Detachable { sink: req.output.clone(), removed }));
            }
        }
    });
    for (_, h) in inputs.iter_mut() {
        h.advance_to(epoch);
    }
    if setup.local == 0 {
        // Each source's existing contents once, however many members read it (in a cluster,
        // each process's own part).
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
    use arrow::array::AsArray;
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};

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
            rt.install(plain(1, plan, merger.clone())).expect("install");
            let batch =
                RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).expect("b");
            rt.send(&Arc::from("t"), DiffBatch::inserts(batch)).expect("send");
            let e = rt.close_epoch().expect("close");
            assert!(merger.wait_delivered(e, Duration::from_secs(10)));
            assert_eq!(*seen.lock(), 3);
            rt.shutdown();
        }
    }

    /// A free loopback port for a test cluster.
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
    }

    /// A request to install `plan` as dataflow `id` reporting to `output`, with nothing to
    /// backfill or restore.
    fn plain(id: u64, plan: PlanNode, output: Arc<dyn EpochSink>) -> InstallRequest {
        InstallRequest {
            id,
            plan,
            output,
            backfill: vec![],
            stats: Default::default(),
            restore: None,
            per_process: false,
        }
    }

    /// `SELECT k, COUNT(*) FROM t GROUP BY k`: the schema of `t` and the plan.
    fn count_by_key() -> (SchemaRef, PlanNode) {
        use crate::plan::testing::Columns;
        use crate::plan::{AggKind, AggSpec, AggregatePlan};
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        let out =
            Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true), Field::new("n", DataType::Int64, true)]));
        let plan = PlanNode::Aggregate {
            input: Box::new(PlanNode::Source { name: "t".into(), schema: schema.clone(), append_only: true }),
            plan: Arc::new(AggregatePlan {
                keys: Arc::new(Columns(vec![0], schema.clone())),
                aggs: vec![AggSpec { kind: AggKind::CountStar, arg: None, output_type: DataType::Int64 }],
                output_schema: out,
                input_append_only: true,
            }),
        };
        (schema, plan)
    }

    /// `n` runtimes of 2 workers joined as a cluster over loopback in this test process; the
    /// leader's start settings are taken from `leader`.
    fn start_cluster(n: usize, leader: RuntimeConfig) -> Vec<Runtime> {
        let addresses: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        // Start blocks until every process is connected: start them side by side.
        let starts: Vec<_> = (0..n)
            .map(|p| {
                let cluster = Some(ClusterConfig::new(p, addresses.clone()));
                let base = if p == 0 { leader.clone() } else { RuntimeConfig::default() };
                std::thread::spawn(move || Runtime::start(RuntimeConfig { workers: 2, cluster, ..base }))
            })
            .collect();
        starts.into_iter().map(|h| h.join().expect("thread").expect("start")).collect()
    }

    /// Shuts runtimes down side by side (shutting down waits for every process).
    fn stop_cluster(rts: Vec<Runtime>) {
        let stops: Vec<_> = rts.into_iter().map(|rt| std::thread::spawn(move || rt.shutdown())).collect();
        stops.into_iter().for_each(|h| h.join().expect("shutdown"));
    }

    /// Snapshots delivered to a test sink: (dataflow, operator, worker, epoch).
    #[derive(Default)]
    struct Snapshots(Mutex<Vec<(u64, u32, usize, u64)>>);

    impl SnapshotSink for Snapshots {
        fn deliver(&self, dataflow: u64, operator: u32, worker: usize, epoch: u64, _state: Vec<u8>) {
            self.0.lock().push((dataflow, operator, worker, epoch));
        }
    }

    /// A checkpoint of a cluster: the leader names the restored checkpoint and first epoch to
    /// the follower; a checkpoint asked of the leader is prepared by the follower, taken by
    /// both at the same epoch (each process's workers snapshot into its own sink), saved,
    /// finished; one the follower refuses fails on the leader, naming it.
    #[test]
    fn a_cluster_checkpoint_is_taken_at_one_epoch_by_every_process() {
        let leader = RuntimeConfig { initial_epoch: 50, restored: Some(49), ..Default::default() };
        let rts = Arc::new(start_cluster(2, leader));
        assert_eq!(rts[1].restored(), Some(49), "the follower restores what the leader restores");
        assert_eq!(rts[1].current_epoch(), 50, "and starts where it starts");
        let (schema, plan) = count_by_key();
        for rt in rts.iter() {
            let merger = Arc::new(EpochMerger::new(2, Box::new(|_, _| {})));
            rt.install(plain(7, plan.clone(), merger)).expect("install");
        }
        let follower_sink = Arc::new(Snapshots::default());
        let (f_rts, f_sink) = (rts.clone(), follower_sink.clone());
        let follower = std::thread::spawn(move || {
            let rt = &f_rts[1];
            let requests = rt.checkpoint_requests().expect("a follower gets requests");
            // The first checkpoint: taken, saved, committed.
            let (id, full) = requests.recv_timeout(Duration::from_secs(20)).expect("asked");
            let before_epoch = Arc::new(AtomicU64::new(0));
            let b = before_epoch.clone();
            let before = Box::new(move |e: u64| b.store(e, Ordering::Release));
            let epoch = rt.follow_checkpoint(id, full, f_sink, before, Duration::from_secs(20)).expect("taken");
            assert_eq!(before_epoch.load(Ordering::Acquire), epoch);
            rt.checkpoint_saved(id, None).expect("saved");
            let verdict = rt.checkpoint_finished(id, Duration::from_secs(20)).expect("finished");
            // The second one: refused.
            let (id2, _) = requests.recv_timeout(Duration::from_secs(20)).expect("asked again");
            rt.refuse_checkpoint(id2, "no room".into()).expect("refuse");
            (epoch, verdict)
        });
        for (p, rt) in rts.iter().enumerate() {
            let keys: Vec<i64> = (0..100).filter(|i| i % 2 == p as i64).collect();
            let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(keys))]).expect("b");
            rt.send(&Arc::from("t"), DiffBatch::inserts(batch)).expect("send");
        }
        rts[1].close_epoch().expect("follower close");
        let leader_sink = Arc::new(Snapshots::default());
        let mut marked = None;
        let epoch = rts[0].checkpoint(true, leader_sink.clone(), |e| marked = Some(e)).expect("checkpoint");
        assert_eq!(marked, Some(epoch));
        assert!(epoch >= 50);
        // Every worker of both processes snapshots the one stateful operator at that epoch.
        let deadline = Instant::now() + Duration::from_secs(20);
        while (leader_sink.0.lock().len() < 2 || follower_sink.0.lock().len() < 2) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut leader_got = leader_sink.0.lock().clone();
        let mut follower_got = follower_sink.0.lock().clone();
        leader_got.sort_unstable();
        follower_got.sort_unstable();
        assert_eq!(leader_got, vec![(7, 0, 0, epoch), (7, 0, 1, epoch)]);
        assert_eq!(follower_got, vec![(7, 0, 2, epoch), (7, 0, 3, epoch)]);
        rts[0].cluster_saved(epoch, Duration::from_secs(20)).expect("the follower saved its part");
        rts[0].cluster_finish(epoch, true, 42).expect("finish");
        let second = rts[0].checkpoint(false, leader_sink.clone(), |_| {});
        let (follower_epoch, verdict) = follower.join().expect("follower");
        assert_eq!(follower_epoch, epoch, "one epoch on both processes");
        assert_eq!(verdict, (true, 42));
        let msg = second.expect_err("a refused checkpoint fails").to_string();
        assert!(msg.contains("process 1: no room"), "{msg}");
        let rts = Arc::into_inner(rts).expect("one owner");
        stop_cluster(rts);
    }

    /// Two runtimes joined as a cluster (two processes' worth of workers in this test process,
    /// over real loopback connections): each counts rows by key over its own half of the input;
    /// the counts gathered on process 0 are those of the whole input, the follower's output has
    /// its epochs but no rows, and both see the same epochs.
    #[test]
    fn a_cluster_counts_over_every_process_and_gathers_on_the_first() {
        let (schema, plan) = count_by_key();
        let rts = start_cluster(2, RuntimeConfig::default());
        assert_eq!(rts[1].process(), (1, 2));
        type Counts = Arc<Mutex<std::collections::BTreeMap<(i64, i64), i64>>>;
        let mut results: Vec<Counts> = Vec::new();
        let mut mergers = Vec::new();
        for rt in &rts {
            let counts: Counts = Arc::default();
            let c2 = counts.clone();
            let merger = Arc::new(EpochMerger::new(
                2,
                Box::new(move |_, batches| {
                    let mut c = c2.lock();
                    for b in batches {
                        let k = b.data.column(0).as_primitive::<Int64Type>();
                        let n = b.data.column(1).as_primitive::<Int64Type>();
                        for i in 0..b.num_rows() {
                            *c.entry((k.value(i), n.value(i))).or_default() += b.diff(i);
                        }
                    }
                    c.retain(|_, d| *d != 0);
                }),
            ));
            rt.install(plain(1, plan.clone(), merger.clone())).expect("install");
            results.push(counts);
            mergers.push(merger);
        }
        for round in 0..5i64 {
            for (p, rt) in rts.iter().enumerate() {
                let keys: Vec<i64> = (0..200).filter(|i| i % 2 == p as i64).map(|i| (i + round) % 10).collect();
                let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(keys))]).expect("b");
                rt.send(&Arc::from("t"), DiffBatch::inserts(batch)).expect("send");
            }
        }
        // The follower's close waits for the leader; its rows are then complete everywhere.
        let e1 = rts[1].close_epoch().expect("follower close");
        assert!(mergers[1].wait_delivered(e1, Duration::from_secs(20)));
        let e0 = rts[0].close_epoch().expect("leader close");
        assert!(e0 > e1, "the follower's epochs are the leader's");
        assert!(mergers[0].wait_delivered(e0, Duration::from_secs(20)));
        let expected: std::collections::BTreeMap<(i64, i64), i64> = (0..10).map(|k| ((k, 100), 1)).collect();
        assert_eq!(*results[0].lock(), expected);
        assert!(results[1].lock().is_empty(), "output is gathered on process 0");
        stop_cluster(rts);
    }

    /// A process that cannot reach the others gives up after the connect timeout, naming them.
    #[test]
    fn a_cluster_that_cannot_form_fails_to_start_with_the_addresses() {
        let addresses = vec![format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port())];
        let mut cluster = ClusterConfig::new(1, addresses.clone());
        cluster.connect_timeout = Duration::from_millis(300);
        let err = Runtime::start(RuntimeConfig { workers: 1, cluster: Some(cluster), ..Default::default() })
            .err()
            .expect("no leader: start fails");
        let msg = err.to_string();
        assert!(matches!(err, DataflowError::Cluster(_)), "{msg}");
        assert!(msg.contains(&addresses[0]), "{msg}");
        // Processes that disagree on their workers refuse each other at start.
        let pair: Vec<String> = (0..2).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let starts: Vec<_> = (0..2)
            .map(|p| {
                let mut cluster = ClusterConfig::new(p, pair.clone());
                cluster.connect_timeout = Duration::from_secs(20);
                std::thread::spawn(move || {
                    Runtime::start(RuntimeConfig { workers: 1 + p, cluster: Some(cluster), ..Default::default() })
                        .err()
                        .map(|e| e.to_string())
                })
            })
            .collect();
        for h in starts {
            let msg = h.join().expect("thread").expect("mismatched workers: start fails");
            assert!(msg.contains("runs 2 workers, this one 1") || msg.contains("runs 1 workers, this one 2"), "{msg}");
        }
        let bad = ClusterConfig::new(2, addresses);
        assert!(bad.validate().is_err_and(|e| e.contains("out of range")));
        let portless = ClusterConfig::new(0, vec!["a:1".into(), "b".into()]);
        assert!(portless.validate().is_err_and(|e| e.contains("host:port")));
    }
}
