//! Arrow changes → payloads (`json` lines, `csv`, or `avro` records), one per row or as one
//! stream.
//!
//! Append-only encoders write the inserted rows (a row with multiplicity n is written n times).
//! Changelog encoders add an `op` column: `"insert"` or `"delete"`.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use laminar_dataflow::batch::DiffBatch;

use super::avro::AvroEncoder;
use super::FormatKind;
use crate::{ConnectorError, Result};

/// Name of the operation column added by changelog encoders.
pub const OP_COLUMN: &str = "op";

/// Encodes a sink's changes.
pub struct Encoder {
    kind: FormatKind,
    changelog: bool,
    delimiter: u8,
    out_schema: SchemaRef,
    avro: Option<Box<AvroEncoder>>,
}

impl Encoder {
    /// An encoder for rows of `schema`; `changelog` adds the `op` column.
    pub fn new(kind: FormatKind, schema: &SchemaRef, changelog: bool, delimiter: u8) -> Result<Self> {
        if !matches!(kind, FormatKind::Json | FormatKind::Csv | FormatKind::Avro) {
            return Err(ConnectorError::Config(format!("format '{}' cannot be written by this sink", kind.name())));
        }
        let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
        if changelog {
            fields.push(Arc::new(Field::new(OP_COLUMN, DataType::Utf8, false)));
        }
        let out_schema = Arc::new(Schema::new(fields));
        let avro = match kind {
            FormatKind::Avro => Some(Box::new(AvroEncoder::new(out_schema.clone())?)),
            _ => None,
        };
        Ok(Self { kind, changelog, delimiter, out_schema, avro })
    }

    /// Avro: the encoder (its schema to register, and the registry id to frame records with).
    pub fn avro(&mut self) -> Option<&mut AvroEncoder> {
        self.avro.as_deref_mut()
    }

    /// Schema of what is written (with the `op` column for changelogs).
    pub fn schema(&self) -> &SchemaRef {
        &self.out_schema
    }

    /// The rows to write: multiplicities expanded, `op` added for changelogs, retractions
    /// dropped otherwise.
    pub fn prepare(&self, batch: &DiffBatch) -> Result<RecordBatch> {
        let n = batch.num_rows();
        let mut idx: Vec<u32> = Vec::with_capacity(n);
        let mut ops: Vec<&'static str> = Vec::new();
        let simple = batch.diffs.is_none();
        if !simple {
            for i in 0..n {
                let d = batch.diff(i);
                if d > 0 || self.changelog {
                    for _ in 0..d.unsigned_abs() {
                        idx.push(i as u32);
                        if self.changelog {
                            ops.push(if d > 0 { "insert" } else { "delete" });
                        }
                    }
                }
            }
        }
        let data = if simple {
            batch.data.clone()
        } else {
            arrow::compute::take_record_batch(&batch.data, &UInt32Array::from(idx))?
        };
        let mut cols: Vec<ArrayRef> = data.columns().to_vec();
        if self.changelog {
            if simple {
                ops = vec!["insert"; data.num_rows()];
            }
            cols.push(Arc::new(StringArray::from(ops)));
        }
        Ok(RecordBatch::try_new(self.out_schema.clone(), cols)?)
    }

    /// Appends the rows to `out` (JSON lines, CSV lines with an optional header first, or Avro
    /// records back to back).
    pub fn encode_into(&mut self, rows: &RecordBatch, out: &mut Vec<u8>, header: bool) -> Result<()> {
        match self.kind {
            FormatKind::Avro => {
                if let Some(a) = self.avro.as_mut() {
                    a.encode(rows)?.iter().for_each(|r| out.extend_from_slice(r));
                }
            }
            FormatKind::Json => {
                let mut w = arrow::json::LineDelimitedWriter::new(&mut *out);
                w.write(rows)?;
                w.finish()?;
            }
            _ => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(header)
                    .with_delimiter(self.delimiter)
                    .build(&mut *out);
                w.write(rows)?;
            }
        }
        Ok(())
    }

    /// One payload per row (no trailing newline).
    pub fn encode_rows(&mut self, batch: &DiffBatch) -> Result<Vec<Vec<u8>>> {
        let rows = self.prepare(batch)?;
        let mut out = Vec::new();
        match self.kind {
            FormatKind::Avro => match self.avro.as_mut() {
                Some(a) => a.encode(&rows),
                None => Ok(Vec::new()),
            },
            FormatKind::Json => {
                // arrow-json escapes newlines inside values, so lines are rows.
                self.encode_into(&rows, &mut out, false)?;
                Ok(out.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect())
            }
            _ => {
                // One pass over the batch; per-row encoding only when a value holds a line break.
                self.encode_into(&rows, &mut out, false)?;
                if out.last() == Some(&b'\n') {
                    out.pop();
                }
                let lines: Vec<Vec<u8>> =
                    out.split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec()).collect();
                if lines.len() == rows.num_rows() || rows.num_rows() == 0 {
                    return Ok(if rows.num_rows() == 0 { Vec::new() } else { lines });
                }
                self.encode_rows_one_by_one(&rows)
            }
        }
    }

    fn encode_rows_one_by_one(&mut self, rows: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        (0..rows.num_rows())
            .map(|i| {
                let mut one = Vec::new();
                self.encode_into(&rows.slice(i, 1), &mut one, false)?;
                while one.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    one.pop();
                }
                Ok(one)
            })
            .collect()
    }
}
