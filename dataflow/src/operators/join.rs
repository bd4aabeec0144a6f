//! `Join`: incremental equi-join — both inputs are routed to the worker owning their key, and
//! each completed epoch's changes on either side are joined against the other side's state
//! ([`JoinState`]). Time-bounded joins free their state as the inputs' watermarks pass.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

use super::{epoch_slot, route_by_keys, BatchStream, PendingEpochs};
use crate::aggregate_state::owned_by;
use crate::batch::{DiffBatch, Routed};
use crate::checkpoint::OperatorCheckpoints;
use crate::join_state::{JoinEpochStats, JoinState, JoinWatermarks};
use crate::plan::JoinPlan;
use crate::stats::{DataflowStats, StateGauge};
use crate::watermark::WatermarkFeed;

/// Extension trait adding [`JoinExt::join_batches`].
pub trait JoinExt<'scope> {
    /// Joins `self` (left) with `right` incrementally.
    fn join_batches(
        self,
        right: BatchStream<'scope>,
        plan: Arc<JoinPlan>,
        schemas: (SchemaRef, SchemaRef),
        stats: Arc<DataflowStats>,
        watermarks: &WatermarkFeed,
        ckpt: OperatorCheckpoints,
    ) -> BatchStream<'scope>;
}

type Pending = PendingEpochs<(Vec<DiffBatch>, Vec<DiffBatch>)>;

impl<'scope> JoinExt<'scope> for BatchStream<'scope> {
    fn join_batches(
        self,
        right: BatchStream<'scope>,
        plan: Arc<JoinPlan>,
        schemas: (SchemaRef, SchemaRef),
        stats: Arc<DataflowStats>,
        watermarks: &WatermarkFeed,
        ckpt: OperatorCheckpoints,
    ) -> BatchStream<'scope> {
        let left = route_by_keys(self, plan.left_keys.clone(), None, stats.clone(), "join");
        let right = route_by_keys(right, plan.right_keys.clone(), None, stats.clone(), "join");
        let mut reader = plan.time_bound.as_ref().map(|_| watermarks.reader());
        left.binary_frontier::<_, CapacityContainerBuilder<Vec<DiffBatch>>, _, _, _, _>(
            right,
            Exchange::new(|r: &Routed| r.target as u64),
            Exchange::new(|r: &Routed| r.target as u64),
            "Join",
            move |_, _| {
                let mut state = JoinState::new(plan.clone(), schemas.0, schemas.1);
                if let Err(e) = &state {
                    stats.record_error("join", 0, e);
                }
                if let Ok(st) = state.as_mut() {
                    st.track_changes(ckpt.track_changes);
                    let owns = owned_by(ckpt.worker, ckpt.peers);
                    for snapshot in ckpt.restore_all() {
                        if let Err(e) = st.restore(snapshot, &owns) {
                            stats.record_error("join", 0, &e);
                        }
                    }
                }
                let mut pending: Pending = BTreeMap::new();
                let mut gauge = StateGauge::new(stats.clone());
                move |(in1, f1), (in2, f2), output| {
                    in1.for_each(|cap, data| {
                        if let Some(e) = epoch_slot(&mut pending, &cap) {
                            e.0.extend(data.drain(..).map(|r| r.batch));
                        }
                    });
                    in2.for_each(|cap, data| {
                        if let Some(e) = epoch_slot(&mut pending, &cap) {
                            e.1.extend(data.drain(..).map(|r| r.batch));
                        }
                    });
                    // Epoch e is complete once both inputs passed it.
                    let not_done = |e: u64| f1.less_equal(&e) || f2.less_equal(&e);
                    let Ok(state) = state.as_mut() else {
                        pending.clear();
                        ckpt.serve_empty(not_done);
                        return;
                    };
                    let bound = plan.time_bound.as_ref();
                    while let Some((&t, _)) = pending.first_key_value() {
                        if f1.less_equal(&t) || f2.less_equal(&t) {
                            break;
                        }
                        // Checkpoints of earlier epochs see the state before this one.
                        while let Some(req) = ckpt.reader.peek().filter(|r| r.epoch < t) {
                            ckpt.deliver(&req, state.snapshot(req.full));
                        }
                        let Some((_, (cap, (l, r)))) = pending.pop_first() else { break };
                        let wm = match (reader.as_mut(), bound) {
                            (Some(reader), Some(b)) => {
                                reader.advance_to(t.saturating_sub(1));
                                JoinWatermarks {
                                    left_late: reader.watermark(&b.left_sources),
                                    right_late: reader.watermark(&b.right_sources),
                                }
                            }
                            _ => JoinWatermarks::default(),
                        };
                        let mut epoch_stats = JoinEpochStats::default();
                        let out = match state.apply(&l, &r, wm, &mut epoch_stats) {
                            Ok(out) => out,
                            Err(_) => {
                                // Find the batches that fail; the others still count.
                                epoch_stats = JoinEpochStats::default();
                                let mut out = Vec::new();
                                for b in &l {
                                    match state.apply(std::slice::from_ref(b), &[], wm, &mut epoch_stats) {
                                        Ok(o) => out.extend(o),
                                        Err(e) => stats.record_error("join", b.num_rows(), &e),
                                    }
                                }
                                for b in &r {
                                    match state.apply(&[], std::slice::from_ref(b), wm, &mut epoch_stats) {
                                        Ok(o) => out.extend(o),
                                        Err(e) => stats.record_error("join", b.num_rows(), &e),
                                    }
                                }
                                out
                            }
                        };
                        if epoch_stats.late_rows > 0 {
                            stats.record_late(epoch_stats.late_rows);
                        }
                        if !out.is_empty() {
                            let mut session = output.session(&cap);
                            out.into_iter().for_each(|b| session.give(b));
                        }
                    }
                    while let Some(req) = ckpt.due(not_done) {
                        ckpt.deliver(&req, state.snapshot(req.full));
                    }
                    // Free what the watermarks have made unreachable.
                    if let (Some(reader), Some(b)) = (reader.as_mut(), bound) {
                        let f = match (f1.frontier().iter().next(), f2.frontier().iter().next()) {
                            (Some(a), Some(b)) => *a.min(b),
                            (Some(a), None) | (None, Some(a)) => *a,
                            (None, None) => u64::MAX,
                        };
                        reader.advance_to(f.saturating_sub(1));
                        state.expire(reader.watermark(&b.left_sources), reader.watermark(&b.right_sources));
                    }
                    let (l, r) = state.rows();
                    gauge.set(l + r);
                }
            },
        )
    }
}
