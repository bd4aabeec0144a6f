//! Raw payloads: each record's bytes become one value of the source's single column
//! (VARCHAR: must be valid UTF-8; BYTEA/BINARY: any bytes).

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryBuilder, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, SchemaRef};

use crate::{ConnectorError, Result};

/// Decodes raw payloads.
pub struct RawDecoder {
    schema: SchemaRef,
    binary: bool,
}

impl RawDecoder {
    /// Checks that `schema` has exactly one VARCHAR or BINARY column.
    pub fn new(schema: SchemaRef) -> Result<Self> {
        let binary = match schema.fields().as_ref() {
            [f] if f.data_type() == &DataType::Utf8 => false,
            [f] if f.data_type() == &DataType::Binary => true,
            _ => {
                return Err(ConnectorError::Config(
                    "format 'raw' needs a source with exactly one VARCHAR or BYTEA column".into(),
                ))
            }
        };
        Ok(Self { schema, binary })
    }

    /// One row per payload; invalid UTF-8 for a VARCHAR column is a failure.
    pub fn decode(&mut self, payloads: &[&[u8]]) -> (Option<RecordBatch>, Vec<(usize, String)>) {
        let mut failures = Vec::new();
        let col: ArrayRef = if self.binary {
            let mut b = BinaryBuilder::with_capacity(payloads.len(), payloads.iter().map(|p| p.len()).sum());
            payloads.iter().for_each(|p| b.append_value(p));
            Arc::new(b.finish())
        } else {
            let mut b = StringBuilder::with_capacity(payloads.len(), payloads.iter().map(|p| p.len()).sum());
            for (i, p) in payloads.iter().enumerate() {
                match std::str::from_utf8(p) {
                    Ok(s) => b.append_value(s),
                    Err(e) => failures.push((i, format!("not valid UTF-8: {e}"))),
                }
            }
            Arc::new(b.finish())
        };
        if col.is_empty() {
            return (None, failures);
        }
        (RecordBatch::try_new(self.schema.clone(), vec![col]).ok(), failures)
    }
}

/// Checks that a sink writing `format = 'raw'` has one text or binary column and an append-only
/// query (a raw value cannot say whether it was updated or deleted).
pub fn check_sink(schema: &SchemaRef, append_only: bool) -> Result<()> {
    let ok = schema.fields().len() == 1
        && matches!(
            schema.field(0).data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Binary | DataType::LargeBinary
        );
    if !ok {
        return Err(ConnectorError::Config("format 'raw' writes a query of one VARCHAR or BYTEA column".into()));
    }
    if !append_only {
        return Err(ConnectorError::Config(
            "format 'raw' cannot say which rows are updated or deleted: use 'json' or 'csv' for an updating query"
                .into(),
        ));
    }
    Ok(())
}

/// The values of a raw sink's single column as payloads (NULL: empty).
pub fn payloads(col: &ArrayRef) -> Result<Vec<Vec<u8>>> {
    use arrow::array::Array;
    if let Some(b) = col.as_any().downcast_ref::<arrow::array::BinaryArray>() {
        return Ok((0..b.len()).map(|i| if b.is_null(i) { Vec::new() } else { b.value(i).to_vec() }).collect());
    }
    let s = arrow::compute::cast(col, &DataType::Utf8)?;
    let s = s
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .ok_or_else(|| ConnectorError::Failed("raw output column is not text".into()))?;
    Ok((0..s.len()).map(|i| if s.is_null(i) { Vec::new() } else { s.value(i).as_bytes().to_vec() }).collect())
}
