//! Instantiates a [`PlanNode`] as timely operators inside a dataflow scope.

use std::collections::HashMap;
use std::sync::Arc;

use timely::dataflow::operators::Concatenate;

use crate::operators::aggregate::AggregateExt;
use crate::operators::filter::FilterExt;
use crate::operators::project::ProjectExt;
use crate::operators::BatchStream;
use crate::plan::PlanNode;
use crate::stats::DataflowStats;

/// Builds the operators of `node` over the given source streams (one stream per source name).
pub fn build_plan<'scope>(
    node: &PlanNode,
    sources: &HashMap<String, BatchStream<'scope>>,
    stats: &Arc<DataflowStats>,
) -> Option<BatchStream<'scope>> {
    Some(match node {
        PlanNode::Source { name, .. } => sources.get(name)?.clone(),
        PlanNode::Filter { input, predicate } => {
            build_plan(input, sources, stats)?.filter_batches(predicate.clone(), stats.clone())
        }
        PlanNode::Project { input, map } => {
            build_plan(input, sources, stats)?.project_batches(map.clone(), stats.clone())
        }
        PlanNode::Aggregate { input, plan } => {
            build_plan(input, sources, stats)?.aggregate_batches(plan.clone(), stats.clone())
        }
        PlanNode::Union { inputs, .. } => {
            let streams: Vec<_> = inputs.iter().map(|i| build_plan(i, sources, stats)).collect::<Option<_>>()?;
            let scope = streams.first()?.scope();
            scope.concatenate(streams)
        }
    })
}
