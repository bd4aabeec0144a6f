//! `Aggregate`: incremental `GROUP BY` — rows are routed to the worker owning their key, folded
//! into per-group accumulators, and each completed epoch emits the changed output rows.

use std::collections::BTreeMap;
use std::sync::Arc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

use super::{epoch_slot, route_by_keys, BatchStream, PendingEpochs};
use crate::aggregate_state::{owned_by, GroupedAggregate};
use crate::batch::{DiffBatch, Routed};
use crate::checkpoint::OperatorCheckpoints;
use crate::plan::AggregatePlan;
use crate::stats::DataflowStats;

/// Extension trait adding [`AggregateExt::aggregate_batches`].
pub trait AggregateExt<'scope> {
    /// Maintains `plan` incrementally; outputs retractions and insertions of changed groups.
    /// `ckpt` connects it to checkpoints (snapshots its state, restores it after a restart).
    fn aggregate_batches(
        self,
        plan: Arc<AggregatePlan>,
        stats: Arc<DataflowStats>,
        ckpt: OperatorCheckpoints,
    ) -> BatchStream<'scope>;
}

impl<'scope> AggregateExt<'scope> for BatchStream<'scope> {
    fn aggregate_batches(
        self,
        plan: Arc<AggregatePlan>,
        stats: Arc<DataflowStats>,
        ckpt: OperatorCheckpoints,
    ) -> BatchStream<'scope> {
        let routed = route_by_keys(self, plan.keys.clone(), Some(plan.clone()), stats.clone(), "aggregate");

        let arg_types: Vec<_> =
            plan.aggs.iter().map(|a| a.arg.as_ref().map(|f| f.output_schema().field(0).data_type().clone())).collect();
        routed.unary_frontier::<CapacityContainerBuilder<Vec<DiffBatch>>, _, _, _>(
            Exchange::new(|r: &Routed| r.target as u64),
            "Aggregate",
            move |_, _| {
                let mut state = GroupedAggregate::new(plan.clone(), &arg_types);
                if let Err(e) = &state {
                    stats.record_error("aggregate", 0, e);
                }
                if let Ok(st) = state.as_mut() {
                    let owns = owned_by(ckpt.worker, ckpt.peers);
                    for snapshot in ckpt.restore_all() {
                        if let Err(e) = st.restore(snapshot, &owns) {
                            stats.record_error("aggregate", 0, &e);
                        }
                    }
                }
                let mut pending: PendingEpochs<Vec<Routed>> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        if let Some(batches) = epoch_slot(&mut pending, &cap) {
                            batches.append(data);
                        }
                    });
                    let Ok(state) = state.as_mut() else {
                        pending.clear();
                        ckpt.serve_empty(|e| frontier.less_equal(&e));
                        return;
                    };
                    while let Some((&t, _)) = pending.first_key_value() {
                        if frontier.less_equal(&t) {
                            break;
                        }
                        // Checkpoints of earlier epochs see the state before this one.
                        while let Some(req) = ckpt.reader.peek().filter(|r| r.epoch < t) {
                            ckpt.deliver(&req, state.snapshot(req.full));
                        }
                        let Some((_, (cap, batches))) = pending.pop_first() else { break };
                        for Routed { batch: b, hashes, partial, .. } in &batches {
                            // Whole batches use the routing hashes; rows isolated after an error
                            // are hashed again.
                            let whole = std::cell::Cell::new(true);
                            b.isolate(
                                |part| {
                                    let h = if whole.replace(false) { hashes.as_deref() } else { None };
                                    if *partial {
                                        state.apply_partial(part, h)
                                    } else {
                                        state.apply_hashed(part, h)
                                    }
                                },
                                |rows, e| stats.record_error("aggregate", rows, e),
                            );
                        }
                        match state.emit() {
                            Ok(Some(out)) => output.session(&cap).give(out),
                            Ok(None) => {}
                            Err(e) => stats.record_error("aggregate", 0, &e),
                        }
                    }
                    while let Some(req) = ckpt.due(|e| frontier.less_equal(&e)) {
                        ckpt.deliver(&req, state.snapshot(req.full));
                    }
                }
            },
        )
    }
}
