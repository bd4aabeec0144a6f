//! `Capture`: hands each completed epoch of a stream to an [`EpochSink`].

use std::collections::BTreeMap;
use std::sync::Arc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;

use super::BatchStream;
use crate::batch::DiffBatch;

/// Receives the output of one worker's copy of a dataflow, one frontier step at a time.
pub trait EpochSink: Send + Sync {
    /// `worker` has completed every epoch below `frontier` (`None`: the stream ended).
    /// `ready` holds the batches of the epochs completed by this step, in epoch order.
    fn report(&self, worker: usize, frontier: Option<u64>, ready: Vec<(u64, Vec<DiffBatch>)>);
}

/// Extension trait adding [`GatherExt::gather_to_first`].
pub trait GatherExt<'scope> {
    /// Moves every batch to worker 0 (of process 0, in a cluster), unchanged.
    fn gather_to_first(self) -> BatchStream<'scope>;
}

impl<'scope> GatherExt<'scope> for BatchStream<'scope> {
    fn gather_to_first(self) -> BatchStream<'scope> {
        self.unary::<CapacityContainerBuilder<Vec<DiffBatch>>, _, _, _>(
            Exchange::new(|_: &DiffBatch| 0),
            "Gather",
            |_, _| {
                |input, output| {
                    input.for_each(|cap, data| {
                        output.session(&cap).give_container(data);
                    })
                }
            },
        )
    }
}

/// Extension trait adding [`CaptureExt::capture_epochs`].
pub trait CaptureExt {
    /// Buffers each epoch's batches and reports them to `sink` once the frontier passes it.
    fn capture_epochs(self, worker: usize, sink: Arc<dyn EpochSink>);
}

impl<'scope> CaptureExt for BatchStream<'scope> {
    fn capture_epochs(self, worker: usize, sink: Arc<dyn EpochSink>) {
        let mut pending: BTreeMap<u64, Vec<DiffBatch>> = BTreeMap::new();
        let mut reported: Option<Option<u64>> = None;
        self.sink(Pipeline, "Capture", move |(input, frontier)| {
            input.for_each(|cap, data| {
                if let Some(&t) = cap.least() {
                    pending.entry(t).or_default().append(data);
                }
            });
            let f = frontier.frontier().iter().next().copied();
            if reported != Some(f) {
                let mut ready = Vec::new();
                while let Some((&t, _)) = pending.first_key_value() {
                    if f.is_some_and(|f| t >= f) {
                        break;
                    }
                    if let Some((t, batches)) = pending.pop_first() {
                        ready.push((t, batches));
                    }
                }
                sink.report(worker, f, ready);
                reported = Some(f);
            }
        });
    }
}
