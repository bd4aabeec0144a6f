//! `console`: prints every change a sink receives, one line per row — for demos and debugging.
//!
//! # Options
//! - `'format'`: `json` (default) or `csv`.
//! - `'target'`: `stdout` (default) or `stderr`.
//! - `'prefix'`: text before each line (default: the sink name and `> `).
//!
//! Lines look like `alerts> +I {"symbol":"A","n":2}`; a retraction is `-D …`. Accepts updating
//! queries (changelog). Guarantees: none beyond "printed once per change"; nothing to recover.
//! Error handling: a closed stdout/stderr fails the sink (visible in its metrics).

use std::io::Write;

use async_trait::async_trait;
use laminar_dataflow::batch::DiffBatch;

use crate::connector::{SinkCapabilities, SinkConnector, SinkSpec};
use crate::format::{Encoder, FormatKind, FormatSpec};
use crate::options::OptionReader;
use crate::registry::SinkFactory;
use crate::{ConnectorError, Result};

/// Registration.
pub const SINK: SinkFactory = SinkFactory {
    name: "console",
    keys: &["format", "target", "prefix", "csv.delimiter", "csv.header"],
    build: build_sink,
};

fn build_sink(
    spec: &SinkSpec,
    r: &mut OptionReader<'_>,
    _ctx: &crate::registry::BuildContext<'_>,
) -> Result<Box<dyn SinkConnector>> {
    let format = FormatSpec::pull(r, FormatKind::Json, &[FormatKind::Json, FormatKind::Csv])?;
    let stderr = r.opt_enum("target", &["stdout", "stderr"])?.is_some_and(|t| t == "stderr");
    let prefix = r.opt_str("prefix").unwrap_or_else(|| format!("{}> ", spec.name));
    let encoder = Encoder::new(format.kind, &spec.schema, false, format.csv_delimiter)?;
    Ok(Box::new(ConsoleSink { encoder, stderr, prefix }))
}

/// Prints rows.
pub struct ConsoleSink {
    encoder: Encoder,
    stderr: bool,
    prefix: String,
}

impl ConsoleSink {
    fn lines(&mut self, batch: &DiffBatch) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let (pos, neg) = split_by_sign(batch)?;
        for (tag, part) in [("+I", pos), ("-D", neg)] {
            let Some(part) = part else { continue };
            for row in self.encoder.encode_rows(&part)? {
                out.extend_from_slice(self.prefix.as_bytes());
                out.extend_from_slice(tag.as_bytes());
                out.push(b' ');
                out.extend_from_slice(&row);
                out.push(b'\n');
            }
        }
        Ok(out)
    }
}

/// Insertions and retractions (as positive multiplicities), each `None` when absent.
fn split_by_sign(batch: &DiffBatch) -> Result<(Option<DiffBatch>, Option<DiffBatch>)> {
    let Some(d) = &batch.diffs else { return Ok((Some(batch.clone()), None)) };
    let pos = arrow::array::BooleanArray::from_iter(d.values().iter().map(|x| Some(*x > 0)));
    let neg = arrow::compute::not(&pos)?;
    let p = batch.filter(&pos).map_err(|e| ConnectorError::Failed(e.to_string()))?;
    let n = batch.filter(&neg).map_err(|e| ConnectorError::Failed(e.to_string()))?;
    let n = match &n.diffs {
        Some(nd) if n.num_rows() > 0 => {
            let flipped = arrow::array::Int64Array::from_iter_values(nd.values().iter().map(|x| -x));
            Some(DiffBatch::with_diffs(n.data.clone(), flipped).map_err(|e| ConnectorError::Failed(e.to_string()))?)
        }
        _ => None,
    };
    Ok(((p.num_rows() > 0).then_some(p), n))
}

#[async_trait]
impl SinkConnector for ConsoleSink {
    fn capabilities(&self) -> SinkCapabilities {
        SinkCapabilities { upsert: false, changelog: true, exactly_once: false, parallel: true }
    }

    async fn write(&mut self, batch: &DiffBatch) -> Result<()> {
        let text = self.lines(batch)?;
        let res = if self.stderr {
            std::io::stderr().lock().write_all(&text)
        } else {
            let mut o = std::io::stdout().lock();
            o.write_all(&text).and_then(|_| o.flush())
        };
        res.map_err(|e| ConnectorError::Failed(format!("console sink cannot print: {e}")))
    }

    fn describe(&self) -> String {
        if self.stderr { "stderr" } else { "stdout" }.into()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn prints_inserts_and_retractions() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let spec = SinkSpec {
            name: "s".into(),
            schema: schema.clone(),
            append_only: false,
            key_columns: vec![],
            options: Default::default(),
            part: crate::Split::WHOLE,
        };
        let mut r = OptionReader::new("console", Default::default());
        let sink = build_sink(&spec, &mut r, &crate::BuildContext::without_callbacks()).expect("build");
        assert!(sink.capabilities().changelog);
        let mut c = ConsoleSink {
            encoder: Encoder::new(FormatKind::Json, &schema, false, b',').expect("e"),
            stderr: false,
            prefix: "s> ".into(),
        };
        let data = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2]))]).expect("b");
        let b = DiffBatch::with_diffs(data, Int64Array::from(vec![1, -1])).expect("d");
        assert_eq!(String::from_utf8(c.lines(&b).expect("lines")).expect("utf8"), "s> +I {\"n\":1}\ns> -D {\"n\":2}\n");
    }
}
