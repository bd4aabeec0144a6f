//! `Aggregate`: incremental `GROUP BY` — rows are routed to the worker owning their key, folded
//! into per-group accumulators, and each completed epoch emits the changed output rows.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_row::{RowConverter, SortField};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;

use super::{partition, BatchStream};
use crate::aggregate_state::GroupedAggregate;
use crate::batch::{DiffBatch, Routed};
use crate::plan::AggregatePlan;
use crate::stats::DataflowStats;

/// Extension trait adding [`AggregateExt::aggregate_batches`].
pub trait AggregateExt<'scope> {
    /// Maintains `plan` incrementally; outputs retractions and insertions of changed groups.
    fn aggregate_batches(self, plan: Arc<AggregatePlan>, stats: Arc<DataflowStats>) -> BatchStream<'scope>;
}

impl<'scope> AggregateExt<'scope> for BatchStream<'scope> {
    fn aggregate_batches(self, plan: Arc<AggregatePlan>, stats: Arc<DataflowStats>) -> BatchStream<'scope> {
        let peers = self.scope().peers();
        let key_fields: Vec<SortField> =
            plan.keys.output_schema().fields().iter().map(|f| SortField::new(f.data_type().clone())).collect();
        let p_plan = plan.clone();
        let p_stats = stats.clone();
        let routed =
            self.unary::<CapacityContainerBuilder<Vec<Routed>>, _, _, _>(Pipeline, "Partition", move |_, _| {
                let converter = RowConverter::new(key_fields).ok();
                move |input, output| {
                    input.for_each(|cap, data| {
                        let mut session = output.session(&cap);
                        for batch in data.drain(..) {
                            let routed = match &converter {
                                Some(c) => partition(&batch, p_plan.keys.as_ref(), c, peers),
                                None => Err(crate::error::DataflowError::Internal("key types not orderable".into())),
                            };
                            match routed {
                                Ok(parts) => parts.into_iter().for_each(|r| session.give(r)),
                                Err(e) => p_stats.record_error("aggregate", batch.num_rows(), &e),
                            }
                        }
                    });
                }
            });

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
                let mut pending: BTreeMap<u64, (Capability<u64>, Vec<DiffBatch>)> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        let Some(&t) = cap.least() else { return };
                        let entry = match pending.entry(t) {
                            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                            std::collections::btree_map::Entry::Vacant(v) => match cap.retain_least(0) {
                                Some(c) => v.insert((c, Vec::new())),
                                None => return,
                            },
                        };
                        entry.1.extend(data.drain(..).map(|r| r.batch));
                    });
                    let Ok(state) = state.as_mut() else {
                        pending.clear();
                        return;
                    };
                    while let Some((&t, _)) = pending.first_key_value() {
                        if frontier.less_equal(&t) {
                            break;
                        }
                        let Some((_, (cap, batches))) = pending.pop_first() else { break };
                        for b in &batches {
                            b.isolate(|part| state.apply(part), |rows, e| stats.record_error("aggregate", rows, e));
                        }
                        match state.emit() {
                            Ok(Some(out)) => output.session(&cap).give(out),
                            Ok(None) => {}
                            Err(e) => stats.record_error("aggregate", 0, &e),
                        }
                    }
                }
            },
        )
    }
}
