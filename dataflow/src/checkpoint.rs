//! Checkpoint barriers inside the runtime: requests to snapshot operator state as of the end of
//! an epoch, their fan-out to the stateful operators of each dataflow, and restored state handed
//! to operators when a dataflow is installed again after a restart.
//!
//! A request for epoch `E` reaches every worker right after the command that opens epoch
//! `E + 1`, before any input can move past `E`. A stateful operator takes its snapshot once all
//! epochs up to `E` are complete and processed, and before it processes any later epoch; then
//! the state is exactly that of epoch `E`. Each operator is identified by its position in the
//! plan (an ordinal), which is the same for the same plan on every run.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

/// Receives operator snapshots.
pub trait SnapshotSink: Send + Sync {
    /// The state of operator `operator` of dataflow `dataflow` on `worker` as of `epoch`.
    fn deliver(&self, dataflow: u64, operator: u32, worker: usize, epoch: u64, state: Vec<u8>);
}

/// A request to snapshot all state as of the end of `epoch`.
pub struct CheckpointRequest {
    /// The last epoch the snapshot includes.
    pub epoch: u64,
    /// Whole state (true) or only what changed since the previous checkpoint.
    pub full: bool,
    /// Where snapshots go.
    pub sink: Arc<dyn SnapshotSink>,
}

type Queue = Rc<RefCell<VecDeque<Arc<CheckpointRequest>>>>;

/// A worker-local fan-out of checkpoint requests to the stateful operators of one dataflow.
#[derive(Clone, Default)]
pub struct CheckpointFeed {
    queues: Rc<RefCell<Vec<Queue>>>,
}

impl CheckpointFeed {
    /// A reader for one operator.
    pub fn reader(&self) -> CheckpointReader {
        let q: Queue = Rc::default();
        self.queues.borrow_mut().push(q.clone());
        CheckpointReader { queue: q }
    }

    /// Queues a request for every operator.
    pub fn push(&self, req: &Arc<CheckpointRequest>) {
        for q in self.queues.borrow().iter() {
            q.borrow_mut().push_back(req.clone());
        }
    }
}

/// One operator's queue of checkpoint requests, oldest first.
pub struct CheckpointReader {
    queue: Queue,
}

impl CheckpointReader {
    /// The oldest request not yet served.
    pub fn peek(&self) -> Option<Arc<CheckpointRequest>> {
        self.queue.borrow().front().cloned()
    }

    /// Marks the oldest request served.
    pub fn pop(&self) {
        self.queue.borrow_mut().pop_front();
    }
}

/// Snapshots of one operator from one checkpoint: one per worker of the run that took it.
pub type CheckpointSnapshots = Vec<Arc<Vec<u8>>>;

/// Restored operator state for a dataflow: per operator ordinal, the snapshots to load in order
/// (a full checkpoint's, then those of the checkpoints with the changes after it).
#[derive(Default, Debug)]
pub struct RestoreState {
    /// Ordinal → snapshots per checkpoint, oldest first.
    pub operators: BTreeMap<u32, Vec<CheckpointSnapshots>>,
}

/// What a stateful operator needs for checkpoints: who it is, its requests, its restored state.
pub struct OperatorCheckpoints {
    /// The dataflow it belongs to.
    pub dataflow: u64,
    /// Its ordinal in the plan.
    pub ordinal: u32,
    /// This worker.
    pub worker: usize,
    /// Number of workers.
    pub peers: usize,
    /// Checkpoints can be taken: keep track of what changed between them (otherwise no
    /// incremental snapshot is ever asked for).
    pub track_changes: bool,
    /// Checkpoint requests.
    pub reader: CheckpointReader,
    /// Snapshots to load before processing anything, per checkpoint (oldest first).
    pub restore: Vec<CheckpointSnapshots>,
}

impl OperatorCheckpoints {
    /// Every snapshot to load, in order.
    pub fn restore_all(&self) -> impl Iterator<Item = &[u8]> {
        self.restore.iter().flatten().map(|s| s.as_slice())
    }

    /// Hands a snapshot for `req` to its sink and marks the request served.
    pub fn deliver(&self, req: &CheckpointRequest, state: Vec<u8>) {
        req.sink.deliver(self.dataflow, self.ordinal, self.worker, req.epoch, state);
        self.reader.pop();
    }

    /// Serves every due request with an empty snapshot (an operator without usable state).
    pub fn serve_empty(&self, frontier_le: impl Fn(u64) -> bool) {
        while let Some(req) = self.due(&frontier_le) {
            self.deliver(&req, Vec::new());
        }
    }

    /// The oldest request whose epoch is complete at an input whose frontier is `frontier`
    /// (`frontier_le(e)`: the frontier is at or before `e`, so epoch `e` is not complete).
    pub fn due(&self, frontier_le: impl Fn(u64) -> bool) -> Option<Arc<CheckpointRequest>> {
        self.reader.peek().filter(|r| !frontier_le(r.epoch))
    }
}
