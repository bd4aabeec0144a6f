//! `Project`: computes output columns from each input batch, keeping multiplicities.
//! A row whose expressions fail to evaluate is counted as dropped; the rest of its batch is kept.

use std::sync::Arc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use super::BatchStream;
use crate::batch::DiffBatch;
use crate::plan::BatchFn;
use crate::stats::DataflowStats;

/// Extension trait adding [`ProjectExt::project_batches`].
pub trait ProjectExt<'scope> {
    /// Replaces each batch by `map(batch)`; failures are counted in `stats` and the batch skipped.
    fn project_batches(self, map: Arc<dyn BatchFn>, stats: Arc<DataflowStats>) -> BatchStream<'scope>;
}

impl<'scope> ProjectExt<'scope> for BatchStream<'scope> {
    fn project_batches(self, map: Arc<dyn BatchFn>, stats: Arc<DataflowStats>) -> BatchStream<'scope> {
        self.unary::<CapacityContainerBuilder<Vec<DiffBatch>>, _, _, _>(Pipeline, "Project", move |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    let mut session = output.session(&cap);
                    for batch in data.drain(..) {
                        let out = batch.isolate(
                            |b| map.eval(&b.data).and_then(|d| b.with_data(d)),
                            |rows, e| stats.record_error("project", rows, e),
                        );
                        out.into_iter().for_each(|b| session.give(b));
                    }
                });
            }
        })
    }
}
