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
