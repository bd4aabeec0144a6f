//! [`EpochMerger`]: joins the per-worker outputs of a dataflow into one ordered sequence of epochs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::batch::DiffBatch;
use crate::operators::capture::EpochSink;

/// Called once per completed epoch that produced output, in epoch order.
pub type DeliverFn = Box<dyn Fn(u64, Vec<DiffBatch>) + Send + Sync>;

struct MergeState {
    /// Per worker: every epoch below this is complete (`None`: the worker's stream ended).
    frontiers: Vec<Option<u64>>,
    pending: BTreeMap<u64, Vec<DiffBatch>>,
    /// Every epoch below this has been delivered (`u64::MAX`: all of them).
    delivered: u64,
    /// Called once every epoch up to the key has been delivered, before any later one is.
    marks: BTreeMap<u64, Vec<MarkFn>>,
}

/// Called at a checkpoint barrier of the output.
pub type MarkFn = Box<dyn FnOnce() + Send>;

/// Merges the captured outputs of all workers; delivers an epoch once every worker passed it.
pub struct EpochMerger {
    state: Mutex<MergeState>,
    changed: Condvar,
    deliver: DeliverFn,
}

impl EpochMerger {
    /// A merger for `workers` workers calling `deliver` for each non-empty completed epoch.
    pub fn new(workers: usize, deliver: DeliverFn) -> Self {
        Self {
            state: Mutex::new(MergeState {
                frontiers: vec![Some(0); workers],
                pending: BTreeMap::new(),
                delivered: 0,
                marks: BTreeMap::new(),
            }),
            changed: Condvar::new(),
            deliver,
        }
    }

    /// Every epoch below the returned value has been delivered.
    pub fn delivered(&self) -> u64 {
        self.state.lock().delivered
    }

    /// Runs `f` once every epoch up to `epoch` has been delivered and before any later epoch
    /// is (at once if that is already the case), in delivery order.
    pub fn mark(&self, epoch: u64, f: MarkFn) {
        let mut st = self.state.lock();
        if st.delivered > epoch {
            drop(st);
            f();
            return;
        }
        st.marks.entry(epoch).or_default().push(f);
    }

    /// Waits until every epoch below `epoch` has been delivered; false on timeout.
    pub fn wait_delivered(&self, epoch: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock();
        while st.delivered < epoch {
            if self.changed.wait_until(&mut st, deadline).timed_out() {
                return st.delivered >= epoch;
            }
        }
        true
    }
}

/// Runs the marks of every epoch below `upto`.
fn run_marks(marks: &mut BTreeMap<u64, Vec<MarkFn>>, upto: u64) {
    while marks.first_key_value().is_some_and(|(&e, _)| e < upto) {
        if let Some((_, fs)) = marks.pop_first() {
            fs.into_iter().for_each(|f| f());
        }
    }
}

impl EpochSink for EpochMerger {
    fn report(&self, worker: usize, frontier: Option<u64>, ready: Vec<(u64, Vec<DiffBatch>)>) {
        let mut st = self.state.lock();
        for (t, batches) in ready {
            st.pending.entry(t).or_default().extend(batches);
        }
        if let Some(f) = st.frontiers.get_mut(worker) {
            *f = frontier;
        }
        let min = st.frontiers.iter().map(|f| f.unwrap_or(u64::MAX)).min().unwrap_or(u64::MAX);
        // Deliver under the lock so that epochs reach the consumer in order.
        while let Some((&t, _)) = st.pending.first_key_value() {
            if t >= min {
                break;
            }
            run_marks(&mut st.marks, t);
            if let Some((t, batches)) = st.pending.pop_first() {
                if batches.iter().any(|b| b.num_rows() > 0) {
                    (self.deliver)(t, batches);
                }
            }
        }
        run_marks(&mut st.marks, min);
        if min > st.delivered {
            st.delivered = min;
            self.changed.notify_all();
        }
    }
}
