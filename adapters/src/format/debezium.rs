//! Debezium JSON change envelopes → inserts and deletes on a PRIMARY KEY source.
//!
//! Accepted shapes: `{"before": …, "after": …, "op": "c|r|u|d"}` and the same wrapped in
//! `{"schema": …, "payload": {…}}`. `c`/`r` insert `after`; `u` deletes `before`'s key (when
//! present) and inserts `after`; `d` deletes `before`'s key. Tombstones (empty or `null`
//! payloads) carry no change and are skipped.

use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::json::JsonDecoder;
use crate::connector::Change;
use crate::{ConnectorError, Result};

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    before: Option<&'a RawValue>,
    #[serde(borrow, default)]
    after: Option<&'a RawValue>,
    #[serde(default)]
    op: Option<String>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

/// Decodes Debezium envelopes.
pub struct DebeziumDecoder {
    rows: JsonDecoder,
    keys: JsonDecoder,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Insert,
    Delete,
}

fn present(v: Option<&RawValue>) -> Option<&RawValue> {
    v.filter(|r| r.get().trim() != "null")
}

impl DebeziumDecoder {
    /// Needs the source's primary key (deletes are applied by key).
    pub fn new(schema: SchemaRef, primary_key: &[String]) -> Result<Self> {
        if primary_key.is_empty() {
            return Err(ConnectorError::Config(
                "format 'debezium' needs a PRIMARY KEY on the source (updates and deletes are applied by key)".into(),
            ));
        }
        let key_fields: Vec<_> =
            primary_key.iter().filter_map(|k| schema.fields().iter().find(|f| f.name() == k).cloned()).collect();
        let keys = JsonDecoder::new(Arc::new(Schema::new(key_fields)))?;
        Ok(Self { rows: JsonDecoder::new(schema)?, keys })
    }

    /// Decodes envelopes into ordered runs of inserts and deletes.
    pub fn decode(&mut self, payloads: &[&[u8]]) -> (Vec<Change>, Vec<(usize, String)>) {
        let mut ops: Vec<(Kind, usize, &[u8])> = Vec::with_capacity(payloads.len());
        let mut failures = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            let text = p.trim_ascii();
            if text.is_empty() || text == b"null" {
                continue; // tombstone
            }
            let env: Envelope<'_> = match serde_json::from_slice(text) {
                Ok(e) => e,
                Err(e) => {
                    failures.push((i, format!("invalid Debezium envelope: {e}")));
                    continue;
                }
            };
            let env = match (env.op.is_none(), present(env.payload)) {
                (true, Some(inner)) => match serde_json::from_str::<Envelope<'_>>(inner.get()) {
                    Ok(e) => e,
                    Err(e) => {
                        failures.push((i, format!("invalid Debezium payload: {e}")));
                        continue;
                    }
                },
                _ => env,
            };
            let (before, after) = (present(env.before), present(env.after));
            match env.op.as_deref() {
                Some("c") | Some("r") => match after {
                    Some(a) => ops.push((Kind::Insert, i, a.get().as_bytes())),
                    None => failures.push((i, "Debezium create/read without 'after'".into())),
                },
                Some("u") => match after {
                    Some(a) => {
                        if let Some(b) = before {
                            ops.push((Kind::Delete, i, b.get().as_bytes()));
                        }
                        ops.push((Kind::Insert, i, a.get().as_bytes()));
                    }
                    None => failures.push((i, "Debezium update without 'after'".into())),
                },
                Some("d") => match before {
                    Some(b) => ops.push((Kind::Delete, i, b.get().as_bytes())),
                    None => failures.push((i, "Debezium delete without 'before'".into())),
                },
                Some(other) => failures.push((i, format!("unknown Debezium op '{other}' (expected c, r, u or d)"))),
                None => failures.push((i, "not a Debezium envelope: no 'op'".into())),
            }
        }
        let mut changes = Vec::new();
        let mut start = 0;
        while start < ops.len() {
            let kind = ops[start].0;
            let end = ops[start..].iter().position(|o| o.0 != kind).map_or(ops.len(), |n| start + n);
            let items: Vec<&[u8]> = ops[start..end].iter().map(|o| o.2).collect();
            let decoder = if kind == Kind::Insert { &mut self.rows } else { &mut self.keys };
            let (batch, fails) = decoder.decode(&items);
            failures.extend(fails.into_iter().map(|(j, reason)| (ops[start + j].1, reason)));
            if let Some(b) = batch {
                changes.push(if kind == Kind::Insert { Change::Insert(b) } else { Change::Delete(b) });
            }
            start = end;
        }
        failures.sort_by_key(|f| f.0);
        failures.dedup_by_key(|f| f.0);
        (changes, failures)
    }
}
