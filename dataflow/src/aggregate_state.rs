//! The state of an incremental `GROUP BY`, independent of the timely operator that drives it.
//!
//! [`GroupedAggregate::apply`] folds batches of signed rows into per-group accumulators;
//! [`GroupedAggregate::emit`] returns the change of the output since the previous call: for each
//! group whose output row changed, a retraction of the old row and an insertion of the new one.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::DataType;
use arrow_row::{RowConverter, Rows, SortField};
use hashbrown::HashTable;

use crate::accumulators::{create_accumulator, Accumulator};
use crate::batch::DiffBatch;
use crate::codec::{Dec, Enc};
use crate::error::{DataflowError, Result};
use crate::plan::AggregatePlan;
use crate::rowstore::{bytes_eq, RowSlots};

/// Maps group keys to dense group ids.
///
/// Keys are byte strings: the Arrow row encoding of the key columns in general, or for a single
/// VARCHAR key the string's own bytes (no encoding pass, the common case of `GROUP BY name`).
pub struct GroupTable {
    /// Single VARCHAR key: the key of each group (None: the NULL key).
    strings: Option<RowSlots>,
    converter: Option<RowConverter>,
    table: HashTable<(u64, u32)>,
    keys: Option<Rows>,
    hasher: ahash::RandomState,
    len: usize,
}

impl GroupTable {
    /// A table for keys of the given types (none: one global group).
    pub fn new(key_types: &[arrow::datatypes::DataType]) -> Result<Self> {
        let single_utf8 = key_types == [DataType::Utf8];
        let converter = if key_types.is_empty() || single_utf8 {
            None
        } else {
            Some(RowConverter::new(key_types.iter().map(|t| SortField::new(t.clone())).collect())?)
        };
        let keys = converter.as_ref().map(|c| c.empty_rows(0, 0));
        Ok(Self {
            strings: single_utf8.then(RowSlots::default),
            converter,
            table: HashTable::new(),
            keys,
            // The routing hash's seeds: a single VARCHAR key's routing hash is its grouping hash.
            hasher: ahash::RandomState::with_seeds(1, 2, 3, 4),
            len: 0,
        })
    }

    /// Number of groups ever seen.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no group exists.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Group id of every row, creating groups as needed. `hashes`: the rows' routing hashes
    /// ([`key_hashes`]), usable for a single VARCHAR key.
    pub fn intern(&mut self, key_columns: &[ArrayRef], num_rows: usize, hashes: Option<&[u64]>) -> Result<Vec<u32>> {
        if let Some(strings) = self.strings.as_mut() {
            let arr = key_columns
                .first()
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| DataflowError::Internal("VARCHAR key expected".into()))?;
            let hashes = hashes.filter(|h| h.len() == num_rows);
            let mut out = Vec::with_capacity(num_rows);
            for i in 0..num_rows {
                let key: Option<&[u8]> = arr.is_valid(i).then(|| arr.value(i).as_bytes());
                let hash = match hashes {
                    Some(h) => h[i],
                    None => key.map_or(NULL_KEY_HASH, |b| self.hasher.hash_one(b)),
                };
                let found = self.table.find(hash, |&(h, g)| h == hash && same_key(strings.get(g as usize), key));
                let g = match found {
                    Some(&(_, g)) => g,
                    None => {
                        let g = self.len as u32;
                        strings.set(g as usize, key);
                        self.table.insert_unique(hash, (hash, g), |&(h, _)| h);
                        self.len += 1;
                        g
                    }
                };
                out.push(g);
            }
            return Ok(out);
        }
        let Some(converter) = &self.converter else {
            if self.len == 0 && num_rows > 0 {
                self.len = 1;
            }
            return Ok(vec![0; num_rows]);
        };
        let rows = converter.convert_columns(key_columns)?;
        let keys = self.keys.as_mut().ok_or_else(|| DataflowError::Internal("group keys".into()))?;
        let mut out = Vec::with_capacity(num_rows);
        for row in rows.iter() {
            let bytes = row.as_ref();
            let hash = self.hasher.hash_one(bytes);
            let found = self.table.find(hash, |&(h, g)| h == hash && keys.row(g as usize).as_ref() == bytes);
            let g = match found {
                Some(&(_, g)) => g,
                None => {
                    let g = self.len as u32;
                    keys.push(row);
                    self.table.insert_unique(hash, (hash, g), |&(h, _)| h);
                    self.len += 1;
                    g
                }
            };
            out.push(g);
        }
        Ok(out)
    }

    /// The key of group `g` as bytes (`None`: the NULL key of a single VARCHAR key).
    pub fn key_bytes(&self, g: u32) -> Option<&[u8]> {
        if let Some(strings) = &self.strings {
            return strings.get(g as usize);
        }
        match &self.keys {
            Some(keys) => Some(keys.row(g as usize).data()),
            None => Some(&[]),
        }
    }

    /// The group id of a key given as bytes (from [`GroupTable::key_bytes`]), created if new.
    pub fn intern_bytes(&mut self, key: Option<&[u8]>) -> Result<u32> {
        if let Some(strings) = self.strings.as_mut() {
            let hash = key.map_or(NULL_KEY_HASH, |b| self.hasher.hash_one(b));
            if let Some(&(_, g)) = self.table.find(hash, |&(h, g)| h == hash && same_key(strings.get(g as usize), key))
            {
                return Ok(g);
            }
            let g = self.len as u32;
            strings.set(g as usize, key);
            self.table.insert_unique(hash, (hash, g), |&(h, _)| h);
            self.len += 1;
            return Ok(g);
        }
        let (Some(converter), Some(keys)) = (&self.converter, self.keys.as_mut()) else {
            self.len = 1;
            return Ok(0);
        };
        let bytes = key.ok_or_else(|| DataflowError::Internal("corrupt state snapshot (group key)".into()))?;
        let hash = self.hasher.hash_one(bytes);
        if let Some(&(_, g)) = self.table.find(hash, |&(h, g)| h == hash && keys.row(g as usize).data() == bytes) {
            return Ok(g);
        }
        let g = self.len as u32;
        keys.push(converter.parser().parse(bytes));
        self.table.insert_unique(hash, (hash, g), |&(h, _)| h);
        self.len += 1;
        Ok(g)
    }

    /// Key columns of keys given as bytes (to decide which worker owns them).
    pub fn decode_keys(&self, keys: &[Option<&[u8]>]) -> Result<Vec<ArrayRef>> {
        if self.strings.is_some() {
            let values = keys.iter().map(|k| k.and_then(|b| std::str::from_utf8(b).ok()));
            return Ok(vec![Arc::new(StringArray::from_iter(values))]);
        }
        match &self.converter {
            Some(c) => {
                let parser = c.parser();
                Ok(c.convert_rows(keys.iter().map(|k| parser.parse(k.unwrap_or_default())))?)
            }
            None => Ok(Vec::new()),
        }
    }

    /// The key columns of the listed groups.
    pub fn key_columns(&self, groups: &[u32]) -> Result<Vec<ArrayRef>> {
        if let Some(strings) = &self.strings {
            let values = groups.iter().map(|&g| strings.get(g as usize).and_then(|b| std::str::from_utf8(b).ok()));
            return Ok(vec![Arc::new(StringArray::from_iter(values))]);
        }
        match (&self.converter, &self.keys) {
            (Some(c), Some(keys)) => Ok(c.convert_rows(groups.iter().map(|&g| keys.row(g as usize)))?),
            _ => Ok(Vec::new()),
        }
    }
}

/// Hash of the NULL key of a single VARCHAR key column.
const NULL_KEY_HASH: u64 = 0x9e37_79b9_7f4a_7c15;

/// Hash of each row's key, used to route rows to the worker that owns the key. Integer,
/// temporal, floating-point, boolean and string columns are hashed column by column; other types
/// through their row encoding.
pub fn key_hashes(converter: &RowConverter, key_columns: &[ArrayRef], num_rows: usize) -> Result<Vec<u64>> {
    if key_columns.is_empty() {
        return Ok(vec![0; num_rows]);
    }
    let hasher = ahash::RandomState::with_seeds(1, 2, 3, 4);
    if let [col] = key_columns {
        if let Some(arr) = col.as_string_opt::<i32>() {
            return Ok((0..num_rows)
                .map(|i| if arr.is_valid(i) { hasher.hash_one(arr.value(i).as_bytes()) } else { NULL_KEY_HASH })
                .collect());
        }
    }
    let mut hashes = vec![0u64; num_rows];
    for col in key_columns {
        if !hash_column(col, &hasher, &mut hashes) {
            let rows = converter.convert_columns(key_columns)?;
            return Ok(rows.iter().map(|r| hasher.hash_one(r.as_ref())).collect());
        }
    }
    Ok(hashes)
}

/// Folds the hash of every value of `col` into `hashes`; false for a type it does not handle.
fn hash_column(col: &ArrayRef, hasher: &ahash::RandomState, hashes: &mut [u64]) -> bool {
    fn fold<T: Copy>(
        values: &[T],
        nulls: Option<&arrow::buffer::NullBuffer>,
        hashes: &mut [u64],
        f: impl Fn(T) -> u64,
    ) {
        for (i, (h, &v)) in hashes.iter_mut().zip(values).enumerate() {
            let x = if nulls.is_none_or(|n| n.is_valid(i)) { f(v) } else { NULL_KEY_HASH };
            *h = (h.rotate_left(29) ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    let nulls = col.logical_nulls();
    let nulls = nulls.as_ref();
    let data = col.to_data();
    let width = match col.data_type().primitive_width() {
        Some(w) if col.data_type().is_primitive() => w,
        _ => 0,
    };
    match width {
        8 => fold(&data.buffer::<u64>(0)[..col.len()], nulls, hashes, |v| hasher.hash_one(v)),
        4 => fold(&data.buffer::<u32>(0)[..col.len()], nulls, hashes, |v| hasher.hash_one(v)),
        2 => fold(&data.buffer::<u16>(0)[..col.len()], nulls, hashes, |v| hasher.hash_one(v)),
        1 => fold(&data.buffer::<u8>(0)[..col.len()], nulls, hashes, |v| hasher.hash_one(v)),
        _ => match col.as_string_opt::<i32>() {
            Some(a) => {
                for (i, h) in hashes.iter_mut().enumerate() {
                    let x = if a.is_valid(i) { hasher.hash_one(a.value(i).as_bytes()) } else { NULL_KEY_HASH };
                    *h = (h.rotate_left(29) ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                }
            }
            None => return false,
        },
    }
    true
}

/// Number of count columns after the keys in a partial aggregate batch: the net multiplicity
/// of the rows folded into each partial group, then the number of rows.
pub const PARTIAL_COUNTS: usize = 2;

/// The layout of partial aggregates of `plan` (key columns, the net multiplicity and number of
/// the rows folded in, then each aggregate's partial state), or `None` when some aggregate
/// cannot be pre-aggregated (MIN/MAX under retractions, COUNT DISTINCT, non-primitive MIN/MAX).
pub fn partial_schema(plan: &AggregatePlan, arg_types: &[Option<DataType>]) -> Option<arrow::datatypes::SchemaRef> {
    use arrow::datatypes::{Field, Schema};
    let mut fields: Vec<Field> = plan.keys.output_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("__rows", DataType::Int64, false));
    fields.push(Field::new("__n", DataType::Int64, false));
    for (i, (spec, t)) in plan.aggs.iter().zip(arg_types).enumerate() {
        let acc = create_accumulator(spec.kind, t.as_ref(), plan.input_append_only).ok()?;
        for (j, t) in acc.partial_types()?.into_iter().enumerate() {
            fields.push(Field::new(format!("__p{i}_{j}"), t, true));
        }
    }
    Some(Arc::new(Schema::new(fields)))
}

/// Incremental grouped aggregation state.
pub struct GroupedAggregate {
    plan: Arc<AggregatePlan>,
    groups: GroupTable,
    accs: Vec<Box<dyn Accumulator>>,
    /// Net multiplicity of input rows per group: a group exists while this is positive.
    row_counts: Vec<i64>,
    /// The output row last emitted for each group (row-encoded), if any.
    emitted: RowSlots,
    changed: Vec<u32>,
    is_changed: Vec<bool>,
    out_converter: RowConverter,
    /// Groups changed since the last snapshot.
    dirty: Vec<u32>,
    is_dirty: Vec<bool>,
}

/// Decides which of some keys (given as key columns) this worker owns.
pub type Owns<'a> = &'a dyn Fn(&[ArrayRef], usize) -> Result<Vec<bool>>;

/// Whether two optional keys are equal (see [`bytes_eq`]).
#[inline]
fn same_key(a: Option<&[u8]>, b: Option<&[u8]>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => bytes_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// The worker (of `peers`) that owns a key with routing hash `hash`. A multiply-shift over
/// the hash's middle bits instead of a division (a 64-bit division per row was the largest cost
/// of routing); those bits are independent of the ones group tables index by (low bits) and tag
/// with (top bits), so each worker's keys still spread over its whole table.
#[inline]
pub fn owner(hash: u64, peers: usize) -> usize {
    ((u128::from(hash.rotate_left(32)) * peers as u128) >> 64) as usize
}

/// Keys owned by worker `index` of `peers`, when rows are routed by the hash of all key columns.
pub fn owned_by(index: usize, peers: usize) -> impl Fn(&[ArrayRef], usize) -> Result<Vec<bool>> {
    move |cols: &[ArrayRef], n: usize| {
        if peers <= 1 {
            return Ok(vec![true; n]);
        }
        let converter = RowConverter::new(cols.iter().map(|c| SortField::new(c.data_type().clone())).collect())?;
        Ok(key_hashes(&converter, cols, n)?.into_iter().map(|h| owner(h, peers) == index).collect())
    }
}

impl GroupedAggregate {
    /// Creates empty state for `plan`.
    pub fn new(plan: Arc<AggregatePlan>, arg_types: &[Option<arrow::datatypes::DataType>]) -> Result<Self> {
        let nkeys = plan.keys.output_schema().fields().len();
        let key_types: Vec<_> = plan.keys.output_schema().fields().iter().map(|f| f.data_type().clone()).collect();
        let mut accs = Vec::with_capacity(plan.aggs.len());
        for (spec, t) in plan.aggs.iter().zip(arg_types) {
            accs.push(create_accumulator(spec.kind, t.as_ref(), plan.input_append_only)?);
        }
        let out_fields = plan.output_schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect();
        debug_assert_eq!(plan.output_schema.fields().len(), nkeys + plan.aggs.len());
        Ok(Self {
            groups: GroupTable::new(&key_types)?,
            accs,
            row_counts: Vec::new(),
            emitted: RowSlots::default(),
            changed: Vec::new(),
            is_changed: Vec::new(),
            out_converter: RowConverter::new(out_fields)?,
            plan,
            dirty: Vec::new(),
            is_dirty: Vec::new(),
        })
    }

    /// Number of groups currently present (with a positive row count).
    pub fn live_groups(&self) -> usize {
        self.row_counts.iter().filter(|&&c| c > 0).count()
    }

    /// Number of groups ever created (state size; cheaper than [`Self::live_groups`]).
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// Folds a batch of signed rows into the state.
    pub fn apply(&mut self, batch: &DiffBatch) -> Result<()> {
        self.apply_hashed(batch, None)
    }

    /// [`GroupedAggregate::apply`] with the rows' routing hashes, if the partitioner computed
    /// them.
    pub fn apply_hashed(&mut self, batch: &DiffBatch, hashes: Option<&[u64]>) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        // Evaluate everything before touching the state: a failing expression leaves it intact.
        let keys = self.plan.keys.eval(&batch.data)?;
        let args = self.plan.eval_args(&batch.data)?;
        let groups = self.groups.intern(keys.columns(), n, hashes)?;
        let ng = self.groups.len();
        self.grow(ng);
        for (i, &g) in groups.iter().enumerate() {
            let g = g as usize;
            self.row_counts[g] += batch.diff(i);
            if !self.is_changed[g] {
                self.is_changed[g] = true;
                self.changed.push(g as u32);
            }
        }
        for (values, acc) in args.iter().zip(self.accs.iter_mut()) {
            acc.update(&groups, values.as_ref(), batch, ng)?;
        }
        Ok(())
    }

    /// Folds a batch of partial aggregates made by a
    /// [`Combiner`](crate::combine::Combiner) for the same plan (layout: [`partial_schema`]).
    pub fn apply_partial(&mut self, batch: &DiffBatch, hashes: Option<&[u64]>) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let cols = batch.data.columns();
        let nk = self.plan.keys.output_schema().fields().len();
        let rows = cols
            .get(nk)
            .and_then(|c| c.as_primitive_opt::<arrow::datatypes::Int64Type>())
            .ok_or_else(|| DataflowError::Internal("malformed partial aggregate batch".into()))?;
        let groups = self.groups.intern(&cols[..nk], n, hashes)?;
        let ng = self.groups.len();
        self.grow(ng);
        for (&g, &r) in groups.iter().zip(rows.values()) {
            let g = g as usize;
            self.row_counts[g] += r;
            if !self.is_changed[g] {
                self.is_changed[g] = true;
                self.changed.push(g as u32);
            }
        }
        let mut at = nk + PARTIAL_COUNTS;
        for acc in self.accs.iter_mut() {
            let width = acc.partial_types().map_or(0, |t| t.len());
            let part = cols
                .get(at..at + width)
                .ok_or_else(|| DataflowError::Internal("malformed partial aggregate batch".into()))?;
            acc.merge(&groups, part, ng)?;
            at += width;
        }
        Ok(())
    }

    /// The output changes since the previous call (retractions of old rows, insertions of new rows).
    pub fn emit(&mut self) -> Result<Option<DiffBatch>> {
        if self.changed.is_empty() {
            return Ok(None);
        }
        let mut changed = std::mem::take(&mut self.changed);
        changed.sort_unstable();
        for &g in &changed {
            self.is_changed[g as usize] = false;
            // Changed since the last snapshot (marked per group and epoch, not per row).
            if !self.is_dirty[g as usize] {
                self.is_dirty[g as usize] = true;
                self.dirty.push(g);
            }
        }
        for &g in &changed {
            if self.row_counts[g as usize] < 0 {
                return Err(DataflowError::Eval(
                    "a group received more retractions than insertions (the input retracted rows it never inserted)"
                        .into(),
                ));
            }
        }
        for acc in self.accs.iter_mut() {
            acc.settle(&changed);
        }
        let alive: Vec<u32> = changed.iter().copied().filter(|&g| self.row_counts[g as usize] > 0).collect();
        let new_batch = self.evaluate(&alive)?;
        let new_rows = self.out_converter.convert_columns(new_batch.columns())?;

        // Old rows to retract, copied out of the slots (offsets into `retract_bytes`).
        let mut retract_bytes: Vec<u8> = Vec::new();
        let mut retract: Vec<(usize, usize)> = Vec::new();
        let mut insert_idx: Vec<u32> = Vec::new();
        let mut alive_pos = 0usize;
        for &g in &changed {
            let gi = g as usize;
            let new_row = if alive.get(alive_pos) == Some(&g) {
                alive_pos += 1;
                Some(alive_pos - 1)
            } else {
                None
            };
            let old = self.emitted.get(gi);
            if let (Some(o), Some(p)) = (old, new_row) {
                if o == new_rows.row(p).as_ref() {
                    continue;
                }
            }
            if let Some(o) = old {
                retract.push((retract_bytes.len(), o.len()));
                retract_bytes.extend_from_slice(o);
            }
            match new_row {
                Some(p) => {
                    insert_idx.push(p as u32);
                    self.emitted.set(gi, Some(new_rows.row(p).as_ref()));
                }
                None => self.emitted.set(gi, None),
            }
        }
        if retract.is_empty() && insert_idx.is_empty() {
            return Ok(None);
        }
        let schema = self.plan.output_schema.clone();
        let mut parts = Vec::new();
        let mut diffs: Vec<i64> = Vec::new();
        if !retract.is_empty() {
            let parser = self.out_converter.parser();
            let cols = self
                .out_converter
                .convert_rows(retract.iter().map(|&(off, len)| parser.parse(&retract_bytes[off..off + len])))?;
            parts.push(RecordBatch::try_new(schema.clone(), cols)?);
            diffs.extend(std::iter::repeat_n(-1, retract.len()));
        }
        if !insert_idx.is_empty() {
            let idx = arrow::array::UInt32Array::from(insert_idx);
            parts.push(arrow::compute::take_record_batch(&new_batch, &idx)?);
            diffs.extend(std::iter::repeat_n(1, idx.len()));
        }
        let data = if parts.len() == 1 { parts.remove(0) } else { concat_batches(&schema, &parts)? };
        let all_inserts = diffs.iter().all(|&d| d == 1);
        Ok(Some(if all_inserts {
            DiffBatch::inserts(data)
        } else {
            DiffBatch::with_diffs(data, Int64Array::from(diffs))?
        }))
    }

    fn grow(&mut self, n: usize) {
        if self.row_counts.len() < n {
            self.row_counts.resize(n, 0);
            self.is_changed.resize(n, false);
            self.is_dirty.resize(n, false);
        }
    }

    /// True when groups changed since the last snapshot.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty() || !self.changed.is_empty()
    }

    /// The state of every group (`full`) or of the groups changed since the last snapshot, in
    /// a form [`GroupedAggregate::restore`] reads; call between epochs (after `emit`).
    pub fn snapshot(&mut self, full: bool) -> Vec<u8> {
        // Groups changed but not emitted yet (a window waiting for its close) count too.
        for i in 0..self.changed.len() {
            let g = self.changed[i];
            if !self.is_dirty[g as usize] {
                self.is_dirty[g as usize] = true;
                self.dirty.push(g);
            }
        }
        let groups: Vec<u32> =
            if full { (0..self.groups.len() as u32).collect() } else { std::mem::take(&mut self.dirty) };
        self.dirty.clear();
        for &g in &groups {
            if let Some(d) = self.is_dirty.get_mut(g as usize) {
                *d = false;
            }
        }
        let mut out = Enc::new();
        out.u32(groups.len() as u32);
        let mut rec = Enc::new();
        for g in groups {
            out.opt_bytes(self.groups.key_bytes(g));
            rec.buf.clear();
            rec.i64(self.row_counts.get(g as usize).copied().unwrap_or(0));
            rec.opt_bytes(self.emitted.get(g as usize));
            for acc in &self.accs {
                acc.save(g, &mut rec);
            }
            out.bytes(&rec.buf);
        }
        out.buf
    }

    /// Loads the groups of a snapshot that `owns` assigns to this worker, over whatever state
    /// is there (snapshots of changes apply in order over the full one they follow).
    pub fn restore(&mut self, snapshot: &[u8], owns: Owns<'_>) -> Result<()> {
        let mut d = Dec::new(snapshot);
        let n = d.u32()? as usize;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let key = d.opt_bytes()?;
            entries.push((key, d.bytes()?));
        }
        if !d.is_done() {
            return Err(DataflowError::Internal("corrupt state snapshot (trailing bytes)".into()));
        }
        let keys: Vec<Option<&[u8]>> = entries.iter().map(|e| e.0).collect();
        let cols = self.groups.decode_keys(&keys)?;
        let mine = owns(&cols, n)?;
        for ((key, rec), keep) in entries.into_iter().zip(mine) {
            if !keep {
                continue;
            }
            let g = self.groups.intern_bytes(key)?;
            self.grow(g as usize + 1);
            let mut r = Dec::new(rec);
            self.row_counts[g as usize] = r.i64()?;
            let emitted = r.opt_bytes()?;
            self.emitted.set(g as usize, emitted);
            for acc in self.accs.iter_mut() {
                acc.load(g, &mut r)?;
            }
            // The next emit compares each restored group with its emitted row: nothing for an
            // unchanged group, its first row for one never emitted (a window not yet closed).
            if !self.is_changed[g as usize] {
                self.is_changed[g as usize] = true;
                self.changed.push(g);
            }
        }
        Ok(())
    }

    fn evaluate(&self, groups: &[u32]) -> Result<RecordBatch> {
        let schema = self.plan.output_schema.clone();
        let mut cols = self.groups.key_columns(groups)?;
        for (acc, field) in self.accs.iter().zip(schema.fields().iter().skip(cols.len())) {
            let a = acc.evaluate(groups)?;
            let a = if a.data_type() == field.data_type() { a } else { cast(&a, field.data_type())? };
            cols.push(a);
        }
        let opts = arrow::array::RecordBatchOptions::new().with_row_count(Some(groups.len()));
        // Keys carry the key expression's types; align with the declared output schema.
        let cols = cols
            .into_iter()
            .zip(schema.fields().iter())
            .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { cast(&c, f.data_type()) })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new_with_options(schema, cols, &opts)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testing::Columns;
    use crate::plan::{AggKind, AggSpec, BatchFn};
    use arrow::array::{AsArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    #[test]
    fn short_keys_compare_like_slices() {
        let words: Vec<Vec<u8>> = (0..=70)
            .flat_map(|n| {
                let base: Vec<u8> = (0..n as u8).map(|i| b'a' + i).collect();
                let mut variants = vec![base.clone()];
                for at in 0..n {
                    let mut v = base.clone();
                    v[at] ^= 1;
                    variants.push(v);
                }
                variants
            })
            .collect();
        for a in &words {
            for b in &words {
                assert_eq!(same_key(Some(a), Some(b)), a == b, "{a:?} {b:?}");
            }
            assert!(!same_key(Some(a), None));
        }
        assert!(same_key(None, None));
    }

    #[test]
    fn keys_spread_evenly_over_workers() {
        let strings = StringArray::from_iter_values((0..10_000).map(|i| format!("S{i}")));
        let cols: Vec<ArrayRef> = vec![Arc::new(strings)];
        let converter = RowConverter::new(vec![SortField::new(DataType::Utf8)]).expect("converter");
        let hashes = key_hashes(&converter, &cols, 10_000).expect("hashes");
        for peers in [2usize, 3, 4, 7] {
            let mut counts = vec![0usize; peers];
            for h in &hashes {
                counts[owner(*h, peers)] += 1;
            }
            let even = 10_000 / peers;
            assert!(counts.iter().all(|c| c.abs_diff(even) < even / 10), "{peers}: {counts:?}");
            // The same answer as the ownership test used when state is restored.
            let owns = owned_by(1, peers)(&cols, 10_000).expect("owns");
            assert_eq!(owns.iter().filter(|o| **o).count(), counts[1]);
        }
    }

    fn plan(append_only: bool) -> Arc<AggregatePlan> {
        let key = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true)]));
        let val = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let out = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Int64, true),
            Field::new("hi", DataType::Int64, true),
        ]));
        let arg = || Some(Arc::new(Columns(vec![1], val.clone())) as Arc<dyn BatchFn>);
        Arc::new(AggregatePlan {
            keys: Arc::new(Columns(vec![0], key)),
            aggs: vec![
                AggSpec { kind: AggKind::CountStar, arg: None, output_type: DataType::Int64 },
                AggSpec { kind: AggKind::Sum, arg: arg(), output_type: DataType::Int64 },
                AggSpec { kind: AggKind::Max, arg: arg(), output_type: DataType::Int64 },
            ],
            output_schema: out,
            input_append_only: append_only,
        })
    }

    fn batch(rows: &[(&str, i64)], diffs: Option<Vec<i64>>) -> DiffBatch {
        let s =
            Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true), Field::new("v", DataType::Int64, true)]));
        let b = RecordBatch::try_new(
            s,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .expect("batch");
        match diffs {
            None => DiffBatch::inserts(b),
            Some(d) => DiffBatch::with_diffs(b, Int64Array::from(d)).expect("diffs"),
        }
    }

    fn render(b: &DiffBatch) -> Vec<String> {
        let k = b.data.column(0).as_string::<i32>();
        let mut out: Vec<String> = (0..b.num_rows())
            .map(|i| {
                let vals: Vec<String> =
                    (1..4).map(|c| b.data.column(c).as_primitive::<Int64Type>().value(i).to_string()).collect();
                format!("{:+} {} {}", b.diff(i), k.value(i), vals.join(" "))
            })
            .collect();
        out.sort();
        out
    }

    fn types() -> Vec<Option<DataType>> {
        vec![None, Some(DataType::Int64), Some(DataType::Int64)]
    }

    #[test]
    fn emits_retraction_and_insertion_per_changed_group() {
        let mut agg = GroupedAggregate::new(plan(true), &types()).expect("agg");
        agg.apply(&batch(&[("a", 1), ("b", 5), ("a", 3)], None)).expect("apply");
        assert_eq!(render(&agg.emit().expect("emit").expect("some")), vec!["+1 a 2 4 3", "+1 b 1 5 5"]);
        assert!(agg.emit().expect("emit").is_none(), "nothing changed since the last emit");
        agg.apply(&batch(&[("a", 10)], None)).expect("apply");
        assert_eq!(render(&agg.emit().expect("emit").expect("some")), vec!["+1 a 3 14 10", "-1 a 2 4 3"]);
    }

    #[test]
    fn max_under_retractions_and_group_removal() {
        let mut agg = GroupedAggregate::new(plan(false), &types()).expect("agg");
        agg.apply(&batch(&[("a", 1), ("a", 9), ("a", 4)], None)).expect("apply");
        agg.emit().expect("emit");
        agg.apply(&batch(&[("a", 9)], Some(vec![-1]))).expect("retract max");
        assert_eq!(render(&agg.emit().expect("emit").expect("some")), vec!["+1 a 2 5 4", "-1 a 3 14 9"]);
        agg.apply(&batch(&[("a", 1), ("a", 4)], Some(vec![-1, -1]))).expect("retract all");
        assert_eq!(render(&agg.emit().expect("emit").expect("some")), vec!["-1 a 2 5 4"]);
        assert_eq!(agg.live_groups(), 0);
        // a retraction and its insertion in one epoch cancel: no output at all
        agg.apply(&batch(&[("b", 2)], Some(vec![-1]))).expect("retract first");
        agg.apply(&batch(&[("b", 2)], None)).expect("insert later");
        assert!(agg.emit().expect("emit").is_none());
    }

    #[test]
    fn unmatched_retraction_is_an_error() {
        let mut agg = GroupedAggregate::new(plan(false), &types()).expect("agg");
        agg.apply(&batch(&[("z", 1)], Some(vec![-1]))).expect("apply");
        assert!(agg.emit().is_err());
    }

    #[test]
    fn snapshots_restore_state_and_changes_apply_over_them() {
        for append_only in [true, false] {
            let mut a = GroupedAggregate::new(plan(append_only), &types()).expect("agg");
            a.apply(&batch(&[("a", 1), ("b", 5), ("a", 3)], None)).expect("apply");
            a.emit().expect("emit");
            let full = a.snapshot(true);
            a.apply(&batch(&[("c", 2), ("a", 7)], None)).expect("apply");
            a.emit().expect("emit");
            let delta = a.snapshot(false);
            let mut b = GroupedAggregate::new(plan(append_only), &types()).expect("agg");
            b.restore(&full, &owned_by(0, 1)).expect("restore full");
            b.restore(&delta, &owned_by(0, 1)).expect("restore delta");
            // Both continue identically, including the retraction of the restored output row.
            for agg in [&mut a, &mut b] {
                agg.apply(&batch(&[("a", 4), ("c", 1)], None)).expect("apply");
            }
            let (ea, eb) = (a.emit().expect("a"), b.emit().expect("b"));
            assert_eq!(render(&ea.expect("a")), render(&eb.expect("b")));
            assert_eq!(a.live_groups(), b.live_groups());
            // Split between two workers: every group lands on exactly one.
            let mut w0 = GroupedAggregate::new(plan(append_only), &types()).expect("agg");
            let mut w1 = GroupedAggregate::new(plan(append_only), &types()).expect("agg");
            let all = a.snapshot(true);
            w0.restore(&all, &owned_by(0, 2)).expect("w0");
            w1.restore(&all, &owned_by(1, 2)).expect("w1");
            assert_eq!(w0.live_groups() + w1.live_groups(), a.live_groups());
            assert!(GroupedAggregate::new(plan(append_only), &types())
                .expect("agg")
                .restore(&all[..all.len() - 2], &owned_by(0, 1))
                .is_err());
        }
    }
}
