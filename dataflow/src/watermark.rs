//! Event-time watermarks, carried by epochs.
//!
//! Every source that declares `WATERMARK FOR col` has a watermark in the runtime
//! ([`WatermarkTable`]): the largest event time it has sent, minus its delay. A source moves its
//! watermark only together with the data that justifies it (under the same lock as the send), so
//! the value recorded when an epoch closes never covers rows of a later epoch.
//!
//! When the coordinator closes epoch `e`, it takes a [`WatermarkSnapshot`] and hands it to every
//! worker in the same FIFO channel as the advance. Each worker appends it to the queue of every
//! operator that asked for watermarks ([`WatermarkFeed`]) before its inputs move past `e`, so an
//! operator that sees its input frontier pass `e` finds the watermark "as of the end of `e`" in
//! its queue ([`WatermarkReader`]). This is the epoch→watermark map: the frontier carries the
//! watermark, and no separate channel is needed.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::datatypes::{DataType, Int64Type, TimeUnit};
use parking_lot::RwLock;

use crate::error::{DataflowError, Result};

/// "No watermark yet": nothing is late and no window closes.
pub const NO_WATERMARK: i64 = i64::MIN;

/// Watermarks of the sources at the close of one epoch (milliseconds of event time).
#[derive(Debug, Default)]
pub struct WatermarkSnapshot {
    values: Vec<(Arc<str>, i64)>,
}

impl WatermarkSnapshot {
    /// The watermark of `source` in this snapshot, or [`NO_WATERMARK`].
    pub fn get(&self, source: &str) -> i64 {
        self.values.iter().find(|(n, _)| &**n == source).map_or(NO_WATERMARK, |(_, v)| *v)
    }

    /// The sources and their watermarks.
    pub fn values(&self) -> impl Iterator<Item = (&str, i64)> {
        self.values.iter().map(|(n, v)| (&**n, *v))
    }

    /// A snapshot holding `values`.
    pub fn from_values<'a>(values: impl IntoIterator<Item = (&'a str, i64)>) -> Self {
        Self { values: values.into_iter().map(|(n, v)| (Arc::from(n), v)).collect() }
    }

    /// The watermarks of a source fed by several processes: per source, the minimum over
    /// `parts`, where a part without the source holds it at [`NO_WATERMARK`] (its rows may
    /// still come).
    pub fn min_of(parts: &[&WatermarkSnapshot]) -> Self {
        let mut names: Vec<&Arc<str>> = parts.iter().flat_map(|p| p.values.iter().map(|(n, _)| n)).collect();
        names.sort_unstable();
        names.dedup();
        let values =
            names.into_iter().map(|n| (n.clone(), parts.iter().map(|p| p.get(n)).min().unwrap_or(NO_WATERMARK)));
        Self { values: values.collect() }
    }
}

/// The runtime's per-source watermarks.
#[derive(Debug, Default)]
pub struct WatermarkTable {
    sources: RwLock<Vec<(Arc<str>, Arc<AtomicI64>)>>,
}

impl WatermarkTable {
    /// The watermark cell of `source`, created at [`NO_WATERMARK`] on first use.
    pub fn cell(&self, source: &str) -> Arc<AtomicI64> {
        if let Some((_, c)) = self.sources.read().iter().find(|(n, _)| &**n == source) {
            return c.clone();
        }
        let mut w = self.sources.write();
        if let Some((_, c)) = w.iter().find(|(n, _)| &**n == source) {
            return c.clone();
        }
        let c = Arc::new(AtomicI64::new(NO_WATERMARK));
        w.push((Arc::from(source), c.clone()));
        c
    }

    /// Moves the watermark of `source` forward to `ts` (never back); true when it moved.
    pub fn advance(&self, source: &str, ts: i64) -> bool {
        self.cell(source).fetch_max(ts, Ordering::AcqRel) < ts
    }

    /// The current watermark of `source`.
    pub fn get(&self, source: &str) -> i64 {
        self.sources
            .read()
            .iter()
            .find(|(n, _)| &**n == source)
            .map_or(NO_WATERMARK, |(_, c)| c.load(Ordering::Acquire))
    }

    /// The current values of every source.
    pub fn snapshot(&self) -> Arc<WatermarkSnapshot> {
        let values = self.sources.read().iter().map(|(n, c)| (n.clone(), c.load(Ordering::Acquire))).collect();
        Arc::new(WatermarkSnapshot { values })
    }
}

type Queue = Rc<RefCell<VecDeque<(u64, Arc<WatermarkSnapshot>)>>>;

/// A worker-local fan-out of epoch watermarks to the operators of one dataflow.
#[derive(Clone, Default)]
pub struct WatermarkFeed {
    queues: Rc<RefCell<Vec<Queue>>>,
}

impl WatermarkFeed {
    /// A new reader for an operator; it receives every epoch closed from now on.
    pub fn reader(&self) -> WatermarkReader {
        let q: Queue = Rc::default();
        self.queues.borrow_mut().push(q.clone());
        WatermarkReader { queue: q, current: Arc::default() }
    }

    /// Records the watermarks at the close of `epoch` for every reader.
    pub fn push(&self, epoch: u64, snapshot: &Arc<WatermarkSnapshot>) {
        for q in self.queues.borrow().iter() {
            q.borrow_mut().push_back((epoch, snapshot.clone()));
        }
    }

    /// True when no operator reads watermarks (the worker can skip pushing).
    pub fn is_empty(&self) -> bool {
        self.queues.borrow().is_empty()
    }
}

/// One operator's view of the epoch→watermark map, read in epoch order.
pub struct WatermarkReader {
    queue: Queue,
    current: Arc<WatermarkSnapshot>,
}

impl WatermarkReader {
    /// Moves to the watermarks as of the close of epoch `epoch` (or the latest closed before it).
    pub fn advance_to(&mut self, epoch: u64) {
        let mut q = self.queue.borrow_mut();
        while q.front().is_some_and(|(e, _)| *e <= epoch) {
            if let Some((_, s)) = q.pop_front() {
                self.current = s;
            }
        }
    }

    /// Moves through the queued epochs up to `upto` one at a time, calling `f(epoch, watermark
    /// of sources)` after each: an operator that closes windows stamps what each epoch's
    /// watermark closes with that epoch, so that a reader waiting for the epoch sees it.
    pub fn step_through(&mut self, upto: u64, sources: &[String], mut f: impl FnMut(u64, i64)) {
        loop {
            let next = self.queue.borrow().front().map(|(e, _)| *e).filter(|e| *e <= upto);
            let Some(e) = next else { break };
            self.advance_to(e);
            f(e, self.watermark(sources));
        }
    }

    /// The watermark of a set of sources: the minimum over them ([`NO_WATERMARK`] for an empty
    /// set, which never closes anything).
    pub fn watermark(&self, sources: &[String]) -> i64 {
        if sources.is_empty() {
            return NO_WATERMARK;
        }
        sources.iter().map(|s| self.current.get(s)).min().unwrap_or(NO_WATERMARK)
    }
}

/// How values of an event-time column type become milliseconds (a monotonic map over the
/// column's values cast to `Int64`).
fn ms_of(t: &DataType) -> Result<fn(i64) -> i64> {
    Ok(match t {
        DataType::Timestamp(unit, _) => match unit {
            TimeUnit::Second => |v: i64| v.saturating_mul(1000),
            TimeUnit::Millisecond => |v| v,
            TimeUnit::Microsecond => |v| v.div_euclid(1000),
            TimeUnit::Nanosecond => |v| v.div_euclid(1_000_000),
        },
        DataType::Date32 => |d| d * 86_400_000,
        DataType::Date64 => |v| v,
        t if t.is_integer() => |v| v,
        t => return Err(DataflowError::Eval(format!("an event-time column must be a TIMESTAMP or BIGINT, not {t}"))),
    })
}

/// An event-time column (TIMESTAMP of any unit, DATE or an integer of milliseconds) as
/// milliseconds.
pub fn event_time_ms(column: &ArrayRef) -> Result<Int64Array> {
    let f = ms_of(column.data_type())?;
    let c = arrow::compute::cast(column, &DataType::Int64)?;
    let c = c.as_primitive::<Int64Type>();
    if column.data_type() == &DataType::Timestamp(TimeUnit::Millisecond, None) || column.data_type() == &DataType::Int64
    {
        return Ok(c.clone());
    }
    Ok(c.unary(f))
}

/// The largest value of an event-time column, in milliseconds (`None` when all null or empty).
/// The maximum is taken over the stored values, then converted (the conversion is monotonic).
pub fn max_event_time_ms(column: &ArrayRef) -> Option<i64> {
    let f = ms_of(column.data_type()).ok()?;
    let c = arrow::compute::cast(column, &DataType::Int64).ok()?;
    arrow::compute::max(c.as_primitive::<Int64Type>()).map(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_see_epochs_in_order_and_take_the_minimum() {
        let table = WatermarkTable::default();
        let feed = WatermarkFeed::default();
        let mut r = feed.reader();
        assert!(table.advance("a", 10));
        assert!(!table.advance("a", 5), "watermarks never move back");
        table.advance("b", 20);
        feed.push(1, &table.snapshot());
        table.advance("a", 30);
        feed.push(2, &table.snapshot());
        let both = ["a".to_string(), "b".to_string()];
        assert_eq!(r.watermark(&both), NO_WATERMARK);
        r.advance_to(1);
        assert_eq!(r.watermark(&both), 10);
        r.advance_to(5);
        assert_eq!(r.watermark(&both), 20);
        assert_eq!(r.watermark(&["a".to_string()]), 30);
        assert_eq!(r.watermark(&["c".to_string()]), NO_WATERMARK, "a source that never sent holds it back");
        assert_eq!(r.watermark(&[]), NO_WATERMARK);
    }

    /// A cluster's watermark of a source is the smallest of its processes'; a process that has
    /// not moved it holds it back.
    #[test]
    fn the_minimum_over_processes_waits_for_every_process() {
        let a = WatermarkSnapshot::from_values([("s", 10), ("t", 50)]);
        let b = WatermarkSnapshot::from_values([("s", 30)]);
        let m = WatermarkSnapshot::min_of(&[&a, &b]);
        assert_eq!(m.get("s"), 10);
        assert_eq!(m.get("t"), NO_WATERMARK);
        let mut values: Vec<_> = m.values().collect();
        values.sort_unstable();
        assert_eq!(values, vec![("s", 10), ("t", NO_WATERMARK)]);
        assert_eq!(WatermarkSnapshot::min_of(&[&b]).get("s"), 30);
    }

    #[test]
    fn stepping_visits_each_queued_epoch_in_order() {
        let table = WatermarkTable::default();
        let feed = WatermarkFeed::default();
        let mut r = feed.reader();
        for (e, ts) in [(3, 10), (4, 10), (5, 25), (6, 30)] {
            table.advance("a", ts);
            feed.push(e, &table.snapshot());
        }
        let a = ["a".to_string()];
        let mut seen = Vec::new();
        r.step_through(5, &a, |e, wm| seen.push((e, wm)));
        assert_eq!(seen, vec![(3, 10), (4, 10), (5, 25)]);
        assert_eq!(r.watermark(&a), 25, "the reader stays at the last epoch stepped");
        seen.clear();
        r.step_through(5, &a, |e, wm| seen.push((e, wm)));
        assert!(seen.is_empty(), "epochs are visited once");
        r.step_through(u64::MAX, &a, |e, wm| seen.push((e, wm)));
        assert_eq!(seen, vec![(6, 30)]);
    }
}
