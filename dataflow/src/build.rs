//! Instantiates a [`PlanNode`] as timely operators inside a dataflow scope.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;

use timely::dataflow::operators::Concatenate;

use crate::checkpoint::{CheckpointFeed, OperatorCheckpoints, RestoreState};
use crate::operators::aggregate::AggregateExt;
use crate::operators::filter::FilterExt;
use crate::operators::join::JoinExt;
use crate::operators::project::ProjectExt;
use crate::operators::session::SessionExt;
use crate::operators::window::WindowExt;
use crate::operators::BatchStream;
use crate::plan::PlanNode;
use crate::stats::DataflowStats;
use crate::watermark::WatermarkFeed;

/// What the operators of one dataflow on one worker share.
pub struct BuildContext {
    /// Error counters of the dataflow.
    pub stats: Arc<DataflowStats>,
    /// Epoch watermarks for operators that close state by event time.
    pub watermarks: WatermarkFeed,
    /// Checkpoint requests for stateful operators.
    pub checkpoints: CheckpointFeed,
    /// The dataflow's id.
    pub dataflow: u64,
    /// This worker and the number of workers.
    pub worker: usize,
    /// Number of workers.
    pub peers: usize,
    /// State to load (a restart from a checkpoint).
    pub restore: Option<Arc<RestoreState>>,
    /// Ordinal of the next stateful operator built.
    pub next_ordinal: Cell<u32>,
    /// Checkpoints can be taken ([`crate::runtime::RuntimeConfig::checkpoints`]); when not,
    /// operators may skip tracking what changed between them.
    pub track_changes: bool,
}

impl BuildContext {
    /// Checkpoint wiring for the next stateful operator (ordinals follow the build order, the
    /// same for the same plan on every run).
    pub fn operator_checkpoints(&self) -> OperatorCheckpoints {
        let ordinal = self.next_ordinal.get();
        self.next_ordinal.set(ordinal + 1);
        OperatorCheckpoints {
            dataflow: self.dataflow,
            ordinal,
            worker: self.worker,
            peers: self.peers,
            track_changes: self.track_changes,
            reader: self.checkpoints.reader(),
            restore: self
                .restore
                .as_ref()
                .and_then(|r| r.operators.get(&ordinal).cloned())
                .map(|v| v.into_iter().map(|c| c.into_iter().filter(|s| !s.is_empty()).collect()).collect())
                .unwrap_or_default(),
        }
    }
}

/// Operators built so far in one dataflow, by the identity of the plan subtree they compute:
/// a later plan (or a later part of the same plan) that contains the same subtree reads them
/// instead of building a copy. A stream that reads another stream carries that stream's plan
/// (sharing its compiled parts), so in a group of dataflows it reads the other's output.
#[derive(Default)]
pub struct Built<'scope> {
    streams: HashMap<String, BatchStream<'scope>>,
}

/// The identity of a plan subtree: its operators' compiled parts (shared, not copied, where a
/// plan is inlined into another) and its inputs'.
fn identity(node: &PlanNode) -> String {
    fn at<T: ?Sized>(p: &Arc<T>) -> usize {
        Arc::as_ptr(p) as *const () as usize
    }
    match node {
        PlanNode::Source { name, .. } => format!("source {name:?}"),
        PlanNode::Filter { input, predicate } => format!("filter {:x} ({})", at(predicate), identity(input)),
        PlanNode::Project { input, map } => format!("project {:x} ({})", at(map), identity(input)),
        PlanNode::Aggregate { input, plan } => format!("aggregate {:x} ({})", at(plan), identity(input)),
        PlanNode::WindowAssign { input, spec } => format!("window {:x} ({})", at(spec), identity(input)),
        PlanNode::WindowAggregate { input, plan, close } => {
            format!("window aggregate {:x} {:x} ({})", at(plan), at(close), identity(input))
        }
        PlanNode::Join { left, right, plan } => {
            format!("join {:x} ({}) ({})", at(plan), identity(left), identity(right))
        }
        PlanNode::Union { inputs, .. } => {
            let parts: Vec<String> = inputs.iter().map(identity).collect();
            format!("union ({})", parts.join(") ("))
        }
    }
}

/// For plans built in this order into one dataflow, how many stateful operators each one
/// builds itself (the rest it reads from an earlier plan or an earlier part of itself). Its
/// operators keep the ordinals they would have if it were built alone.
pub fn operators_built(plans: &[&PlanNode]) -> Vec<u32> {
    fn count(node: &PlanNode, seen: &mut std::collections::HashSet<String>) -> u32 {
        if !seen.insert(identity(node)) {
            return 0;
        }
        u32::from(node.is_stateful()) + node.inputs().into_iter().map(|i| count(i, seen)).sum::<u32>()
    }
    let mut seen = std::collections::HashSet::new();
    plans.iter().map(|p| count(p, &mut seen)).collect()
}

/// Builds the operators of `node` over the given source streams (one stream per source name),
/// reusing the ones in `built` for subtrees computed already.
pub fn build_plan<'scope>(
    node: &PlanNode,
    sources: &HashMap<String, BatchStream<'scope>>,
    ctx: &BuildContext,
    built: &mut Built<'scope>,
) -> Option<BatchStream<'scope>> {
    let id = identity(node);
    if let Some(s) = built.streams.get(&id) {
        // Its operators' ordinals stay taken, so this plan's others keep theirs.
        ctx.next_ordinal.set(ctx.next_ordinal.get() + node.stateful_operators());
        return Some(s.clone());
    }
    let out = build_node(node, sources, ctx, built)?;
    built.streams.insert(id, out.clone());
    Some(out)
}

fn build_node<'scope>(
    node: &PlanNode,
    sources: &HashMap<String, BatchStream<'scope>>,
    ctx: &BuildContext,
    built: &mut Built<'scope>,
) -> Option<BatchStream<'scope>> {
    let stats = &ctx.stats;
    Some(match node {
        PlanNode::Source { name, .. } => sources.get(name)?.clone(),
        PlanNode::Filter { input, predicate } => {
            build_plan(input, sources, ctx, built)?.filter_batches(predicate.clone(), stats.clone())
        }
        PlanNode::Project { input, map } => {
            build_plan(input, sources, ctx, built)?.project_batches(map.clone(), stats.clone())
        }
        PlanNode::Aggregate { input, plan } => {
            let rows = build_plan(input, sources, ctx, built)?;
            rows.aggregate_batches(plan.clone(), stats.clone(), ctx.operator_checkpoints())
        }
        PlanNode::WindowAssign { input, spec } => {
            build_plan(input, sources, ctx, built)?.assign_windows(spec.clone(), stats.clone())
        }
        PlanNode::WindowAggregate { input, plan, close } => {
            let rows = build_plan(input, sources, ctx, built)?;
            let ckpt = ctx.operator_checkpoints();
            match close.session {
                Some(_) => rows.session_aggregate(
                    plan.clone(),
                    close.clone(),
                    input.schema(),
                    stats.clone(),
                    &ctx.watermarks,
                    ckpt,
                ),
                None => rows.window_aggregate(plan.clone(), close.clone(), stats.clone(), &ctx.watermarks, ckpt),
            }
        }
        PlanNode::Join { left, right, plan } => {
            let l = build_plan(left, sources, ctx, built)?;
            let r = build_plan(right, sources, ctx, built)?;
            let ckpt = ctx.operator_checkpoints();
            l.join_batches(r, plan.clone(), (left.schema(), right.schema()), stats.clone(), &ctx.watermarks, ckpt)
        }
        PlanNode::Union { inputs, .. } => {
            let streams: Vec<_> = inputs.iter().map(|i| build_plan(i, sources, ctx, built)).collect::<Option<_>>()?;
            let scope = streams.first()?.scope();
            scope.concatenate(streams)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testing::Columns;
    use crate::plan::{AggKind, AggSpec, AggregatePlan, BatchFn};
    use arrow::datatypes::{DataType, Field, Schema};

    fn schema() -> arrow::datatypes::SchemaRef {
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]))
    }

    fn source() -> PlanNode {
        PlanNode::Source { name: "s".into(), schema: schema(), append_only: true }
    }

    fn count_by_k(input: PlanNode) -> PlanNode {
        let out =
            Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true), Field::new("n", DataType::Int64, true)]));
        let plan = AggregatePlan {
            keys: Arc::new(Columns(vec![0], schema())),
            aggs: vec![AggSpec { kind: AggKind::CountStar, arg: None, output_type: DataType::Int64 }],
            output_schema: out,
            input_append_only: true,
        };
        PlanNode::Aggregate { input: Box::new(input), plan: Arc::new(plan) }
    }

    fn first_column(input: PlanNode) -> PlanNode {
        PlanNode::Project { input: Box::new(input), map: Arc::new(Columns(vec![0], schema())) as Arc<dyn BatchFn> }
    }

    /// A plan that carries another's (a stream reading a stream) builds only its own operators;
    /// the same query compiled twice shares nothing; a subtree used twice in one plan is built
    /// once.
    #[test]
    fn shared_subtrees_are_built_once() {
        let a = count_by_k(source());
        let b = first_column(a.clone());
        let c = count_by_k(b.clone());
        assert_eq!(operators_built(&[&a, &b, &c]), vec![1, 0, 1]);
        assert_eq!(operators_built(&[&c]), vec![2]);
        let again = count_by_k(source());
        assert_eq!(operators_built(&[&a, &again]), vec![1, 1]);
        let twice = PlanNode::Union { inputs: vec![a.clone(), a.clone()], schema: a.schema() };
        assert_eq!(operators_built(&[&twice]), vec![1]);
        assert_eq!(twice.stateful_operators(), 2, "ordinals are still counted for both copies");
    }
}
