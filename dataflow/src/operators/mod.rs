//! Timely operators over streams of [`DiffBatch`](crate::batch::DiffBatch) containers.

pub mod aggregate;
pub mod capture;
pub mod filter;
pub mod join;
pub mod project;
pub mod session;
pub mod window;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::UInt32Array;
use arrow_row::{RowConverter, SortField};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::{Capability, InputCapability};
use timely::dataflow::Stream;

use crate::aggregate_state::{key_hashes, owner};
use crate::batch::{DiffBatch, Routed};
use crate::combine::{Combined, Combiner};
use crate::error::{DataflowError, Result};
use crate::plan::{AggregatePlan, BatchFn};
use crate::stats::DataflowStats;
use crate::watermark::WatermarkReader;

/// The stream type every operator consumes and produces: epochs of signed Arrow batches.
pub type BatchStream<'scope> = Stream<'scope, u64, Vec<DiffBatch>>;

/// Splits a batch by the hash of its keys into one batch per worker that owns them. `hashes`:
/// the keys' routing hashes, if already computed.
fn partition(
    batch: &DiffBatch,
    keys: &dyn BatchFn,
    converter: &RowConverter,
    peers: usize,
    hashes: Option<Vec<u64>>,
) -> Result<Vec<Routed>> {
    if peers == 1 {
        return Ok(vec![Routed { target: 0, batch: batch.clone(), hashes: None, partial: false }]);
    }
    let keys = keys.eval(&batch.data)?;
    let hashes = match hashes {
        Some(h) => h,
        None => key_hashes(converter, keys.columns(), batch.num_rows())?,
    };
    // A single VARCHAR key's hash is also the grouping hash: pass it on.
    let single_string = matches!(keys.columns(), [c] if c.data_type() == &arrow::datatypes::DataType::Utf8);
    let n = batch.num_rows();
    let mut parts: Vec<Vec<u32>> = (0..peers).map(|_| Vec::with_capacity(n / peers + n / 8 + 1)).collect();
    for (i, h) in hashes.iter().enumerate() {
        parts[owner(*h, peers)].push(i as u32);
    }
    let mut out = Vec::new();
    for (target, idx) in parts.into_iter().enumerate() {
        if idx.is_empty() {
            continue;
        }
        let part_hashes = single_string.then(|| idx.iter().map(|&i| hashes[i as usize]).collect());
        let b = if idx.len() == batch.num_rows() { batch.clone() } else { batch.take(&UInt32Array::from(idx))? };
        out.push(Routed { target: target as u32, batch: b, hashes: part_hashes, partial: false });
    }
    Ok(out)
}

/// Splits every batch of `stream` by the hash of `keys` into batches addressed to the worker owning
/// each key (the input of an exchange by `Routed::target`). With `combine`, batches are first
/// folded into partial aggregates of that plan where it pays ([`Combiner`]). Failures count
/// against `operator`.
pub(crate) fn route_by_keys<'scope>(
    stream: BatchStream<'scope>,
    keys: Arc<dyn BatchFn>,
    combine: Option<Arc<AggregatePlan>>,
    stats: Arc<DataflowStats>,
    operator: &'static str,
) -> Stream<'scope, u64, Vec<Routed>> {
    let peers = stream.scope().peers();
    let fields: Vec<SortField> =
        keys.output_schema().fields().iter().map(|f| SortField::new(f.data_type().clone())).collect();
    stream.unary::<CapacityContainerBuilder<Vec<Routed>>, _, _, _>(Pipeline, "Partition", move |_, _| {
        let converter = RowConverter::new(fields).ok();
        let mut combiner = combine.and_then(Combiner::new);
        move |input, output| {
            input.for_each(|cap, data| {
                let mut session = output.session(&cap);
                for batch in data.drain(..) {
                    let Some(c) = &converter else {
                        let e = DataflowError::Internal(format!("{operator} key types are not orderable"));
                        stats.record_error(operator, batch.num_rows(), &e);
                        continue;
                    };
                    let routed = match combiner.as_mut() {
                        // Rows that fail to evaluate are isolated and counted; the rest are
                        // combined or routed.
                        Some(comb) => batch.isolate(
                            |b| match comb.combine(b, peers)? {
                                Combined::Partial(parts) => Ok(parts),
                                Combined::Rows(hashes) => partition(b, keys.as_ref(), c, peers, hashes),
                            },
                            |rows, e| stats.record_error(operator, rows, e),
                        ),
                        None => match partition(&batch, keys.as_ref(), c, peers, None) {
                            Ok(parts) => vec![parts],
                            Err(e) => {
                                stats.record_error(operator, batch.num_rows(), &e);
                                Vec::new()
                            }
                        },
                    };
                    routed.into_iter().flatten().for_each(|r| session.give(r));
                }
            });
        }
    })
}

/// Input held back until its epoch is complete: per epoch, a retained capability and the data.
pub(crate) type PendingEpochs<V> = BTreeMap<u64, (Capability<u64>, V)>;

/// A capability for output that belongs to epoch `epoch` (what that epoch's watermark closed),
/// from the operator's held capability: at `epoch`, or at the held time if that is later.
/// `None` once the operator holds nothing (its input has ended and been drained).
pub(crate) fn stamp(held: Option<&Capability<u64>>, epoch: u64) -> Option<Capability<u64>> {
    held.map(|h| h.delayed(&epoch.max(*h.time())))
}

/// Steps `reader` through its queued epochs up to `upto` and calls `close` with each one's
/// watermark of `sources`; returns the non-empty results with the epoch they belong to.
pub(crate) fn closes_through(
    reader: &mut WatermarkReader,
    upto: u64,
    sources: &[String],
    mut close: impl FnMut(i64) -> Vec<DiffBatch>,
) -> Vec<(u64, Vec<DiffBatch>)> {
    let mut closed = Vec::new();
    reader.step_through(upto, sources, |e, wm| {
        let out = close(wm);
        if !out.is_empty() {
            closed.push((e, out));
        }
    });
    closed
}

/// The pending data of the epoch of `cap`, created (retaining a capability) on first use.
pub(crate) fn epoch_slot<'a, V: Default>(
    pending: &'a mut PendingEpochs<V>,
    cap: &InputCapability<u64>,
) -> Option<&'a mut V> {
    let &t = cap.least()?;
    match pending.entry(t) {
        std::collections::btree_map::Entry::Occupied(o) => Some(&mut o.into_mut().1),
        std::collections::btree_map::Entry::Vacant(v) => {
            cap.retain_least(0).map(|c| &mut v.insert((c, V::default())).1)
        }
    }
}
