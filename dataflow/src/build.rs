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

/// Builds the operators of `node` over the given source streams (one stream per source name).
pub fn build_plan<'scope>(
    node: &PlanNode,
    sources: &HashMap<String, BatchStream<'scope>>,
    ctx: &BuildContext,
) -> Option<BatchStream<'scope>> {
    let stats = &ctx.stats;
    Some(match node {
        PlanNode::Source { name, .. } => sources.get(name)?.clone(),
        PlanNode::Filter { input, predicate } => {
            build_plan(input, sources, ctx)?.filter_batches(predicate.clone(), stats.clone())
        }
        PlanNode::Project { input, map } => {
            build_plan(input, sources, ctx)?.project_batches(map.clone(), stats.clone())
        }
        PlanNode::Aggregate { input, plan } => {
            let rows = build_plan(input, sources, ctx)?;
            rows.aggregate_batches(plan.clone(), stats.clone(), ctx.operator_checkpoints())
        }
        PlanNode::WindowAssign { input, spec } => {
            build_plan(input, sources, ctx)?.assign_windows(spec.clone(), stats.clone())
        }
        PlanNode::WindowAggregate { input, plan, close } => {
            let rows = build_plan(input, sources, ctx)?;
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
            let l = build_plan(left, sources, ctx)?;
            let r = build_plan(right, sources, ctx)?;
            let ckpt = ctx.operator_checkpoints();
            l.join_batches(r, plan.clone(), (left.schema(), right.schema()), stats.clone(), &ctx.watermarks, ckpt)
        }
        PlanNode::Union { inputs, .. } => {
            let streams: Vec<_> = inputs.iter().map(|i| build_plan(i, sources, ctx)).collect::<Option<_>>()?;
            let scope = streams.first()?.scope();
            scope.concatenate(streams)
        }
    })
}
