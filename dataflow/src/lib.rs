//! LaminarDB's runtime: timely dataflow workers executing incremental operators over Arrow
//! batches whose rows carry signed multiplicities.
//!
//! The crate knows nothing about SQL or I/O. A [`plan::PlanNode`] describes a computation;
//! [`runtime::Runtime`] installs it on every worker, feeds source batches into it, closes epochs,
//! and reports each completed epoch's output to an [`operators::capture::EpochSink`].
//!
//! # Examples
//! ```
//! use std::sync::Arc;
//! use arrow::array::{Int64Array, RecordBatch};
//! use arrow::datatypes::{DataType, Field, Schema};
//! use laminar_dataflow::{batch::DiffBatch, merge::EpochMerger, plan::PlanNode};
//! use laminar_dataflow::runtime::{InstallRequest, Runtime, RuntimeConfig};
//! use parking_lot::Mutex;
//!
//! let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
//! let rt = Runtime::start(RuntimeConfig { workers: 2, ..Default::default() }).unwrap();
//! let seen = Arc::new(Mutex::new(0usize));
//! let s2 = seen.clone();
//! let merger = Arc::new(EpochMerger::new(2, Box::new(move |_epoch, batches| {
//!     *s2.lock() += batches.iter().map(|b| b.num_rows()).sum::<usize>();
//! })));
//! let plan = PlanNode::Source { name: "t".into(), schema: schema.clone(), append_only: true };
//! rt.install(InstallRequest { id: 1, plan, output: merger.clone(), backfill: vec![], stats: Default::default(), restore: None, per_process: false }).unwrap();
//! let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap();
//! rt.send(&Arc::from("t"), DiffBatch::inserts(batch)).unwrap();
//! let e = rt.close_epoch().unwrap();
//! assert!(merger.wait_delivered(e, std::time::Duration::from_secs(10)));
//! assert_eq!(*seen.lock(), 3);
//! rt.shutdown();
//! ```

pub mod accumulators;
pub mod aggregate_state;
pub mod batch;
pub mod build;
pub mod checkpoint;
pub mod cluster;
pub mod codec;
pub mod combine;
pub mod error;
pub mod join_state;
pub mod merge;
pub mod operators;
pub mod plan;
pub mod rowstore;
pub mod runtime;
pub mod session_state;
pub mod stats;
pub mod watermark;

pub use error::{DataflowError, Result};
