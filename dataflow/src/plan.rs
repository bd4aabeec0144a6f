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

impl AggregatePlan {
    /// Each aggregate's argument evaluated over `batch` (`None` for `COUNT(*)`).
    pub fn eval_args(&self, batch: &RecordBatch) -> Result<Vec<Option<arrow::array::ArrayRef>>> {
        let mut args = Vec::with_capacity(self.aggs.len());
        for spec in &self.aggs {
            args.push(match &spec.arg {
                Some(f) => Some(f.eval(batch)?.column(0).clone()),
                None => None,
            });
        }
        Ok(args)
    }
}

/// Test helpers shared by the operator state tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Selects columns by index; the second field is the schema of the result.
    #[derive(Debug)]
    pub(crate) struct Columns(pub Vec<usize>, pub SchemaRef);

    impl BatchFn for Columns {
        fn eval(&self, b: &RecordBatch) -> Result<RecordBatch> {
            let cols = self.0.iter().map(|&i| b.column(i).clone()).collect();
            let rows = arrow::array::RecordBatchOptions::new().with_row_count(Some(b.num_rows()));
            Ok(RecordBatch::try_new_with_options(self.1.clone(), cols, &rows)?)
        }
        fn output_schema(&self) -> SchemaRef {
            self.1.clone()
        }
        fn describe(&self) -> String {
            format!("{:?}", self.0)
        }
    }
}

/// Which rows of an equi-join appear in its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinKind {
    /// Matching pairs only.
    Inner,
    /// Matching pairs, and left rows without a match padded with nulls.
    Left,
    /// Matching pairs, and right rows without a match padded with nulls.
    Right,
    /// Matching pairs, and unmatched rows of both sides padded with nulls.
    Full,
}

impl JoinKind {
    /// True when unmatched left rows are kept.
    pub fn keeps_left(self) -> bool {
        matches!(self, JoinKind::Left | JoinKind::Full)
    }

    /// True when unmatched right rows are kept.
    pub fn keeps_right(self) -> bool {
        matches!(self, JoinKind::Right | JoinKind::Full)
    }

    /// SQL spelling.
    pub fn name(self) -> &'static str {
        match self {
            JoinKind::Inner => "Inner",
            JoinKind::Left => "Left",
            JoinKind::Right => "Right",
            JoinKind::Full => "Full",
        }
    }
}

/// An event-time bound between the two sides of a join: `right.ts - left.ts` lies in
/// `[lower_ms, upper_ms]` for every matching pair. With watermarks on both sides, rows that can
/// no longer match (or be retracted in time) are dropped from the join state.
#[derive(Clone, Debug)]
pub struct TimeBound {
    /// Index of the event-time column in the left input.
    pub left_column: usize,
    /// Index of the event-time column in the right input.
    pub right_column: usize,
    /// Smallest `right.ts - left.ts` of a match (milliseconds).
    pub lower_ms: i64,
    /// Largest `right.ts - left.ts` of a match (milliseconds).
    pub upper_ms: i64,
    /// Sources whose watermarks bound the left input (minimum over them).
    pub left_sources: Vec<String>,
    /// Sources whose watermarks bound the right input.
    pub right_sources: Vec<String>,
}

/// An incremental equi-join of two collections.
#[derive(Clone, Debug)]
pub struct JoinPlan {
    /// Which rows appear.
    pub kind: JoinKind,
    /// Evaluates the left join keys.
    pub left_keys: Arc<dyn BatchFn>,
    /// Evaluates the right join keys (same types as the left keys).
    pub right_keys: Arc<dyn BatchFn>,
    /// Extra conditions of the ON clause, evaluated on a joined row (left columns, then right).
    pub filter: Option<Arc<dyn PredicateFn>>,
    /// Left columns followed by right columns, all nullable.
    pub output_schema: SchemaRef,
    /// Event-time bound that lets the state be cleaned as watermarks pass.
    pub time_bound: Option<TimeBound>,
}

/// Which event-time windows a row belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowKind {
    /// `TUMBLE(ts, size)`: consecutive windows of `size_ms`, aligned to the epoch of time.
    Tumble {
        /// Window length.
        size_ms: i64,
    },
    /// `HOP(ts, slide, size)`: windows of `size_ms` starting every `slide_ms`.
    Hop {
        /// Window length.
        size_ms: i64,
        /// Distance between window starts.
        slide_ms: i64,
    },
    /// `SESSION(ts, gap)`: per group, maximal runs of rows less than `gap_ms` apart. The
    /// assignment gives each row its own window `[ts, ts + gap)`; the aggregate merges them.
    Session {
        /// Inactivity that ends a session.
        gap_ms: i64,
    },
}

/// Assigns rows to windows: the output is the input's columns followed by `window_start` and
/// `window_end` (the time column's type), one row per window the input row belongs to.
#[derive(Clone, Debug)]
pub struct WindowSpec {
    /// Window shape.
    pub kind: WindowKind,
    /// Index of the event-time column in the input.
    pub time_column: usize,
    /// Input columns, then `window_start`, `window_end`.
    pub output_schema: SchemaRef,
}

/// Session windows of a windowed aggregate: windows merge per group instead of being fixed.
#[derive(Clone, Copy, Debug)]
pub struct SessionWindow {
    /// Index of the `window_start` group key.
    pub start_key: usize,
    /// Inactivity that ends a session (milliseconds).
    pub gap_ms: i64,
}

/// How a windowed aggregate closes its windows.
#[derive(Clone, Debug)]
pub struct WindowClose {
    /// Index of the `window_end` group key.
    pub end_key: usize,
    /// Set for session windows.
    pub session: Option<SessionWindow>,
    /// Sources whose watermarks (minimum) close windows; empty: windows never close.
    pub sources: Vec<String>,
    /// `EMIT ON WINDOW CLOSE`: one final row per group and window once the watermark passes the
    /// window's end, instead of updating rows as data arrives.
    pub emit_on_close: bool,
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
    /// Assigns rows to event-time windows.
    WindowAssign {
        /// Input.
        input: Box<PlanNode>,
        /// Windows.
        spec: Arc<WindowSpec>,
    },
    /// A grouped aggregate whose groups include a window: state per window, freed when the
    /// watermark passes the window's end; rows for closed windows are late and dropped.
    WindowAggregate {
        /// Input (rows carrying `window_end`).
        input: Box<PlanNode>,
        /// Aggregate.
        plan: Arc<AggregatePlan>,
        /// Closing.
        close: Arc<WindowClose>,
    },
    /// Incremental equi-join.
    Join {
        /// Left input.
        left: Box<PlanNode>,
        /// Right input.
        right: Box<PlanNode>,
        /// The join.
        plan: Arc<JoinPlan>,
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
            PlanNode::Join { plan, .. } => plan.output_schema.clone(),
            PlanNode::WindowAssign { spec, .. } => spec.output_schema.clone(),
            PlanNode::WindowAggregate { plan, .. } => plan.output_schema.clone(),
            PlanNode::Union { schema, .. } => schema.clone(),
        }
    }

    /// True when the node's output never contains retractions.
    pub fn is_append_only(&self) -> bool {
        match self {
            PlanNode::Source { append_only, .. } => *append_only,
            PlanNode::Filter { input, .. } | PlanNode::Project { input, .. } => input.is_append_only(),
            PlanNode::Aggregate { .. } => false,
            PlanNode::WindowAssign { input, .. } => input.is_append_only(),
            // Final rows only: each (group, window) is emitted once.
            PlanNode::WindowAggregate { close, .. } => close.emit_on_close,
            PlanNode::Join { left, right, plan } => {
                // An outer join retracts a null-padded row when its first match arrives.
                plan.kind == JoinKind::Inner && left.is_append_only() && right.is_append_only()
            }
            PlanNode::Union { inputs, .. } => inputs.iter().all(PlanNode::is_append_only),
        }
    }

    /// Columns that identify a row of the output (no two rows share them), if known: the group
    /// keys of an aggregate, kept through filters and through projections that keep those
    /// columns under their names, and a keyed source's primary key (`source_key`).
    pub fn unique_key(&self, source_key: &dyn Fn(&str) -> Vec<String>) -> Option<Vec<String>> {
        match self {
            PlanNode::Source { name, append_only, .. } => {
                let k = if *append_only { Vec::new() } else { source_key(name) };
                (!k.is_empty()).then_some(k)
            }
            PlanNode::Filter { input, .. } => input.unique_key(source_key),
            PlanNode::Project { input, map } => {
                let k = input.unique_key(source_key)?;
                let out = map.output_schema();
                k.iter().all(|c| out.field_with_name(c).is_ok()).then_some(k)
            }
            PlanNode::Aggregate { plan, .. } | PlanNode::WindowAggregate { plan, .. } => {
                let n = plan.keys.output_schema().fields().len();
                (n > 0).then(|| plan.output_schema.fields().iter().take(n).map(|f| f.name().clone()).collect())
            }
            PlanNode::WindowAssign { .. } | PlanNode::Join { .. } | PlanNode::Union { .. } => None,
        }
    }

    /// Whether this node's operator keeps state (aggregates, windows, joins): it delivers one
    /// snapshot per worker and checkpoint.
    pub fn is_stateful(&self) -> bool {
        matches!(self, PlanNode::Aggregate { .. } | PlanNode::WindowAggregate { .. } | PlanNode::Join { .. })
    }

    /// Number of stateful operators in the plan (see [`PlanNode::is_stateful`]).
    pub fn stateful_operators(&self) -> u32 {
        u32::from(self.is_stateful()) + self.inputs().into_iter().map(PlanNode::stateful_operators).sum::<u32>()
    }

    /// The nodes this one reads, in build order.
    pub fn inputs(&self) -> Vec<&PlanNode> {
        match self {
            PlanNode::Source { .. } => Vec::new(),
            PlanNode::Filter { input, .. }
            | PlanNode::Project { input, .. }
            | PlanNode::WindowAssign { input, .. }
            | PlanNode::Aggregate { input, .. }
            | PlanNode::WindowAggregate { input, .. } => vec![input],
            PlanNode::Join { left, right, .. } => vec![left, right],
            PlanNode::Union { inputs, .. } => inputs.iter().collect(),
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
            PlanNode::Filter { input, .. }
            | PlanNode::Project { input, .. }
            | PlanNode::Aggregate { input, .. }
            | PlanNode::WindowAssign { input, .. }
            | PlanNode::WindowAggregate { input, .. } => input.collect_sources(out),
            PlanNode::Join { left, right, .. } => {
                left.collect_sources(out);
                right.collect_sources(out);
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
            PlanNode::WindowAssign { spec, .. } => {
                let time = spec.output_schema.field(spec.time_column).name().clone();
                match spec.kind {
                    WindowKind::Tumble { size_ms } => writeln!(s, "{pad}WindowAssign: TUMBLE({time}, {size_ms} ms)"),
                    WindowKind::Hop { size_ms, slide_ms } => {
                        writeln!(s, "{pad}WindowAssign: HOP({time}, slide {slide_ms} ms, size {size_ms} ms)")
                    }
                    WindowKind::Session { gap_ms } => {
                        writeln!(s, "{pad}WindowAssign: SESSION({time}, gap {gap_ms} ms)")
                    }
                }
            }
            PlanNode::WindowAggregate { plan, close, .. } => writeln!(
                s,
                "{pad}{}: keys=[{}] emit={} closed-by=watermark({}) exchange=hash({})",
                if close.session.is_some() { "SessionWindowAggregate" } else { "WindowAggregate" },
                plan.keys.describe(),
                if close.emit_on_close { "on-window-close" } else { "on-update" },
                if close.sources.is_empty() {
                    "none: state is unbounded".to_string()
                } else {
                    close.sources.join(", ")
                },
                if close.session.is_some() { "keys without the window" } else { "keys" }
            ),
            PlanNode::Join { plan, .. } => {
                let filter = plan.filter.as_ref().map(|f| format!(" filter=[{}]", f.describe())).unwrap_or_default();
                let state = match &plan.time_bound {
                    Some(b) => format!(
                        " state=bounded(right.ts - left.ts in [{} ms, {} ms], by watermarks)",
                        b.lower_ms, b.upper_ms
                    ),
                    None => String::new(),
                };
                writeln!(
                    s,
                    "{pad}IncrementalJoin: {} on=[{}] = [{}]{filter}{state} exchange=hash(keys)",
                    plan.kind.name(),
                    plan.left_keys.describe(),
                    plan.right_keys.describe()
                )
            }
            PlanNode::Union { .. } => writeln!(s, "{pad}UnionAll"),
        };
        match self {
            PlanNode::Source { .. } => {}
            PlanNode::Filter { input, .. }
            | PlanNode::Project { input, .. }
            | PlanNode::Aggregate { input, .. }
            | PlanNode::WindowAssign { input, .. }
            | PlanNode::WindowAggregate { input, .. } => input.explain_into(s, depth + 1),
            PlanNode::Join { left, right, .. } => {
                left.explain_into(s, depth + 1);
                right.explain_into(s, depth + 1);
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
