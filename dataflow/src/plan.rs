//! The dataflow plan: what the SQL planner produces and the runtime instantiates.
//!
//! Expressions are opaque here ([`BatchFn`], [`PredicateFn`]): the planner supplies them and the
//! runtime only calls them on whole Arrow batches.

use std::collections::BTreeSet;
use std::fmt::{self, Debug, Write as _};
use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};

use crate::error::Result;

/// A row-preserving function from a batch to a batch (projection, key extraction).
pub trait BatchFn: Send + Sync + Debug {
    /// Evaluates the function on a whole batch. The result has as many rows as the input.
    fn eval(&self, batch: &RecordBatch) -> Result<RecordBatch>;
    /// The schema of the batches `eval` returns.
    fn output_schema(&self) -> SchemaRef;
    /// A one-line description for `EXPLAIN`.
    fn describe(&self) -> String;
}

/// A predicate evaluated on a whole batch.
pub trait PredicateFn: Send + Sync + Debug {
    /// Evaluates the predicate; null means false.
    fn eval(&self, batch: &RecordBatch) -> Result<BooleanArray>;
    /// A one-line description for `EXPLAIN`.
    fn describe(&self) -> String;
}

/// Aggregate functions the incremental aggregate maintains under insertions and retractions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggKind {
    /// `COUNT(*)`.
    CountStar,
    /// `COUNT(x)`: non-null values.
    Count,
    /// `COUNT(DISTINCT x)`.
    CountDistinct,
    /// `SUM(x)`.
    Sum,
    /// `AVG(x)`.
    Avg,
    /// `MIN(x)`.
    Min,
    /// `MAX(x)`.
    Max,
}

impl AggKind {
    /// SQL spelling.
    pub fn name(self) -> &'static str {
        match self {
            AggKind::CountStar => "count(*)",
            AggKind::Count => "count",
            AggKind::CountDistinct => "count(distinct)",
            AggKind::Sum => "sum",
            AggKind::Avg => "avg",
            AggKind::Min => "min",
            AggKind::Max => "max",
        }
    }
}

/// One aggregate column.
#[derive(Clone, Debug)]
pub struct AggSpec {
    /// Which function.
    pub kind: AggKind,
    /// Evaluates the argument as a one-column batch (`None` for `COUNT(*)`).
    pub arg: Option<Arc<dyn BatchFn>>,
    /// The type of the output column.
    pub output_type: DataType,
}

/// An incremental `GROUP BY`.
#[derive(Clone, Debug)]
pub struct AggregatePlan {
    /// Evaluates the group keys (zero columns for a global aggregate).
    pub keys: Arc<dyn BatchFn>,
    /// The aggregates, in output order after the keys.
    pub aggs: Vec<AggSpec>,
    /// Keys followed by aggregates.
    pub output_schema: SchemaRef,
    /// True when the input never retracts, which lets MIN/MAX keep one value per group.
    pub input_append_only: bool,
}

/// A node of the dataflow plan.
#[derive(Clone, Debug)]
pub enum PlanNode {
    /// Rows of a source collection.
    Source {
        /// Source name.
        name: String,
        /// Source schema.
        schema: SchemaRef,
        /// True when the source only inserts.
        append_only: bool,
    },
    /// Keeps rows where the predicate holds.
    Filter {
        /// Input.
        input: Box<PlanNode>,
        /// Predicate.
        predicate: Arc<dyn PredicateFn>,
    },
    /// Computes new columns row by row.
    Project {
        /// Input.
        input: Box<PlanNode>,
        /// Projection.
        map: Arc<dyn BatchFn>,
    },
    /// Incremental grouped aggregate.
    Aggregate {
        /// Input.
        input: Box<PlanNode>,
        /// Aggregate.
        plan: Arc<AggregatePlan>,
    },
    /// Bag union of inputs with the same schema.
    Union {
        /// Inputs.
        inputs: Vec<PlanNode>,
        /// Output schema.
        schema: SchemaRef,
    },
}

impl PlanNode {
    /// Output schema of the node.
    pub fn schema(&self) -> SchemaRef {
        match self {
            PlanNode::Source { schema, .. } => schema.clone(),
            PlanNode::Filter { input, .. } => input.schema(),
            PlanNode::Project { map, .. } => map.output_schema(),
            PlanNode::Aggregate { plan, .. } => plan.output_schema.clone(),
            PlanNode::Union { schema, .. } => schema.clone(),
        }
    }

    /// True when the node's output never contains retractions.
    pub fn is_append_only(&self) -> bool {
        match self {
            PlanNode::Source { append_only, .. } => *append_only,
            PlanNode::Filter { input, .. } | PlanNode::Project { input, .. } => input.is_append_only(),
            PlanNode::Aggregate { .. } => false,
            PlanNode::Union { inputs, .. } => inputs.iter().all(PlanNode::is_append_only),
        }
    }

    /// Names of the sources this plan reads.
    pub fn sources(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        self.collect_sources(&mut out);
        out
    }

    fn collect_sources(&self, out: &mut BTreeSet<String>) {
        match self {
            PlanNode::Source { name, .. } => {
                out.insert(name.clone());
            }
            PlanNode::Filter { input, .. } | PlanNode::Project { input, .. } | PlanNode::Aggregate { input, .. } => {
                input.collect_sources(out)
            }
            PlanNode::Union { inputs, .. } => inputs.iter().for_each(|i| i.collect_sources(out)),
        }
    }

    /// An indented, human-readable rendering of the plan (`EXPLAIN`).
    pub fn explain(&self) -> String {
        let mut s = String::new();
        self.explain_into(&mut s, 0);
        s
    }

    fn explain_into(&self, s: &mut String, depth: usize) {
        let pad = "  ".repeat(depth);
        let _ = match self {
            PlanNode::Source { name, append_only, .. } => {
                writeln!(s, "{pad}Source: {name}{}", if *append_only { " (append-only)" } else { " (updating)" })
            }
            PlanNode::Filter { predicate, .. } => writeln!(s, "{pad}Filter: {}", predicate.describe()),
            PlanNode::Project { map, .. } => writeln!(s, "{pad}Project: {}", map.describe()),
            PlanNode::Aggregate { plan, .. } => {
                let aggs: Vec<String> = plan
                    .aggs
                    .iter()
                    .map(|a| match &a.arg {
                        Some(arg) => format!("{}({})", a.kind.name(), arg.describe()),
                        None => a.kind.name().to_string(),
                    })
                    .collect();
                writeln!(
                    s,
                    "{pad}IncrementalAggregate: keys=[{}] aggs=[{}] exchange=hash(keys)",
                    plan.keys.describe(),
                    aggs.join(", ")
                )
            }
            PlanNode::Union { .. } => writeln!(s, "{pad}UnionAll"),
        };
        match self {
            PlanNode::Source { .. } => {}
            PlanNode::Filter { input, .. } | PlanNode::Project { input, .. } | PlanNode::Aggregate { input, .. } => {
                input.explain_into(s, depth + 1)
            }
            PlanNode::Union { inputs, .. } => inputs.iter().for_each(|i| i.explain_into(s, depth + 1)),
        }
    }
}

impl fmt::Display for PlanNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.explain())
    }
}
