//! One pipeline across several processes, over timely's own cluster communication.
//!
//! Every process runs the same runtime with the same number of local workers and installs the
//! same dataflows in the same order (the engine runs the same DDL on each); timely connects the
//! processes (process `p` listens on `addresses[p]`), numbers the workers `p * threads + local`,
//! and moves the batches of key exchanges between processes as Arrow IPC.
//!
//! **Epochs.** Process 0 (the leader) is the epoch clock of the cluster. A follower never
//! closes an epoch itself: when it has sent data (or moved a watermark, or waits for an epoch
//! to close) it reports to the leader, with its sources' watermarks; the leader closes the epoch
//! at its next tick and tells every follower, which then advances its own workers exactly as
//! the leader did. So an epoch number means the same cut on every process, which is what a
//! checkpoint or a restart needs.
//!
//! **Watermarks.** The watermark recorded for an epoch is, per source, the minimum over the
//! processes' latest reports: a process that has not moved a source's watermark holds it back,
//! because its rows may still come.
//!
//! **Output.** Each dataflow's result is gathered on worker 0, so the streams, views and sinks
//! of process 0 see the whole result; those of the other processes see their epochs complete
//! but no rows. A dataflow installed `per_process` (a sink every process writes) is not
//! gathered: each process's output gets what its own workers computed.
//!
//! **Checkpoints** are the leader's: it asks every follower to get ready (`Prepare`); each one
//! stops sending data and answers (`Ready`); the leader then closes the epoch with the
//! checkpoint request in its `Advance`, so every process's operators snapshot the same epoch.
//! Followers report their part durable (`Saved`); the leader, once its own part is durable too,
//! ends the checkpoint (`Finished`: committed or abandoned, and the oldest epoch a restart may
//! still pick). The engine does the storage side; the runtime carries the messages
//! ([`crate::runtime::Runtime::checkpoint`], [`crate::runtime::Runtime::follow_checkpoint`]).
//! On connecting, the leader tells every follower the first epoch of the run and the
//! checkpoint it restores ([`ClusterStart`]).
//!
//! **Control messages** travel in a small dataflow that every worker builds first, before any
//! other: `(target worker, message)` pairs routed by target. Its input moves to a new time after
//! each batch of messages (which is what makes timely ship them) and closes only at shutdown;
//! the receiving operator ignores times and hands each message to its process's coordinator.
//!
//! **Connecting.** Each process listens on its address, connects to every lower-numbered
//! process (retrying until the connect timeout) and accepts the higher-numbered ones. On each
//! connection both ends introduce themselves (protocol tag, process index, number of processes,
//! workers per process) and refuse a peer that disagrees, so a mis-configured process fails at
//! start with an error naming the difference. The connected sockets are then handed to timely.
//!
//! **Failures.** Timely's connections carry no error values: a process that goes away without
//! shutting down makes the others' communication threads panic. A panic hook turns that into a
//! failure of the cluster runtime ([`watch`]): every wait for another process (barriers, epoch
//! closes, checkpoints) fails at once naming the lost process, the workers stop without
//! draining, and shutting down does not wait for the lost process. A process that fails to start
//! after connecting gives up the same way; the others learn of it when its connections close
//! (when that process exits).
//! Recovery is a restart of every process from the last checkpoint.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Input;
use timely::dataflow::InputHandle;

use crate::checkpoint::SnapshotSink;
use crate::error::{DataflowError, Result};
use crate::watermark::WatermarkSnapshot;

/// Where this process sits in a cluster of processes running one pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This process's index in `addresses` (0 is the leader).
    pub process: usize,
    /// `host:port` of every process, in process order; each process listens on its own.
    pub addresses: Vec<String>,
    /// How long starting waits for every process to be connected.
    pub connect_timeout: Duration,
}

impl ClusterConfig {
    /// A cluster of the processes at `addresses`, this one being number `process`.
    pub fn new(process: usize, addresses: Vec<String>) -> Self {
        Self { process, addresses, connect_timeout: Duration::from_secs(60) }
    }

    /// Number of processes.
    pub fn processes(&self) -> usize {
        self.addresses.len()
    }

    /// Checks that the index is in range and every address has a port.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.addresses.len() < 2 {
            return Err(format!("a cluster needs at least 2 process addresses, got {}", self.addresses.len()));
        }
        if self.process >= self.addresses.len() {
            return Err(format!(
                "process index {} is out of range for {} process addresses",
                self.process,
                self.addresses.len()
            ));
        }
        for a in &self.addresses {
            let port = a.rsplit_once(':').and_then(|(h, p)| (!h.is_empty()).then_some(p));
            if port.and_then(|p| p.parse::<u16>().ok()).is_none() {
                return Err(format!("process address '{a}' is not host:port"));
            }
        }
        Ok(())
    }
}

/// A message between the epoch coordinators of the processes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Control {
    /// From a follower: its sources' watermarks now, and whether it waits for an epoch to close
    /// (it sent data, moved a watermark, or was asked to close one).
    Report {
        /// The reporting process.
        process: usize,
        /// Its sources' watermarks.
        watermarks: Vec<(String, i64)>,
        /// It waits for the open epoch to close (always, as sent today; a report only to pass
        /// on watermarks would say false).
        advance: bool,
    },
    /// From the leader: `epoch` is now open; `watermarks` held at the close of the one before.
    Advance {
        /// The newly opened epoch.
        epoch: u64,
        /// The cluster's watermarks at the close of `epoch - 1`.
        watermarks: Vec<(String, i64)>,
        /// Checkpoint `id` is taken as of `epoch - 1` (every process said it is ready).
        checkpoint: Option<u64>,
    },
    /// From a follower: it reached its barrier number `seq`.
    Arrived {
        /// The process that arrived.
        process: usize,
        /// Its barrier count.
        seq: u64,
    },
    /// From the leader: every process reached barrier `seq`.
    Release {
        /// The barrier passed.
        seq: u64,
    },
    /// From the leader: get ready for checkpoint `id` (stop sending data, take the sources'
    /// positions) and answer with `Ready`.
    Prepare {
        /// The checkpoint.
        id: u64,
        /// Whole state (true) or the changes since the previous checkpoint.
        full: bool,
    },
    /// From a follower: it is ready for checkpoint `id` (and sends nothing until the `Advance`
    /// that takes it), or cannot take it.
    Ready {
        /// The follower.
        process: usize,
        /// The checkpoint.
        id: u64,
        /// Why it cannot take it.
        error: Option<String>,
    },
    /// From a follower: its part of checkpoint `id` is durable, or failed.
    Saved {
        /// The follower.
        process: usize,
        /// The checkpoint.
        id: u64,
        /// Why it failed.
        error: Option<String>,
    },
    /// From the leader: checkpoint `id` is complete on every process (`committed`) or abandoned;
    /// checkpoints older than `keep_from` are no longer needed for a restart.
    Finished {
        /// The checkpoint.
        id: u64,
        /// It is the cluster's newest checkpoint now.
        committed: bool,
        /// The oldest epoch a restart may still pick.
        keep_from: u64,
    },
}

impl Control {
    /// An `Advance` carrying `snapshot`.
    pub(crate) fn advance(epoch: u64, snapshot: &WatermarkSnapshot, checkpoint: Option<u64>) -> Self {
        Control::Advance { epoch, watermarks: to_wire(snapshot), checkpoint }
    }
}

/// Watermarks as sent between processes.
pub(crate) fn to_wire(snapshot: &WatermarkSnapshot) -> Vec<(String, i64)> {
    snapshot.values().map(|(n, v)| (n.to_string(), v)).collect()
}

/// Watermarks received from another process.
pub(crate) fn from_wire(watermarks: &[(String, i64)]) -> WatermarkSnapshot {
    WatermarkSnapshot::from_values(watermarks.iter().map(|(n, v)| (n.as_str(), *v)))
}

/// The cluster side of the runtime's shared state.
pub(crate) struct ClusterState {
    /// This process.
    pub process: usize,
    /// Number of processes.
    pub processes: usize,
    /// Workers per process.
    pub threads: usize,
    /// Messages received by this process's first worker, for the coordinator.
    pub inbox: Mutex<Vec<Control>>,
    /// The leader's record of each process's latest reported watermarks (by process index).
    pub reported: Mutex<Vec<WatermarkSnapshot>>,
    /// The leader: a follower waits for the open epoch to close.
    pub remote_dirty: AtomicBool,
    /// The coordinator thread, woken when a message arrives.
    pub coordinator: Mutex<Option<std::thread::Thread>>,
    /// Barriers this process has entered.
    pub barriers: AtomicU64,
    /// Every barrier up to this one has been passed by all processes.
    pub released: AtomicU64,
    /// The leader: how many processes reached each barrier not yet released.
    pub arrivals: Mutex<std::collections::BTreeMap<u64, usize>>,
    /// Coordinated checkpoints in progress.
    pub checkpoints: Mutex<Checkpoints>,
    /// Signalled when `checkpoints` changes.
    pub checkpoint_changed: Condvar,
    /// A follower: checkpoints the leader asked for, `(id, full)`, for the engine to prepare.
    pub requests: (crossbeam_channel::Sender<CheckpointAsk>, crossbeam_channel::Receiver<CheckpointAsk>),
    /// Why the cluster cannot go on (a lost connection), once it cannot.
    failure: Mutex<Option<String>>,
}

/// A checkpoint the leader asks a follower for: `(id, full)`.
pub type CheckpointAsk = (u64, bool);

/// A follower's part of a checkpoint: registered when it is ready, used by the `Advance` that
/// takes the checkpoint.
pub(crate) struct PendingCheckpoint {
    /// The checkpoint.
    pub id: u64,
    /// Whole state or changes.
    pub full: bool,
    /// Where this process's operator snapshots go.
    pub sink: Arc<dyn SnapshotSink>,
    /// Runs with the checkpoint's epoch before any later epoch can close.
    pub before: Box<dyn FnOnce(u64) + Send>,
}

/// Answers and progress of the coordinated checkpoints in flight.
#[derive(Default)]
pub(crate) struct Checkpoints {
    /// The leader: the last id given out.
    pub last_id: u64,
    /// The leader: `Ready` answers per checkpoint id: (process, error).
    pub ready: BTreeMap<u64, Vec<(usize, Option<String>)>>,
    /// The leader: `Saved` answers per checkpoint id.
    pub saved: BTreeMap<u64, Vec<(usize, Option<String>)>>,
    /// The leader: the id of the checkpoint taken as of each epoch.
    pub ids: BTreeMap<u64, u64>,
    /// A follower: the checkpoint it is ready for.
    pub pending: Option<PendingCheckpoint>,
    /// A follower: checkpoints taken, by id: their epoch.
    pub applied: BTreeMap<u64, u64>,
    /// A follower: the leader's verdicts, by id: (committed, keep_from).
    pub finished: BTreeMap<u64, (bool, u64)>,
}

impl ClusterState {
    pub(crate) fn new(config: &ClusterConfig, threads: usize) -> Self {
        Self {
            process: config.process,
            processes: config.processes(),
            threads,
            inbox: Mutex::new(Vec::new()),
            reported: Mutex::new((0..config.processes()).map(|_| WatermarkSnapshot::default()).collect()),
            remote_dirty: AtomicBool::new(false),
            coordinator: Mutex::new(None),
            barriers: AtomicU64::new(0),
            released: AtomicU64::new(0),
            arrivals: Mutex::new(Default::default()),
            checkpoints: Mutex::new(Checkpoints::default()),
            checkpoint_changed: Condvar::new(),
            requests: crossbeam_channel::unbounded(),
            failure: Mutex::new(None),
        }
    }

    /// Records that the cluster cannot go on (the first reason is kept) and wakes every waiter.
    pub(crate) fn fail(&self, why: &str) {
        {
            let mut f = self.failure.lock();
            if f.is_some() {
                return;
            }
            *f = Some(why.to_string());
        }
        eprintln!("laminardb: process {}: {why}; the pipeline stops (restart every process)", self.process);
        // Under the lock the waiters check the failure with: none misses the wake-up.
        self.update_checkpoints(|_| {});
        if let Some(t) = self.coordinator.lock().as_ref() {
            t.unpark();
        }
    }

    /// Why the cluster cannot go on, if it cannot.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.lock().clone()
    }

    /// Fails once the cluster cannot go on.
    pub(crate) fn check(&self) -> Result<()> {
        match self.failure() {
            Some(why) => Err(DataflowError::Cluster(format!("process {}: {why}", self.process))),
            None => Ok(()),
        }
    }

    /// Processes other than the leader.
    pub(crate) fn followers(&self) -> std::ops::Range<usize> {
        1..self.processes
    }

    /// Changes the checkpoint bookkeeping and wakes whoever waits on it.
    pub(crate) fn update_checkpoints(&self, f: impl FnOnce(&mut Checkpoints)) {
        f(&mut self.checkpoints.lock());
        self.checkpoint_changed.notify_all();
    }

    /// Waits until `f` finds what it looks for in the checkpoint bookkeeping; fails after
    /// `timeout` with "process P: timed out waiting for WHAT".
    pub(crate) fn wait_checkpoints<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&mut Checkpoints) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut k = self.checkpoints.lock();
        loop {
            if let Some(v) = f(&mut k) {
                return Ok(v);
            }
            self.check()?;
            if self.checkpoint_changed.wait_until(&mut k, deadline).timed_out() {
                return f(&mut k).ok_or_else(|| {
                    DataflowError::Cluster(format!(
                        "process {}: {what} did not happen within {} s",
                        self.process,
                        timeout.as_secs()
                    ))
                });
            }
        }
    }

    /// This process leads the cluster's epochs.
    pub(crate) fn is_leader(&self) -> bool {
        self.process == 0
    }

    /// The first worker of process `p` (the one that receives control messages).
    pub(crate) fn first_worker_of(&self, p: usize) -> u64 {
        (p * self.threads) as u64
    }

    /// Takes the messages received so far (the leader: reports, arrivals and checkpoint answers;
    /// a follower: advances, releases and checkpoint requests and verdicts).
    pub(crate) fn take_inbox(&self) -> Vec<Control> {
        std::mem::take(&mut *self.inbox.lock())
    }

    /// The leader: records a follower's report.
    pub(crate) fn record(&self, process: usize, watermarks: &[(String, i64)], advance: bool) {
        if let Some(slot) = self.reported.lock().get_mut(process) {
            *slot = from_wire(watermarks);
        }
        if advance {
            self.remote_dirty.store(true, Ordering::Release);
        }
    }

    /// The leader: a process reached barrier `seq`; returns true when that was the last one
    /// (the barrier is then released here, and the followers must be told).
    pub(crate) fn arrive(&self, seq: u64) -> bool {
        let mut arrivals = self.arrivals.lock();
        let n = arrivals.entry(seq).or_insert(0);
        *n += 1;
        if *n < self.processes {
            return false;
        }
        arrivals.remove(&seq);
        self.released.fetch_max(seq, Ordering::AcqRel);
        true
    }

    /// The leader: the cluster's watermarks, given this process's own.
    pub(crate) fn combined(&self, local: &WatermarkSnapshot) -> WatermarkSnapshot {
        let reported = self.reported.lock();
        let mut parts: Vec<&WatermarkSnapshot> = vec![local];
        parts.extend(reported.iter().enumerate().filter(|(p, _)| *p != self.process).map(|(_, s)| s));
        WatermarkSnapshot::min_of(&parts)
    }
}

/// The cluster runtimes of this process, told when timely's communication with a peer breaks.
static WATCHED: Mutex<Vec<std::sync::Weak<ClusterState>>> = Mutex::new(Vec::new());

/// Watches timely's threads for `state`: a communication thread (or worker) that panics, as
/// timely's do when a peer process goes away, fails every cluster runtime of this process
/// instead of printing a backtrace; waits for other processes then fail at once.
pub(crate) fn watch(state: &Arc<ClusterState>) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    {
        let mut watched = WATCHED.lock();
        watched.retain(|w| w.strong_count() > 0);
        watched.push(Arc::downgrade(state));
    }
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let current = std::thread::current();
            let name = current.name().unwrap_or_default();
            let live: Vec<Arc<ClusterState>> = match name.strip_prefix("timely:") {
                Some(_) => WATCHED.lock().iter().filter_map(std::sync::Weak::upgrade).collect(),
                None => Vec::new(),
            };
            if live.is_empty() {
                return previous(info);
            }
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let peer = name.strip_prefix("timely:recv-").or_else(|| name.strip_prefix("timely:send-"));
            let why = match peer {
                Some(p) => format!("lost the connection to process {p} ({message})"),
                None => format!("a worker stopped ({message})"),
            };
            live.iter().for_each(|c| c.fail(&why));
        }));
    });
}

/// The input of a worker's control dataflow: `(target worker, message)`.
pub(crate) type ControlInput = InputHandle<u64, CapacityContainerBuilder<Vec<(u64, Control)>>>;

/// Builds the control dataflow on a worker (every worker, first of all dataflows): messages sent
/// into the returned input reach their target worker, which hands them to its process's
/// coordinator.
pub(crate) fn build_control(worker: &mut timely::worker::Worker, state: Arc<ClusterState>) -> ControlInput {
    let mut input = ControlInput::new();
    worker.dataflow::<u64, _, _>(|scope| {
        scope.input_from(&mut input).sink(
            Exchange::new(|m: &(u64, Control)| m.0),
            "ClusterControl",
            move |(input, _)| {
                let mut got = false;
                input.for_each(|_, data| {
                    state.inbox.lock().extend(data.drain(..).map(|(_, m)| m));
                    got = true;
                });
                if got {
                    if let Some(t) = state.coordinator.lock().as_ref() {
                        t.unpark();
                    }
                }
            },
        );
    });
    input
}

/// Tag of the introduction exchanged on every connection between two processes.
const HELLO: &[u8; 8] = b"LMNRCL02";

/// How the cluster's run begins, as decided by the leader and told to every follower when it
/// connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterStart {
    /// The first epoch of the run.
    pub epoch: u64,
    /// The checkpoint every process restores (its epoch), if any.
    pub restored: Option<u64>,
    /// The leader's wall clock when the run began (ms since the Unix epoch).
    pub clock_ms: i64,
}

/// What one process tells another when they connect.
#[derive(Debug, PartialEq, Eq)]
struct Hello {
    process: u64,
    processes: u64,
    threads: u64,
    /// The sender's start (only the leader's counts).
    start: ClusterStart,
}

impl Hello {
    const LEN: usize = 8 + 6 * 8;

    fn write(&self, s: &mut TcpStream) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(Self::LEN);
        buf.extend_from_slice(HELLO);
        let restored = self.start.restored.map_or(0, |e| e + 1);
        let clock = self.start.clock_ms as u64;
        for v in [self.process, self.processes, self.threads, self.start.epoch, restored, clock] {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        s.write_all(&buf)
    }

    fn read(s: &mut TcpStream) -> std::io::Result<Option<Self>> {
        let mut buf = [0u8; Self::LEN];
        s.read_exact(&mut buf)?;
        if &buf[..8] != HELLO {
            return Ok(None);
        }
        let v = |i: usize| u64::from_le_bytes(buf[8 + 8 * i..16 + 8 * i].try_into().unwrap_or_default());
        let start = ClusterStart { epoch: v(3), restored: v(4).checked_sub(1), clock_ms: v(5) as i64 };
        Ok(Some(Hello { process: v(0), processes: v(1), threads: v(2), start }))
    }
}

/// Checks a peer's introduction against this process's settings.
fn check_peer(
    config: &ClusterConfig,
    threads: usize,
    peer: Option<Hello>,
    from: &str,
) -> Result<(usize, ClusterStart)> {
    let fail = |m: String| Err(DataflowError::Cluster(format!("process {}: {m}", config.process)));
    let Some(h) = peer else {
        return fail(format!("{from} is not a LaminarDB cluster process"));
    };
    if h.processes as usize != config.processes() {
        return fail(format!(
            "process {} at {from} has {} processes in its list, this one {}",
            h.process,
            h.processes,
            config.processes()
        ));
    }
    if h.threads as usize != threads {
        return fail(format!("process {} at {from} runs {} workers, this one {threads}", h.process, h.threads));
    }
    Ok((h.process as usize, h.start))
}

/// Connects this process to every other one of the cluster (see the module doc); gives up at the
/// connect timeout, naming the processes still missing. Returns one socket per process (none
/// for this one), in process order, and the leader's start (`start` itself on the leader).
pub(crate) fn connect_peers(
    config: &ClusterConfig,
    threads: usize,
    start: ClusterStart,
) -> Result<(Vec<Option<TcpStream>>, ClusterStart)> {
    let me = config.process;
    let deadline = Instant::now() + config.connect_timeout;
    let hello = Hello { process: me as u64, processes: config.processes() as u64, threads: threads as u64, start };
    let mut leader_start = start;
    let err = |m: String| DataflowError::Cluster(format!("process {me}: {m}"));
    let own = &config.addresses[me];
    let listener = TcpListener::bind(own).map_err(|e| err(format!("cannot listen on {own}: {e}")))?;
    listener.set_nonblocking(true).map_err(|e| err(e.to_string()))?;
    let mut sockets: Vec<Option<TcpStream>> = (0..config.processes()).map(|_| None).collect();
    let missing = |sockets: &[Option<TcpStream>]| -> String {
        let m: Vec<String> = (0..sockets.len())
            .filter(|&p| p != me && sockets[p].is_none())
            .map(|p| format!("{p} ({})", config.addresses[p]))
            .collect();
        m.join(", ")
    };
    let setup = |s: &mut TcpStream| -> std::io::Result<()> {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
    };
    // Lower-numbered processes: connect (they may not be listening yet).
    for p in 0..me {
        let addr = &config.addresses[p];
        let mut stream = loop {
            match TcpStream::connect(addr) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => {
                    return Err(err(format!(
                        "could not connect to process {p} at {addr} within {:?} ({e}); not connected: {}",
                        config.connect_timeout,
                        missing(&sockets)
                    )))
                }
            }
        };
        setup(&mut stream).and_then(|_| hello.write(&mut stream)).map_err(|e| err(format!("{addr}: {e}")))?;
        let peer = Hello::read(&mut stream).map_err(|e| err(format!("no introduction from {addr}: {e}")))?;
        let (index, their_start) = check_peer(config, threads, peer, addr)?;
        if index != p {
            return Err(err(format!("{addr} is process {index}, but the address list has it as process {p}")));
        }
        if p == 0 {
            leader_start = their_start;
        }
        sockets[p] = Some(stream);
    }
    // Higher-numbered processes: accept.
    while (me + 1..config.processes()).any(|p| sockets[p].is_none()) {
        match listener.accept() {
            Ok((mut stream, from)) => {
                stream.set_nonblocking(false).map_err(|e| err(e.to_string()))?;
                setup(&mut stream).map_err(|e| err(e.to_string()))?;
                let from = from.to_string();
                let peer = Hello::read(&mut stream).map_err(|e| err(format!("no introduction from {from}: {e}")))?;
                // Answer first: a peer that disagrees learns why too.
                hello.write(&mut stream).map_err(|e| err(format!("{from}: {e}")))?;
                let (index, _) = check_peer(config, threads, peer, &from)?;
                if index <= me || index >= config.processes() || sockets[index].is_some() {
                    return Err(err(format!("unexpected connection from process {index} at {from}")));
                }
                sockets[index] = Some(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(err(format!(
                        "processes {} did not connect within {:?}",
                        missing(&sockets),
                        config.connect_timeout
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(err(format!("accepting on {own}: {e}"))),
        }
    }
    for s in sockets.iter().flatten() {
        s.set_read_timeout(None).map_err(|e| err(e.to_string()))?;
    }
    Ok((sockets, leader_start))
}

/// Timely's allocators over the connected sockets, one per local worker, and the guard of its
/// communication threads.
pub(crate) fn build_allocators(
    sockets: Vec<Option<TcpStream>>,
    process: usize,
    threads: usize,
) -> Result<(Vec<timely::communication::AllocatorBuilder>, Box<dyn std::any::Any + Send>)> {
    use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
    use timely::communication::allocator::ProcessBuilder;
    let hooks = timely::communication::Hooks::default();
    let local = ProcessBuilder::new_typed_vector(threads, hooks.refill.clone(), hooks.spill.clone());
    let (builders, guard) = initialize_networking_from_sockets(local, sockets, process, threads, hooks)
        .map_err(|e| DataflowError::Cluster(format!("process {process}: starting communication: {e}")))?;
    Ok((builders.into_iter().map(timely::communication::AllocatorBuilder::Tcp).collect(), Box::new(guard)))
}
