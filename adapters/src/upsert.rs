//! Keys of an updating query's rows, and folding its changes into the last state of each key,
//! for sinks that write keyed upserts (Kafka keys and tombstones, WebSocket change messages,
//! Delta and Iceberg merges).

use std::collections::HashMap;
use std::hash::Hash;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::datatypes::{Schema, SchemaRef};
use laminar_dataflow::batch::DiffBatch;

use crate::{ConnectorError, Result};

/// Positions in `schema` of the key columns `names` (matched case-insensitively); an unknown
/// name is a [`ConnectorError::Config`] naming the `'key.columns'` option.
pub fn key_indices(schema: &Schema, names: &[String]) -> Result<Vec<usize>> {
    names
        .iter()
        .map(|n| {
            schema
                .fields()
                .iter()
                .position(|f| f.name().eq_ignore_ascii_case(n))
                .ok_or_else(|| ConnectorError::Config(format!("'key.columns': the query has no column '{n}'")))
        })
        .collect()
}

/// The key columns of a sink's rows: `'key.columns'` (comma-separated) if given, else the
/// query's key; for an updating query with neither, the whole row (a change is then a delete and
/// an insert).
pub fn sink_key(spec: &crate::connector::SinkSpec, key_columns: Option<String>) -> Result<Vec<usize>> {
    let names: Vec<String> = match key_columns {
        Some(k) => k.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        None => spec.key_columns.clone(),
    };
    let mut key = key_indices(&spec.schema, &names)?;
    if !spec.append_only && key.is_empty() {
        key = (0..spec.schema.fields().len()).collect();
    }
    Ok(key)
}

/// The key of each row as a JSON object of the columns at `key` (one string per row).
pub fn key_strings(rows: &RecordBatch, key: &[usize]) -> Result<Vec<String>> {
    let projected = rows.project(key)?;
    let mut out = Vec::new();
    {
        let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
        w.write(&projected)?;
        w.finish()?;
    }
    let text = String::from_utf8(out).map_err(|e| ConnectorError::Failed(e.to_string()))?;
    Ok(text.lines().filter(|l| !l.is_empty()).map(str::to_string).collect())
}

/// The inserted rows of an append-only batch, each as often as its multiplicity.
pub fn expand_inserts(batch: &DiffBatch) -> Result<RecordBatch> {
    if batch.diffs.is_none() {
        return Ok(batch.data.clone());
    }
    let mut idx = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        for _ in 0..batch.diff(i).max(0) {
            idx.push(i as u32);
        }
    }
    Ok(arrow::compute::take_record_batch(&batch.data, &UInt32Array::from(idx))?)
}

/// Folds one change into `pending` (key → its row after the changes so far, `None`: deleted):
/// an insertion sets the key's row; a retraction deletes the key unless it retracts a row that
/// a later insertion already replaced (the order within and across batches is free).
pub fn fold<K: Hash + Eq, V: PartialEq>(pending: &mut HashMap<K, Option<V>>, key: K, row: V, inserted: bool) {
    if inserted {
        pending.insert(key, Some(row));
        return;
    }
    match pending.get(&key) {
        Some(Some(newer)) if *newer != row => {}
        _ => {
            pending.insert(key, None);
        }
    }
}

/// Rows by key, for sinks that merge on a key (Delta and Iceberg upserts): the last state of
/// each key changed since the last commit, or the whole current result (overwrite of an
/// updating query).
#[derive(Default)]
pub struct Keyed {
    /// The batches the rows are in.
    pub batches: Vec<RecordBatch>,
    /// Key → (its row's full text for matching retractions, batch, row) or None: deleted.
    pub rows: HashMap<String, Option<Versioned>>,
}

/// A row of [`Keyed`].
#[derive(Clone)]
pub struct Versioned {
    /// The whole row as text (a retraction matches the row it retracts by it).
    pub text: String,
    /// (batch, row) in [`Keyed::batches`].
    pub at: (usize, usize),
}

impl PartialEq for Versioned {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Keyed {
    /// Folds the changes of `batch` in, keyed by the columns at `key`.
    pub fn apply(&mut self, batch: &DiffBatch, key: &[usize]) -> Result<()> {
        let data = &batch.data;
        let keys = key_strings(data, key)?;
        let all: Vec<usize> = (0..data.num_columns()).collect();
        let texts = key_strings(data, &all)?;
        let b = self.batches.len();
        self.batches.push(data.clone());
        for (i, (k, text)) in keys.into_iter().zip(texts).enumerate() {
            let d = batch.diff(i);
            if d == 0 {
                continue;
            }
            fold(&mut self.rows, k, Versioned { text, at: (b, i) }, d > 0);
        }
        Ok(())
    }

    /// The current rows.
    pub fn rows(&self, schema: &SchemaRef) -> Result<RecordBatch> {
        let idx: Vec<(usize, usize)> = self.rows.values().flatten().map(|v| v.at).collect();
        let refs: Vec<&RecordBatch> = self.batches.iter().collect();
        if idx.is_empty() {
            return Ok(RecordBatch::new_empty(schema.clone()));
        }
        Ok(arrow::compute::interleave_record_batch(&refs, &idx)?)
    }

    /// Keeps only the current rows, in one batch (the result kept across commits would
    /// otherwise hold every batch it ever saw).
    pub fn compact(&mut self, schema: &SchemaRef) -> Result<()> {
        self.rows.retain(|_, v| v.is_some());
        let rows = self.rows(schema)?;
        // `rows` took the current rows in map order; the same order gives their new places.
        for (i, v) in self.rows.values_mut().flatten().enumerate() {
            v.at = (0, i);
        }
        self.batches = vec![rows];
        Ok(())
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.batches.clear();
        self.rows.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_state_of_each_key_wins_in_any_order() {
        let mut p = HashMap::new();
        // An update: the old row retracted after (or before) the new one is inserted.
        fold(&mut p, "a", 2, true);
        fold(&mut p, "a", 1, false);
        fold(&mut p, "b", 1, false);
        fold(&mut p, "b", 2, true);
        // Inserted, then deleted again.
        fold(&mut p, "c", 5, true);
        fold(&mut p, "c", 5, false);
        // A plain delete.
        fold(&mut p, "d", 7, false);
        assert_eq!(p.get("a"), Some(&Some(2)));
        assert_eq!(p.get("b"), Some(&Some(2)));
        assert_eq!(p.get("c"), Some(&None));
        assert_eq!(p.get("d"), Some(&None));
    }
}
