//! The state of a session-window aggregate (`GROUP BY k, SESSION(ts, gap)`), independent of the
//! timely operator that drives it.
//!
//! A session is a maximal run of one key's rows whose event times are less than `gap` apart; it
//! spans `[first ts, last ts + gap)`. Sessions are kept per group key, and their rows are kept
//! (Arrow row format) while the session is open, because an insertion can merge sessions and a
//! retraction can split one.
//!
//! Every session has a stable id. The aggregate proper is an ordinary [`GroupedAggregate`]
//! grouping by (key, session id) that also computes the session's bounds as `MIN(window_start)`
//! and `MAX(window_end)` of its rows (the windowed view gives each row `[ts, ts + gap)`), so
//! extending a session costs one row. A merge moves the rows of the smaller sessions to the id of
//! the largest, and a split moves the smaller part to a new id: the aggregate then retracts and
//! inserts exactly the affected output rows.
//!
//! Ids are allocated in buckets of [`BUCKET`], each with its own aggregate, dropped once all its
//! sessions are closed; a bucket kept alive by a few long sessions has them moved to new ids.
//!
//! A session closes when the watermark passes its end: its rows are freed and, with
//! `EMIT ON WINDOW CLOSE`, its final row is emitted. Later rows that would fall into a closed
//! session, or whose own window `[ts, ts + gap)` the watermark has passed, are late.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, RecordBatchOptions, UInt64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_row::{RowConverter, SortField};

use crate::aggregate_state::{GroupedAggregate, Owns};
use crate::batch::DiffBatch;
use crate::codec::{Dec, Enc};
use crate::error::{DataflowError, Result};
use crate::plan::{AggKind, AggSpec, AggregatePlan, BatchFn};
use crate::watermark::{event_time_ms, NO_WATERMARK};

/// Session ids per aggregate bucket.
pub const BUCKET: u64 = 1024;

/// A bucket with at most this many open sessions (and not the newest) has them moved to new ids.
const SPARSE: usize = 16;

/// Selects columns of a batch (the group keys and bounds the session state appends).
#[derive(Debug)]
pub struct Columns {
    indices: Vec<usize>,
    schema: SchemaRef,
}

impl Columns {
    /// Selects `indices`, naming the result after `schema`.
    pub fn new(indices: Vec<usize>, schema: SchemaRef) -> Self {
        Self { indices, schema }
    }
}

impl BatchFn for Columns {
    fn eval(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let cols = self.indices.iter().map(|&i| batch.column(i).clone()).collect();
        let opts = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        Ok(RecordBatch::try_new_with_options(self.schema.clone(), cols, &opts)?)
    }

    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn describe(&self) -> String {
        let names: Vec<&str> = self.schema.fields().iter().map(|f| f.name().as_str()).collect();
        names.join(", ")
    }
}

/// Selects some of the columns another function computes (the group keys without the window).
#[derive(Debug)]
pub struct KeySubset {
    keys: Arc<dyn BatchFn>,
    keep: Vec<usize>,
    schema: SchemaRef,
}

impl KeySubset {
    /// The columns `keep` of what `keys` computes.
    pub fn new(keys: Arc<dyn BatchFn>, keep: Vec<usize>) -> Self {
        let all = keys.output_schema();
        let schema = Arc::new(Schema::new(keep.iter().map(|&i| all.field(i).clone()).collect::<Vec<_>>()));
        Self { keys, keep, schema }
    }
}

impl BatchFn for KeySubset {
    fn eval(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let k = self.keys.eval(batch)?;
        let cols = self.keep.iter().map(|&i| k.column(i).clone()).collect();
        let opts = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        Ok(RecordBatch::try_new_with_options(self.schema.clone(), cols, &opts)?)
    }

    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn describe(&self) -> String {
        self.schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// A row-encoded row (Arrow row format).
type RowBytes = Box<[u8]>;

/// Rows of a session at one event time, with their multiplicities.
type RowsAt = Vec<(RowBytes, i64)>;

/// One epoch's net change of a (group key, row): its event time and summed multiplicity.
type NetChange = ((RowBytes, RowBytes), (i64, i64));

/// One open session of one key.
struct Session {
    id: u64,
    /// Last event time + gap.
    end: i64,
    /// Event time → rows (row-encoded input rows with their multiplicity).
    rows: BTreeMap<i64, RowsAt>,
    /// Number of (time, row) entries.
    entries: usize,
}

impl Session {
    fn start(&self) -> i64 {
        self.rows.first_key_value().map_or(i64::MAX, |(t, _)| *t)
    }
}

/// The sessions of one group key.
#[derive(Default)]
struct KeySessions {
    /// Session start → session.
    sessions: BTreeMap<i64, Session>,
    /// End of the latest closed session (rows before it are late).
    closed_end: Option<i64>,
}

/// Rows moving between sessions, waiting to be folded into the aggregates.
#[derive(Default)]
struct Moves {
    bytes: Vec<u8>,
    /// (offset, length, session id, diff).
    rows: Vec<(usize, usize, u64, i64)>,
}

impl Moves {
    fn push(&mut self, row: &[u8], id: u64, diff: i64) {
        self.rows.push((self.bytes.len(), row.len(), id, diff));
        self.bytes.extend_from_slice(row);
    }

    fn push_session(&mut self, s: &Session, id: u64, sign: i64) {
        for entries in s.rows.values() {
            for (row, m) in entries {
                self.push(row, id, sign * m);
            }
        }
    }
}

struct Bucket {
    agg: GroupedAggregate,
    /// Open sessions with an id in this bucket.
    open: usize,
    touched: bool,
}

/// Incremental session-window aggregation state for the keys one worker owns.
pub struct SessionAggregate {
    gap: i64,
    emit_on_close: bool,
    user: Arc<AggregatePlan>,
    inner: Arc<AggregatePlan>,
    inner_arg_types: Vec<Option<DataType>>,
    start_key: usize,
    end_key: usize,
    group_keys: Vec<usize>,
    key_converter: Option<RowConverter>,
    row_converter: RowConverter,
    input_schema: Option<SchemaRef>,
    /// For each column of the user's output: the inner output column it comes from.
    output_columns: Vec<usize>,
    keys: HashMap<Box<[u8]>, KeySessions>,
    /// (end, id) of every open session.
    ends: BTreeSet<(i64, u64)>,
    /// Session id → its key.
    owners: HashMap<u64, Box<[u8]>>,
    /// Keys without open sessions, by the time they can be forgotten.
    expiring: BTreeMap<i64, Vec<Box<[u8]>>>,
    /// Counter of session ids: this worker's ids are `counter * stride + offset`, so that ids of
    /// different workers never collide (their snapshots may be restored into one state).
    next_id: u64,
    stride: u64,
    offset: u64,
    closed_upto: i64,
    buckets: BTreeMap<u64, Bucket>,
    moves: Moves,
    entries: usize,
}

impl SessionAggregate {
    /// State for `plan` (grouping by keys that include `window_start` at `start_key` and
    /// `window_end` at `end_key`) with sessions of `gap_ms`.
    pub fn new(
        plan: Arc<AggregatePlan>,
        arg_types: &[Option<DataType>],
        start_key: usize,
        end_key: usize,
        gap_ms: i64,
        emit_on_close: bool,
        input_schema: &Schema,
    ) -> Result<Self> {
        if gap_ms <= 0 {
            return Err(DataflowError::Internal("session gap must be positive".into()));
        }
        let key_schema = plan.keys.output_schema();
        let nkeys = key_schema.fields().len();
        if start_key >= nkeys || end_key >= nkeys || start_key == end_key {
            return Err(DataflowError::Internal("session window keys out of range".into()));
        }
        let group_keys: Vec<usize> = (0..nkeys).filter(|&i| i != start_key && i != end_key).collect();
        let g = group_keys.len();
        let ncols = input_schema.fields().len();
        // Inner batches: the input columns, then group keys, session id, window_start, window_end.
        let mut fields: Vec<Field> = input_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        for &k in &group_keys {
            fields.push(key_schema.field(k).clone().with_nullable(true));
        }
        fields.push(Field::new("__session_id", DataType::UInt64, false));
        let start_field = key_schema.field(start_key).clone().with_nullable(true);
        let end_field = key_schema.field(end_key).clone().with_nullable(true);
        fields.push(start_field.clone());
        fields.push(end_field.clone());
        let inner_keys_schema = Arc::new(Schema::new(fields[ncols..ncols + g + 1].to_vec()));
        let inner_keys = Columns::new((ncols..ncols + g + 1).collect(), inner_keys_schema.clone());
        let bound = |i: usize, f: &Field| -> Arc<dyn BatchFn> {
            Arc::new(Columns::new(vec![i], Arc::new(Schema::new(vec![f.clone()]))))
        };
        let mut aggs = plan.aggs.clone();
        aggs.push(AggSpec {
            kind: AggKind::Min,
            arg: Some(bound(ncols + g + 1, &start_field)),
            output_type: start_field.data_type().clone(),
        });
        aggs.push(AggSpec {
            kind: AggKind::Max,
            arg: Some(bound(ncols + g + 2, &end_field)),
            output_type: end_field.data_type().clone(),
        });
        let naggs = plan.aggs.len();
        let mut out_fields: Vec<Field> = inner_keys_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        for f in plan.output_schema.fields().iter().skip(nkeys) {
            out_fields.push(f.as_ref().clone());
        }
        out_fields.push(start_field.clone());
        out_fields.push(end_field.clone());
        let inner = Arc::new(AggregatePlan {
            keys: Arc::new(inner_keys),
            aggs,
            output_schema: Arc::new(Schema::new(out_fields)),
            input_append_only: false,
        });
        let mut inner_arg_types = arg_types.to_vec();
        inner_arg_types.push(Some(start_field.data_type().clone()));
        inner_arg_types.push(Some(end_field.data_type().clone()));
        let output_columns = (0..plan.output_schema.fields().len())
            .map(|j| {
                if j == start_key {
                    g + 1 + naggs
                } else if j == end_key {
                    g + 2 + naggs
                } else if j < nkeys {
                    group_keys.iter().position(|&k| k == j).unwrap_or(0)
                } else {
                    g + 1 + (j - nkeys)
                }
            })
            .collect();
        let key_converter = if g == 0 {
            None
        } else {
            Some(RowConverter::new(
                group_keys.iter().map(|&k| SortField::new(key_schema.field(k).data_type().clone())).collect(),
            )?)
        };
        let row_converter =
            RowConverter::new(input_schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect())?;
        Ok(Self {
            gap: gap_ms,
            emit_on_close,
            user: plan,
            inner,
            inner_arg_types,
            start_key,
            end_key,
            group_keys,
            key_converter,
            row_converter,
            input_schema: Some(Arc::new(input_schema.clone())),
            output_columns,
            keys: HashMap::new(),
            ends: BTreeSet::new(),
            owners: HashMap::new(),
            expiring: BTreeMap::new(),
            next_id: 0,
            stride: 1,
            offset: 0,
            closed_upto: NO_WATERMARK,
            buckets: BTreeMap::new(),
            moves: Moves::default(),
            entries: 0,
        })
    }

    /// Makes the ids of this state distinct from those of the other workers' states.
    pub fn set_worker(&mut self, index: usize, peers: usize) {
        self.stride = peers.max(1) as u64;
        self.offset = index as u64 % self.stride;
    }

    /// Rows held in open sessions (distinct (time, row) entries).
    pub fn state_rows(&self) -> usize {
        self.entries
    }

    /// Open sessions.
    pub fn open_sessions(&self) -> usize {
        self.ends.len()
    }

    /// Aggregate buckets alive.
    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }

    /// The whole state (sessions are bounded by the watermark, so it is always written whole).
    pub fn snapshot(&mut self) -> Vec<u8> {
        let mut out = Enc::new();
        out.i64(self.closed_upto);
        // Ids below this may still name groups of closed sessions: never hand them out again.
        out.u64(self.next_id * self.stride + self.offset);
        out.u32(self.keys.len() as u32);
        for (key, ks) in &self.keys {
            out.bytes(key);
            out.u8(ks.closed_end.is_some() as u8);
            out.i64(ks.closed_end.unwrap_or(0));
            out.u32(ks.sessions.len() as u32);
            for s in ks.sessions.values() {
                out.u64(s.id);
                out.i64(s.end);
                out.u32(s.entries as u32);
                for (t, rows) in &s.rows {
                    for (row, m) in rows {
                        out.i64(*t);
                        out.bytes(row);
                        out.i64(*m);
                    }
                }
            }
        }
        out.u32(self.buckets.len() as u32);
        for (b, bk) in self.buckets.iter_mut() {
            out.u64(*b);
            out.u32(bk.open as u32);
            out.bytes(&bk.agg.snapshot(true));
        }
        out.buf
    }

    /// Loads the keys of a snapshot that `owns` assigns to this worker (it judges the group key
    /// columns, which route the rows). Snapshots are whole, so a later one from the same worker
    /// replaces an earlier one: pass `fresh` for the first snapshot of each checkpoint.
    pub fn restore(&mut self, snapshot: &[u8], owns: Owns<'_>, fresh: bool) -> Result<()> {
        if fresh {
            self.keys.clear();
            self.ends.clear();
            self.owners.clear();
            self.expiring.clear();
            self.buckets.clear();
            self.entries = 0;
        }
        let mut d = Dec::new(snapshot);
        self.closed_upto = self.closed_upto.max(d.i64()?);
        let used = d.u64()?;
        self.next_id = self.next_id.max(used / self.stride + 1);
        let nkeys = d.u32()? as usize;
        let mut keys = Vec::with_capacity(nkeys);
        for _ in 0..nkeys {
            let key = d.bytes()?;
            let has_end = d.u8()? != 0;
            let end = d.i64()?;
            let mut ks = KeySessions { sessions: BTreeMap::new(), closed_end: has_end.then_some(end) };
            for _ in 0..d.u32()? {
                let id = d.u64()?;
                let end = d.i64()?;
                let entries = d.u32()? as usize;
                let mut rows: BTreeMap<i64, RowsAt> = BTreeMap::new();
                for _ in 0..entries {
                    let t = d.i64()?;
                    let row: RowBytes = Box::from(d.bytes()?);
                    rows.entry(t).or_default().push((row, d.i64()?));
                }
                let s = Session { id, end, rows, entries };
                ks.sessions.insert(s.start(), s);
            }
            keys.push((key, ks));
        }
        let mine = match &self.key_converter {
            Some(c) => {
                let parser = c.parser();
                let cols = c.convert_rows(keys.iter().map(|(k, _)| parser.parse(k)))?;
                owns(&cols, keys.len())?
            }
            None => owns(&[], keys.len())?,
        };
        let gap = self.gap;
        for ((key, ks), keep) in keys.into_iter().zip(mine) {
            if !keep {
                continue;
            }
            let key: RowBytes = Box::from(key);
            for s in ks.sessions.values() {
                self.ends.insert((s.end, s.id));
                self.owners.insert(s.id, key.clone());
                self.entries += s.entries;
            }
            if ks.sessions.is_empty() {
                let at = ks.closed_end.map_or(i64::MIN, |e| e.saturating_add(gap));
                self.expiring.entry(at).or_default().push(key.clone());
            }
            self.keys.insert(key, ks);
        }
        // The inner aggregates group by (group keys, session id): ownership by the group keys.
        let g = self.group_keys.len();
        let inner_owns = |cols: &[ArrayRef], n: usize| owns(&cols[..g.min(cols.len())], n);
        for _ in 0..d.u32()? {
            let b = d.u64()?;
            let _open = d.u32()?;
            let bytes = d.bytes()?;
            // Buckets of other workers' snapshots with the same number merge (ids differ).
            let bk = match self.buckets.entry(b) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => v.insert(Bucket {
                    agg: GroupedAggregate::new(self.inner.clone(), &self.inner_arg_types)?,
                    open: 0,
                    touched: false,
                }),
            };
            bk.agg.restore(bytes, &inner_owns)?;
        }
        // Open sessions per bucket, from the sessions this worker owns; new ids above them all.
        self.buckets.values_mut().for_each(|bk| bk.open = 0);
        for &(_, id) in &self.ends {
            if let Some(bk) = self.buckets.get_mut(&(id / BUCKET)) {
                bk.open += 1;
            }
            self.next_id = self.next_id.max(id / self.stride + 1);
        }
        if !d.is_done() {
            return Err(DataflowError::Internal("corrupt state snapshot (trailing bytes)".into()));
        }
        Ok(())
    }

    /// Folds one epoch's batches into the sessions. `late_bound` is the watermark the epoch's
    /// rows are judged against. Returns the output changes (none with `EMIT ON WINDOW CLOSE`),
    /// the number of late rows, and the number of rows without an event time (dropped).
    pub fn apply(&mut self, batches: &[DiffBatch], late_bound: i64) -> Result<(Vec<DiffBatch>, usize, usize)> {
        let bound = late_bound.max(self.closed_upto);
        // Net changes per (key, row): an insertion and a retraction in one epoch cancel.
        let mut net: HashMap<(RowBytes, RowBytes), (i64, i64)> = HashMap::new();
        let mut untimed = 0;
        for b in batches {
            if b.num_rows() == 0 {
                continue;
            }
            let keys = self.user.keys.eval(&b.data)?;
            // Aggregate arguments are evaluated again when rows are folded; evaluating them
            // here first keeps a failing row from changing any state.
            for a in &self.user.aggs {
                if let Some(f) = &a.arg {
                    f.eval(&b.data)?;
                }
            }
            let ts = event_time_ms(keys.column(self.start_key))?;
            let key_rows = match &self.key_converter {
                Some(c) => {
                    let cols: Vec<ArrayRef> = self.group_keys.iter().map(|&k| keys.column(k).clone()).collect();
                    Some(c.convert_columns(&cols)?)
                }
                None => None,
            };
            let rows = self.row_converter.convert_columns(b.data.columns())?;
            for i in 0..b.num_rows() {
                if ts.is_null(i) {
                    untimed += 1;
                    continue;
                }
                let key: Box<[u8]> =
                    key_rows.as_ref().map_or_else(|| Box::from(&[][..]), |k| Box::from(k.row(i).as_ref()));
                let e = net.entry((key, Box::from(rows.row(i).as_ref()))).or_insert((ts.value(i), 0));
                e.1 += b.diff(i);
            }
        }
        let mut changes: Vec<NetChange> = net.into_iter().filter(|(_, (_, d))| *d != 0).collect();
        // Retractions first, then insertions; each in (key, time) order.
        changes.sort_unstable_by(|(ka, (ta, da)), (kb, (tb, db))| {
            (*da > 0, &ka.0, ta, &ka.1).cmp(&(*db > 0, &kb.0, tb, &kb.1))
        });
        let mut late = 0;
        for ((key, row), (t, d)) in changes {
            let ok = if d < 0 { self.retract(&key, &row, t, -d) } else { self.insert(key, row, t, d, bound) };
            if !ok {
                late += d.unsigned_abs() as usize;
            }
        }
        let out = self.fold_moves()?;
        Ok((out, late, untimed))
    }

    fn new_id(&mut self) -> u64 {
        let id = self.next_id * self.stride + self.offset;
        self.next_id += 1;
        if !self.emit_on_close {
            let b = id / BUCKET;
            if !self.buckets.contains_key(&b) {
                let agg = GroupedAggregate::new(self.inner.clone(), &self.inner_arg_types);
                // The inner plan is built from validated parts; a failure here is a bug.
                if let Ok(agg) = agg {
                    self.buckets.insert(b, Bucket { agg, open: 0, touched: false });
                }
            }
            if let Some(bk) = self.buckets.get_mut(&b) {
                bk.open += 1;
            }
        }
        id
    }

    fn forget_id(&mut self, id: u64) {
        if let Some(bk) = self.buckets.get_mut(&(id / BUCKET)) {
            bk.open = bk.open.saturating_sub(1);
        }
    }

    /// Inserts `m` copies of a row at time `t`; false when the row is late.
    fn insert(&mut self, key: Box<[u8]>, row: Box<[u8]>, t: i64, m: i64, bound: i64) -> bool {
        let gap = self.gap;
        if t.saturating_add(gap) <= bound {
            return false;
        }
        if let Some(ks) = self.keys.get(&key) {
            if ks.closed_end.is_some_and(|e| t < e) {
                return false;
            }
        }
        let end = t.saturating_add(gap);
        let ks = self.keys.entry(key.clone()).or_default();
        // Sessions overlapping [t, t + gap): starts below t + gap, ends above t.
        let overlapping: Vec<i64> =
            ks.sessions.range(..end).rev().take_while(|(_, s)| s.end > t).map(|(start, _)| *start).collect();
        let mut parts: Vec<Session> = overlapping.iter().filter_map(|s| ks.sessions.remove(s)).collect();
        let mut target = if parts.is_empty() {
            let id = self.new_id();
            Session { id, end, rows: BTreeMap::new(), entries: 0 }
        } else {
            // Keep the largest session's id; move the others' rows to it.
            let big = parts.iter().enumerate().max_by_key(|(_, s)| s.entries).map_or(0, |(i, _)| i);
            let mut target = parts.swap_remove(big);
            self.ends.remove(&(target.end, target.id));
            for other in parts {
                self.moves.push_session(&other, other.id, -1);
                self.moves.push_session(&other, target.id, 1);
                self.ends.remove(&(other.end, other.id));
                self.owners.remove(&other.id);
                self.forget_id(other.id);
                target.end = target.end.max(other.end);
                target.entries += other.entries;
                for (ot, rows) in other.rows {
                    target.rows.entry(ot).or_default().extend(rows);
                }
            }
            target
        };
        self.moves.push(&row, target.id, m);
        let slot = target.rows.entry(t).or_default();
        match slot.iter_mut().find(|(r, _)| *r == row) {
            Some((_, c)) => *c += m,
            None => {
                slot.push((row, m));
                target.entries += 1;
                self.entries += 1;
            }
        }
        target.end = target.end.max(end);
        self.ends.insert((target.end, target.id));
        self.owners.insert(target.id, key.clone());
        let ks = self.keys.entry(key).or_default();
        ks.sessions.insert(target.start(), target);
        true
    }

    /// Retracts `m` copies of a row at time `t`; false when it is not in an open session (late).
    fn retract(&mut self, key: &[u8], row: &[u8], t: i64, m: i64) -> bool {
        let gap = self.gap;
        let Some(ks) = self.keys.get_mut(key) else { return false };
        let Some((&start, s)) = ks.sessions.range(..=t).next_back() else { return false };
        if s.end <= t {
            return false;
        }
        let found = s.rows.get(&t).and_then(|slot| slot.iter().position(|(r, c)| r.as_ref() == row && *c >= m));
        let Some(pos) = found else { return false };
        let Some(mut s) = ks.sessions.remove(&start) else { return false };
        let key_has_no_other = ks.sessions.is_empty();
        let closed_end = ks.closed_end;
        let id = s.id;
        self.moves.push(row, id, -m);
        self.ends.remove(&(s.end, id));
        let mut emptied_time = false;
        if let Some(slot) = s.rows.get_mut(&t) {
            slot[pos].1 -= m;
            if slot[pos].1 == 0 {
                slot.swap_remove(pos);
                s.entries -= 1;
                self.entries -= 1;
                if slot.is_empty() {
                    s.rows.remove(&t);
                    emptied_time = true;
                }
            }
        }
        if s.rows.is_empty() {
            self.owners.remove(&id);
            self.forget_id(id);
            if key_has_no_other {
                let expiry = closed_end.map_or(i64::MIN, |e| e.saturating_add(gap));
                self.expiring.entry(expiry).or_default().push(Box::from(key));
            }
            return true;
        }
        let last = s.rows.last_key_value().map_or(t, |(lt, _)| *lt);
        s.end = last.saturating_add(gap);
        // Removing the rows at t can only split the session between its neighbours.
        let prev = s.rows.range(..t).next_back().map(|(p, _)| *p);
        let next = s.rows.range(t..).next().map(|(n, _)| *n);
        let mut pieces = Vec::with_capacity(2);
        match (prev, next) {
            (Some(p), Some(n)) if emptied_time && n - p >= gap => {
                let right_rows = s.rows.split_off(&t);
                let right_entries: usize = right_rows.values().map(Vec::len).sum();
                s.entries -= right_entries;
                s.end = p.saturating_add(gap);
                let mut right = Session { id, end: last.saturating_add(gap), rows: right_rows, entries: right_entries };
                // The larger part keeps the id; the other moves to a new one.
                let moved = if right.entries > s.entries { &mut s } else { &mut right };
                let new = self.new_id();
                moved.id = new;
                self.moves.push_session(moved, id, -1);
                self.moves.push_session(moved, new, 1);
                pieces.push(s);
                pieces.push(right);
            }
            _ => pieces.push(s),
        }
        let Some(ks) = self.keys.get_mut(key) else { return true };
        for p in pieces {
            self.ends.insert((p.end, p.id));
            self.owners.insert(p.id, Box::from(key));
            ks.sessions.insert(p.start(), p);
        }
        true
    }

    /// Closes the sessions whose end the watermark `wm` has passed. Returns their final rows
    /// with `EMIT ON WINDOW CLOSE` (nothing otherwise: the updating output already holds them).
    pub fn close(&mut self, wm: i64) -> Result<Vec<DiffBatch>> {
        if wm == NO_WATERMARK {
            return Ok(Vec::new());
        }
        // Not only when the watermark moves: a retraction can shrink a session to an end the
        // watermark has already passed.
        self.closed_upto = self.closed_upto.max(wm);
        let wm = self.closed_upto;
        let gap = self.gap;
        let mut finals = Moves::default();
        while let Some(&(end, id)) = self.ends.first() {
            if end > wm {
                break;
            }
            self.ends.pop_first();
            let Some(key) = self.owners.remove(&id) else { continue };
            let Some(ks) = self.keys.get_mut(&key) else { continue };
            let Some(start) = ks.sessions.iter().find(|(_, s)| s.id == id).map(|(st, _)| *st) else { continue };
            let Some(s) = ks.sessions.remove(&start) else { continue };
            ks.closed_end = Some(ks.closed_end.map_or(end, |e| e.max(end)));
            self.entries -= s.entries;
            if self.emit_on_close {
                finals.push_session(&s, id, 1);
            }
            if ks.sessions.is_empty() {
                self.expiring.entry(end.saturating_add(gap)).or_default().push(key);
            }
            if let Some(bk) = self.buckets.get_mut(&(id / BUCKET)) {
                bk.open = bk.open.saturating_sub(1);
            }
        }
        // Forget keys whose last closed session no later row can reach.
        while let Some((&at, _)) = self.expiring.first_key_value() {
            if at > wm {
                break;
            }
            let Some((_, keys)) = self.expiring.pop_first() else { break };
            for k in keys {
                let gone = self.keys.get(&k).is_some_and(|ks| {
                    ks.sessions.is_empty() && ks.closed_end.is_none_or(|e| e.saturating_add(gap) <= wm)
                });
                if gone {
                    self.keys.remove(&k);
                }
            }
        }
        let mut out = Vec::new();
        if self.emit_on_close {
            if !finals.rows.is_empty() {
                let mut agg = GroupedAggregate::new(self.inner.clone(), &self.inner_arg_types)?;
                for b in self.inner_batches(&finals)?.into_values() {
                    agg.apply(&b)?;
                }
                if let Some(o) = agg.emit()? {
                    out.push(self.to_user(o)?);
                }
            }
        } else {
            out = self.compact()?;
        }
        Ok(out)
    }

    /// Moves the sessions of sparse buckets to new ids and drops buckets without sessions.
    fn compact(&mut self) -> Result<Vec<DiffBatch>> {
        let newest = (self.next_id * self.stride + self.offset) / BUCKET;
        let sparse: Vec<u64> = self
            .buckets
            .iter()
            .filter(|(&b, bk)| b < newest && bk.open > 0 && bk.open <= SPARSE)
            .map(|(&b, _)| b)
            .collect();
        for b in sparse {
            let ids: Vec<u64> = self.ends.iter().filter(|(_, id)| id / BUCKET == b).map(|&(_, id)| id).collect();
            for old in ids {
                let Some(key) = self.owners.remove(&old) else { continue };
                let new = self.new_id();
                let Some(ks) = self.keys.get_mut(&key) else { continue };
                let Some(s) = ks.sessions.values_mut().find(|s| s.id == old) else { continue };
                s.id = new;
                let end = s.end;
                self.moves.push_session(s, old, -1);
                self.moves.push_session(s, new, 1);
                self.ends.remove(&(end, old));
                self.ends.insert((end, new));
                self.owners.insert(new, key);
                self.forget_id(old);
            }
        }
        let out = self.fold_moves()?;
        self.buckets.retain(|&b, bk| bk.open > 0 || b >= newest);
        Ok(out)
    }

    /// Folds the pending moves into the bucket aggregates and emits their changes.
    fn fold_moves(&mut self) -> Result<Vec<DiffBatch>> {
        let moves = std::mem::take(&mut self.moves);
        if self.emit_on_close || moves.rows.is_empty() {
            return Ok(Vec::new());
        }
        let batches = self.inner_batches(&moves)?;
        for (b, batch) in batches {
            let Some(bk) = self.buckets.get_mut(&b) else {
                return Err(DataflowError::Internal(format!("session bucket {b} is missing")));
            };
            bk.agg.apply(&batch)?;
            bk.touched = true;
        }
        let mut out = Vec::new();
        let mut changes = Vec::new();
        for bk in self.buckets.values_mut() {
            if std::mem::take(&mut bk.touched) {
                if let Some(o) = bk.agg.emit()? {
                    changes.push(o);
                }
            }
        }
        for o in changes {
            out.push(self.to_user(o)?);
        }
        Ok(out)
    }

    /// Decodes moved rows into inner-aggregate batches, one per bucket.
    fn inner_batches(&self, moves: &Moves) -> Result<BTreeMap<u64, DiffBatch>> {
        let Some(schema) = self.input_schema.clone() else { return Ok(BTreeMap::new()) };
        let mut by_bucket: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, &(_, _, id, _)) in moves.rows.iter().enumerate() {
            by_bucket.entry(if self.emit_on_close { 0 } else { id / BUCKET }).or_default().push(i);
        }
        let parser = self.row_converter.parser();
        let mut out = BTreeMap::new();
        for (b, idx) in by_bucket {
            let rows = idx.iter().map(|&i| {
                let (off, len, _, _) = moves.rows[i];
                parser.parse(&moves.bytes[off..off + len])
            });
            let cols = self.row_converter.convert_rows(rows)?;
            let opts = RecordBatchOptions::new().with_row_count(Some(idx.len()));
            let data = RecordBatch::try_new_with_options(schema.clone(), cols, &opts)?;
            let keys = self.user.keys.eval(&data)?;
            let mut cols = data.columns().to_vec();
            for &k in &self.group_keys {
                cols.push(keys.column(k).clone());
            }
            cols.push(std::sync::Arc::new(UInt64Array::from_iter_values(idx.iter().map(|&i| moves.rows[i].2))));
            cols.push(keys.column(self.start_key).clone());
            cols.push(keys.column(self.end_key).clone());
            let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            let ks = keys.schema();
            for &k in &self.group_keys {
                fields.push(ks.field(k).clone().with_nullable(true));
            }
            fields.push(Field::new("__session_id", DataType::UInt64, false));
            fields.push(ks.field(self.start_key).clone().with_nullable(true));
            fields.push(ks.field(self.end_key).clone().with_nullable(true));
            let inner = RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), cols, &opts)?;
            let diffs = arrow::array::Int64Array::from_iter_values(idx.iter().map(|&i| moves.rows[i].3));
            out.insert(b, DiffBatch::with_diffs(inner, diffs)?);
        }
        Ok(out)
    }

    /// Inner output rows (keys, session id, aggregates, bounds) as the user's output rows.
    fn to_user(&self, o: DiffBatch) -> Result<DiffBatch> {
        let schema = self.user.output_schema.clone();
        let cols = self
            .output_columns
            .iter()
            .zip(schema.fields().iter())
            .map(|(&i, f)| {
                let c = o.data.column(i).clone();
                if c.data_type() == f.data_type() {
                    Ok(c)
                } else {
                    cast(&c, f.data_type())
                }
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let opts = RecordBatchOptions::new().with_row_count(Some(o.num_rows()));
        o.with_data(RecordBatch::try_new_with_options(schema, cols, &opts)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    #[derive(Debug)]
    struct Keys(SchemaRef);

    impl BatchFn for Keys {
        /// (k, window_start = ts, window_end = ts + 10) of input (k, ts, v).
        fn eval(&self, batch: &RecordBatch) -> Result<RecordBatch> {
            let ts = batch.column(1).as_any().downcast_ref::<Int64Array>().expect("ts").clone();
            let end: Int64Array = ts.unary(|t| t + 10);
            Ok(RecordBatch::try_new(self.0.clone(), vec![batch.column(0).clone(), Arc::new(ts), Arc::new(end)])?)
        }
        fn output_schema(&self) -> SchemaRef {
            self.0.clone()
        }
        fn describe(&self) -> String {
            "k, ts, ts + 10".into()
        }
    }

    fn input() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("ts", DataType::Int64, true),
            Field::new("v", DataType::Int64, true),
        ]))
    }

    fn state(emit_on_close: bool) -> SessionAggregate {
        let key_schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("window_start", DataType::Int64, true),
            Field::new("window_end", DataType::Int64, true),
        ]));
        let out = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("window_start", DataType::Int64, true),
            Field::new("window_end", DataType::Int64, true),
            Field::new("n", DataType::Int64, true),
        ]));
        let plan = Arc::new(AggregatePlan {
            keys: Arc::new(Keys(key_schema)),
            aggs: vec![AggSpec { kind: AggKind::CountStar, arg: None, output_type: DataType::Int64 }],
            output_schema: out,
            input_append_only: false,
        });
        SessionAggregate::new(plan, &[None], 1, 2, 10, emit_on_close, &input()).expect("state")
    }

    fn batch(rows: &[(i64, i64, i64)]) -> DiffBatch {
        let col = |f: fn(&(i64, i64, i64)) -> i64| Arc::new(Int64Array::from_iter_values(rows.iter().map(f)));
        let data = RecordBatch::try_new(input(), vec![col(|r| r.0), col(|r| r.1), col(|r| r.2)]).expect("batch");
        let diffs = Int64Array::from_iter_values(rows.iter().map(|r| if r.2 < 0 { -1 } else { 1 }));
        // v < 0 marks a retraction of the row with v = -v.
        let data = RecordBatch::try_new(
            input(),
            vec![
                data.column(0).clone(),
                data.column(1).clone(),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2.abs()))),
            ],
        )
        .expect("batch");
        DiffBatch::with_diffs(data, diffs).expect("diffs")
    }

    /// Folds the output changes into a multiset of (k, start, end, n).
    fn fold(view: &mut BTreeMap<(i64, i64, i64, i64), i64>, out: &[DiffBatch]) {
        for b in out {
            let c = |i: usize| b.data.column(i).as_any().downcast_ref::<Int64Array>().expect("i64").clone();
            let (k, s, e, n) = (c(0), c(1), c(2), c(3));
            for i in 0..b.num_rows() {
                *view.entry((k.value(i), s.value(i), e.value(i), n.value(i))).or_default() += b.diff(i);
            }
        }
        view.retain(|_, d| *d != 0);
    }

    #[test]
    fn sessions_merge_split_and_close() {
        let mut st = state(false);
        let mut view = BTreeMap::new();
        // Two sessions of key 1: {0, 5} and {30}; one of key 2.
        let (out, late, _) =
            st.apply(&[batch(&[(1, 0, 1), (1, 5, 2), (1, 30, 3), (2, 3, 4)])], NO_WATERMARK).expect("apply");
        assert_eq!(late, 0);
        fold(&mut view, &out);
        let want: Vec<_> = vec![((1, 0, 15, 2), 1), ((1, 30, 40, 1), 1), ((2, 3, 13, 1), 1)];
        assert_eq!(view.clone().into_iter().collect::<Vec<_>>(), want);
        // Rows at 12 and 21 bridge them: one session [0, 40) of five rows.
        let (out, _, _) = st.apply(&[batch(&[(1, 21, 5), (1, 12, 6)])], NO_WATERMARK).expect("apply");
        fold(&mut view, &out);
        assert_eq!(view.clone().into_iter().collect::<Vec<_>>(), vec![((1, 0, 40, 5), 1), ((2, 3, 13, 1), 1)]);
        // Retracting the bridge at 21 splits it again: {0, 5, 12} and {30}.
        let (out, _, _) = st.apply(&[batch(&[(1, 21, -5)])], NO_WATERMARK).expect("apply");
        fold(&mut view, &out);
        assert_eq!(
            view.clone().into_iter().collect::<Vec<_>>(),
            vec![((1, 0, 22, 3), 1), ((1, 30, 40, 1), 1), ((2, 3, 13, 1), 1)]
        );
        assert_eq!(st.state_rows(), 5);
        // Watermark 25 closes [0, 22) and [3, 13); a row at 14 for key 1 is then late.
        assert!(st.close(25).expect("close").is_empty());
        assert_eq!(st.open_sessions(), 1);
        assert_eq!(st.state_rows(), 1);
        let (out, late, _) = st.apply(&[batch(&[(1, 14, 7), (1, 26, 8)])], 25).expect("apply");
        assert_eq!(late, 1);
        fold(&mut view, &out);
        assert_eq!(
            view.clone().into_iter().collect::<Vec<_>>(),
            vec![((1, 0, 22, 3), 1), ((1, 26, 40, 2), 1), ((2, 3, 13, 1), 1)]
        );
        // A retraction of a row in a closed session is late too.
        let (_, late, _) = st.apply(&[batch(&[(1, 5, -2)])], 25).expect("apply");
        assert_eq!(late, 1);
    }

    #[test]
    fn emit_on_close_emits_final_rows_once() {
        let mut st = state(true);
        let (out, _, _) = st.apply(&[batch(&[(1, 0, 1), (1, 5, 2), (1, 30, 3)])], NO_WATERMARK).expect("apply");
        assert!(out.is_empty());
        let mut view = BTreeMap::new();
        fold(&mut view, &st.close(16).expect("close"));
        assert_eq!(view.clone().into_iter().collect::<Vec<_>>(), vec![((1, 0, 15, 2), 1)]);
        fold(&mut view, &st.close(100).expect("close"));
        assert_eq!(view.into_iter().collect::<Vec<_>>(), vec![((1, 0, 15, 2), 1), ((1, 30, 40, 1), 1)]);
        assert_eq!(st.state_rows(), 0);
    }

    #[test]
    fn closed_buckets_are_dropped_and_sparse_ones_compacted() {
        let mut st = state(false);
        let mut view = BTreeMap::new();
        // One long session (key 0) and many short ones (one per key) over 3 buckets.
        let mut t = 0;
        for round in 0..3 * BUCKET as i64 {
            let (out, _, _) = st.apply(&[batch(&[(0, t, 1), (round + 1, t, 1)])], NO_WATERMARK).expect("apply");
            fold(&mut view, &out);
            t += 5;
            fold(&mut view, &st.close(t - 12).expect("close"));
        }
        assert!(st.buckets() <= 2, "{} buckets alive", st.buckets());
        // The long session is intact: one row per round.
        let long: Vec<_> = view.keys().filter(|(k, ..)| *k == 0).collect();
        assert_eq!(long, vec![&(0, 0, t - 5 + 10, 3 * BUCKET as i64)]);
        assert_eq!(view.len(), 1 + 3 * BUCKET as usize);
    }
}
