//! Timely operators over streams of [`DiffBatch`](crate::batch::DiffBatch) containers.

pub mod aggregate;
pub mod capture;
pub mod filter;
pub mod project;

use timely::dataflow::Stream;

use crate::batch::DiffBatch;

/// The stream type every operator consumes and produces: epochs of signed Arrow batches.
pub type BatchStream<'scope> = Stream<'scope, u64, Vec<DiffBatch>>;
