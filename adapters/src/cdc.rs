//! Shared pieces of the CDC sources: the changes of one poll collected in order as runs of
//! keyed inserts and deletes (and clears), their text values converted to the declared Arrow
//! types, and a row that does not convert turned into a dead letter naming it.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema, SchemaRef};

use crate::connector::{Change, SourceCapabilities, SourceChunk};
use crate::dlq::DeadLetter;
use crate::runner::ConnectorStatus;
use crate::text_values as values;
use crate::ConnectorError;

/// What a CDC source can do: seek back to a checkpointed position, and emit updates and
/// deletes keyed by what it learns of the upstream table.
pub const CAPABILITIES: SourceCapabilities = SourceCapabilities {
    replayable: true,
    changelog: true,
    bounded: false,
    watermarks: false,
    key_from_peer: true,
    partitioned: false,
};

/// Index of the upstream column a declared name refers to (exact, then ignoring case).
pub fn find_name<S: AsRef<str>>(names: &[S], name: &str) -> Option<usize> {
    names
        .iter()
        .position(|n| n.as_ref() == name)
        .or_else(|| names.iter().position(|n| n.as_ref().eq_ignore_ascii_case(name)))
}

/// The error for a declared column the upstream table does not have.
pub fn missing_column<S: AsRef<str>>(column: &str, table: &str, upstream: &[S]) -> ConnectorError {
    let names: Vec<&str> = upstream.iter().map(AsRef::as_ref).collect();
    ConnectorError::Config(format!(
        "column '{column}' is declared in the source, but table {table} has no such column (its columns: {})",
        names.join(", ")
    ))
}

/// Reports that the upstream table's columns went from `old` to `new` (counted in
/// `schema_changes`, described in the last error); the declared columns keep streaming and one
/// that is gone reads as NULL. Nothing when they are the same.
pub fn note_schema_change(status: &ConnectorStatus, table: &str, old: &[String], new: &[String], schema: &SchemaRef) {
    if old == new {
        return;
    }
    let quoted = |v: Vec<&String>| v.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ");
    let added: Vec<&String> = new.iter().filter(|n| !old.contains(n)).collect();
    let dropped: Vec<&String> = old.iter().filter(|n| !new.contains(n)).collect();
    let mut what = Vec::new();
    if !added.is_empty() {
        what.push(format!("added {}", quoted(added)));
    }
    if !dropped.is_empty() {
        what.push(format!("dropped {}", quoted(dropped)));
    }
    let lost: Vec<&str> =
        schema.fields().iter().map(|f| f.name().as_str()).filter(|n| find_name(new, n).is_none()).collect();
    let mut msg = format!("upstream table {table} changed ({}); streaming the declared columns", what.join(", "));
    if !lost.is_empty() {
        msg.push_str(&format!(" (declared column(s) {} no longer exist upstream and read as NULL)", lost.join(", ")));
    }
    status.add_counter("schema_changes", 1);
    status.set_last_error(msg);
}

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
