//! CSV lines → Arrow with arrow-csv. With a header (files), columns are matched by name and
//! extra columns are ignored; without one (message payloads), fields are taken in the source's
//! column order.

use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::{ConnectorError, Result};

/// Decodes CSV records (one per payload).
pub struct CsvDecoder {
    target: SchemaRef,
    delimiter: u8,
    /// Layout of the fields in a record, and for each target column its index there.
    file_schema: SchemaRef,
    mapping: Vec<Option<usize>>,
    buf: Vec<u8>,
}

impl CsvDecoder {
    /// A decoder producing rows of `target`, fields in its column order until a header is set.
    pub fn new(target: SchemaRef, delimiter: u8) -> Self {
        let mapping = (0..target.fields().len()).map(Some).collect();
        Self { file_schema: target.clone(), target, delimiter, mapping, buf: Vec::new() }
    }

    /// Sets the header (column names in record order); `None` goes back to positional.
    pub fn set_header(&mut self, names: Option<Vec<String>>) -> Result<()> {
        let Some(names) = names else {
            self.file_schema = self.target.clone();
            self.mapping = (0..self.target.fields().len()).map(Some).collect();
            return Ok(());
        };
        let fields: Vec<Field> = names
            .iter()
            .enumerate()
            .map(|(i, n)| match self.target.fields().iter().find(|f| f.name().eq_ignore_ascii_case(n.trim())) {
                Some(f) => Field::new(format!("c{i}"), f.data_type().clone(), true),
                None => Field::new(format!("c{i}"), DataType::Utf8, true),
            })
            .collect();
        let mapping: Vec<Option<usize>> = self
            .target
            .fields()
            .iter()
            .map(|f| names.iter().position(|n| f.name().eq_ignore_ascii_case(n.trim())))
            .collect();
        if let Some((f, _)) = self.target.fields().iter().zip(&mapping).find(|(f, m)| m.is_none() && !f.is_nullable()) {
            return Err(ConnectorError::Failed(format!(
                "CSV header ({}) has no column '{}', which is NOT NULL",
                names.join(", "),
                f.name()
            )));
        }
        self.file_schema = Arc::new(Schema::new(fields));
        self.mapping = mapping;
        Ok(())
    }

    fn decode_buf(&self, buf: &[u8], rows: usize) -> std::result::Result<RecordBatch, String> {
        let mut d = arrow::csv::ReaderBuilder::new(self.file_schema.clone())
            .with_header(false)
            .with_delimiter(self.delimiter)
            .with_batch_size(rows.max(1) + 1)
            .build_decoder();
        let mut offset = 0;
        while offset < buf.len() {
            let n = d.decode(&buf[offset..]).map_err(|e| format!("invalid CSV: {e}"))?;
            if n == 0 {
                return Err("more CSV records than payloads".into());
            }
            offset += n;
        }
        let _ = d.decode(&[]).map_err(|e| format!("invalid CSV: {e}"))?;
        let file = match d.flush().map_err(|e| format!("does not match the schema: {e}"))? {
            Some(b) => b,
            None => return Ok(RecordBatch::new_empty(self.target.clone())),
        };
        let cols: Vec<ArrayRef> = self
            .target
            .fields()
            .iter()
            .zip(&self.mapping)
            .map(|(f, m)| match m {
                Some(i) => file.column(*i).clone(),
                None => new_null_array(f.data_type(), file.num_rows()),
            })
            .collect();
        RecordBatch::try_new(self.target.clone(), cols).map_err(|e| format!("does not match the schema: {e}"))
    }

    /// Decodes every payload; returns the good rows (in order) and `(index, reason)` failures.
    pub fn decode(&mut self, payloads: &[&[u8]]) -> (Option<RecordBatch>, Vec<(usize, String)>) {
        if payloads.is_empty() {
            return (None, Vec::new());
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        for p in payloads {
            buf.extend_from_slice(p);
            buf.push(b'\n');
        }
        let all = self.decode_buf(&buf, payloads.len());
        self.buf = buf;
        if let Ok(b) = all {
            if b.num_rows() == payloads.len() {
                return (Some(b), Vec::new());
            }
        }
        let mut good = Vec::new();
        let mut failures = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            let mut one = p.to_vec();
            one.push(b'\n');
            match self.decode_buf(&one, 1) {
                Ok(b) if b.num_rows() == 1 => good.push(b),
                Ok(b) => failures.push((i, format!("expected one CSV record, found {}", b.num_rows()))),
                Err(e) => failures.push((i, e)),
            }
        }
        let batch = if good.is_empty() { None } else { arrow::compute::concat_batches(&self.target, &good).ok() };
        (batch, failures)
    }
}
