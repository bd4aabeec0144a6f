//! [`DiffBatch`]: an Arrow record batch whose rows carry signed multiplicities.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::{filter, filter_record_batch, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{DataflowError, Result};

/// Name of the hidden column that carries row multiplicities in serialized batches.
const DIFF_COLUMN: &str = "__laminar_diff";

/// A batch of rows, each with a multiplicity: `+1` insert, `-1` retraction (or any other
/// non-zero count). `diffs == None` means every row has multiplicity `+1`, which is the
/// common case for append-only sources and costs nothing to represent.
#[derive(Clone, Debug)]
pub struct DiffBatch {
    /// The rows.
    pub data: RecordBatch,
    /// Per-row multiplicities (same length as `data`), or `None` for all `+1`.
    pub diffs: Option<Int64Array>,
}

impl DiffBatch {
    /// Wraps an insert-only batch.
    pub fn inserts(data: RecordBatch) -> Self {
        Self { data, diffs: None }
    }

    /// Wraps a batch with explicit multiplicities.
    pub fn with_diffs(data: RecordBatch, diffs: Int64Array) -> Result<Self> {
        if diffs.len() != data.num_rows() {
            return Err(DataflowError::Internal(format!(
                "diff column has {} entries for {} rows",
                diffs.len(),
                data.num_rows()
            )));
        }
        if diffs.null_count() > 0 {
            return Err(DataflowError::Internal("diff column contains nulls".into()));
        }
        Ok(Self { data, diffs: Some(diffs) })
    }

    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.data.num_rows()
    }

    /// True when every row is an insertion of multiplicity one.
    pub fn is_insert_only(&self) -> bool {
        match &self.diffs {
            None => true,
            Some(d) => d.values().iter().all(|&x| x == 1),
        }
    }

    /// Multiplicity of row `i`.
    #[inline]
    pub fn diff(&self, i: usize) -> i64 {
        match &self.diffs {
            None => 1,
            Some(d) => d.value(i),
        }
    }

    /// Keeps the rows where `mask` is true (nulls count as false).
    pub fn filter(&self, mask: &BooleanArray) -> Result<Self> {
        let data = filter_record_batch(&self.data, mask)?;
        let diffs = match &self.diffs {
            None => None,
            Some(d) => {
                let f = filter(d, mask)?;
                Some(downcast_i64(&f)?)
            }
        };
        Ok(Self { data, diffs })
    }

    /// Selects rows by index.
    pub fn take(&self, indices: &UInt32Array) -> Result<Self> {
        let data = take_record_batch(&self.data, indices)?;
        let diffs = match &self.diffs {
            None => None,
            Some(d) => {
                let t = arrow::compute::take(d, indices, None)?;
                Some(downcast_i64(&t)?)
            }
        };
        Ok(Self { data, diffs })
    }

    /// Rows `offset..offset + len` (zero-copy).
    pub fn slice(&self, offset: usize, len: usize) -> Self {
        Self { data: self.data.slice(offset, len), diffs: self.diffs.as_ref().map(|d| d.slice(offset, len)) }
    }

    /// Applies `f` to the whole batch; if it fails, applies it to each row alone so that one bad
    /// row does not cost the others. Returns the successful results and calls `on_error` with
    /// the number of rows lost and the reason.
    pub fn isolate<T>(
        &self,
        mut f: impl FnMut(&DiffBatch) -> Result<T>,
        mut on_error: impl FnMut(usize, &DataflowError),
    ) -> Vec<T> {
        match f(self) {
            Ok(v) => vec![v],
            Err(_) if self.num_rows() > 1 => {
                let mut out = Vec::new();
                for i in 0..self.num_rows() {
                    match f(&self.slice(i, 1)) {
                        Ok(v) => out.push(v),
                        Err(e) => on_error(1, &e),
                    }
                }
                out
            }
            Err(e) => {
                on_error(self.num_rows(), &e);
                Vec::new()
            }
        }
    }

    /// Replaces the rows, keeping the multiplicities (the new batch must have as many rows).
    pub fn with_data(&self, data: RecordBatch) -> Result<Self> {
        if data.num_rows() != self.data.num_rows() {
            return Err(DataflowError::Internal(format!(
                "row-preserving operator produced {} rows from {}",
                data.num_rows(),
                self.data.num_rows()
            )));
        }
        Ok(Self { data, diffs: self.diffs.clone() })
    }

    /// Encodes the batch (data and multiplicities) as an Arrow IPC stream.
    pub fn to_ipc(&self) -> Result<Vec<u8>> {
        let mut fields: Vec<Arc<Field>> = self.data.schema().fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(DIFF_COLUMN, DataType::Int64, false)));
        let schema = Arc::new(Schema::new_with_metadata(fields, self.data.schema().metadata().clone()));
        let diffs: ArrayRef = match &self.diffs {
            Some(d) => Arc::new(d.clone()),
            None => Arc::new(Int64Array::from_value(1, self.num_rows())),
        };
        let mut columns = self.data.columns().to_vec();
        columns.push(diffs);
        let full = RecordBatch::try_new(schema.clone(), columns)?;
        let mut buf = Vec::with_capacity(full.get_array_memory_size() + 512);
        {
            let mut w = StreamWriter::try_new(&mut buf, &schema)?;
            w.write(&full)?;
            w.finish()?;
        }
        Ok(buf)
    }

    /// Decodes a batch written by [`DiffBatch::to_ipc`].
    pub fn from_ipc(bytes: &[u8]) -> Result<Self> {
        let mut reader = StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
        let full = match reader.next() {
            Some(b) => b?,
            None => return Err(DataflowError::Internal("empty IPC stream".into())),
        };
        let n = full.num_columns();
        if n == 0 || full.schema().field(n - 1).name() != DIFF_COLUMN {
            return Err(DataflowError::Internal("IPC batch lacks the diff column".into()));
        }
        let diffs = downcast_i64(full.column(n - 1))?;
        let data = full.project(&(0..n - 1).collect::<Vec<_>>())?;
        let diffs = if diffs.values().iter().all(|&d| d == 1) { None } else { Some(diffs) };
        Ok(Self { data, diffs })
    }
}

fn downcast_i64(a: &ArrayRef) -> Result<Int64Array> {
    a.as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| DataflowError::Internal("diff column is not Int64".into()))
}

impl Serialize for DiffBatch {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let bytes = self.to_ipc().map_err(serde::ser::Error::custom)?;
        s.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for DiffBatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let bytes: Vec<u8> = serde::de::Deserialize::deserialize(d)?;
        DiffBatch::from_ipc(&bytes).map_err(serde::de::Error::custom)
    }
}

/// A batch addressed to one worker (the output of a key partitioner, the input of an exchange).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Routed {
    /// Index of the worker that must receive the batch.
    pub target: u32,
    /// The rows.
    pub batch: DiffBatch,
    /// Hash of each row's key, when the key is a single VARCHAR column (the grouping hash table
    /// uses the same hash, so the receiving aggregate need not hash the rows again).
    #[serde(default)]
    pub hashes: Option<Vec<u64>>,
    /// True when the rows are partial aggregates made by a
    /// [`Combiner`](crate::combine::Combiner), not input rows.
    #[serde(default)]
    pub partial: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, StringArray};

    fn sample() -> RecordBatch {
        let schema =
            Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true), Field::new("v", DataType::Int32, true)]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])),
                Arc::new(Int32Array::from(vec![1, 2, 3])),
            ],
        )
        .expect("batch")
    }

    #[test]
    fn ipc_round_trip_keeps_rows_and_diffs() {
        let b = DiffBatch::with_diffs(sample(), Int64Array::from(vec![1, -1, 2])).expect("diffs");
        let back = DiffBatch::from_ipc(&b.to_ipc().expect("enc")).expect("dec");
        assert_eq!(back.data, b.data);
        assert_eq!(back.diffs.expect("diffs").values(), &[1, -1, 2]);
        let ins = DiffBatch::inserts(sample());
        let back = DiffBatch::from_ipc(&ins.to_ipc().expect("enc")).expect("dec");
        assert!(back.diffs.is_none());
        assert_eq!(back.data, ins.data);
    }

    #[test]
    fn filter_and_take_carry_diffs() {
        let b = DiffBatch::with_diffs(sample(), Int64Array::from(vec![1, -1, 2])).expect("diffs");
        let f = b.filter(&BooleanArray::from(vec![false, true, true])).expect("filter");
        assert_eq!(f.num_rows(), 2);
        assert_eq!(f.diff(0), -1);
        assert_eq!(f.diff(1), 2);
        let t = b.take(&UInt32Array::from(vec![2, 0])).expect("take");
        assert_eq!(t.diff(0), 2);
        assert_eq!(t.diff(1), 1);
        assert!(!b.is_insert_only());
    }
}
