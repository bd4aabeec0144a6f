//! Shared pieces of the CDC sources: the changes of one poll collected in order as runs of
//! keyed inserts and deletes (and clears), their text values converted to the declared Arrow
//! types, and a row that does not convert turned into a dead letter naming it.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema, SchemaRef};

use crate::connector::{Change, SourceChunk};
use crate::dlq::DeadLetter;
use crate::text_values as values;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Insert,
    Delete,
}

/// Text values of one run of inserts (declared columns) or deletes (key columns), turned into
/// a batch of the declared types; a row whose values do not convert becomes a dead letter.
struct Rows {
    schema: SchemaRef,
    kind: Kind,
    columns: Vec<Vec<Option<String>>>,
    at: Vec<String>,
}

impl Rows {
    fn new(schema: SchemaRef, kind: Kind) -> Self {
        let columns = vec![Vec::new(); schema.fields().len()];
        Self { schema, kind, columns, at: Vec::new() }
    }

    fn len(&self) -> usize {
        self.at.len()
    }

    fn push(&mut self, row: Vec<Option<&str>>, at: impl FnOnce() -> String) {
        for (c, v) in self.columns.iter_mut().zip(row) {
            c.push(v.map(str::to_string));
        }
        self.at.push(at());
    }

    fn convert(&self, rows: std::ops::Range<usize>) -> std::result::Result<RecordBatch, String> {
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (f, c) in self.schema.fields().iter().zip(&self.columns) {
            let vals: Vec<Option<&str>> = c[rows.clone()].iter().map(|v| v.as_deref()).collect();
            arrays.push(values::column(f.name(), &vals, f.data_type())?);
        }
        RecordBatch::try_new(self.schema.clone(), arrays).map_err(|e| e.to_string())
    }

    /// Appends the batch (or, when some rows do not convert, the good rows and dead letters).
    fn finish_into(self, chunk: &mut SourceChunk) {
        if self.len() == 0 {
            return;
        }
        let wrap = |b: RecordBatch| if self.kind == Kind::Insert { Change::Insert(b) } else { Change::Delete(b) };
        match self.convert(0..self.len()) {
            Ok(b) => chunk.changes.push(wrap(b)),
            Err(_) => {
                // Row by row, to name the bad ones.
                let mut good = Vec::new();
                for i in 0..self.len() {
                    match self.convert(i..i + 1) {
                        Ok(b) => good.push(b),
                        Err(reason) => {
                            let payload: Vec<String> = self
                                .schema
                                .fields()
                                .iter()
                                .zip(&self.columns)
                                .map(|(f, c)| format!("{}={}", f.name(), c[i].as_deref().unwrap_or("NULL")))
                                .collect();
                            chunk.dead_letters.push(DeadLetter::new(
                                self.at[i].clone(),
                                reason,
                                payload.join(", ").as_bytes(),
                            ));
                        }
                    }
                }
                if let Ok(b) = arrow::compute::concat_batches(&self.schema, &good) {
                    if b.num_rows() > 0 {
                        chunk.changes.push(wrap(b));
                    }
                }
            }
        }
    }
}

/// Collects the changes of one poll in order, as runs of inserts and deletes.
pub struct Builder {
    schema: SchemaRef,
    key_schema: SchemaRef,
    current: Option<Rows>,
    chunk: SourceChunk,
}

impl Builder {
    /// A builder for rows of `schema` keyed by `key`.
    pub fn new(schema: SchemaRef, key: &[String]) -> Self {
        let key_fields: Vec<Field> = key
            .iter()
            .filter_map(|k| schema.field_with_name(k).ok())
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        Self { schema, key_schema: Arc::new(Schema::new(key_fields)), current: None, chunk: SourceChunk::default() }
    }

    fn run(&mut self, kind: Kind) -> &mut Rows {
        if self.current.as_ref().is_some_and(|r| r.kind != kind) {
            self.flush();
        }
        let schema = if kind == Kind::Insert { self.schema.clone() } else { self.key_schema.clone() };
        self.current.get_or_insert_with(|| Rows::new(schema, kind))
    }

    fn flush(&mut self) {
        if let Some(r) = self.current.take() {
            r.finish_into(&mut self.chunk);
        }
    }

    /// An inserted or updated row (declared columns, in order).
    pub fn insert(&mut self, row: Vec<Option<&str>>, at: impl FnOnce() -> String) {
        self.run(Kind::Insert).push(row, at);
    }

    /// A deleted row's key (key columns, in order).
    pub fn delete(&mut self, key: Vec<Option<&str>>, at: impl FnOnce() -> String) {
        self.run(Kind::Delete).push(key, at);
    }

    /// Every row removed (TRUNCATE, or a fresh snapshot).
    pub fn clear(&mut self) {
        self.flush();
        self.chunk.changes.push(Change::Clear);
    }

    /// A change that cannot be applied, as a dead letter.
    pub fn reject(&mut self, at: String, reason: String) {
        self.chunk.dead_letters.push(DeadLetter::new(at, reason, b""));
    }

    /// The chunk: changes in order, and dead letters.
    pub fn finish(mut self) -> SourceChunk {
        self.flush();
        self.chunk
    }
}
