//! Instantiates a [`PlanNode`] as timely operators inside a dataflow scope.

use std::collections::HashMap;
use std::sync::Arc;

use timely::dataflow::operators::Concatenate;

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
            build_plan(input, sources, ctx)?.aggregate_batches(plan.clone(), stats.clone())
        }
        PlanNode::WindowAssign { input, spec } => {
            build_plan(input, sources, ctx)?.assign_windows(spec.clone(), stats.clone())
        }
        PlanNode::WindowAggregate { input, plan, close } => {
            let rows = build_plan(input, sources, ctx)?;
            match close.session {
                Some(session) => rows.session_aggregate(
                    plan.clone(),
                    close.clone(),
                    session,
                    input.schema(),
                    stats.clone(),
                    &ctx.watermarks,
                ),
                None => rows.window_aggregate(plan.clone(), close.clone(), stats.clone(), &ctx.watermarks),
            }
        }
        PlanNode::Join { left, right, plan } => {
            let l = build_plan(left, sources, ctx)?;
            let r = build_plan(right, sources, ctx)?;
            l.join_batches(r, plan.clone(), (left.schema(), right.schema()), stats.clone(), &ctx.watermarks)
        }
        PlanNode::Union { inputs, .. } => {
            let streams: Vec<_> = inputs.iter().map(|i| build_plan(i, sources, ctx)).collect::<Option<_>>()?;
            let scope = streams.first()?.scope();
            scope.concatenate(streams)
        }
    })
}
