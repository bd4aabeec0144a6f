//! Ingestion: coercing incoming batches to a source's schema, and the source's stored contents
//! (append-only batches, or the current row per primary key for upsert sources).

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, Int64Array, RecordBatch, RecordBatchOptions};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::util::display::FormatOptions;
use arrow_row::{RowConverter, SortField};
use laminar_dataflow::batch::DiffBatch;
use laminar_dataflow::rowstore::{bytes_eq, hash_hi, slot_hash};

use crate::error::{codes, LaminarError, Result};

fn castable(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    if from == to || from == &Null {
        return true;
    }
    let stringy = |t: &DataType| matches!(t, Utf8 | LargeUtf8 | Utf8View);
    let binary = |t: &DataType| matches!(t, Binary | LargeBinary | BinaryView | FixedSizeBinary(_));
    let temporal = |t: &DataType| matches!(t, Date32 | Date64 | Timestamp(..) | Time32(_) | Time64(_));
    match (from, to) {
        (f, t) if f.is_numeric() && t.is_numeric() => true,
        (f, t) if stringy(f) && stringy(t) => true,
        (f, t) if binary(f) && binary(t) => true,
        (f, t) if stringy(f) && (temporal(t) || matches!(t, Decimal128(..) | Interval(_) | Boolean)) => true,
        (f, t) if temporal(f) && temporal(t) => true,
        (Dictionary(_, v), t) => castable(v, t),
        (Interval(_), Interval(_)) | (Duration(_), Interval(_)) => true,
        _ => false,
    }
}

/// Aligns `batch` to `schema`: columns matched by name (case-insensitively), missing nullable
/// columns filled with nulls, safe type coercions applied. Any problem is an error naming the
/// column, and nothing is converted partially.
pub fn coerce_batch(source: &str, batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch.clone());
    }
    let in_schema = batch.schema();
    for f in in_schema.fields() {
        if !schema.fields().iter().any(|t| t.name().eq_ignore_ascii_case(f.name())) {
            return Err(LaminarError::Schema {
                code: codes::BATCH_SCHEMA_MISMATCH,
                message: format!(
                    "column '{}' does not exist in source '{source}' (columns: {})",
                    f.name(),
                    schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    let n = batch.num_rows();
    let opts = CastOptions { safe: false, format_options: FormatOptions::default() };
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for target in schema.fields() {
        let found = in_schema.fields().iter().position(|f| f.name().eq_ignore_ascii_case(target.name()));
        let col = match found {
            None if target.is_nullable() => new_null_array(target.data_type(), n),
            None => {
                return Err(LaminarError::schema(format!(
                    "column '{}' of source '{source}' is NOT NULL but missing from the data",
                    target.name()
                )))
            }
            Some(i) => {
                let c = batch.column(i);
                if c.data_type() == target.data_type() {
                    c.clone()
                } else if let Some(scaled) = finer_timestamps(c, target.data_type()) {
                    scaled
                } else if castable(c.data_type(), target.data_type()) {
                    cast_with_options(c, target.data_type(), &opts).map_err(|e| {
                        LaminarError::schema(format!(
                            "column '{}': cannot convert {} to {}: {e}",
                            target.name(),
                            c.data_type(),
                            target.data_type()
                        ))
                    })?
                } else {
                    return Err(LaminarError::schema(format!(
                        "column '{}' of source '{source}' expects {} but the data has {}",
                        target.name(),
                        target.data_type(),
                        c.data_type()
                    )));
                }
            }
        };
        if !target.is_nullable() && col.null_count() > 0 {
            return Err(LaminarError::schema(format!(
                "column '{}' of source '{source}' is NOT NULL but the data has {} null value(s)",
                target.name(),
                col.null_count()
            )));
        }
        cols.push(col);
    }
    Ok(RecordBatch::try_new_with_options(schema.clone(), cols, &RecordBatchOptions::new().with_row_count(Some(n)))?)
}

/// Timestamps converted to a finer unit (milliseconds to microseconds, say) in one pass of
/// wrapping multiplies with a range check (the general cast checks every multiplication);
/// `None` for other conversions, and when a value would overflow (the general cast then
/// reports it).
fn finer_timestamps(col: &ArrayRef, target: &DataType) -> Option<ArrayRef> {
    let (DataType::Timestamp(from, _), DataType::Timestamp(to, _)) = (col.data_type(), target) else {
        return None;
    };
    let per_second = |u: &TimeUnit| match u {
        TimeUnit::Second => 1i64,
        TimeUnit::Millisecond => 1_000,
        TimeUnit::Microsecond => 1_000_000,
        TimeUnit::Nanosecond => 1_000_000_000,
    };
    let factor = per_second(to) / per_second(from);
    if factor <= 1 {
        return None;
    }
    let values = cast_with_options(col, &DataType::Int64, &CastOptions::default()).ok()?;
    let values = values.as_primitive::<arrow::datatypes::Int64Type>();
    let limit = i64::MAX / factor;
    let mut overflow = false;
    let scaled: Vec<i64> = values
        .values()
        .iter()
        .map(|&v| {
            overflow |= v > limit || v < -limit;
            v.wrapping_mul(factor)
        })
        .collect();
    if overflow {
        return None;
    }
    let data =
        Int64Array::new(scaled.into(), values.nulls().cloned()).into_data().into_builder().data_type(target.clone());
    Some(arrow::array::make_array(data.build().ok()?))
}

/// How much of an append-only source's history is kept for ad-hoc queries and for backfilling
/// streams created later (the `'retention'` option: `'1000000 rows'`, `'10 minutes'`, `'unbounded'`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Retention {
    /// Keep every row (the default).
    #[default]
    Unbounded,
    /// Keep the most recent N rows.
    Rows(usize),
    /// Keep rows that arrived within this long.
    Duration(std::time::Duration),
}

impl Retention {
    /// Parses the option value.
    pub fn parse(value: &str) -> Result<Self> {
        let v = value.trim().to_ascii_lowercase();
        if v == "unbounded" || v == "none" || v.is_empty() {
            return Ok(Retention::Unbounded);
        }
        if let Some(n) = v.strip_suffix("rows").or_else(|| v.strip_suffix("row")) {
            return n.trim().replace('_', "").parse::<usize>().map(Retention::Rows).map_err(|_| bad_retention(value));
        }
        let ms = laminar_sql::interval::parse_interval_text(&v, None).map_err(|_| bad_retention(value))?;
        if ms <= 0 {
            return Err(bad_retention(value));
        }
        Ok(Retention::Duration(std::time::Duration::from_millis(ms as u64)))
    }
}

fn bad_retention(value: &str) -> LaminarError {
    LaminarError::Schema {
        code: codes::INVALID_SCHEMA,
        message: format!(
            "invalid 'retention' value '{value}': use '<N> rows', an interval such as '10 minutes', or 'unbounded'"
        ),
    }
}

/// The stored contents of a source.
pub enum SourceData {
    /// Inserted batches within the retention.
    Append(History),
    /// The current row of each primary key.
    Upsert(Box<UpsertState>),
    /// An updating source whose key its connector learns from the peer at start (a CDC source
    /// without a PRIMARY KEY in its DDL): rows as inserted until [`SourceData::set_key`].
    Unkeyed(SchemaRef, Vec<RecordBatch>),
}

/// Keyed state of an upsert source.
pub struct UpsertState {
    schema: SchemaRef,
    key_indices: Vec<usize>,
    key_converter: RowConverter,
    row_converter: RowConverter,
    rows: KeyedRows,
    /// The key is one integer column: looked up by value, without encoding it.
    int_key: bool,
}

impl SourceData {
    /// Empty contents for a source with the given primary key (empty: append-only).
    pub fn new(schema: &SchemaRef, primary_key: &[usize], retention: Retention) -> Result<Self> {
        if primary_key.is_empty() {
            return Ok(SourceData::Append(History::new(retention)));
        }
        if retention != Retention::Unbounded {
            return Err(LaminarError::Schema {
                code: codes::INVALID_SCHEMA,
                message:
                    "'retention' applies to append-only sources; a source with a PRIMARY KEY keeps one row per key"
                        .into(),
            });
        }
        Self::keyed(schema, primary_key)
    }

    /// Empty contents for an updating source whose key is learnt from its peer at start.
    pub fn unkeyed(schema: &SchemaRef) -> Self {
        SourceData::Unkeyed(schema.clone(), Vec::new())
    }

    fn keyed(schema: &SchemaRef, primary_key: &[usize]) -> Result<Self> {
        let sort = |i: &usize| SortField::new(schema.field(*i).data_type().clone());
        Ok(SourceData::Upsert(Box::new(UpsertState {
            schema: schema.clone(),
            key_indices: primary_key.to_vec(),
            key_converter: RowConverter::new(primary_key.iter().map(sort).collect())?,
            row_converter: RowConverter::new((0..schema.fields().len()).map(|i| sort(&i)).collect())?,
            rows: KeyedRows::default(),
            int_key: matches!(primary_key, [i] if int_key_type(schema.field(*i).data_type())),
        })))
    }

    /// Number of rows currently held.
    pub fn num_rows(&self) -> usize {
        match self {
            SourceData::Append(h) => h.num_rows(),
            SourceData::Upsert(u) => u.rows.len(),
            SourceData::Unkeyed(_, b) => b.iter().map(RecordBatch::num_rows).sum(),
        }
    }

    /// Keys the rows by `key` (column indices), learnt from the source's peer; rows already
    /// held (restored from a checkpoint) are kept. No effect on a source keyed already.
    pub fn set_key(&mut self, key: &[usize]) -> Result<()> {
        let SourceData::Unkeyed(schema, batches) = self else { return Ok(()) };
        let batches = std::mem::take(batches);
        let mut keyed = Self::keyed(schema, key)?;
        for b in batches {
            keyed.insert(b)?;
        }
        *self = keyed;
        Ok(())
    }

    /// Removes every row; returns their retraction (None when there were none).
    pub fn clear(&mut self, source: &str) -> Result<Option<DiffBatch>> {
        let old = match self {
            SourceData::Append(_) => {
                return Err(LaminarError::ingestion(format!(
                    "source '{source}' is append-only: only a source with a PRIMARY KEY can be cleared"
                )))
            }
            SourceData::Upsert(_) => {
                let old = self.snapshot()?;
                if let SourceData::Upsert(u) = self {
                    u.rows.clear();
                }
                old
            }
            SourceData::Unkeyed(_, b) => std::mem::take(b),
        };
        let Some(first) = old.first() else { return Ok(None) };
        let all = concat_or_empty(&first.schema(), &old)?;
        if all.num_rows() == 0 {
            return Ok(None);
        }
        let n = all.num_rows();
        Ok(Some(DiffBatch::with_diffs(all, Int64Array::from(vec![-1i64; n]))?))
    }

    /// Applies inserted rows; returns the change to send downstream.
    pub fn insert(&mut self, batch: RecordBatch) -> Result<DiffBatch> {
        match self {
            SourceData::Append(h) => {
                h.push(batch.clone());
                Ok(DiffBatch::inserts(batch))
            }
            SourceData::Upsert(u) => u.upsert(batch),
            SourceData::Unkeyed(_, b) => {
                b.push(batch.clone());
                Ok(DiffBatch::inserts(batch))
            }
        }
    }

    /// Fails as [`SourceData::insert`] would on `batch`, without applying it (a null primary key
    /// is the only row-level error).
    pub fn check(&self, batch: &RecordBatch) -> Result<()> {
        match self {
            SourceData::Upsert(u) => u.check_keys(batch),
            _ => Ok(()),
        }
    }

    /// Deletes the rows whose primary key appears in `keys` (upsert sources only).
    pub fn delete(&mut self, source: &str, keys: &RecordBatch) -> Result<Option<DiffBatch>> {
        match self {
            SourceData::Append(_) => Err(LaminarError::ingestion(format!(
                "source '{source}' is append-only: declare a PRIMARY KEY to delete or update rows"
            ))),
            SourceData::Upsert(u) => u.delete(keys),
            SourceData::Unkeyed(..) => Err(LaminarError::ingestion(format!(
                "source '{source}' takes its key from its connector when it starts: rows can be deleted once \
                 it has started"
            ))),
        }
    }

    /// The current contents.
    pub fn snapshot(&self) -> Result<Vec<RecordBatch>> {
        match self {
            SourceData::Append(h) => Ok(h.snapshot()),
            SourceData::Upsert(u) => {
                if u.rows.is_empty() {
                    return Ok(Vec::new());
                }
                let parser = u.row_converter.parser();
                let cols = u.row_converter.convert_rows(u.rows.values().map(|r| parser.parse(r)))?;
                Ok(vec![RecordBatch::try_new(u.schema.clone(), cols)?])
            }
            SourceData::Unkeyed(_, b) => Ok(b.clone()),
        }
    }
}

/// Append-only batches within a retention bound, oldest first, with their arrival times.
#[derive(Debug, Default)]
pub struct History {
    batches: std::collections::VecDeque<(std::time::Instant, RecordBatch)>,
    rows: usize,
    retention: Retention,
}

impl History {
    /// An empty history keeping what `retention` allows.
    pub fn new(retention: Retention) -> Self {
        Self { batches: Default::default(), rows: 0, retention }
    }

    /// Rows held.
    pub fn num_rows(&self) -> usize {
        self.rows
    }

    /// What this history keeps.
    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// Appends a batch and drops what falls outside the retention.
    pub fn push(&mut self, batch: RecordBatch) {
        self.rows += batch.num_rows();
        self.batches.push_back((std::time::Instant::now(), batch));
        match self.retention {
            Retention::Unbounded => {}
            Retention::Rows(n) => {
                while self.rows > n {
                    let Some((t, front)) = self.batches.pop_front() else { break };
                    let excess = self.rows - n;
                    if front.num_rows() > excess {
                        self.rows -= excess;
                        self.batches.push_front((t, front.slice(excess, front.num_rows() - excess)));
                    } else {
                        self.rows -= front.num_rows();
                    }
                }
            }
            Retention::Duration(d) => self.expire(d),
        }
    }

    fn expire(&mut self, d: std::time::Duration) {
        let now = std::time::Instant::now();
        while self.batches.front().is_some_and(|(t, _)| now.duration_since(*t) > d) {
            if let Some((_, b)) = self.batches.pop_front() {
                self.rows -= b.num_rows();
            }
        }
    }

    /// The batches currently retained.
    pub fn snapshot(&self) -> Vec<RecordBatch> {
        let cutoff = match self.retention {
            Retention::Duration(d) => std::time::Instant::now().checked_sub(d),
            _ => None,
        };
        self.batches.iter().filter(|(t, _)| cutoff.is_none_or(|c| *t >= c)).map(|(_, b)| b.clone()).collect()
    }
}

/// Integer key types looked up by value ([`Key::Int`]).
fn int_key_type(t: &DataType) -> bool {
    matches!(t, DataType::Int64 | DataType::Int32 | DataType::Int16 | DataType::Int8)
}

/// One integer key column's values as `i64`.
fn int_keys(col: &ArrayRef) -> Result<std::borrow::Cow<'_, [i64]>> {
    use arrow::datatypes::{Int16Type, Int32Type, Int64Type, Int8Type};
    use std::borrow::Cow;
    Ok(match col.data_type() {
        DataType::Int64 => Cow::Borrowed(col.as_primitive::<Int64Type>().values().as_ref()),
        DataType::Int32 => Cow::Owned(col.as_primitive::<Int32Type>().values().iter().map(|&v| i64::from(v)).collect()),
        DataType::Int16 => Cow::Owned(col.as_primitive::<Int16Type>().values().iter().map(|&v| i64::from(v)).collect()),
        DataType::Int8 => Cow::Owned(col.as_primitive::<Int8Type>().values().iter().map(|&v| i64::from(v)).collect()),
        t => return Err(LaminarError::Internal(format!("{t} is not an integer key type"))),
    })
}

impl UpsertState {
    fn check_keys(&self, batch: &RecordBatch) -> Result<()> {
        for &i in &self.key_indices {
            if batch.column(i).null_count() > 0 {
                return Err(LaminarError::schema(format!(
                    "primary key column '{}' must not be null",
                    self.schema.field(i).name()
                )));
            }
        }
        Ok(())
    }

    fn upsert(&mut self, batch: RecordBatch) -> Result<DiffBatch> {
        self.check_keys(&batch)?;
        let rows = self.row_converter.convert_columns(batch.columns())?;
        let mut retracted = Retracted::default();
        if self.int_key {
            let keys = int_keys(batch.column(self.key_indices[0]))?;
            self.rows.reserve(keys.len());
            for (i, &k) in keys.iter().enumerate() {
                self.rows.insert(Key::Int(k), rows.row(i).as_ref(), &mut retracted);
            }
        } else {
            let cols: Vec<ArrayRef> = self.key_indices.iter().map(|&i| batch.column(i).clone()).collect();
            let keys = self.key_converter.convert_columns(&cols)?;
            for i in 0..batch.num_rows() {
                self.rows.insert(Key::Bytes(keys.row(i).as_ref()), rows.row(i).as_ref(), &mut retracted);
            }
        }
        self.changes(retracted, batch)
    }

    fn delete(&mut self, keys_batch: &RecordBatch) -> Result<Option<DiffBatch>> {
        let mut cols = Vec::new();
        for &i in &self.key_indices {
            let name = self.schema.field(i).name();
            let c = keys_batch
                .schema()
                .fields()
                .iter()
                .position(|f| f.name().eq_ignore_ascii_case(name))
                .map(|j| keys_batch.column(j).clone())
                .ok_or_else(|| LaminarError::schema(format!("delete needs the primary key column '{name}'")))?;
            let t = self.schema.field(i).data_type();
            cols.push(if c.data_type() == t { c } else { arrow::compute::cast(&c, t)? });
        }
        let mut retracted = Retracted::default();
        if self.int_key {
            let col = &cols[0];
            let keys = int_keys(col)?;
            for (i, &k) in keys.iter().enumerate() {
                if col.is_valid(i) {
                    self.rows.remove(Key::Int(k), &mut retracted);
                }
            }
        } else {
            let keys = self.key_converter.convert_columns(&cols)?;
            for i in 0..keys_batch.num_rows() {
                self.rows.remove(Key::Bytes(keys.row(i).as_ref()), &mut retracted);
            }
        }
        if retracted.is_empty() {
            return Ok(None);
        }
        let empty = RecordBatch::new_empty(self.schema.clone());
        self.changes(retracted, empty).map(Some)
    }

    fn changes(&self, retracted: Retracted, inserted: RecordBatch) -> Result<DiffBatch> {
        if retracted.is_empty() {
            return Ok(DiffBatch::inserts(inserted));
        }
        let parser = self.row_converter.parser();
        let old_cols = self.row_converter.convert_rows(retracted.iter().map(|r| parser.parse(r)))?;
        let old = RecordBatch::try_new(self.schema.clone(), old_cols)?;
        let data = arrow::compute::concat_batches(&self.schema, &[old, inserted.clone()])?;
        let mut diffs = vec![-1i64; retracted.len()];
        diffs.extend(std::iter::repeat_n(1, inserted.num_rows()));
        Ok(DiffBatch::with_diffs(data, Int64Array::from(diffs))?)
    }
}

/// Row-encoded rows replaced or removed by a change, in one buffer.
#[derive(Default)]
struct Retracted {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Retracted {
    fn push(&mut self, row: &[u8]) {
        self.bytes.extend_from_slice(row);
        self.ends.push(self.bytes.len());
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(s, &e)| &self.bytes[s..e])
    }
}

/// A primary key: row-encoded bytes, or the value of one integer column.
#[derive(Clone, Copy)]
enum Key<'a> {
    Bytes(&'a [u8]),
    Int(i64),
}

/// The table hash of an integer key: a multiply with the product's halves folded, so that
/// both the bucket (low) bits and the tag (high) bits depend on every bit of the key.
#[inline]
fn int_hash(k: i64) -> u64 {
    let h = (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^ (h >> 32)
}

/// One row per key, row-encoded, in arenas (no allocation per row). Byte keys: a hash table
/// of (slot id, upper half of the key's hash) over the key bytes, kept in their own arena.
/// Integer keys: a table of (key, slot id), compared without leaving the table. Freed slots are
/// reused.
#[derive(Default)]
struct KeyedRows {
    table: hashbrown::HashTable<(u32, u32)>,
    ints: hashbrown::HashTable<(i64, u32)>,
    keys: laminar_dataflow::rowstore::RowSlots,
    rows: laminar_dataflow::rowstore::RowSlots,
    /// Slots ever made (freed ones are in `free`).
    slots: usize,
    free: Vec<u32>,
    len: usize,
    hasher: ahash::RandomState,
}

impl KeyedRows {
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn clear(&mut self) {
        *self = Self { hasher: self.hasher.clone(), ..Self::default() };
    }

    /// Makes room for `n` more integer keys.
    fn reserve(&mut self, n: usize) {
        self.ints.reserve(n, |&(k, _)| int_hash(k));
    }

    /// The slot holding `key`.
    fn find(&self, key: Key<'_>) -> Option<u32> {
        match key {
            Key::Int(k) => self.ints.find(int_hash(k), |&(x, _)| x == k).map(|&(_, s)| s),
            Key::Bytes(key) => {
                let hi = hash_hi(self.hasher.hash_one(key));
                let keys = &self.keys;
                self.table
                    .find(slot_hash(hi), |&(s, h)| h == hi && keys.get(s as usize).is_some_and(|k| bytes_eq(k, key)))
                    .map(|&(s, _)| s)
            }
        }
    }

    /// Sets the row of `key`; a row it replaces is added to `replaced`.
    fn insert(&mut self, key: Key<'_>, row: &[u8], replaced: &mut Retracted) {
        if let Some(s) = self.find(key) {
            if let Some(old) = self.rows.get(s as usize) {
                replaced.push(old);
            }
            self.rows.set(s as usize, Some(row));
            return;
        }
        let s = self.free.pop().unwrap_or_else(|| {
            self.slots += 1;
            (self.slots - 1) as u32
        });
        self.rows.set(s as usize, Some(row));
        match key {
            Key::Int(k) => {
                self.ints.insert_unique(int_hash(k), (k, s), |&(k, _)| int_hash(k));
            }
            Key::Bytes(key) => {
                let hi = hash_hi(self.hasher.hash_one(key));
                self.keys.set(s as usize, Some(key));
                self.table.insert_unique(slot_hash(hi), (s, hi), |&(_, h)| slot_hash(h));
            }
        }
        self.len += 1;
    }

    /// Removes the row of `key`, adding it to `removed`.
    fn remove(&mut self, key: Key<'_>, removed: &mut Retracted) {
        let s = match key {
            Key::Int(k) => match self.ints.find_entry(int_hash(k), |&(x, _)| x == k) {
                Ok(entry) => entry.remove().0 .1,
                Err(_) => return,
            },
            Key::Bytes(key) => {
                let hi = hash_hi(self.hasher.hash_one(key));
                let keys = &self.keys;
                let found = self.table.find_entry(slot_hash(hi), |&(s, h)| {
                    h == hi && keys.get(s as usize).is_some_and(|k| bytes_eq(k, key))
                });
                match found {
                    Ok(entry) => entry.remove().0 .0,
                    Err(_) => return,
                }
            }
        };
        if let Some(old) = self.rows.get(s as usize) {
            removed.push(old);
        }
        if matches!(key, Key::Bytes(_)) {
            self.keys.set(s as usize, None);
        }
        self.rows.set(s as usize, None);
        self.free.push(s);
        self.len -= 1;
    }

    /// Every row held.
    fn values(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.slots).filter_map(|s| self.rows.get(s))
    }
}

/// Makes a record batch from rows given as JSON objects, using the source schema.
pub fn batch_from_json_rows(schema: &SchemaRef, json: &str) -> Result<RecordBatch> {
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_strict_mode(true)
        .build_decoder()
        .map_err(|e| LaminarError::schema(e.to_string()))?;
    let trimmed = json.trim();
    let body: std::borrow::Cow<'_, str> = if trimmed.starts_with('[') {
        let v: serde_json::Value =
            serde_json::from_str(trimmed).map_err(|e| LaminarError::ingestion(format!("invalid JSON: {e}")))?;
        let serde_json::Value::Array(items) = v else {
            return Err(LaminarError::ingestion("expected a JSON array of objects"));
        };
        items.iter().map(|i| i.to_string()).collect::<Vec<_>>().join("\n").into()
    } else {
        trimmed.into()
    };
    decoder
        .decode(body.as_bytes())
        .map_err(|e| LaminarError::schema(format!("JSON does not match the schema: {e}")))?;
    Ok(decoder
        .flush()
        .map_err(|e| LaminarError::schema(format!("JSON does not match the schema: {e}")))?
        .unwrap_or_else(|| RecordBatch::new_empty(schema.clone())))
}

/// The rows of a set of batches, as one batch (empty batch when there are none).
pub fn concat_or_empty(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch> {
    Ok(match batches.len() {
        0 => RecordBatch::new_empty(schema.clone()),
        1 => batches[0].clone(),
        _ => arrow::compute::concat_batches(schema, batches)?,
    })
}

#[cfg(test)]
mod tests {

    /// Keyed rows: replacing reports the old row, removing frees the slot for the next key,
    /// and the contents are exactly the live rows.
    #[test]
    fn keyed_rows_replace_remove_and_reuse_slots() {
        for int in [false, true] {
            let key = |name: &'static [u8]| if int { Key::Int(i64::from(name[0]) - 200) } else { Key::Bytes(name) };
            let mut k = KeyedRows::default();
            let mut out = Retracted::default();
            k.insert(key(b"a"), b"row-a1", &mut out);
            k.insert(key(b"b"), b"row-b1", &mut out);
            assert!(out.is_empty());
            k.insert(key(b"a"), b"row-a2", &mut out);
            assert_eq!(out.iter().collect::<Vec<_>>(), vec![&b"row-a1"[..]]);
            k.remove(key(b"b"), &mut out);
            k.remove(key(b"z"), &mut out);
            assert_eq!(out.iter().collect::<Vec<_>>(), vec![&b"row-a1"[..], &b"row-b1"[..]]);
            assert_eq!(k.len(), 1);
            k.insert(key(b"c"), b"row-c1", &mut out);
            assert_eq!(k.slots, 2, "the freed slot is reused");
            let mut rows: Vec<&[u8]> = k.values().collect();
            rows.sort();
            assert_eq!(rows, vec![&b"row-a2"[..], &b"row-c1"[..]]);
            k.clear();
            assert!(k.is_empty() && k.values().next().is_none());
        }
    }

    use super::*;
    use std::sync::Arc;

    #[test]
    fn retention_keeps_the_most_recent_rows() {
        assert_eq!(Retention::parse("1_000 rows").expect("r"), Retention::Rows(1000));
        assert_eq!(
            Retention::parse("10 minutes").expect("r"),
            Retention::Duration(std::time::Duration::from_secs(600))
        );
        assert!(Retention::parse("lots").is_err());
        let s = schema();
        let mut d = SourceData::new(&s, &[], Retention::Rows(3)).expect("state");
        for i in 0..4 {
            let b = batch_from_json_rows(&s, &format!(r#"[{{"id":{i}}},{{"id":{}}}]"#, i + 10)).expect("json");
            d.insert(b).expect("insert");
        }
        assert_eq!(d.num_rows(), 3);
        let snap = d.snapshot().expect("snap");
        let ids: Vec<i64> = snap
            .iter()
            .flat_map(|b| b.column(0).as_any().downcast_ref::<Int64Array>().expect("ids").values().to_vec())
            .collect();
        assert_eq!(ids, vec![12, 3, 13]);
        assert!(SourceData::new(&s, &[0], Retention::Rows(3)).is_err());
    }
    use arrow::array::{Float64Array, Int32Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("price", DataType::Float64, true),
        ]))
    }

    #[test]
    fn coerces_by_name_and_type() {
        let in_schema = Arc::new(Schema::new(vec![
            Field::new("PRICE", DataType::Int32, true),
            Field::new("id", DataType::Int32, true),
        ]));
        let b = RecordBatch::try_new(
            in_schema,
            vec![Arc::new(Int32Array::from(vec![5, 6])), Arc::new(Int32Array::from(vec![1, 2]))],
        )
        .expect("batch");
        let out = coerce_batch("t", &b, &schema()).expect("coerce");
        assert_eq!(out.num_columns(), 3);
        assert_eq!(out.column(2).as_any().downcast_ref::<Float64Array>().expect("f64").value(1), 6.0);
        assert_eq!(out.column(1).null_count(), 2);
    }

    /// Timestamps go to a finer unit exactly, keep their nulls and time zone, and an overflow is
    /// still an error naming the column.
    #[test]
    fn timestamps_convert_to_a_finer_unit() {
        use arrow::array::{TimestampMicrosecondArray, TimestampMillisecondArray};
        let tz: Option<Arc<str>> = Some("UTC".into());
        let target =
            Arc::new(Schema::new(vec![Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, tz.clone()), true)]));
        let ms = TimestampMillisecondArray::from(vec![Some(-1_500), None, Some(1_704_067_200_123)]);
        let b = RecordBatch::try_from_iter(vec![("ts", Arc::new(ms) as ArrayRef)]).expect("b");
        let out = coerce_batch("t", &b, &target).expect("coerce");
        let got = out.column(0).as_any().downcast_ref::<TimestampMicrosecondArray>().expect("us");
        assert_eq!(got.data_type(), target.field(0).data_type());
        assert_eq!(got.iter().collect::<Vec<_>>(), vec![Some(-1_500_000), None, Some(1_704_067_200_123_000)]);
        let huge = TimestampMillisecondArray::from(vec![i64::MAX / 10]);
        let b = RecordBatch::try_from_iter(vec![("ts", Arc::new(huge) as ArrayRef)]).expect("b");
        let e = coerce_batch("t", &b, &target).expect_err("overflow");
        assert!(e.to_string().contains("'ts'"), "{e}");
    }

    #[test]
    fn rejects_unknown_and_mismatched_columns() {
        let s = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, true)]));
        let b = RecordBatch::try_new(s, vec![Arc::new(StringArray::from(vec!["x"]))]).expect("b");
        let e = coerce_batch("t", &b, &schema()).expect_err("mismatch");
        assert!(e.to_string().contains("'id'"), "{e}");
        let s = Arc::new(Schema::new(vec![Field::new("nope", DataType::Int64, true)]));
        let b = RecordBatch::try_new(s, vec![Arc::new(Int64Array::from(vec![1]))]).expect("b");
        let e = coerce_batch("t", &b, &schema()).expect_err("unknown");
        assert!(e.to_string().contains("'nope'"), "{e}");
        assert_eq!(e.code(), codes::BATCH_SCHEMA_MISMATCH);
    }

    #[test]
    fn upsert_replaces_and_deletes() {
        // Keyed by the integer id (looked up by value) and by the name (row-encoded bytes).
        let nullable = Arc::new(Schema::new(
            schema().fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
        ));
        for (key, update, delete) in [
            (0usize, r#"{"id":1,"name":"a2","price":3.0}"#, r#"{"id":2}"#),
            (1, r#"{"id":7,"name":"a","price":3.0}"#, r#"{"name":"b"}"#),
        ] {
            let s = schema();
            let mut d = SourceData::new(&s, &[key], Retention::Unbounded).expect("state");
            let b = batch_from_json_rows(&s, r#"[{"id":1,"name":"a","price":1.0},{"id":2,"name":"b","price":2.0}]"#)
                .expect("json");
            let c = d.insert(b).expect("ins");
            assert!(c.diffs.is_none());
            let b = batch_from_json_rows(&s, update).expect("json");
            let c = d.insert(b).expect("upd");
            assert_eq!(c.num_rows(), 2);
            assert_eq!(c.diff(0), -1);
            assert_eq!(c.data.column(2).as_primitive::<arrow::datatypes::Float64Type>().value(0), 1.0);
            assert_eq!(d.num_rows(), 2);
            let only_key = Arc::new(Schema::new(vec![nullable.field(key).clone()]));
            let keys = batch_from_json_rows(&only_key, delete).expect("json");
            let c = d.delete("t", &keys).expect("del").expect("some");
            assert_eq!(c.diff(0), -1);
            assert_eq!(c.data.column(2).as_primitive::<arrow::datatypes::Float64Type>().value(0), 2.0);
            assert_eq!(d.num_rows(), 1);
            let nulls = batch_from_json_rows(&nullable, r#"{"price":9.0}"#).expect("json");
            assert!(d.check(&nulls).is_err() && d.insert(nulls).is_err(), "a null key is refused");
            assert_eq!(d.num_rows(), 1);
        }
    }
}
