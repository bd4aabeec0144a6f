//! Per-group accumulators that accept insertions and retractions (signed multiplicities).
//!
//! State is columnar: one vector entry per group id, so updating a batch is a tight loop over
//! `(group, value, diff)` triples.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, Decimal128Array, Float64Array, Int64Array, PrimitiveArray,
};
use arrow::compute::cast;
use arrow::datatypes::{ArrowNativeTypeOp, DataType, Float64Type, Int64Type};
use arrow_row::{OwnedRow, RowConverter, SortField};

use crate::batch::DiffBatch;
use crate::codec::{Dec, Enc};
use crate::error::{DataflowError, Result};
use crate::plan::AggKind;

/// An aggregate's state over all groups.
pub trait Accumulator: Send {
    /// Adds `diff(i)` copies of row `i`'s value to group `groups[i]`.
    fn update(&mut self, groups: &[u32], values: Option<&ArrayRef>, batch: &DiffBatch, num_groups: usize)
        -> Result<()>;
    /// The current value of each listed group.
    fn evaluate(&self, groups: &[u32]) -> Result<ArrayRef>;
    /// Called once an epoch's input is fully applied, for the groups it changed. Only here are
    /// counts final: within an epoch a retraction may arrive before the insertion it cancels.
    fn settle(&mut self, _groups: &[u32]) {}
    /// Appends the state of group `g` to a snapshot.
    fn save(&self, g: u32, out: &mut Enc);
    /// Restores group `g` from a snapshot written by [`Accumulator::save`].
    fn load(&mut self, g: u32, input: &mut Dec<'_>) -> Result<()>;
    /// The column types of this aggregate's partial state when it can be pre-aggregated before
    /// the exchange (the state of some rows, merged later into the owning worker's state);
    /// `None` when it cannot.
    fn partial_types(&self) -> Option<Vec<DataType>> {
        None
    }
    /// The partial state of the listed groups, one column per [`Accumulator::partial_types`]
    /// entry.
    fn export(&self, _groups: &[u32]) -> Result<Vec<ArrayRef>> {
        Err(DataflowError::Internal("this aggregate has no partial state".into()))
    }
    /// Folds partial states made by [`Accumulator::export`]: row `i` into group `groups[i]`.
    fn merge(&mut self, _groups: &[u32], _partial: &[ArrayRef], _num_groups: usize) -> Result<()> {
        Err(DataflowError::Internal("this aggregate has no partial state".into()))
    }
}

/// Column `i` of a partial state as a primitive array of type `T`.
fn partial_col<T: ArrowPrimitiveType>(partial: &[ArrayRef], i: usize) -> Result<&PrimitiveArray<T>> {
    partial
        .get(i)
        .and_then(|a| a.as_primitive_opt::<T>())
        .ok_or_else(|| DataflowError::Internal("malformed partial aggregate state".into()))
}

/// Exact 128-bit sums as a partial-state column (raw values; precision is not checked).
fn i128_column(values: impl Iterator<Item = i128>) -> Result<ArrayRef> {
    Ok(Arc::new(Decimal128Array::from_iter_values(values).with_precision_and_scale(38, 0)?))
}

/// The partial state of exact (128-bit) sums: the sums and the non-null counts.
fn export_exact_sums(sums: &[i128], nonnull: &[i64], groups: &[u32]) -> Result<Vec<ArrayRef>> {
    Ok(vec![
        i128_column(groups.iter().map(|&g| sums[g as usize]))?,
        Arc::new(Int64Array::from_iter_values(groups.iter().map(|&g| nonnull[g as usize]))),
    ])
}

/// Folds partial exact sums made by [`export_exact_sums`] into `sums`/`nonnull`.
fn merge_exact_sums(
    sums: &mut Vec<i128>,
    nonnull: &mut Vec<i64>,
    groups: &[u32],
    partial: &[ArrayRef],
    n: usize,
    overflow: &str,
) -> Result<()> {
    grow(sums, n, 0);
    grow(nonnull, n, 0);
    let s = partial_col::<arrow::datatypes::Decimal128Type>(partial, 0)?;
    let c = partial_col::<Int64Type>(partial, 1)?;
    for ((&g, &s), &c) in groups.iter().zip(s.values()).zip(c.values()) {
        sums[g as usize] = sums[g as usize].checked_add(s).ok_or_else(|| DataflowError::Eval(overflow.into()))?;
        nonnull[g as usize] += c;
    }
    Ok(())
}

/// Type of an exact 128-bit sum column in partial states.
const I128_TYPE: DataType = DataType::Decimal128(38, 0);

/// Builds the accumulator for an aggregate over an argument of type `arg_type`.
pub fn create_accumulator(
    kind: AggKind,
    arg_type: Option<&DataType>,
    append_only: bool,
) -> Result<Box<dyn Accumulator>> {
    let need =
        || arg_type.cloned().ok_or_else(|| DataflowError::Internal(format!("{} needs an argument", kind.name())));
    Ok(match kind {
        AggKind::CountStar => Box::new(CountAcc { counts: Vec::new(), star: true }),
        AggKind::Count => Box::new(CountAcc { counts: Vec::new(), star: false }),
        AggKind::CountDistinct => Box::new(DistinctAcc::new(need()?)?),
        AggKind::Sum | AggKind::Avg => {
            let t = need()?;
            let avg = kind == AggKind::Avg;
            match t {
                DataType::Float16 | DataType::Float32 | DataType::Float64 => Box::new(FloatSum::new(avg)),
                DataType::Decimal128(p, s) => Box::new(DecimalSum::new(p, s, avg)),
                t if t.is_integer() => Box::new(IntSum::new(avg)),
                DataType::Null => Box::new(IntSum::new(avg)),
                other => return Err(DataflowError::Eval(format!("{} is not defined for {other}", kind.name()))),
            }
        }
        AggKind::Min | AggKind::Max => {
            let t = need()?;
            let max = kind == AggKind::Max;
            if append_only {
                match t {
                    DataType::Int64 => Box::new(PrimExtreme::<Int64Type>::new(max)),
                    DataType::Float64 => Box::new(PrimExtreme::<Float64Type>::new(max)),
                    t => Box::new(RowExtreme::new(t, max)?),
                }
            } else {
                Box::new(MultisetExtreme::new(t, max)?)
            }
        }
    })
}

fn grow<T: Clone>(v: &mut Vec<T>, n: usize, fill: T) {
    if v.len() < n {
        v.resize(n, fill);
    }
}

struct CountAcc {
    counts: Vec<i64>,
    star: bool,
}

impl Accumulator for CountAcc {
    fn update(&mut self, groups: &[u32], values: Option<&ArrayRef>, batch: &DiffBatch, n: usize) -> Result<()> {
        grow(&mut self.counts, n, 0);
        match (self.star, values) {
            (false, Some(v)) if v.null_count() > 0 => {
                for (i, &g) in groups.iter().enumerate() {
                    if v.is_valid(i) {
                        self.counts[g as usize] += batch.diff(i);
                    }
                }
            }
            _ => match &batch.diffs {
                None => groups.iter().for_each(|&g| self.counts[g as usize] += 1),
                Some(d) => groups.iter().zip(d.values()).for_each(|(&g, &d)| self.counts[g as usize] += d),
            },
        }
        Ok(())
    }

    fn evaluate(&self, groups: &[u32]) -> Result<ArrayRef> {
        Ok(Arc::new(Int64Array::from_iter_values(groups.iter().map(|&g| self.counts[g as usize]))))
    }

    fn save(&self, g: u32, out: &mut Enc) {
        out.i64(self.counts.get(g as usize).copied().unwrap_or(0));
    }

    fn load(&mut self, g: u32, input: &mut Dec<'_>) -> Result<()> {
        grow(&mut self.counts, g as usize + 1, 0);
        self.counts[g as usize] = input.i64()?;
        Ok(())
    }

    fn partial_types(&self) -> Option<Vec<DataType>> {
        Some(vec![DataType::Int64])
    }

    fn export(&self, groups: &[u32]) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.evaluate(groups)?])
    }

    fn merge(&mut self, groups: &[u32], partial: &[ArrayRef], n: usize) -> Result<()> {
        grow(&mut self.counts, n, 0);
        let c = partial_col::<Int64Type>(partial, 0)?;
        groups.iter().zip(c.values()).for_each(|(&g, &c)| self.counts[g as usize] += c);
        Ok(())
    }
}

/// SUM/AVG over integers: exact 128-bit sums.
struct IntSum {
    sums: Vec<i128>,
    nonnull: Vec<i64>,
    avg: bool,
}

impl IntSum {
    fn new(avg: bool) -> Self {
        Self { sums: Vec::new(), nonnull: Vec::new(), avg }
    }
}

impl Accumulator for IntSum {
    fn update(&mut self, groups: &[u32], values: Option<&ArrayRef>, batch: &DiffBatch, n: usize) -> Result<()> {
        grow(&mut self.sums, n, 0);
        grow(&mut self.nonnull, n, 0);
        let Some(v) = values else { return Ok(()) };
        if v.data_type() == &DataType::Null {
            return Ok(());
        }
        let v = cast(v, &DataType::Int64)?;
        let v = v.as_primitive::<Int64Type>();
        for (i, &g) in groups.iter().enumerate() {
            if v.is_valid(i) {
                let d = batch.diff(i);
                self.sums[g as usize] += v.value(i) as i128 * d as i128;
                self.nonnull[g as usize] += d;
            }
        }
        Ok(())
    }

    fn evaluate(&self, groups: &[u32]) -> Result<ArrayRef> {
        if self.avg {
            return Ok(Arc::new(Float64Array::from_iter(groups.iter().map(|&g| {
                let c = self.nonnull[g as usize];
                (c > 0).then(|| self.sums[g as usize] as f64 / c as f64)
            }))));
        }
        let mut out = Vec::with_capacity(groups.len());
        for &g in groups {
            if self.nonnull[g as usize] > 0 {
                let s = i64::try_from(self.sums[g as usize])
                    .map_err(|_| DataflowError::Eval("SUM overflows BIGINT".into()))?;
                out.push(Some(s));
            } else {
                out.push(None);
            }
        }
        Ok(Arc::new(Int64Array::from(out)))
    }

    fn save(&self, g: u32, out: &mut Enc) {
        out.i128(self.sums.get(g as usize).copied().unwrap_or(0));
        out.i64(self.nonnull.get(g as usize).copied().unwrap_or(0));
    }

    fn load(&mut self, g: u32, input: &mut Dec<'_>) -> Result<()> {
        grow(&mut self.sums, g as usize + 1, 0);
        grow(&mut self.nonnull, g as usize + 1, 0);
        self.sums[g as usize] = input.i128()?;
        self.nonnull[g as usize] = input.i64()?;
        Ok(())
    }

    fn partial_types(&self) -> Option<Vec<DataType>> {
        Some(vec![I128_TYPE, DataType::Int64])
    }

    fn export(&self, groups: &[u32]) -> Result<Vec<ArrayRef>> {
        export_exact_sums(&self.sums, &self.nonnull, groups)
    }

    fn merge(&mut self, groups: &[u32], partial: &[ArrayRef], n: usize) -> Result<()> {
        merge_exact_sums(&mut self.sums, &mut self.nonnull, groups, partial, n, "SUM overflows BIGINT")
    }
}

/// SUM/AVG over floating point numbers.
struct FloatSum {
    sums: Vec<f64>,
    nonnull: Vec<i64>,
    avg: bool,
}

impl FloatSum {
    fn new(avg: bool) -> Self {
        Self { sums: Vec::new(), nonnull: Vec::new(), avg }
    }
}

impl Accumulator for FloatSum {
    fn update(&mut self, groups: &[u32], values: Option<&ArrayRef>, batch: &DiffBatch, n: usize) -> Result<()> {
        grow(&mut self.sums, n, 0.0);
        grow(&mut self.nonnull, n, 0);
        let Some(v) = values else { return Ok(()) };
        let v = cast(v, &DataType::Float64)?;
        let v = v.as_primitive::<Float64Type>();
        if v.null_count() == 0 && batch.diffs.is_none() {
            for (&g, &x) in groups.iter().zip(v.values()) {
                self.sums[g as usize] += x;
                self.nonnull[g as usize] += 1;
            }
        } else {
            for (i, &g) in groups.iter().enumerate() {
                if v.is_valid(i) {
                    let d = batch.diff(i);
                    let g = g as usize;
                    self.sums[g] += v.value(i) * d as f64;
                    self.nonnull[g] += d;
                }
            }
        }
        Ok(())
    }

    fn settle(&mut self, groups: &[u32]) {
        // A group whose values were all retracted restarts from an exact zero, dropping
        // accumulated rounding error.
        for &g in groups {
            if self.nonnull[g as usize] == 0 {
                self.sums[g as usize] = 0.0;
            }
        }
    }

    fn evaluate(&self, groups: &[u32]) -> Result<ArrayRef> {
        Ok(Arc::new(Float64Array::from_iter(groups.iter().map(|&g| {
            let c = self.nonnull[g as usize];
            let s = self.sums[g as usize];
            (c > 0).then(|| if self.avg { s / c as f64 } else { s })
        }))))
    }

    fn save(&self, g: u32, out: &mut Enc) {
        out.f64(self.sums.get(g as usize).copied().unwrap_or(0.0));
        out.i64(self.nonnull.get(g as usize).copied().unwrap_or(0));
    }

    fn load(&mut self, g: u32, input: &mut Dec<'_>) -> Result<()> {
        grow(&mut self.sums, g as usize + 1, 0.0);
        grow(&mut self.nonnull, g as usize + 1, 0);
        self.sums[g as usize] = input.f64()?;
        self.nonnull[g as usize] = input.i64()?;
        Ok(())
    }

    fn partial_types(&self) -> Option<Vec<DataType>> {
        Some(vec![DataType::Float64, DataType::Int64])
    }

    fn export(&self, groups: &[u32]) -> Result<Vec<ArrayRef>> {
        Ok(vec![
            Arc::new(Float64Array::from_iter_values(groups.iter().map(|&g| self.sums[g as usize]))),
            Arc::new(Int64Array::from_iter_values(groups.iter().map(|&g| self.nonnull[g as usize]))),
        ])
    }

    fn merge(&mut self, groups: &[u32], partial: &[ArrayRef], n: usize) -> Result<()> {
        grow(&mut self.sums, n, 0.0);
        grow(&mut self.nonnull, n, 0);
        let s = partial_col::<Float64Type>(partial, 0)?;
        let c = partial_col::<Int64Type>(partial, 1)?;
        for ((&g, &s), &c) in groups.iter().zip(s.values()).zip(c.values()) {
            self.sums[g as usize] += s;
            self.nonnull[g as usize] += c;
        }
        Ok(())
    }
}

/// SUM/AVG over DECIMAL(p, s): exact sums of the unscaled integers.
struct DecimalSum {
    sums: Vec<i128>,
    nonnull: Vec<i64>,
    precision: u8,
    scale: i8,
    avg: bool,
}

impl DecimalSum {
    fn new(precision: u8, scale: i8, avg: bool) -> Self {
        Self { sums: Vec::new(), nonnull: Vec::new(), precision, scale, avg }
    }
}

impl Accumulator for DecimalSum {
    fn update(&mut self, groups: &[u32], values: Option<&ArrayRef>, batch: &DiffBatch, n: usize) -> Result<()> {
        grow(&mut self.sums, n, 0);
        grow(&mut self.nonnull, n, 0);
        let Some(v) = values else { return Ok(()) };
        let v = v.as_primitive::<arrow::datatypes::Decimal128Type>();
        for (i, &g) in groups.iter().enumerate() {
            if v.is_valid(i) {
                let d = batch.diff(i);
                self.sums[g as usize] = self.sums[g as usize]
                    .checked_add(v.value(i).checked_mul(d as i128).unwrap_or(i128::MAX))
                    .ok_or_else(|| DataflowError::Eval("SUM overflows DECIMAL".into()))?;
                self.nonnull[g as usize] += d;
            }
        }
        Ok(())
    }

    fn evaluate(&self, groups: &[u32]) -> Result<ArrayRef> {
        if self.avg {
            let div = 10f64.powi(self.scale as i32);
            return Ok(Arc::new(Float64Array::from_iter(groups.iter().map(|&g| {
                let c = self.nonnull[g as usize];
                (c > 0).then(|| self.sums[g as usize] as f64 / div / c as f64)
            }))));
        }
        let arr = Decimal128Array::from_iter(
            groups.iter().map(|&g| (self.nonnull[g as usize] > 0).then_some(self.sums[g as usize])),
        )
        .with_precision_and_scale(38.max(self.precision), self.scale)?;
        Ok(Arc::new(arr))
    }

    fn save(&self, g: u32, out: &mut Enc) {
        out.i128(self.sums.get(g as usize).copied().unwrap_or(0));
        out.i64(self.nonnull.get(g as usize).copied().unwrap_or(0));
    }

    fn load(&mut self, g: u32, input: &mut Dec<'_>) -> Result<()> {
        grow(&mut self.sums, g as usize + 1, 0);
        grow(&mut self.nonnull, g as usize + 1, 0);
        self.sums[g as usize] = input.i128()?;
        self.nonnull[g as usize] = input.i64()?;
        Ok(())
    }

    fn partial_types(&self) -> Option<Vec<DataType>> {
        Some(vec![I128_TYPE, DataType::Int64])
    }

    fn export(&self, groups: &[u32]) -> Result<Vec<ArrayRef>> {
        export_exact_sums(&self.sums, &self.nonnull, groups)
    }

    fn merge(&mut self, groups: &[u32], partial: &[ArrayRef], n: usize) -> Result<()> {
        merge_exact_sums(&mut self.sums, &mut self.nonnull, groups, partial, n, "SUM overflows DECIMAL")
    }
}

/// MIN/MAX over an append-only primitive column: one value per group.
struct PrimExtreme<T: ArrowPrimitiveType> {
    best: Vec<Option<T::Native>>,
    max: bool,
}

impl<T: ArrowPrimitiveType> PrimExtreme<T> {
    fn new(max: bool) -> Self {
        Self { best: Vec::new(), max }
    }
}

impl<T: ArrowPrimitiveType> Accumulator for PrimExtreme<T> {
    fn update(&mut self, groups: &[u32], values: Option<&ArrayRef>, batch: &DiffBatch, n: usize) -> Result<()> {
        grow(&mut self.best, n, None);
        let Some(v) = values else { return Ok(()) };
        let v = v.as_primitive::<T>();
        let want = if self.max { std::cmp::Ordering::Greater } else { std::cmp::Ordering::Less };
        for (i, &g) in groups.iter().enumerate() {
            if v.is_null(i) {
                continue;
            }
            if batch.diff(i) < 0 {
                return Err(DataflowError::Internal("retraction reached an append-only MIN/MAX".into()));
            }
            let x = v.value(i);
            let slot = &mut self.best[g as usize];
            match slot {
                Some(cur) if x.compare(*cur) != want => {}
                _ => *slot = Some(x),
            }
        }
        Ok(())
    }

    fn evaluate(&self, groups: &[u32]) -> Result<ArrayRef> {
        Ok(Arc::new(PrimitiveArray::<T>::from_iter(groups.iter().map(|&g| self.best[g as usize]))))
    }

    fn save(&self, g: u32, out: &mut Enc) {
        match self.best.get(g as usize).copied().flatten() {
            Some(v) => {
                out.u8(1);
                out.bytes(arrow::datatypes::ToByteSlice::to_byte_slice(std::slice::from_ref(&v)));
            }
            None => out.u8(0),
        }
    }

    fn load(&mut self, g: u32, input: &mut Dec<'_>) -> Result<()> {
        grow(&mut self.best, g as usize + 1, None);
        self.best[g as usize] = match input.u8()? {
            0 => None,
            _ => {
                let buf = arrow::buffer::Buffer::from(input.bytes()?);
                if buf.len() != std::mem::size_of::<T::Native>() {
                    return Err(DataflowError::Internal("corrupt state snapshot (MIN/MAX value)".into()));
                }
                buf.typed_data::<T::Native>().first().copied()
            }
        };
        Ok(())
    }

    fn partial_types(&self) -> Option<Vec<DataType>> {
        Some(vec![T::DATA_TYPE])
    }

    fn export(&self, groups: &[u32]) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.evaluate(groups)?])
    }

    fn merge(&mut self, groups: &[u32], partial: &[ArrayRef], n: usize) -> Result<()> {
        grow(&mut self.best, n, None);
        let v = partial_col::<T>(partial, 0)?;
        let want = if self.max { std::cmp::Ordering::Greater } else { std::cmp::Ordering::Less };
        for (i, &g) in groups.iter().enumerate() {
            if v.is_null(i) {
                continue;
            }
            let x = v.value(i);
            let slot = &mut self.best[g as usize];
            match slot {
                Some(cur) if x.compare(*cur) != want => {}
                _ => *slot = Some(x),
            }
        }
        Ok(())
    }
}

/// Order-preserving byte encoding of one column, shared by the generic MIN/MAX/DISTINCT.
struct ValueCodec {
    converter: RowConverter,
    data_type: DataType,
}

impl ValueCodec {
    fn new(data_type: DataType) -> Result<Self> {
        Ok(Self { converter: RowConverter::new(vec![SortField::new(data_type.clone())])?, data_type })
    }

    /// An owned row from snapshot bytes (checked by the parser of this codec's converter).
    fn owned(&self, bytes: &[u8]) -> Result<OwnedRow> {
        let rows = self.converter.convert_rows(std::iter::once(self.converter.parser().parse(bytes)))?;
        Ok(self.converter.convert_columns(&rows)?.row(0).owned())
    }

    fn encode(&self, v: &ArrayRef) -> Result<arrow_row::Rows> {
        Ok(self.converter.convert_columns(std::slice::from_ref(v))?)
    }

    fn decode<'a>(&self, rows: impl IntoIterator<Item = Option<&'a [u8]>>, len: usize) -> Result<ArrayRef> {
        // Decode the present values, then scatter them into a nullable array.
        let mut present = Vec::with_capacity(len);
        let mut idx: Vec<Option<u32>> = Vec::with_capacity(len);
        for r in rows {
            match r {
                Some(bytes) => {
                    idx.push(Some(present.len() as u32));
                    present.push(bytes);
                }
                None => idx.push(None),
            }
        }
        let parser = self.converter.parser();
        let parsed: Vec<_> = present.iter().map(|b| parser.parse(b)).collect();
        let values = if parsed.is_empty() {
            arrow::array::new_empty_array(&self.data_type)
        } else {
            self.converter.convert_rows(parsed)?.remove(0)
        };
        let take = arrow::array::UInt32Array::from(idx);
        Ok(arrow::compute::take(&values, &take, None)?)
    }
}

/// MIN/MAX over an append-only column of any orderable type.
struct RowExtreme {
    codec: ValueCodec,
    best: Vec<Option<OwnedRow>>,
    max: bool,
}

impl RowExtreme {
    fn new(t: DataType, max: bool) -> Result<Self> {
        Ok(Self { codec: ValueCodec::new(t)?, best: Vec::new(), max })
    }
}

impl Accumulator for RowExtreme {
    fn update(&mut self, groups: &[u32], values: Option<&ArrayRef>, batch: &DiffBatch, n: usize) -> Result<()> {
        grow(&mut self.best, n, None);
        let Some(v) = values else { return Ok(()) };
        let rows = self.codec.encode(v)?;
        for (i, &g) in groups.iter().enumerate() {
            if v.is_null(i) {
                continue;
            }
            if batch.diff(i) < 0 {
                return Err(DataflowError::Internal("retraction reached an append-only MIN/MAX".into()));
            }
            let r = rows.row(i);
            let slot = &mut self.best[g as usize];
            let better = match slot {
                None => true,
                Some(cur) => {
                    if self.max {
                        r > cur.row()
                    } else {
                        r < cur.row()
                    }
                }
            };
            if better {
                *slot = Some(r.owned());
            }
        }
        Ok(())
    }

    fn evaluate(&self, groups: &[u32]) -> Result<ArrayRef> {
        self.codec.decode(groups.iter().map(|&g| self.best[g as usize].as_ref().map(|r| r.as_ref())), groups.len())
    }

    fn save(&self, g: u32, out: &mut Enc) {
        out.opt_bytes(self.best.get(g as usize).and_then(|b| b.as_ref()).map(|r| r.as_ref()));
    }

    fn load(&mut self, g: u32, input: &mut Dec<'_>) -> Result<()> {
        grow(&mut self.best, g as usize + 1, None);
        self.best[g as usize] = match input.opt_bytes()? {
            Some(b) => Some(self.codec.owned(b)?),
            None => None,
        };
        Ok(())
    }
}

/// A multiset of encoded values: value → multiplicity, entries removed at zero.
trait CountedSet: Default {
    fn bump(&mut self, key: &[u8], d: i64);
}

macro_rules! counted_set {
    ($map:ident) => {
        impl CountedSet for $map<Box<[u8]>, i64> {
            fn bump(&mut self, key: &[u8], d: i64) {
                if let Some(c) = self.get_mut(key) {
                    *c += d;
                    if *c == 0 {
                        self.remove(key);
                    }
                } else if d != 0 {
                    self.insert(key.into(), d);
                }
            }
        }
    };
}

counted_set!(BTreeMap);
counted_set!(HashMap);

/// Adds each non-null value with its row's multiplicity to its group's multiset.
fn update_sets<S: CountedSet>(
    codec: &ValueCodec,
    sets: &mut Vec<S>,
    groups: &[u32],
    values: Option<&ArrayRef>,
    batch: &DiffBatch,
    n: usize,
) -> Result<()> {
    if sets.len() < n {
        sets.resize_with(n, S::default);
    }
    let Some(v) = values else { return Ok(()) };
    let rows = codec.encode(v)?;
    for (i, &g) in groups.iter().enumerate() {
        if v.is_valid(i) {
            sets[g as usize].bump(rows.row(i).as_ref(), batch.diff(i));
        }
    }
    Ok(())
}

fn save_set<'a>(set: Option<impl ExactSizeIterator<Item = (&'a Box<[u8]>, &'a i64)>>, out: &mut Enc) {
    match set {
        Some(it) => {
            out.u32(it.len() as u32);
            for (k, c) in it {
                out.bytes(k);
                out.i64(*c);
            }
        }
        None => out.u32(0),
    }
}

fn load_set<S: CountedSet>(sets: &mut Vec<S>, g: u32, input: &mut Dec<'_>) -> Result<()> {
    if sets.len() <= g as usize {
        sets.resize_with(g as usize + 1, S::default);
    }
    let mut set = S::default();
    for _ in 0..input.u32()? {
        let k = input.bytes()?;
        set.bump(k, input.i64()?);
    }
    sets[g as usize] = set;
    Ok(())
}

/// MIN/MAX under retractions: an ordered multiset of values per group.
struct MultisetExtreme {
    codec: ValueCodec,
    sets: Vec<BTreeMap<Box<[u8]>, i64>>,
    max: bool,
}

impl MultisetExtreme {
    fn new(t: DataType, max: bool) -> Result<Self> {
        Ok(Self { codec: ValueCodec::new(t)?, sets: Vec::new(), max })
    }
}

impl Accumulator for MultisetExtreme {
    fn update(&mut self, groups: &[u32], values: Option<&ArrayRef>, batch: &DiffBatch, n: usize) -> Result<()> {
        update_sets(&self.codec, &mut self.sets, groups, values, batch, n)
    }

    fn evaluate(&self, groups: &[u32]) -> Result<ArrayRef> {
        let pick = |g: u32| {
            let set = &self.sets[g as usize];
            let e = if self.max { set.iter().next_back() } else { set.iter().next() };
            e.map(|(k, _)| k.as_ref())
        };
        self.codec.decode(groups.iter().map(|&g| pick(g)), groups.len())
    }

    fn save(&self, g: u32, out: &mut Enc) {
        save_set(self.sets.get(g as usize).map(|s| s.iter()), out);
    }

    fn load(&mut self, g: u32, input: &mut Dec<'_>) -> Result<()> {
        load_set(&mut self.sets, g, input)
    }
}

/// COUNT(DISTINCT x): a multiset of values per group.
struct DistinctAcc {
    codec: ValueCodec,
    sets: Vec<HashMap<Box<[u8]>, i64>>,
}

impl DistinctAcc {
    fn new(t: DataType) -> Result<Self> {
        Ok(Self { codec: ValueCodec::new(t)?, sets: Vec::new() })
    }
}

impl Accumulator for DistinctAcc {
    fn update(&mut self, groups: &[u32], values: Option<&ArrayRef>, batch: &DiffBatch, n: usize) -> Result<()> {
        update_sets(&self.codec, &mut self.sets, groups, values, batch, n)
    }

    fn evaluate(&self, groups: &[u32]) -> Result<ArrayRef> {
        Ok(Arc::new(Int64Array::from_iter_values(groups.iter().map(|&g| self.sets[g as usize].len() as i64))))
    }

    fn save(&self, g: u32, out: &mut Enc) {
        save_set(self.sets.get(g as usize).map(|s| s.iter()), out);
    }

    fn load(&mut self, g: u32, input: &mut Dec<'_>) -> Result<()> {
        load_set(&mut self.sets, g, input)
    }
}
