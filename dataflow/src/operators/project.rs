//! `Project`: computes output columns from each input batch, keeping multiplicities.

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
                        match map.eval(&batch.data).and_then(|d| batch.with_data(d)) {
                            Ok(b) => session.give(b),
                            Err(e) => stats.record_error("project", batch.num_rows(), &e),
                        }
                    }
                });
            }
        })
    }
}
