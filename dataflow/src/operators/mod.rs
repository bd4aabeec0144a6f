//! Timely operators over streams of [`DiffBatch`](crate::batch::DiffBatch) containers.

pub mod aggregate;
pub mod capture;
pub mod filter;
pub mod join;
pub mod project;
pub mod window;

use arrow::array::UInt32Array;
use arrow_row::RowConverter;
use timely::dataflow::Stream;

use crate::aggregate_state::key_hashes;
use crate::batch::{DiffBatch, Routed};
use crate::error::Result;
use crate::plan::BatchFn;

/// The stream type every operator consumes and produces: epochs of signed Arrow batches.
pub type BatchStream<'scope> = Stream<'scope, u64, Vec<DiffBatch>>;

/// Splits a batch by the hash of its keys into one batch per worker that owns them.
pub(crate) fn partition(
    batch: &DiffBatch,
    keys: &dyn BatchFn,
    converter: &RowConverter,
    peers: usize,
) -> Result<Vec<Routed>> {
    if peers == 1 {
        return Ok(vec![Routed { target: 0, batch: batch.clone() }]);
    }
    let keys = keys.eval(&batch.data)?;
    let hashes = key_hashes(converter, keys.columns(), batch.num_rows())?;
    let mut parts: Vec<Vec<u32>> = vec![Vec::new(); peers];
    for (i, h) in hashes.iter().enumerate() {
        parts[(*h % peers as u64) as usize].push(i as u32);
    }
    let mut out = Vec::new();
    for (target, idx) in parts.into_iter().enumerate() {
        if idx.is_empty() {
            continue;
        }
        let b = if idx.len() == batch.num_rows() { batch.clone() } else { batch.take(&UInt32Array::from(idx))? };
        out.push(Routed { target: target as u32, batch: b });
    }
    Ok(out)
}
