//! `Filter`: keeps the rows of each batch for which a predicate holds, with their multiplicities.

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
                        match predicate.eval(&batch.data).and_then(|m| batch.filter(&m)) {
                            Ok(b) if b.num_rows() > 0 => session.give(b),
                            Ok(_) => {}
                            Err(e) => stats.record_error("filter", batch.num_rows(), &e),
                        }
                    }
                });
            }
        })
    }
}
