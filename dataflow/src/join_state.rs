//! Incremental equi-join state: both inputs kept as multisets of byte-encoded rows (Arrow row
//! format), grouped by join key, with per-row match counts for outer joins.
//!
//! For an epoch with changes `dL` and `dR` to the inputs `L` and `R`, the change of the inner
//! join is `dL ⋈ R + L ⋈ dR + dL ⋈ dR` (old `L` and `R`). Every candidate pair is built as one
//! Arrow batch, the extra ON conditions are evaluated on it with Arrow kernels, and the passing
//! pairs are the output. Outer joins also keep, for every distinct row, how many rows of the
//! other side it matches: a row whose count moves between zero and non-zero flips its
//! null-padded copy in or out of the output.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, Int64Array, RecordBatch, RecordBatchOptions};
use arrow::datatypes::SchemaRef;
use arrow_row::{RowConverter, Rows, SortField};
use hashbrown::HashMap;

use crate::batch::DiffBatch;
use crate::error::{DataflowError, Result};
use crate::plan::JoinPlan;
use crate::watermark::{event_time_ms, NO_WATERMARK};

/// One distinct row in the state of a side.
#[derive(Clone, Copy, Debug)]
struct RowInfo {
    /// Multiplicity.
    mult: i64,
    /// Sum of the multiplicities of the other side's rows it matches (outer joins).
    matches: i64,
    /// Event time in milliseconds (time-bounded joins; `i64::MAX` when unknown).
    ts: i64,
}

type Group = HashMap<Box<[u8]>, RowInfo>;

#[derive(Default)]
struct Side {
    groups: HashMap<Box<[u8]>, Group>,
    /// Event time → keys holding a row with that time (time-bounded joins only).
    expiry: BTreeMap<i64, Vec<Box<[u8]>>>,
    rows: usize,
}

impl Side {
    fn get(&self, key: &[u8], row: &[u8]) -> Option<RowInfo> {
        self.groups.get(key).and_then(|g| g.get(row)).copied()
    }

    fn set(&mut self, key: &[u8], row: &[u8], info: RowInfo, track_expiry: bool) {
        if info.mult == 0 {
            if let Some(g) = self.groups.get_mut(key) {
                if g.remove(row).is_some() {
                    self.rows -= 1;
                }
                if g.is_empty() {
                    self.groups.remove(key);
                }
            }
            return;
        }
        let g = match self.groups.get_mut(key) {
            Some(g) => g,
            None => self.groups.entry(key.into()).or_default(),
        };
        match g.get_mut(row) {
            Some(i) => *i = info,
            None => {
                g.insert(row.into(), info);
                self.rows += 1;
                if track_expiry && info.ts != i64::MAX {
                    self.expiry.entry(info.ts).or_default().push(key.into());
                }
            }
        }
    }

    /// Drops every row with an event time below `bound`.
    fn expire(&mut self, bound: i64) -> usize {
        let mut freed = 0;
        while let Some(entry) = self.expiry.first_entry() {
            if *entry.key() >= bound {
                break;
            }
            for key in entry.remove() {
                if let Some(g) = self.groups.get_mut(&key) {
                    let before = g.len();
                    g.retain(|_, i| i.ts >= bound);
                    freed += before - g.len();
                    if g.is_empty() {
                        self.groups.remove(&key);
                    }
                }
            }
        }
        self.rows -= freed;
        freed
    }
}

/// A change to one side, consolidated per distinct row.
struct Delta {
    /// (key bytes, row bytes, diff, event time); keys never null.
    rows: Vec<(Vec<u8>, Vec<u8>, i64, i64)>,
    /// Rows with a null key (they never match): (row bytes, diff).
    null_keys: Vec<(Vec<u8>, i64)>,
}

/// Watermarks an epoch is processed under.
#[derive(Clone, Copy, Debug)]
pub struct JoinWatermarks {
    /// Left rows with an event time below this are late (dropped).
    pub left_late: i64,
    /// Right rows with an event time below this are late.
    pub right_late: i64,
}

impl Default for JoinWatermarks {
    fn default() -> Self {
        Self { left_late: NO_WATERMARK, right_late: NO_WATERMARK }
    }
}

/// What an epoch of the join produced besides its output.
#[derive(Debug, Default)]
pub struct JoinEpochStats {
    /// Rows dropped because they arrived behind their side's watermark.
    pub late_rows: usize,
}

/// Accumulates candidate (left, right) pairs as row bytes.
#[derive(Default)]
struct Pairs {
    left: Vec<u8>,
    left_ends: Vec<usize>,
    right: Vec<u8>,
    right_ends: Vec<usize>,
    weights: Vec<i64>,
    /// For each pair: the touched left / right row whose match count it changes, and by how
    /// much (the other row's multiplicity) if the pair passes the conditions.
    left_touch: Vec<Option<(u32, i64)>>,
    right_touch: Vec<Option<(u32, i64)>>,
}

type Touch = Option<(u32, i64)>;

impl Pairs {
    fn push(&mut self, l: &[u8], r: &[u8], w: i64, lt: Touch, rt: Touch) {
        self.left.extend_from_slice(l);
        self.left_ends.push(self.left.len());
        self.right.extend_from_slice(r);
        self.right_ends.push(self.right.len());
        self.weights.push(w);
        self.left_touch.push(lt);
        self.right_touch.push(rt);
    }

    fn len(&self) -> usize {
        self.weights.len()
    }
}

/// Rows whose multiplicity or match count changes in an epoch.
#[derive(Default)]
struct Touched {
    index: HashMap<Vec<u8>, u32>,
    entries: Vec<TouchedRow>,
}

struct TouchedRow {
    key: Vec<u8>,
    row: Vec<u8>,
    old: Option<RowInfo>,
    dmult: i64,
    /// Change of the match count (present rows) or the full count (new rows).
    dmatches: i64,
    ts: i64,
}

/// The changes of the null-padded copies of `touched` rows (a row is padded while it has a
/// positive multiplicity and no match), plus the rows with a null key, which never match.
fn padding_changes<'a>(touched: &'a Touched, null_keys: &'a [(Vec<u8>, i64)]) -> Vec<(&'a [u8], i64)> {
    let mut rows: Vec<(&[u8], i64)> = Vec::new();
    for e in &touched.entries {
        let (old_mult, old_matches) = e.old.map_or((0, 0), |o| (o.mult, o.matches));
        let new_mult = old_mult + e.dmult;
        let new_matches = e.old.map_or(e.dmatches, |o| o.matches + e.dmatches);
        let pad_old = if old_mult > 0 && old_matches == 0 { old_mult } else { 0 };
        let pad_new = if new_mult > 0 && new_matches == 0 { new_mult } else { 0 };
        if pad_new != pad_old {
            rows.push((&e.row, pad_new - pad_old));
        }
    }
    rows.extend(null_keys.iter().map(|(r, d)| (r.as_slice(), *d)));
    rows
}

impl Touched {
    /// Writes the new multiplicities and match counts into `side`.
    fn apply_to(&self, side: &mut Side, bounded: bool) {
        for e in &self.entries {
            let old = e.old.unwrap_or(RowInfo { mult: 0, matches: 0, ts: e.ts });
            let matches = if e.old.is_some() { old.matches + e.dmatches } else { e.dmatches };
            side.set(&e.key, &e.row, RowInfo { mult: old.mult + e.dmult, matches, ts: old.ts }, bounded);
        }
    }

    fn touch(&mut self, key: &[u8], row: &[u8], old: Option<RowInfo>, ts: i64) -> u32 {
        if let Some(&i) = self.index.get(row) {
            return i;
        }
        let i = self.entries.len() as u32;
        self.entries.push(TouchedRow { key: key.to_vec(), row: row.to_vec(), old, dmult: 0, dmatches: 0, ts });
        self.index.insert(row.to_vec(), i);
        i
    }
}

/// The state of one worker's share of an incremental join.
pub struct JoinState {
    plan: Arc<JoinPlan>,
    left_schema: SchemaRef,
    right_schema: SchemaRef,
    key_conv: RowConverter,
    left_conv: RowConverter,
    right_conv: RowConverter,
    left: Side,
    right: Side,
    track_matches: bool,
}

fn converter(schema: &SchemaRef) -> Result<RowConverter> {
    let fields = schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect();
    Ok(RowConverter::new(fields)?)
}

impl JoinState {
    /// Empty state for `plan` over inputs with the given schemas.
    pub fn new(plan: Arc<JoinPlan>, left_schema: SchemaRef, right_schema: SchemaRef) -> Result<Self> {
        let key_conv = converter(&plan.left_keys.output_schema())?;
        let left_conv = converter(&left_schema)?;
        let right_conv = converter(&right_schema)?;
        let track_matches = plan.kind.keeps_left() || plan.kind.keeps_right();
        Ok(Self {
            plan,
            left_schema,
            right_schema,
            key_conv,
            left_conv,
            right_conv,
            left: Side::default(),
            right: Side::default(),
            track_matches,
        })
    }

    /// Distinct rows held (left, right).
    pub fn rows(&self) -> (usize, usize) {
        (self.left.rows, self.right.rows)
    }

    fn delta(&self, batches: &[DiffBatch], left: bool, late: i64, stats: &mut JoinEpochStats) -> Result<Delta> {
        let (keys_fn, conv) =
            if left { (&self.plan.left_keys, &self.left_conv) } else { (&self.plan.right_keys, &self.right_conv) };
        let ts_col = self.plan.time_bound.as_ref().map(|b| if left { b.left_column } else { b.right_column });
        let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut out = Delta { rows: Vec::new(), null_keys: Vec::new() };
        let mut nulls: HashMap<Vec<u8>, usize> = HashMap::new();
        for b in batches {
            if b.num_rows() == 0 {
                continue;
            }
            let keys = keys_fn.eval(&b.data)?;
            let key_rows: Rows = self.key_conv.convert_columns(keys.columns())?;
            let rows: Rows = conv.convert_columns(b.data.columns())?;
            let null_key = |i: usize| keys.columns().iter().any(|c| c.is_null(i));
            let ts: Option<Int64Array> = match ts_col {
                Some(c) => Some(event_time_ms(b.data.column(c))?),
                None => None,
            };
            for i in 0..b.num_rows() {
                let t = match &ts {
                    Some(ts) if ts.is_valid(i) => ts.value(i),
                    _ => i64::MAX,
                };
                if t != i64::MAX && t < late {
                    stats.late_rows += 1;
                    continue;
                }
                let d = b.diff(i);
                let row = rows.row(i);
                if null_key(i) {
                    match nulls.get(row.as_ref()) {
                        Some(&j) => out.null_keys[j].1 += d,
                        None => {
                            nulls.insert(row.as_ref().to_vec(), out.null_keys.len());
                            out.null_keys.push((row.as_ref().to_vec(), d));
                        }
                    }
                    continue;
                }
                match index.get(row.as_ref()) {
                    Some(&j) => out.rows[j].2 += d,
                    None => {
                        index.insert(row.as_ref().to_vec(), out.rows.len());
                        out.rows.push((key_rows.row(i).as_ref().to_vec(), row.as_ref().to_vec(), d, t));
                    }
                }
            }
        }
        out.rows.retain(|r| r.2 != 0);
        out.null_keys.retain(|r| r.1 != 0);
        Ok(out)
    }

    /// Applies one epoch of changes to both inputs; returns the change of the join's output.
    pub fn apply(
        &mut self,
        dl: &[DiffBatch],
        dr: &[DiffBatch],
        wm: JoinWatermarks,
        stats: &mut JoinEpochStats,
    ) -> Result<Vec<DiffBatch>> {
        let dl = self.delta(dl, true, wm.left_late, stats)?;
        let dr = self.delta(dr, false, wm.right_late, stats)?;
        if dl.rows.is_empty() && dr.rows.is_empty() && dl.null_keys.is_empty() && dr.null_keys.is_empty() {
            return Ok(Vec::new());
        }
        let track = self.track_matches;
        let mut pairs = Pairs::default();
        let mut tl = Touched::default();
        let mut tr = Touched::default();

        // dL ⋈ R (old R): each left delta row against the right state.
        for (k, l, d, ts) in &dl.rows {
            let old = self.left.get(k, l);
            let li = tl.touch(k, l, old, *ts);
            tl.entries[li as usize].dmult += d;
            if let Some(g) = self.right.groups.get(k.as_slice()) {
                for (r, info) in g {
                    // A new left row's count is its matches in old R; a present row's count
                    // already includes them. The right row's count moves by the left change.
                    let lt = (track && old.is_none()).then_some((li, info.mult));
                    let rt = track.then(|| (tr.touch(k, r, Some(*info), info.ts), *d));
                    pairs.push(l, r, d * info.mult, lt, rt);
                }
            }
        }
        // Group the right delta by key for dL ⋈ dR.
        let mut dr_by_key: HashMap<&[u8], Vec<usize>> = HashMap::new();
        for (i, (k, ..)) in dr.rows.iter().enumerate() {
            dr_by_key.entry(k.as_slice()).or_default().push(i);
        }
        // L ⋈ dR (old L).
        for (k, r, d, ts) in &dr.rows {
            let old = self.right.get(k, r);
            let ri = tr.touch(k, r, old, *ts);
            tr.entries[ri as usize].dmult += d;
            if let Some(g) = self.left.groups.get(k.as_slice()) {
                for (l, info) in g {
                    let lt = track.then(|| (tl.touch(k, l, Some(*info), info.ts), *d));
                    let rt = (track && old.is_none()).then_some((ri, info.mult));
                    pairs.push(l, r, info.mult * d, lt, rt);
                }
            }
        }
        // dL ⋈ dR.
        for (k, l, dlv, _) in &dl.rows {
            let Some(idx) = dr_by_key.get(k.as_slice()) else { continue };
            for &j in idx {
                let (_, r, drv, _) = &dr.rows[j];
                // Only rows new in this epoch count changes of the other side here: a
                // present row already paired with them above.
                let (lt, rt) = if track {
                    let li = tl.touch(k, l, None, 0);
                    let ri = tr.touch(k, r, None, 0);
                    let l_new = tl.entries[li as usize].old.is_none();
                    let r_new = tr.entries[ri as usize].old.is_none();
                    (l_new.then_some((li, *drv)), r_new.then_some((ri, *dlv)))
                } else {
                    (None, None)
                };
                pairs.push(l, r, dlv * drv, lt, rt);
            }
        }

        let mut out = Vec::new();
        // Materialize the candidates, evaluate the extra conditions.
        if pairs.len() > 0 {
            let batch = self.pair_batch(&pairs)?;
            let mask = match &self.plan.filter {
                Some(f) => Some(f.eval(&batch)?),
                None => None,
            };
            let pass = |i: usize| mask.as_ref().is_none_or(|m| m.value(i));
            if track {
                for i in 0..pairs.len() {
                    if !pass(i) {
                        continue;
                    }
                    if let Some((li, gain)) = pairs.left_touch[i] {
                        tl.entries[li as usize].dmatches += gain;
                    }
                    if let Some((ri, gain)) = pairs.right_touch[i] {
                        tr.entries[ri as usize].dmatches += gain;
                    }
                }
            }
            let diffs = Int64Array::from(pairs.weights.clone());
            let all = DiffBatch::with_diffs(batch, diffs)?;
            let kept = match &mask {
                Some(m) => all.filter(m)?,
                None => all,
            };
            if kept.num_rows() > 0 {
                out.push(kept);
            }
        }

        // Null-padded rows whose presence changes.
        if self.plan.kind.keeps_left() {
            let rows = padding_changes(&tl, &dl.null_keys);
            if !rows.is_empty() {
                out.push(self.padded(&rows, true)?);
            }
        }
        if self.plan.kind.keeps_right() {
            let rows = padding_changes(&tr, &dr.null_keys);
            if !rows.is_empty() {
                out.push(self.padded(&rows, false)?);
            }
        }

        // Update the state.
        let bounded = self.plan.time_bound.is_some();
        if track {
            tl.apply_to(&mut self.left, bounded);
            tr.apply_to(&mut self.right, bounded);
        } else {
            for (k, l, d, ts) in &dl.rows {
                let old = self.left.get(k, l).unwrap_or(RowInfo { mult: 0, matches: 0, ts: *ts });
                self.left.set(k, l, RowInfo { mult: old.mult + d, ..old }, bounded);
            }
            for (k, r, d, ts) in &dr.rows {
                let old = self.right.get(k, r).unwrap_or(RowInfo { mult: 0, matches: 0, ts: *ts });
                self.right.set(k, r, RowInfo { mult: old.mult + d, ..old }, bounded);
            }
        }
        Ok(out)
    }

    /// Frees rows that can no longer match or be retracted in time, given the watermarks of
    /// the two inputs as of the last processed epoch. Returns the rows freed.
    pub fn expire(&mut self, left_wm: i64, right_wm: i64) -> usize {
        let Some(b) = &self.plan.time_bound else { return 0 };
        if left_wm == NO_WATERMARK || right_wm == NO_WATERMARK {
            return 0;
        }
        // A left row with time t matches right rows with time in [t + lower, t + upper]: once
        // the right watermark passes t + upper (and the left one passes t, so a retraction of
        // the row would be late), nothing can change its output any more.
        let left_bound = left_wm.min(right_wm.saturating_sub(b.upper_ms));
        let right_bound = right_wm.min(left_wm.saturating_add(b.lower_ms));
        self.left.expire(left_bound) + self.right.expire(right_bound)
    }

    fn pair_batch(&self, pairs: &Pairs) -> Result<RecordBatch> {
        let lp = self.left_conv.parser();
        let rp = self.right_conv.parser();
        let mut start = 0;
        let left_rows = pairs.left_ends.iter().map(|&end| {
            let r = lp.parse(&pairs.left[start..end]);
            start = end;
            r
        });
        let mut cols: Vec<ArrayRef> = self.left_conv.convert_rows(left_rows)?;
        let mut start = 0;
        let right_rows = pairs.right_ends.iter().map(|&end| {
            let r = rp.parse(&pairs.right[start..end]);
            start = end;
            r
        });
        cols.extend(self.right_conv.convert_rows(right_rows)?);
        self.finish(cols, pairs.len())
    }

    fn padded(&self, rows: &[(&[u8], i64)], left: bool) -> Result<DiffBatch> {
        let n = rows.len();
        let (conv, other) =
            if left { (&self.left_conv, &self.right_schema) } else { (&self.right_conv, &self.left_schema) };
        let p = conv.parser();
        let present = conv.convert_rows(rows.iter().map(|(r, _)| p.parse(r)))?;
        let nulls: Vec<ArrayRef> = other.fields().iter().map(|f| new_null_array(f.data_type(), n)).collect();
        let cols =
            if left { present.into_iter().chain(nulls).collect() } else { nulls.into_iter().chain(present).collect() };
        let batch = self.finish(cols, n)?;
        DiffBatch::with_diffs(batch, Int64Array::from(rows.iter().map(|(_, d)| *d).collect::<Vec<_>>()))
    }

    fn finish(&self, cols: Vec<ArrayRef>, n: usize) -> Result<RecordBatch> {
        let schema = self.plan.output_schema.clone();
        if cols.len() != schema.fields().len() {
            return Err(DataflowError::Internal(format!(
                "join produced {} columns for an output of {}",
                cols.len(),
                schema.fields().len()
            )));
        }
        Ok(RecordBatch::try_new_with_options(schema, cols, &RecordBatchOptions::new().with_row_count(Some(n)))?)
    }
}
