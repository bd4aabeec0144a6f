//! `Filter`: keeps the rows of each batch for which a predicate holds, with their multiplicities.
//! A row whose predicate fails to evaluate is counted as dropped; the rest of its batch is kept.

use std::sync::Arc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use super::BatchStream;
use crate::batch::DiffBatch;
use crate::plan::PredicateFn;
use crate::stats::DataflowStats;

/// Extension trait adding [`FilterExt::filter_batches`].
pub trait FilterExt<'scope> {
    /// Keeps rows where `predicate` is true; a batch whose evaluation fails is counted as
    /// dropped in `stats` and skipped.
    fn filter_batches(self, predicate: Arc<dyn PredicateFn>, stats: Arc<DataflowStats>) -> BatchStream<'scope>;
}

impl<'scope> FilterExt<'scope> for BatchStream<'scope> {
    fn filter_batches(self, predicate: Arc<dyn PredicateFn>, stats: Arc<DataflowStats>) -> BatchStream<'scope> {
        self.unary::<CapacityContainerBuilder<Vec<DiffBatch>>, _, _, _>(Pipeline, "Filter", move |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    let mut session = output.session(&cap);
                    for batch in data.drain(..) {
                        let kept = batch.isolate(
                            |b| predicate.eval(&b.data).and_then(|m| b.filter(&m)),
                            |rows, e| stats.record_error("filter", rows, e),
                        );
                        kept.into_iter().filter(|b| b.num_rows() > 0).for_each(|b| session.give(b));
                    }
                });
            }
        })
    }
}
