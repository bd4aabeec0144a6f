//! JSON objects → Arrow, through arrow-json's tape decoder (no per-row `serde_json::Value`).

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::json::reader::Decoder as TapeDecoder;

use crate::{ConnectorError, Result};

/// Decodes JSON objects (one per payload) into rows of a schema.
pub struct JsonDecoder {
    schema: SchemaRef,
    buf: Vec<u8>,
}

fn tape(schema: &SchemaRef, rows: usize) -> std::result::Result<TapeDecoder, String> {
    arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(rows.max(1) + 1)
        .with_coerce_primitive(true)
        .build_decoder()
        .map_err(|e| e.to_string())
}

impl JsonDecoder {
    /// A decoder for `schema`.
    pub fn new(schema: SchemaRef) -> Result<Self> {
        tape(&schema, 1).map_err(ConnectorError::Config)?;
        Ok(Self { schema, buf: Vec::new() })
    }

    /// The schema rows are decoded into.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Decodes every payload; returns the good rows (in order) and `(index, reason)` failures.
    pub fn decode(&mut self, payloads: &[&[u8]]) -> (Option<RecordBatch>, Vec<(usize, String)>) {
        if payloads.is_empty() {
            return (None, Vec::new());
        }
        self.buf.clear();
        for p in payloads {
            self.buf.extend_from_slice(p);
            self.buf.push(b'\n');
        }
        if let Ok(batch) = decode_all(&self.schema, &self.buf, payloads.len()) {
            if batch.num_rows() == payloads.len() {
                return (Some(batch), Vec::new());
            }
        }
        // Isolate the bad records.
        let mut good = Vec::new();
        let mut failures = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            match decode_all(&self.schema, p, 1) {
                Ok(b) if b.num_rows() == 1 => good.push(b),
                Ok(b) if b.num_rows() == 0 => failures.push((i, "empty record: expected a JSON object".to_string())),
                Ok(b) => failures.push((i, format!("expected one JSON object, found {}", b.num_rows()))),
                Err(e) => failures.push((i, e)),
            }
        }
        let batch = if good.is_empty() { None } else { arrow::compute::concat_batches(&self.schema, &good).ok() };
        (batch, failures)
    }
}

/// Decodes a buffer of whitespace-separated JSON objects.
pub(crate) fn decode_all(schema: &SchemaRef, buf: &[u8], rows: usize) -> std::result::Result<RecordBatch, String> {
    let mut d = tape(schema, rows)?;
    let mut offset = 0;
    while offset < buf.len() {
        let n = d.decode(&buf[offset..]).map_err(|e| format!("invalid JSON: {e}"))?;
        if n == 0 {
            // The batch is full: more objects than expected.
            return Err("more JSON values than records".into());
        }
        offset += n;
    }
    match d.flush() {
        Ok(Some(b)) => Ok(b),
        Ok(None) => Ok(RecordBatch::new_empty(schema.clone())),
        Err(e) => Err(format!("does not match the schema: {e}")),
    }
}
