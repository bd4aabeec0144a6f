//! Session windows: `GROUP BY k, SESSION(ts, gap)` as a timely operator over
//! [`SessionAggregate`] state, exchanged by the group keys without the window (a key's rows must
//! meet on one worker to be merged into sessions), closing sessions as the watermark passes.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;

use super::{closes_through, epoch_slot, route_by_keys, stamp, BatchStream, PendingEpochs};
use crate::aggregate_state::owned_by;
use crate::batch::{DiffBatch, Routed};
use crate::checkpoint::OperatorCheckpoints;
use crate::error::DataflowError;
use crate::plan::{AggregatePlan, BatchFn, SessionWindow, WindowClose};
use crate::session_state::{KeySubset, SessionAggregate};
use crate::stats::{DataflowStats, StateGauge};
use crate::watermark::WatermarkFeed;

/// Extension trait adding the session-window aggregate.
pub trait SessionExt<'scope> {
    /// Aggregates per group and session (`close.session` says which keys are the window and the
    /// gap); `input_schema` is the schema of the windowed rows.
    fn session_aggregate(
        self,
        plan: Arc<AggregatePlan>,
        close: Arc<WindowClose>,
        input_schema: SchemaRef,
        stats: Arc<DataflowStats>,
        watermarks: &WatermarkFeed,
        ckpt: OperatorCheckpoints,
    ) -> BatchStream<'scope>;
}

impl<'scope> SessionExt<'scope> for BatchStream<'scope> {
    fn session_aggregate(
        self,
        plan: Arc<AggregatePlan>,
        close: Arc<WindowClose>,
        input_schema: SchemaRef,
        stats: Arc<DataflowStats>,
        watermarks: &WatermarkFeed,
        ckpt: OperatorCheckpoints,
    ) -> BatchStream<'scope> {
        // Built only for windows whose close says they are sessions.
        let session = close.session.unwrap_or(SessionWindow { start_key: 0, gap_ms: 1 });
        let nkeys = plan.keys.output_schema().fields().len();
        let group_keys: Vec<usize> = (0..nkeys).filter(|&i| i != session.start_key && i != close.end_key).collect();
        let route: Arc<dyn BatchFn> = Arc::new(KeySubset::new(plan.keys.clone(), group_keys));
        let routed = route_by_keys(self, route, None, stats.clone(), "window");
        let arg_types: Vec<_> =
            plan.aggs.iter().map(|a| a.arg.as_ref().map(|f| f.output_schema().field(0).data_type().clone())).collect();
        let mut reader = watermarks.reader();
        routed.unary_frontier::<CapacityContainerBuilder<Vec<DiffBatch>>, _, _, _>(
            Exchange::new(|r: &Routed| r.target as u64),
            "SessionWindowAggregate",
            move |initial, _| {
                let mut held: Option<Capability<u64>> = Some(initial);
                let mut state = SessionAggregate::new(
                    plan.clone(),
                    &arg_types,
                    session.start_key,
                    close.end_key,
                    session.gap_ms,
                    close.emit_on_close,
                    &input_schema,
                );
                if let Err(e) = &state {
                    stats.record_error("window", 0, e);
                }
                if let Ok(st) = state.as_mut() {
                    st.set_worker(ckpt.worker, ckpt.peers);
                    let owns = owned_by(ckpt.worker, ckpt.peers);
                    // Session snapshots are whole: the newest checkpoint's replace older ones.
                    if let Some(newest) = ckpt.restore.last() {
                        for (i, snapshot) in newest.iter().enumerate() {
                            if let Err(e) = st.restore(snapshot, &owns, i == 0) {
                                stats.record_error("window", 0, &e);
                            }
                        }
                    }
                }
                let mut gauge = StateGauge::new(stats.clone());
                let mut pending: PendingEpochs<Vec<DiffBatch>> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        if let Some(batches) = epoch_slot(&mut pending, &cap) {
                            batches.extend(data.drain(..).map(|r| r.batch));
                        }
                    });
                    let Ok(st) = state.as_mut() else {
                        // Nothing can be computed; drop the input (counted once above).
                        pending.clear();
                        held = None;
                        ckpt.serve_empty(|e| frontier.less_equal(&e));
                        return;
                    };
                    // Complete epochs in segments ending at checkpoint epochs (see WindowAggregate).
                    loop {
                        let due = ckpt.due(|e| frontier.less_equal(&e));
                        let upto = due.as_ref().map_or(u64::MAX, |r| r.epoch);
                        while let Some((&t, _)) = pending.first_key_value() {
                            if t > upto || frontier.less_equal(&t) {
                                break;
                            }
                            let Some((_, (cap, batches))) = pending.pop_first() else { break };
                            // What the watermarks of the epochs before this one close, each
                            // stamped with its own epoch.
                            let closed = closes_through(&mut reader, t.saturating_sub(1), &close.sources, |wm| {
                                close_sessions(st, wm, &stats)
                            });
                            for (e, out) in closed {
                                if let Some(at) = stamp(held.as_ref(), e) {
                                    let mut session = output.session(&at);
                                    out.into_iter().for_each(|b| session.give(b));
                                }
                            }
                            let bound = reader.watermark(&close.sources);
                            let mut session = output.session(&cap);
                            let mut results = Vec::new();
                            match st.apply(&batches, bound) {
                                Ok(r) => results.push(r),
                                // A row whose keys or aggregate arguments fail costs only itself.
                                Err(_) => {
                                    for b in &batches {
                                        results.extend(b.isolate(
                                            |p| st.apply(std::slice::from_ref(p), bound),
                                            |rows, e| stats.record_error("window", rows, e),
                                        ));
                                    }
                                }
                            }
                            for (out, late, untimed) in results {
                                out.into_iter().for_each(|b| session.give(b));
                                if late > 0 {
                                    stats.record_late(late);
                                }
                                if untimed > 0 {
                                    let e = DataflowError::Eval(
                                        "a session window needs an event time; the row's is NULL".into(),
                                    );
                                    stats.record_error("window", untimed, &e);
                                }
                            }
                            // What this epoch's own watermark closes, in this epoch: also the
                            // sessions its retractions shrank to an end the watermark passed.
                            reader.advance_to(t);
                            let wm = reader.watermark(&close.sources);
                            close_sessions(st, wm, &stats).into_iter().for_each(|b| session.give(b));
                        }
                        // Close what the watermarks of the segment's remaining complete epochs
                        // pass, each in its epoch.
                        let f = frontier.frontier().iter().next().copied();
                        let last = match &due {
                            Some(r) => r.epoch,
                            None => f.map_or(u64::MAX, |f| f.saturating_sub(1)),
                        };
                        for (e, out) in
                            closes_through(&mut reader, last, &close.sources, |wm| close_sessions(st, wm, &stats))
                        {
                            if let Some(at) = stamp(held.as_ref(), e) {
                                let mut session = output.session(&at);
                                out.into_iter().for_each(|b| session.give(b));
                            }
                        }
                        match due {
                            Some(req) => ckpt.deliver(&req, st.snapshot()),
                            None => {
                                match f {
                                    Some(f) => {
                                        if let Some(h) = held.as_mut() {
                                            if *h.time() < f {
                                                h.downgrade(&f);
                                            }
                                        }
                                    }
                                    None => held = None,
                                }
                                break;
                            }
                        }
                    }
                    gauge.set(st.state_rows());
                }
            },
        )
    }
}

/// The sessions `wm` closes (their final rows with `EMIT ON WINDOW CLOSE`); a failure is
/// counted and closes nothing.
fn close_sessions(st: &mut SessionAggregate, wm: i64, stats: &DataflowStats) -> Vec<DiffBatch> {
    st.close(wm).unwrap_or_else(|e| {
        stats.record_error("window", 0, &e);
        Vec::new()
    })
}
