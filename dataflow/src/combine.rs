//! Pre-aggregation before the exchange.
//!
//! A `GROUP BY` routes each row to the worker that owns its key. When the aggregates can be
//! split into partial states (COUNT, SUM, AVG, and MIN/MAX over append-only numbers), the
//! routing operator first folds each input batch into one partial row per group — the group's
//! keys, the net multiplicity and number of its rows, and each aggregate's partial state — and
//! ships those instead of the rows. The owner merges them
//! ([`GroupedAggregate::apply_partial`](crate::aggregate_state::GroupedAggregate::apply_partial)).
//! A batch of 50,000 rows over 100 groups crosses the exchange as 100 rows, and the per-row work
//! left is one hash, one probe of a small table and the accumulator updates.
//!
//! The combiner is stateless between batches, so checkpoints do not see it. Batches too small to
//! gain, and batches whose keys are mostly distinct (which would make the partial as large as the
//! input), are routed as rows; after such a batch the next few are sent as rows without trying.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, SchemaRef};
use arrow_row::{RowConverter, SortField};
use hashbrown::HashTable;

use crate::accumulators::create_accumulator;
use crate::aggregate_state::{key_hashes, owner, partial_schema, GroupTable};
use crate::batch::{DiffBatch, Routed};
use crate::error::Result;
use crate::plan::AggregatePlan;

/// Batches with fewer rows are routed as rows.
const MIN_ROWS: usize = 64;
/// A batch with more groups than this fraction of its rows is routed as rows...
const MAX_GROUP_RATIO: f64 = 0.5;
/// ...and so are this many batches after it.
const BACK_OFF: u32 = 16;
/// Keys of up to this many fixed-width columns are compared as machine words.
const MAX_WORD_KEYS: usize = 4;

/// What [`Combiner::combine`] made of a batch.
pub enum Combined {
    /// One batch of partial aggregates per worker that owns some of the batch's groups.
    Partial(Vec<Routed>),
    /// Not combined: route the rows (with their routing hashes, if computed).
    Rows(Option<Vec<u64>>),
}

/// Folds batches into partial aggregates, one per group, split by owning worker.
pub struct Combiner {
    plan: Arc<AggregatePlan>,
    arg_types: Vec<Option<DataType>>,
    schema: SchemaRef,
    key_types: Vec<DataType>,
    converter: RowConverter,
    back_off: u32,
}

impl Combiner {
    /// A combiner for `plan`, or `None` when its aggregates cannot be pre-aggregated.
    pub fn new(plan: Arc<AggregatePlan>) -> Option<Self> {
        let arg_types: Vec<_> =
            plan.aggs.iter().map(|a| a.arg.as_ref().map(|f| f.output_schema().field(0).data_type().clone())).collect();
        let schema = partial_schema(&plan, &arg_types)?;
        let key_types: Vec<DataType> =
            plan.keys.output_schema().fields().iter().map(|f| f.data_type().clone()).collect();
        let converter = RowConverter::new(key_types.iter().map(|t| SortField::new(t.clone())).collect()).ok()?;
        Some(Self { plan, arg_types, schema, key_types, converter, back_off: 0 })
    }

    /// The layout of the partial batches this combiner makes.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Folds `batch` into partial aggregates addressed to the owners of its groups among
    /// `peers` workers, or says to route its rows. Fails (touching nothing) when the keys or
    /// arguments do not evaluate.
    pub fn combine(&mut self, batch: &DiffBatch, peers: usize) -> Result<Combined> {
        let n = batch.num_rows();
        if n < MIN_ROWS {
            return Ok(Combined::Rows(None));
        }
        if self.back_off > 0 {
            self.back_off -= 1;
            return Ok(Combined::Rows(None));
        }
        let keys = self.plan.keys.eval(&batch.data)?;
        let args = self.plan.eval_args(&batch.data)?;
        // Word keys are grouped by a local hash; routing hashes are then computed for the groups
        // only. Other keys are grouped with their routing hashes.
        let (groups, first, row_hashes) = match word_columns(keys.columns()) {
            Some(words) => {
                let (g, f) = intern_dense(&words).unwrap_or_else(|| intern_words(&words));
                (g, f, None)
            }
            None => {
                let hashes = key_hashes(&self.converter, keys.columns(), n)?;
                let mut table = GroupTable::new(&self.key_types)?;
                let groups = table.intern(keys.columns(), n, Some(&hashes))?;
                let mut first = Vec::with_capacity(table.len());
                for (i, &g) in groups.iter().enumerate() {
                    if g as usize == first.len() {
                        first.push(i as u32);
                    }
                }
                (groups, first, Some(hashes))
            }
        };
        let ng = first.len();
        if ng as f64 > n as f64 * MAX_GROUP_RATIO {
            self.back_off = BACK_OFF;
            return Ok(Combined::Rows(row_hashes));
        }
        let mut count = vec![0i64; ng];
        groups.iter().for_each(|&g| count[g as usize] += 1);
        let rows = match &batch.diffs {
            None => count.clone(),
            Some(d) => {
                let mut rows = vec![0i64; ng];
                groups.iter().zip(d.values()).for_each(|(&g, &d)| rows[g as usize] += d);
                rows
            }
        };
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        let first_rows = UInt32Array::from(first);
        for c in keys.columns() {
            cols.push(take(c.as_ref(), &first_rows, None)?);
        }
        let all: Vec<u32> = (0..ng as u32).collect();
        for ((spec, t), values) in self.plan.aggs.iter().zip(&self.arg_types).zip(&args) {
            let mut acc = create_accumulator(spec.kind, t.as_ref(), self.plan.input_append_only)?;
            acc.update(&groups, values.as_ref(), batch, ng)?;
            cols.extend(acc.export(&all)?);
        }
        let nk = keys.num_columns();
        cols.insert(nk, Arc::new(Int64Array::from(count)));
        cols.insert(nk, Arc::new(Int64Array::from(rows)));
        let partial = DiffBatch::inserts(RecordBatch::try_new(self.schema.clone(), cols)?);
        let single_string = matches!(self.key_types.as_slice(), [DataType::Utf8]);
        let group_hashes: Option<Vec<u64>> = match &row_hashes {
            Some(h) => Some(first_rows.values().iter().map(|&r| h[r as usize]).collect()),
            None if peers > 1 || single_string => Some(key_hashes(&self.converter, &partial.data.columns()[..nk], ng)?),
            None => None,
        };
        if peers <= 1 {
            let hashes = group_hashes.filter(|_| single_string);
            return Ok(Combined::Partial(vec![Routed { target: 0, batch: partial, hashes, partial: true }]));
        }
        let group_hashes = group_hashes.unwrap_or_default();
        let mut parts: Vec<Vec<u32>> = vec![Vec::new(); peers];
        for (g, &h) in group_hashes.iter().enumerate() {
            parts[owner(h, peers)].push(g as u32);
        }
        let mut out = Vec::new();
        for (target, part) in parts.into_iter().enumerate() {
            if part.is_empty() {
                continue;
            }
            let hashes = single_string.then(|| part.iter().map(|&g| group_hashes[g as usize]).collect());
            let batch = if part.len() == ng { partial.clone() } else { partial.take(&UInt32Array::from(part))? };
            out.push(Routed { target: target as u32, batch, hashes, partial: true });
        }
        Ok(Combined::Partial(out))
    }
}

/// The values of a key column as 64-bit words.
enum Words {
    /// The column's own buffer (8-byte values).
    Shared(arrow::buffer::ScalarBuffer<u64>),
    /// Narrower values, widened.
    Owned(Vec<u64>),
}

impl std::ops::Deref for Words {
    type Target = [u64];
    fn deref(&self) -> &[u64] {
        match self {
            Words::Shared(b) => b,
            Words::Owned(v) => v,
        }
    }
}

/// A key column's words and nulls.
type WordColumn = (Words, Option<arrow::buffer::NullBuffer>);

/// Key columns as 64-bit words per row (values widened, `None` for a null), when every column
/// is a fixed-width primitive of at most 8 bytes and there are at most [`MAX_WORD_KEYS`].
fn word_columns(cols: &[ArrayRef]) -> Option<Vec<WordColumn>> {
    if cols.is_empty() || cols.len() > MAX_WORD_KEYS {
        return None;
    }
    let mut out = Vec::with_capacity(cols.len());
    for col in cols {
        let t = col.data_type();
        if !t.is_primitive() {
            return None;
        }
        let data = col.to_data();
        let n = col.len();
        let words: Words = match t.primitive_width()? {
            // 8-byte values are read in place (the buffer is shared, not copied).
            8 => {
                let buf = data.buffers().first()?;
                Words::Shared(arrow::buffer::ScalarBuffer::new(buf.clone(), data.offset(), n))
            }
            4 => Words::Owned(data.buffer::<u32>(0)[..n].iter().map(|&v| u64::from(v)).collect()),
            2 => Words::Owned(data.buffer::<u16>(0)[..n].iter().map(|&v| u64::from(v)).collect()),
            1 => Words::Owned(data.buffer::<u8>(0)[..n].iter().map(|&v| u64::from(v)).collect()),
            _ => return None,
        };
        out.push((words, col.logical_nulls()));
    }
    Some(out)
}

/// Composite keys whose parts take few values index a table of at most this many slots.
const DENSE_SLOTS: usize = 1 << 16;
/// A key column with more distinct values than this in a batch is not coded densely.
const DENSE_VALUES: usize = 4096;

/// Adds `code * radix` to `index[i]` for every row, where the code of a value is one of a few
/// (0..card, nulls last): `value - min` when the column's range is small, else codes in order
/// of first appearance (a run of one value costs a comparison). Returns `card`; `None` when
/// the column has too many distinct values.
fn add_codes(words: &[u64], nulls: Option<&arrow::buffer::NullBuffer>, radix: u32, index: &mut [u32]) -> Option<usize> {
    let nulls = nulls.filter(|nb| nb.null_count() > 0);
    let valid = |i: usize| nulls.is_none_or(|nb| nb.is_valid(i));
    let (mut lo, mut hi) = (u64::MAX, 0u64);
    match nulls {
        None => {
            for &w in words {
                lo = lo.min(w);
                hi = hi.max(w);
            }
        }
        Some(_) => {
            for (i, &w) in words.iter().enumerate() {
                if valid(i) {
                    lo = lo.min(w);
                    hi = hi.max(w);
                }
            }
        }
    }
    if lo > hi {
        // All null: one code, zero.
        return Some(1);
    }
    let card = if hi - lo < DENSE_VALUES as u64 {
        let card = (hi - lo) as u32 + 1;
        for (i, (x, &w)) in index.iter_mut().zip(words).enumerate() {
            let code = if valid(i) { (w - lo) as u32 } else { card };
            *x += code * radix;
        }
        card as usize
    } else {
        let mut table: HashTable<(u64, u32)> = HashTable::with_capacity(16);
        let hash = |v: u64| {
            let h = v.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            h ^ (h >> 29)
        };
        let mut last: Option<(u64, u32)> = None;
        let mut nulls_at = Vec::new();
        for (i, (x, &w)) in index.iter_mut().zip(words).enumerate() {
            if !valid(i) {
                nulls_at.push(i);
                continue;
            }
            let c = match last {
                Some((v, c)) if v == w => c,
                _ => {
                    let c = match table.find(hash(w), |&(v, _)| v == w) {
                        Some(&(_, c)) => c,
                        None => {
                            let c = table.len() as u32;
                            if c as usize >= DENSE_VALUES {
                                return None;
                            }
                            table.insert_unique(hash(w), (w, c), |&(v, _)| hash(v));
                            c
                        }
                    };
                    last = Some((w, c));
                    c
                }
            };
            *x += c * radix;
        }
        let card = table.len() as u32;
        for i in nulls_at {
            index[i] += card * radix;
        }
        card as usize
    };
    Some(if nulls.is_some() { card + 1 } else { card })
}

/// True when `b` is `a` plus a constant in every row (like `window_end` and `window_start`):
/// `b` then adds nothing to a key that holds `a`.
fn is_shift(a: &[u64], b: &[u64]) -> bool {
    let Some((&a0, &b0)) = a.first().zip(b.first()) else { return true };
    let d = b0.wrapping_sub(a0);
    a.iter().zip(b).all(|(&x, &y)| y.wrapping_sub(x) == d)
}

/// [`intern_words`] by dense coding: each key column coded into a few values ([`add_codes`]),
/// the codes combined (mixed radix) into an index of a table of group ids; a column that is
/// another plus a constant is skipped. `None` when the combinations would need more than
/// [`DENSE_SLOTS`] slots.
fn intern_dense(cols: &[WordColumn]) -> Option<(Vec<u32>, Vec<u32>)> {
    let n = cols.first().map_or(0, |c| c.0.len());
    let mut index = vec![0u32; n];
    let mut slots = 1usize;
    for (j, (words, nulls)) in cols.iter().enumerate() {
        let no_nulls = |nb: &Option<arrow::buffer::NullBuffer>| nb.as_ref().is_none_or(|nb| nb.null_count() == 0);
        if no_nulls(nulls) && cols[..j].iter().any(|(w, nb)| no_nulls(nb) && is_shift(w, words)) {
            continue;
        }
        let card = add_codes(words, nulls.as_ref(), slots as u32, &mut index)?;
        slots = slots.checked_mul(card).filter(|&s| s <= DENSE_SLOTS)?;
    }
    let mut table = vec![u32::MAX; slots];
    let mut first = Vec::new();
    let mut groups = Vec::with_capacity(n);
    for (i, &x) in index.iter().enumerate() {
        let slot = &mut table[x as usize];
        if *slot == u32::MAX {
            *slot = first.len() as u32;
            first.push(i as u32);
        }
        groups.push(*slot);
    }
    Some((groups, first))
}

/// Local group ids of each row and the first row of each group, for word keys: a key is its
/// column words plus a mask of its null columns (whose words count as zero).
fn intern_words(cols: &[WordColumn]) -> (Vec<u32>, Vec<u32>) {
    match cols.len() {
        1 => intern_words_n::<2>(cols),
        2 => intern_words_n::<3>(cols),
        3 => intern_words_n::<4>(cols),
        _ => intern_words_n::<{ MAX_WORD_KEYS + 1 }>(cols),
    }
}

/// A hash of a word key for the combiner's own table (not the routing hash).
#[inline]
fn word_hash<const S: usize>(key: &[u64; S]) -> u64 {
    let mut h = 0x243f_6a88_85a3_08d3u64;
    for &w in key {
        h = (h.rotate_left(23) ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    h ^ (h >> 31)
}

/// [`intern_words`] for keys of `S - 1` columns (the last word is the null mask).
fn intern_words_n<const S: usize>(cols: &[WordColumn]) -> (Vec<u32>, Vec<u32>) {
    let n = cols.first().map_or(0, |c| c.0.len());
    let mut table: HashTable<u32> = HashTable::with_capacity(64);
    let mut store: Vec<[u64; S]> = Vec::with_capacity(64);
    let mut first: Vec<u32> = Vec::new();
    let mut groups = Vec::with_capacity(n);
    let any_nulls = cols.iter().any(|(_, nulls)| nulls.is_some());
    let mut last: Option<([u64; S], u32)> = None;
    for i in 0..n {
        let mut key = [0u64; S];
        for (c, (words, _)) in cols.iter().enumerate() {
            key[c] = words[i];
        }
        if any_nulls {
            let mut mask = 0u64;
            for (c, (_, nulls)) in cols.iter().enumerate() {
                if nulls.as_ref().is_some_and(|nb| nb.is_null(i)) {
                    mask |= 1 << c;
                    key[c] = 0;
                }
            }
            key[S - 1] = mask;
        }
        // Runs of one key (sorted or clustered input) skip the table.
        if let Some((k, g)) = last {
            if k == key {
                groups.push(g);
                continue;
            }
        }
        let h = word_hash(&key);
        let g = match table.find(h, |&g| store[g as usize] == key) {
            Some(&g) => g,
            None => {
                let g = first.len() as u32;
                first.push(i as u32);
                store.push(key);
                table.insert_unique(h, g, |&g| word_hash(&store[g as usize]));
                g
            }
        };
        last = Some((key, g));
        groups.push(g);
    }
    (groups, first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate_state::GroupedAggregate;
    use crate::plan::testing::Columns;
    use crate::plan::{AggKind, AggSpec, BatchFn};
    use arrow::datatypes::{Field, Schema};

    fn input_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("v", DataType::Float64, true),
            Field::new("i", DataType::Int64, true),
        ]))
    }

    fn plan(key_cols: Vec<usize>, append_only: bool) -> Arc<AggregatePlan> {
        let input = input_schema();
        let keys = Arc::new(Columns(key_cols.clone(), Arc::new(input.project(&key_cols).expect("keys"))));
        let col =
            |i: usize| -> Arc<dyn BatchFn> { Arc::new(Columns(vec![i], Arc::new(input.project(&[i]).expect("arg")))) };
        let aggs = vec![
            AggSpec { kind: AggKind::CountStar, arg: None, output_type: DataType::Int64 },
            AggSpec { kind: AggKind::Count, arg: Some(col(2)), output_type: DataType::Int64 },
            AggSpec { kind: AggKind::Sum, arg: Some(col(2)), output_type: DataType::Float64 },
            AggSpec { kind: AggKind::Sum, arg: Some(col(3)), output_type: DataType::Int64 },
            AggSpec { kind: AggKind::Avg, arg: Some(col(3)), output_type: DataType::Float64 },
            AggSpec { kind: AggKind::Max, arg: Some(col(3)), output_type: DataType::Int64 },
        ];
        let mut fields: Vec<Field> = key_cols.iter().map(|&i| input.field(i).clone()).collect();
        for (i, a) in aggs.iter().enumerate() {
            fields.push(Field::new(format!("a{i}"), a.output_type.clone(), true));
        }
        Arc::new(AggregatePlan {
            keys,
            aggs,
            output_schema: Arc::new(Schema::new(fields)),
            input_append_only: append_only,
        })
    }

    /// Rows with repeating keys, some nulls in keys and values.
    fn batch(n: usize, seed: u64, diffs: bool) -> DiffBatch {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            x >> 33
        };
        let mut k = Vec::new();
        let mut s = Vec::new();
        let mut v = Vec::new();
        let mut i = Vec::new();
        let mut d = Vec::new();
        for _ in 0..n {
            let r = next();
            k.push((r % 13 != 0).then_some((r % 7) as i64 - 3));
            s.push((r % 11 != 0).then(|| format!("key{}", r % 5)));
            v.push((r % 5 != 0).then_some((r % 100) as f64 / 4.0));
            i.push((r % 3 != 0).then_some((r % 1000) as i64));
            d.push(if r % 4 == 0 { -1 } else { 1 + (r % 2) as i64 });
        }
        let data = RecordBatch::try_new(
            input_schema(),
            vec![
                Arc::new(Int64Array::from(k)),
                Arc::new(arrow::array::StringArray::from(s)),
                Arc::new(arrow::array::Float64Array::from(v)),
                Arc::new(Int64Array::from(i)),
            ],
        )
        .expect("batch");
        if diffs {
            DiffBatch::with_diffs(data, Int64Array::from(d)).expect("diffs")
        } else {
            DiffBatch::inserts(data)
        }
    }

    fn sorted_rows(b: &DiffBatch) -> Vec<String> {
        let mut out: Vec<String> = (0..b.num_rows())
            .map(|r| {
                let cells: Vec<String> = b
                    .data
                    .columns()
                    .iter()
                    .map(|c| arrow::util::display::array_value_to_string(c, r).expect("cell"))
                    .collect();
                format!("{} x{}", cells.join(","), b.diff(r))
            })
            .collect();
        out.sort();
        out
    }

    /// Applying partials made by the combiner gives exactly the state that applying the rows
    /// gives, for word keys, a VARCHAR key, mixed keys and no key; over 1-3 workers; with
    /// insertions only (MAX combinable) and with retractions (not combinable when MAX is in).
    #[test]
    fn partials_fold_to_the_same_result_as_rows() {
        for (keys, append_only) in
            [(vec![0], true), (vec![1], true), (vec![0, 1], true), (vec![], true), (vec![0], false)]
        {
            let p = plan(keys.clone(), append_only);
            let types: Vec<_> =
                p.aggs.iter().map(|a| a.arg.as_ref().map(|f| f.output_schema().field(0).data_type().clone())).collect();
            let Some(mut combiner) = Combiner::new(p.clone()) else {
                assert!(!append_only, "only MAX under retractions keeps the combiner out");
                continue;
            };
            for peers in 1..=3 {
                let mut direct = GroupedAggregate::new(p.clone(), &types).expect("state");
                let mut merged: Vec<GroupedAggregate> =
                    (0..peers).map(|_| GroupedAggregate::new(p.clone(), &types).expect("state")).collect();
                for seed in 0..4 {
                    let b = batch(500, seed + 10 * peers as u64, false);
                    direct.apply(&b).expect("apply");
                    let Combined::Partial(parts) = combiner.combine(&b, peers).expect("combine") else {
                        panic!("expected partials for keys {keys:?}");
                    };
                    let mut rows = 0;
                    for r in parts {
                        rows += r.batch.num_rows();
                        merged[r.target as usize].apply_partial(&r.batch, r.hashes.as_deref()).expect("merge");
                    }
                    assert!(rows <= 2 * 7 * 6, "partials hold one row per group, got {rows}");
                }
                let want = sorted_rows(&direct.emit().expect("emit").expect("rows"));
                let mut got = Vec::new();
                for m in merged.iter_mut() {
                    if let Some(b) = m.emit().expect("emit") {
                        got.extend(sorted_rows(&b));
                    }
                }
                got.sort();
                assert_eq!(got, want, "keys {keys:?}, {peers} workers");
            }
        }
        // Retractions with combinable aggregates only: COUNT/SUM/AVG.
        let mut p = (*plan(vec![0, 1], false)).clone();
        p.aggs.pop();
        let fields: Vec<Field> = p
            .output_schema
            .fields()
            .iter()
            .take(p.output_schema.fields().len() - 1)
            .map(|f| f.as_ref().clone())
            .collect();
        p.output_schema = Arc::new(Schema::new(fields));
        let p = Arc::new(p);
        let types: Vec<_> =
            p.aggs.iter().map(|a| a.arg.as_ref().map(|f| f.output_schema().field(0).data_type().clone())).collect();
        let mut combiner = Combiner::new(p.clone()).expect("combinable");
        let mut direct = GroupedAggregate::new(p.clone(), &types).expect("state");
        let mut merged: Vec<GroupedAggregate> =
            (0..2).map(|_| GroupedAggregate::new(p.clone(), &types).expect("state")).collect();
        // Insert, then retract part of it: counts stay non-negative.
        let ins = batch(800, 1, false);
        let ret = ins.slice(0, 300);
        let ret = DiffBatch::with_diffs(ret.data.clone(), Int64Array::from(vec![-1; 300])).expect("diffs");
        for b in [&ins, &ret] {
            direct.apply(b).expect("apply");
            let Combined::Partial(parts) = combiner.combine(b, 2).expect("combine") else { panic!("partials") };
            for r in parts {
                merged[r.target as usize].apply_partial(&r.batch, r.hashes.as_deref()).expect("merge");
            }
        }
        let want = sorted_rows(&direct.emit().expect("emit").expect("rows"));
        let mut got: Vec<String> =
            merged.iter_mut().filter_map(|m| m.emit().expect("emit")).flat_map(|b| sorted_rows(&b)).collect();
        got.sort();
        assert_eq!(got, want);
    }

    /// Small batches and batches of mostly distinct keys are routed as rows, and the combiner
    /// backs off for a while after a poor one.
    #[test]
    fn small_and_distinct_batches_go_as_rows() {
        let distinct = |n: i64| {
            let mut b = batch(n as usize, 5, false);
            let mut cols = b.data.columns().to_vec();
            cols[0] = Arc::new(Int64Array::from_iter_values(0..n));
            b.data = RecordBatch::try_new(b.data.schema(), cols).expect("batch");
            b
        };
        let mut c = Combiner::new(plan(vec![0], true)).expect("combinable");
        assert!(matches!(c.combine(&batch(10, 1, false), 2).expect("combine"), Combined::Rows(None)));
        // Integer keys are grouped by a local hash: routing hashes are left to the router.
        assert!(matches!(c.combine(&distinct(1000), 2).expect("combine"), Combined::Rows(None)));
        for _ in 0..BACK_OFF {
            assert!(matches!(c.combine(&batch(1000, 3, false), 2).expect("combine"), Combined::Rows(None)));
        }
        assert!(matches!(c.combine(&batch(1000, 3, false), 2).expect("combine"), Combined::Partial(_)));
    }

    /// Dense coding groups rows exactly as the word table does (both number groups in order of
    /// first appearance), over small ranges, sparse values, runs and nulls; and gives up when
    /// the combinations are too many.
    #[test]
    fn dense_coding_matches_the_word_table() {
        let mut x = 7u64;
        let mut next = || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            x >> 33
        };
        for case in 0..6 {
            let n = 3000;
            let mut cols = Vec::new();
            for c in 0..3 {
                let words: Vec<u64> = (0..n)
                    .map(|i| match (case + c) % 4 {
                        0 => next() % 50,                                          // small range
                        1 => (next() % 20).wrapping_mul(1 << 40),                  // few sparse values
                        2 => (i as u64 / 700) * 60_000_000,                        // runs
                        3 if c == 2 => (i as u64 / 700) * 60_000_000 + 60_000_000, // shifted runs
                        _ => (next() % 9).wrapping_sub(4),                         // negatives
                    })
                    .collect();
                let nulls = (case % 2 == 1 && c == 0)
                    .then(|| arrow::buffer::NullBuffer::from((0..n).map(|i| i % 17 != 0).collect::<Vec<bool>>()));
                cols.push((Words::Owned(words), nulls));
            }
            let dense = intern_dense(&cols).expect("few combinations");
            assert_eq!(dense, intern_words(&cols), "case {case}");
        }
        let wide: Vec<WordColumn> =
            (0..2).map(|_| (Words::Owned((0..10_000u64).map(|i| i * 3).collect()), None)).collect();
        assert!(intern_dense(&wide).is_none(), "10,000 x 10,000 combinations");
    }
}
