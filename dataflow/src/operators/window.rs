//! Event-time windows.
//!
//! `WindowAssign` appends `window_start`/`window_end` to every row (one copy per window for
//! hopping windows). `WindowAggregate` keeps one incremental aggregate per window on the worker
//! owning the group; when the watermark passes a window's end the window is closed: with
//! `EMIT ON WINDOW CLOSE` its final rows are emitted then, and in every mode its state is freed
//! and later rows for it are late (dropped and counted, never merged into a closed window).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;

use super::{closes_through, epoch_slot, route_by_keys, stamp, BatchStream, PendingEpochs};
use crate::aggregate_state::{owned_by, GroupedAggregate, Owns};
use crate::batch::{DiffBatch, Routed};
use crate::checkpoint::OperatorCheckpoints;
use crate::codec::{Dec, Enc};
use crate::error::{DataflowError, Result};
use crate::plan::{AggregatePlan, WindowClose, WindowKind, WindowSpec};
use crate::stats::{DataflowStats, StateGauge};
use crate::watermark::{event_time_ms, WatermarkFeed, NO_WATERMARK};

/// Milliseconds as values of an event-time column type.
fn ms_to_type(ms: Int64Array, t: &DataType) -> Result<ArrayRef> {
    let scaled = match t {
        DataType::Timestamp(TimeUnit::Second, _) => ms.unary::<_, arrow::datatypes::Int64Type>(|v| v.div_euclid(1000)),
        DataType::Timestamp(TimeUnit::Microsecond, _) => ms.unary(|v| v.saturating_mul(1000)),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => ms.unary(|v| v.saturating_mul(1_000_000)),
        _ => ms,
    };
    Ok(cast(&scaled, t)?)
}

/// Tumbling windows of `size_ms` computed in the time column's own unit (millisecond,
/// microsecond or nanosecond timestamps, or integers of milliseconds): no conversion per row,
/// and a row in the same window as the previous one reuses its start instead of dividing.
/// `None` for other column types.
fn tumble_native(spec: &WindowSpec, batch: &DiffBatch, size_ms: i64) -> Result<Option<DiffBatch>> {
    let col = batch.data.column(spec.time_column);
    let per_ms: i64 = match col.data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, _) | DataType::Int64 => 1,
        DataType::Timestamp(TimeUnit::Microsecond, _) => 1000,
        DataType::Timestamp(TimeUnit::Nanosecond, _) => 1_000_000,
        _ => return Ok(None),
    };
    let t = spec.output_schema.field(spec.time_column).data_type();
    if t != col.data_type() {
        return Ok(None);
    }
    let Some(size) = size_ms.checked_mul(per_ms) else { return Ok(None) };
    let values = cast(col, &DataType::Int64)?;
    let values = values.as_primitive::<arrow::datatypes::Int64Type>();
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    let mut starts = Vec::with_capacity(values.len());
    let mut ends = Vec::with_capacity(values.len());
    for &v in values.values() {
        if v < lo || v >= hi {
            lo = v.saturating_sub(v.rem_euclid(size));
            hi = lo.saturating_add(size);
        }
        starts.push(lo);
        ends.push(hi);
    }
    let nulls = values.nulls().cloned();
    let start = Int64Array::new(starts.into(), nulls.clone());
    let end = Int64Array::new(ends.into(), nulls);
    let mut cols = batch.data.columns().to_vec();
    cols.push(cast(&start, t)?);
    cols.push(cast(&end, t)?);
    let data = RecordBatch::try_new(spec.output_schema.clone(), cols)?;
    Ok(Some(DiffBatch { data, diffs: batch.diffs.clone() }))
}

/// Rows of `batch` with their windows appended.
pub fn assign_windows(spec: &WindowSpec, batch: &DiffBatch) -> Result<DiffBatch> {
    let (size, slide) = match spec.kind {
        WindowKind::Tumble { size_ms } => (size_ms, size_ms),
        WindowKind::Hop { size_ms, slide_ms } => (size_ms, slide_ms),
        // Each row's own window [ts, ts + gap); the session aggregate merges them.
        WindowKind::Session { gap_ms } => (gap_ms, i64::MAX),
    };
    if size <= 0 || slide <= 0 {
        return Err(DataflowError::Eval("window size and slide must be positive".into()));
    }
    let t = spec.output_schema.field(spec.time_column).data_type();
    if slide == size {
        if let Some(out) = tumble_native(spec, batch, size)? {
            return Ok(out);
        }
    }
    let ts = event_time_ms(batch.data.column(spec.time_column))?;
    if slide == size || slide == i64::MAX {
        // One window per row: computed column-wise.
        let start_ms: Int64Array = if slide == size { ts.unary(|v| v.div_euclid(size) * size) } else { ts.clone() };
        let end_ms: Int64Array = start_ms.unary(|s| s.saturating_add(size));
        let mut cols = batch.data.columns().to_vec();
        cols.push(ms_to_type(start_ms, t)?);
        cols.push(ms_to_type(end_ms, t)?);
        let data = RecordBatch::try_new(spec.output_schema.clone(), cols)?;
        return Ok(DiffBatch { data, diffs: batch.diffs.clone() });
    }
    let mut idx: Vec<u32> = Vec::with_capacity(ts.len());
    let mut starts: Vec<Option<i64>> = Vec::with_capacity(ts.len());
    for i in 0..ts.len() {
        if ts.is_null(i) {
            idx.push(i as u32);
            starts.push(None);
            continue;
        }
        let t = ts.value(i);
        // The last window containing t starts at floor(t / slide) * slide; earlier ones every
        // `slide` before it while they still contain t.
        let mut start = t.div_euclid(slide) * slide;
        while start > t - size {
            idx.push(i as u32);
            starts.push(Some(start));
            start -= slide;
        }
    }
    let expanded = batch.take(&UInt32Array::from(idx))?;
    let start_ms = Int64Array::from(starts);
    let end_ms: Int64Array = start_ms.unary(|s| s + size);
    let mut cols = expanded.data.columns().to_vec();
    cols.push(ms_to_type(start_ms, t)?);
    cols.push(ms_to_type(end_ms, t)?);
    let data = RecordBatch::try_new(spec.output_schema.clone(), cols)?;
    Ok(DiffBatch { data, diffs: expanded.diffs })
}

/// Extension trait adding the window operators.
pub trait WindowExt<'scope> {
    /// Appends `window_start`/`window_end` to each row ([`assign_windows`]).
    fn assign_windows(self, spec: Arc<WindowSpec>, stats: Arc<DataflowStats>) -> BatchStream<'scope>;
    /// Aggregates per group and window, closing windows as the watermark passes their end.
    /// `ckpt` connects it to checkpoints.
    fn window_aggregate(
        self,
        plan: Arc<AggregatePlan>,
        close: Arc<WindowClose>,
        stats: Arc<DataflowStats>,
        watermarks: &WatermarkFeed,
        ckpt: OperatorCheckpoints,
    ) -> BatchStream<'scope>;
}

struct Windows {
    plan: Arc<AggregatePlan>,
    close: Arc<WindowClose>,
    arg_types: Vec<Option<DataType>>,
    /// Window end (ms) → the aggregate of that window.
    open: BTreeMap<i64, GroupedAggregate>,
    /// Windows ending at or before this are closed.
    closed_upto: i64,
    /// Windows closed since the last snapshot.
    removed: Vec<i64>,
}

impl Windows {
    /// Every open window (`full`) or the changes since the last snapshot.
    fn snapshot(&mut self, full: bool) -> Vec<u8> {
        let mut out = Enc::new();
        out.i64(self.closed_upto);
        let removed = std::mem::take(&mut self.removed);
        out.u32(if full { 0 } else { removed.len() as u32 });
        if !full {
            removed.iter().for_each(|&e| out.i64(e));
        }
        let parts: Vec<(i64, Vec<u8>)> = self
            .open
            .iter_mut()
            .filter(|(_, a)| full || a.is_dirty())
            .map(|(&end, a)| (end, a.snapshot(full)))
            .collect();
        out.u32(parts.len() as u32);
        for (end, bytes) in parts {
            out.i64(end);
            out.bytes(&bytes);
        }
        out.buf
    }

    /// Loads a snapshot (the groups this worker owns) over the current state.
    fn restore(&mut self, snapshot: &[u8], owns: Owns<'_>) -> Result<()> {
        let mut d = Dec::new(snapshot);
        self.closed_upto = self.closed_upto.max(d.i64()?);
        for _ in 0..d.u32()? {
            self.open.remove(&d.i64()?);
        }
        for _ in 0..d.u32()? {
            let end = d.i64()?;
            let bytes = d.bytes()?;
            let agg = match self.open.get_mut(&end) {
                Some(a) => a,
                None => self.open.entry(end).or_insert(GroupedAggregate::new(self.plan.clone(), &self.arg_types)?),
            };
            agg.restore(bytes, owns)?;
        }
        Ok(())
    }

    /// Splits a batch by window end and folds each part into its window; returns rows late.
    /// Fails only before touching the state (the keys do not evaluate); a part whose aggregate
    /// arguments fail is narrowed down to its failing rows, which are counted in `stats`.
    /// `partial`: the batch holds partial aggregates ([`crate::combine`]), whose keys are its
    /// first columns and whose row counts say how many input rows each stands for.
    fn apply(
        &mut self,
        batch: &DiffBatch,
        partial: bool,
        late_bound: i64,
        touched: &mut Vec<i64>,
        stats: &DataflowStats,
    ) -> Result<usize> {
        let keys = if partial { None } else { Some(self.plan.keys.eval(&batch.data)?) };
        let end_column = match &keys {
            Some(k) => k.column(self.close.end_key),
            None => batch.data.column(self.close.end_key),
        };
        let ends = event_time_ms(end_column)?;
        let nk = self.plan.keys.output_schema().fields().len();
        let rows_of = |i: usize| -> usize {
            match partial {
                true => batch.data.columns()[nk + 1].as_primitive::<arrow::datatypes::Int64Type>().value(i) as usize,
                false => 1,
            }
        };
        // Rows by window end; a batch usually spans a window or two, so the last one found is
        // tried first.
        let mut parts: Vec<(Option<i64>, Vec<u32>)> = Vec::new();
        let mut last = usize::MAX;
        let mut late = 0;
        for i in 0..ends.len() {
            let e = ends.is_valid(i).then(|| ends.value(i));
            if let Some(e) = e {
                if e <= late_bound || e <= self.closed_upto {
                    late += rows_of(i);
                    continue;
                }
            }
            if last == usize::MAX || parts[last].0 != e {
                last = match parts.iter().position(|p| p.0 == e) {
                    Some(p) => p,
                    None => {
                        parts.push((e, Vec::new()));
                        parts.len() - 1
                    }
                };
            }
            parts[last].1.push(i as u32);
        }
        for (end, idx) in parts {
            // Rows without a window (null time) form a window that never closes.
            let end = end.unwrap_or(i64::MAX);
            let part =
                if idx.len() == batch.num_rows() { batch.clone() } else { batch.take(&UInt32Array::from(idx))? };
            let agg = match self.open.get_mut(&end) {
                Some(a) => a,
                None => self.open.entry(end).or_insert(GroupedAggregate::new(self.plan.clone(), &self.arg_types)?),
            };
            part.isolate(
                |p| if partial { agg.apply_partial(p, None) } else { agg.apply(p) },
                |rows, e| stats.record_error("window", rows, e),
            );
            touched.push(end);
        }
        Ok(late)
    }

    fn groups(&self) -> usize {
        self.open.values().map(GroupedAggregate::groups).sum()
    }

    /// Closes the windows that end at or before `wm`; returns their final rows with
    /// `EMIT ON WINDOW CLOSE` (nothing otherwise: the updating output already holds them).
    fn close(&mut self, wm: i64, stats: &DataflowStats) -> Vec<DiffBatch> {
        if wm <= self.closed_upto || wm == NO_WATERMARK {
            return Vec::new();
        }
        self.closed_upto = wm;
        let keep = self.open.split_off(&wm.saturating_add(1));
        let closing = std::mem::replace(&mut self.open, keep);
        self.removed.extend(closing.keys().copied());
        if !self.close.emit_on_close {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (_, mut agg) in closing {
            match agg.emit() {
                Ok(Some(rows)) => out.push(rows),
                Ok(None) => {}
                Err(e) => stats.record_error("window", 0, &e),
            }
        }
        out
    }
}

impl<'scope> WindowExt<'scope> for BatchStream<'scope> {
    fn assign_windows(self, spec: Arc<WindowSpec>, stats: Arc<DataflowStats>) -> BatchStream<'scope> {
        self.unary::<CapacityContainerBuilder<Vec<DiffBatch>>, _, _, _>(Pipeline, "WindowAssign", move |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    let mut session = output.session(&cap);
                    for batch in data.drain(..) {
                        let out = batch
                            .isolate(|b| assign_windows(&spec, b), |rows, e| stats.record_error("window", rows, e));
                        out.into_iter().for_each(|b| session.give(b));
                    }
                });
            }
        })
    }

    fn window_aggregate(
        self,
        plan: Arc<AggregatePlan>,
        close: Arc<WindowClose>,
        stats: Arc<DataflowStats>,
        watermarks: &WatermarkFeed,
        ckpt: OperatorCheckpoints,
    ) -> BatchStream<'scope> {
        let routed = route_by_keys(self, plan.keys.clone(), Some(plan.clone()), stats.clone(), "window");
        let arg_types: Vec<_> =
            plan.aggs.iter().map(|a| a.arg.as_ref().map(|f| f.output_schema().field(0).data_type().clone())).collect();
        let mut reader = watermarks.reader();
        routed.unary_frontier::<CapacityContainerBuilder<Vec<DiffBatch>>, _, _, _>(
            Exchange::new(|r: &Routed| r.target as u64),
            "WindowAggregate",
            move |initial, _| {
                let mut held: Option<Capability<u64>> = Some(initial);
                let mut w = Windows {
                    plan: plan.clone(),
                    close: close.clone(),
                    arg_types,
                    open: BTreeMap::new(),
                    closed_upto: NO_WATERMARK,
                    removed: Vec::new(),
                };
                let owns = owned_by(ckpt.worker, ckpt.peers);
                for snapshot in ckpt.restore_all() {
                    if let Err(e) = w.restore(snapshot, &owns) {
                        stats.record_error("window", 0, &e);
                    }
                }
                let mut gauge = StateGauge::new(stats.clone());
                let mut pending: PendingEpochs<Vec<(DiffBatch, bool)>> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        if let Some(batches) = epoch_slot(&mut pending, &cap) {
                            batches.extend(data.drain(..).map(|r| (r.batch, r.partial)));
                        }
                    });
                    // Complete epochs in segments that end at checkpoint epochs: each segment's
                    // data, then the windows its watermark closes, then the snapshot.
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
                            for (e, out) in closes_through(&mut reader, t.saturating_sub(1), &close.sources, |wm| {
                                w.close(wm, &stats)
                            }) {
                                if let Some(at) = stamp(held.as_ref(), e) {
                                    let mut session = output.session(&at);
                                    out.into_iter().for_each(|b| session.give(b));
                                }
                            }
                            let late_bound = reader.watermark(&close.sources);
                            let mut touched = Vec::new();
                            let mut late = 0;
                            for (b, partial) in &batches {
                                let done = b.isolate(
                                    |part| w.apply(part, *partial, late_bound, &mut touched, &stats),
                                    |rows, e| stats.record_error("window", rows, e),
                                );
                                late += done.iter().sum::<usize>();
                            }
                            if late > 0 {
                                stats.record_late(late);
                            }
                            if !close.emit_on_close {
                                touched.sort_unstable();
                                touched.dedup();
                                let mut session = output.session(&cap);
                                for end in touched {
                                    if let Some(agg) = w.open.get_mut(&end) {
                                        match agg.emit() {
                                            Ok(Some(out)) => session.give(out),
                                            Ok(None) => {}
                                            Err(e) => stats.record_error("window", 0, &e),
                                        }
                                    }
                                }
                            }
                        }
                        let f = frontier.frontier().iter().next().copied();
                        // The last complete epoch of this segment.
                        let last = match &due {
                            Some(r) => r.epoch,
                            None => f.map_or(u64::MAX, |f| f.saturating_sub(1)),
                        };
                        // Close what the watermarks of the segment's complete epochs pass, each
                        // in its epoch (a reader waiting for an epoch finds what it closed).
                        for (e, out) in closes_through(&mut reader, last, &close.sources, |wm| w.close(wm, &stats)) {
                            if let Some(at) = stamp(held.as_ref(), e) {
                                let mut session = output.session(&at);
                                out.into_iter().for_each(|b| session.give(b));
                            }
                        }
                        match due {
                            Some(req) => ckpt.deliver(&req, w.snapshot(req.full)),
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
                    gauge.set(w.groups());
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema};

    fn spec(kind: WindowKind) -> WindowSpec {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Int64, true),
            Field::new("window_start", DataType::Int64, true),
            Field::new("window_end", DataType::Int64, true),
        ]));
        WindowSpec { kind, time_column: 0, output_schema: schema }
    }

    fn rows(kind: WindowKind, ts: Vec<Option<i64>>) -> Vec<(Option<i64>, Option<i64>, Option<i64>)> {
        let input = Arc::new(Schema::new(vec![Field::new("ts", DataType::Int64, true)]));
        let b = RecordBatch::try_new(input, vec![Arc::new(Int64Array::from(ts))]).expect("batch");
        let out = assign_windows(&spec(kind), &DiffBatch::inserts(b)).expect("assign");
        let col = |i: usize| out.data.column(i).as_any().downcast_ref::<Int64Array>().expect("i64").clone();
        let (t, s, e) = (col(0), col(1), col(2));
        (0..out.num_rows())
            .map(|i| {
                (
                    t.is_valid(i).then(|| t.value(i)),
                    s.is_valid(i).then(|| s.value(i)),
                    e.is_valid(i).then(|| e.value(i)),
                )
            })
            .collect()
    }

    #[test]
    fn tumbling_and_hopping_windows() {
        let t = rows(WindowKind::Tumble { size_ms: 10 }, vec![Some(0), Some(9), Some(10), Some(-1), None]);
        assert_eq!(
            t,
            vec![
                (Some(0), Some(0), Some(10)),
                (Some(9), Some(0), Some(10)),
                (Some(10), Some(10), Some(20)),
                (Some(-1), Some(-10), Some(0)),
                (None, None, None)
            ]
        );
        let h = rows(WindowKind::Hop { size_ms: 10, slide_ms: 5 }, vec![Some(7), Some(10)]);
        assert_eq!(
            h,
            vec![
                (Some(7), Some(5), Some(15)),
                (Some(7), Some(0), Some(10)),
                (Some(10), Some(10), Some(20)),
                (Some(10), Some(5), Some(15))
            ]
        );
    }
}
