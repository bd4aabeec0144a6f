//! Dead letters: records a source could not decode, with the raw payload and the reason.
//!
//! The target is chosen with the `'dlq'` option: by default every source with a connector keeps
//! its dead letters in a queryable collection named `<source>_errors` (the most recent
//! `'dlq.max_rows'`, default 10 000); `'dlq' = 'file:/path/errors.jsonl'` appends them as JSON
//! lines to a file instead. Either way they are counted in the source's and the pipeline's
//! dropped-event metrics; a malformed record never stops the pipeline and never vanishes silently.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::options::OptionReader;
use crate::{ConnectorError, Result};

/// One record that could not be decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// Where it came from (file and line, topic/partition/offset, peer address, …).
    pub position: String,
    /// Why it was rejected.
    pub reason: String,
    /// The raw bytes.
    pub payload: Vec<u8>,
    /// When it was rejected (ms since the epoch).
    pub at_ms: i64,
}

impl DeadLetter {
    /// A dead letter stamped with the current time.
    pub fn new(position: impl Into<String>, reason: impl Into<String>, payload: &[u8]) -> Self {
        Self {
            position: position.into(),
            reason: reason.into(),
            payload: payload.to_vec(),
            at_ms: chrono::Utc::now().timestamp_millis(),
        }
    }
}

/// Where a source's dead letters go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DlqTarget {
    /// The queryable `<source>_errors` collection, keeping the most recent `max_rows`.
    Collection {
        /// Rows kept.
        max_rows: usize,
    },
    /// JSON lines appended to a file.
    File(PathBuf),
}

impl DlqTarget {
    /// Reads `'dlq'` and `'dlq.max_rows'`.
    pub fn pull(r: &mut OptionReader<'_>) -> Result<Self> {
        let max_rows = r.opt_u64("dlq.max_rows")?.unwrap_or(10_000) as usize;
        match r.opt_str("dlq") {
            None => Ok(DlqTarget::Collection { max_rows }),
            Some(v) if v.eq_ignore_ascii_case("collection") => Ok(DlqTarget::Collection { max_rows }),
            Some(v) => match v.strip_prefix("file:") {
                Some(p) if !p.trim().is_empty() => Ok(DlqTarget::File(PathBuf::from(p.trim()))),
                _ => Err(ConnectorError::Config(format!(
                    "option 'dlq' must be 'collection' or 'file:/path/to/errors.jsonl', got '{v}'"
                ))),
            },
        }
    }

    /// Appends dead letters to the file target.
    pub fn append_to_file(path: &std::path::Path, source: &str, letters: &[DeadLetter]) -> Result<()> {
        let mut out = Vec::new();
        for l in letters {
            let line = serde_json::json!({
                "source": source,
                "position": l.position,
                "reason": l.reason,
                "payload": String::from_utf8_lossy(&l.payload),
                "at_ms": l.at_ms,
            });
            out.extend_from_slice(line.to_string().as_bytes());
            out.push(b'\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| ConnectorError::Failed(format!("cannot open dead-letter file {}: {e}", path.display())))?;
        f.write_all(&out)
            .map_err(|e| ConnectorError::Failed(format!("cannot write dead-letter file {}: {e}", path.display())))
    }
}

/// Schema of a `<source>_errors` collection.
pub fn collection_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("at", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        Field::new("position", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("payload", DataType::Utf8, false),
        Field::new("raw", DataType::Binary, false),
    ]))
}

/// Dead letters as a batch of [`collection_schema`].
pub fn to_batch(letters: &[DeadLetter]) -> Result<RecordBatch> {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from_iter_values(letters.iter().map(|l| l.at_ms))),
        Arc::new(StringArray::from_iter_values(letters.iter().map(|l| l.position.as_str()))),
        Arc::new(StringArray::from_iter_values(letters.iter().map(|l| l.reason.as_str()))),
        Arc::new(StringArray::from_iter_values(letters.iter().map(|l| String::from_utf8_lossy(&l.payload)))),
        Arc::new(BinaryArray::from_iter_values(letters.iter().map(|l| l.payload.as_slice()))),
    ];
    Ok(RecordBatch::try_new(collection_schema(), cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Options;

    #[test]
    fn dlq_option_parses() {
        let mut o = Options::new();
        o.insert("dlq".into(), "file:/tmp/x.jsonl".into());
        let mut r = OptionReader::new("file", o);
        assert_eq!(DlqTarget::pull(&mut r).expect("dlq"), DlqTarget::File("/tmp/x.jsonl".into()));
        let mut o = Options::new();
        o.insert("dlq".into(), "kafka".into());
        let mut r = OptionReader::new("file", o);
        assert!(DlqTarget::pull(&mut r).expect_err("bad").to_string().contains("'dlq'"));
    }

    #[test]
    fn file_target_appends_json_lines() {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("e.jsonl");
        let l = DeadLetter::new("f:1", "bad", b"{x");
        DlqTarget::append_to_file(&p, "s", &[l.clone(), l]).expect("write");
        let text = std::fs::read_to_string(&p).expect("read");
        assert_eq!(text.lines().count(), 2);
        let v: serde_json::Value = serde_json::from_str(text.lines().next().expect("line")).expect("json");
        assert_eq!(v["payload"], "{x");
        assert_eq!(v["source"], "s");
        assert_eq!(to_batch(&[DeadLetter::new("p", "r", b"z")]).expect("b").num_rows(), 1);
    }
}
