//! Wiring of the generator into the source framework: rate limiting and position.

use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;

use super::generate::ColumnGen;
use super::nexmark::{NexmarkGen, Table};
use crate::connector::{Poll, SourceCapabilities, SourceChunk, SourceConnector, SourceSpec, Split};
use crate::options::OptionReader;
use crate::registry::SourceFactory;
use crate::{ConnectorError, Result};

/// Registration.
pub const SOURCE: SourceFactory = SourceFactory {
    name: "datagen",
    keys: &["rows_per_second", "max_rows", "seed", "batch_size", "flavour", "nexmark.table", "fields.<column>.kind"],
    build,
};

enum Flavour {
    Columns(Vec<ColumnGen>),
    Nexmark(NexmarkGen),
}

/// The generator source.
pub struct DatagenSource {
    schema: SchemaRef,
    flavour: Flavour,
    seed: u64,
    rows_per_second: u64,
    max_rows: Option<u64>,
    batch_size: u64,
    /// Rows (events, for Nexmark) produced so far: the position.
    produced: u64,
    /// Rows produced when the rate clock started.
    clock: Option<(Instant, u64)>,
    now_ms: i64,
    /// The rows this process keeps (a cluster: every `count`-th row, numbered over the whole
    /// input; the rate and `max_rows` are the whole input's).
    split: Split,
}

fn build(
    spec: &SourceSpec,
    r: &mut OptionReader<'_>,
    _ctx: &crate::registry::BuildContext<'_>,
) -> Result<Box<dyn crate::SourceConnector>> {
    let rows_per_second = r.opt_u64("rows_per_second")?.unwrap_or(1000);
    let max_rows = r.opt_u64("max_rows")?;
    let seed = r.opt_u64("seed")?.unwrap_or(0);
    let default_batch = if rows_per_second == 0 { 8192 } else { (rows_per_second / 10).clamp(1, 8192) };
    let batch_size = r.opt_u64("batch_size")?.unwrap_or(default_batch).max(1);
    let flavour = match r.opt_enum("flavour", &["plain", "nexmark"])?.as_deref() {
        Some("nexmark") => {
            let t = r.required_str("nexmark.table")?;
            let table = Table::parse(&t).ok_or_else(|| r.bad("nexmark.table", &t, "'person', 'auction' or 'bid'"))?;
            let g = NexmarkGen::new(table, seed, rows_per_second).with_split(spec.split);
            // Checks the columns now (CREATE), not at the first poll.
            g.generate(&spec.schema, 0, 0, 0)?;
            Flavour::Nexmark(g)
        }
        _ => {
            let cols = spec
                .schema
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| ColumnGen::pull(f, i, r, rows_per_second))
                .collect::<Result<Vec<_>>>()?;
            if let Some((k, _)) = r.take_prefixed("fields.").into_iter().next() {
                let col = k.split('.').next().unwrap_or_default().to_string();
                return Err(ConnectorError::Config(format!(
                    "option 'fields.{k}' of connector 'datagen' refers to {}",
                    if spec.schema.fields().iter().any(|f| f.name().eq_ignore_ascii_case(&col)) {
                        format!("an unknown setting of column '{col}' (settings: kind, min, max, start, step, length, values, null_rate, jitter_ms)")
                    } else {
                        format!("column '{col}', which the source does not have")
                    }
                )));
            }
            Flavour::Columns(cols)
        }
    };
    Ok(Box::new(DatagenSource {
        schema: spec.schema.clone(),
        flavour,
        seed,
        rows_per_second,
        max_rows,
        batch_size,
        produced: 0,
        clock: None,
        // A cluster's processes share process 0's start time; alone: the time of `open`.
        now_ms: spec.split.clock_ms.unwrap_or(0),
        split: spec.split,
    }))
}

impl DatagenSource {
    fn generate(&self, first: u64, n: u64) -> Result<RecordBatch> {
        match &self.flavour {
            Flavour::Columns(cols) => {
                let arrays = cols
                    .iter()
                    .map(|c| c.generate(self.seed, first, n as usize, self.now_ms))
                    .collect::<Result<Vec<ArrayRef>>>()?;
                let batch = RecordBatch::try_new_with_options(
                    self.schema.clone(),
                    arrays,
                    &RecordBatchOptions::new().with_row_count(Some(n as usize)),
                )?;
                if self.split.count <= 1 {
                    return Ok(batch);
                }
                // Rows are numbered over the whole input, so the parts are disjoint and cover it.
                let keep: arrow::array::UInt32Array =
                    (0..n).filter(|i| self.split.owns(first + i)).map(|i| i as u32).collect();
                Ok(arrow::compute::take_record_batch(&batch, &keep)?)
            }
            Flavour::Nexmark(g) => g.generate(&self.schema, first, n, self.now_ms),
        }
    }
}

#[async_trait]
impl SourceConnector for DatagenSource {
    fn capabilities(&self) -> SourceCapabilities {
        SourceCapabilities {
            replayable: true,
            changelog: false,
            bounded: self.max_rows.is_some(),
            watermarks: false,
            key_from_peer: false,
            partitioned: true,
        }
    }

    async fn open(&mut self) -> Result<()> {
        if self.now_ms == 0 {
            self.now_ms = chrono::Utc::now().timestamp_millis();
        }
        self.clock = None;
        Ok(())
    }

    async fn poll(&mut self) -> Result<Poll> {
        let mut n = self.batch_size;
        if let Some(max) = self.max_rows {
            if self.produced >= max {
                return Ok(Poll::Finished);
            }
            n = n.min(max - self.produced);
        }
        if self.rows_per_second > 0 {
            let (start, at) = *self.clock.get_or_insert((Instant::now(), self.produced));
            let allowed = at + (start.elapsed().as_secs_f64() * self.rows_per_second as f64) as u64;
            if allowed <= self.produced {
                let wait = Duration::from_secs_f64(1.0 / self.rows_per_second as f64).max(Duration::from_millis(1));
                return Ok(Poll::Idle(wait.min(Duration::from_millis(50))));
            }
            n = n.min(allowed - self.produced);
        }
        let batch = self.generate(self.produced, n)?;
        self.produced += n;
        Ok(Poll::Data(SourceChunk::insert(batch)))
    }

    fn checkpoint(&self) -> Result<serde_json::Value> {
        Ok(serde_json::json!({ "produced": self.produced, "start_ms": self.now_ms }))
    }

    fn restore(&mut self, position: &serde_json::Value) -> Result<()> {
        self.produced =
            position["produced"].as_u64().ok_or_else(|| ConnectorError::Failed("bad datagen position".into()))?;
        self.now_ms = position["start_ms"].as_i64().unwrap_or(0);
        Ok(())
    }

    fn describe(&self) -> String {
        match &self.flavour {
            Flavour::Columns(_) => "datagen".into(),
            Flavour::Nexmark(g) => format!("datagen nexmark {:?}", g.table()).to_lowercase(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;
    use crate::options::Options;

    fn spec(opts: &[(&str, &str)]) -> SourceSpec {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]));
        let mut options: Options = opts.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        options.insert("connector".into(), "datagen".into());
        SourceSpec {
            name: "g".into(),
            schema,
            primary_key: vec![],
            split: Split::WHOLE,
            watermark_column: None,
            watermark_delay_ms: 0,
            options,
        }
    }

    async fn collect(spec: &SourceSpec) -> Vec<RecordBatch> {
        let mut s = crate::build_source(spec, &crate::BuildContext::without_callbacks()).expect("build").connector;
        s.open().await.expect("open");
        let mut out = Vec::new();
        loop {
            match s.poll().await.expect("poll") {
                Poll::Data(c) => out.extend(c.changes.into_iter().map(|c| match c {
                    crate::Change::Insert(b) => b,
                    crate::Change::Delete(_) | crate::Change::Clear => panic!("datagen only inserts"),
                })),
                Poll::Idle(d) => tokio::time::sleep(d).await,
                Poll::Finished => return out,
            }
        }
    }

    /// The parts of a cluster's processes are disjoint and together the one-process input,
    /// row for row (default timestamps included), whatever their batches.
    #[tokio::test]
    async fn the_splits_of_a_cluster_partition_the_rows() {
        let o = [("rows_per_second", "0"), ("max_rows", "1000"), ("seed", "3"), ("fields.id.kind", "sequence")];
        // One process that started when the cluster did.
        let mut alone = spec(&o);
        alone.split.clock_ms = Some(1_700_000_000_000);
        let whole = collect(&alone).await;
        let whole = arrow::compute::concat_batches(&whole[0].schema(), &whole).expect("concat");
        let mut parts = Vec::new();
        for index in 0..3 {
            let mut sp = spec(&o);
            sp.split = Split { index, count: 3, clock_ms: Some(1_700_000_000_000) };
            sp.options.insert("batch_size".into(), (100 + 77 * index).to_string());
            let got = collect(&sp).await;
            let got = arrow::compute::concat_batches(&got[0].schema(), &got).expect("concat");
            let ids = got.column(0).as_any().downcast_ref::<arrow::array::Int64Array>().expect("i64");
            assert!(ids.values().iter().all(|id| id % 3 == index as i64), "process {index} keeps its rows");
            parts.push(got);
        }
        let mut all = arrow::compute::concat_batches(&whole.schema(), &parts).expect("concat");
        let order = arrow::compute::sort_to_indices(all.column(0), None, None).expect("sort");
        all = arrow::compute::take_record_batch(&all, &order).expect("take");
        // Default timestamps too: every process starts from the cluster's clock.
        assert_eq!(all, whole);
    }

    #[tokio::test]
    async fn same_seed_same_rows() {
        let o = [
            ("rows_per_second", "0"),
            ("max_rows", "1000"),
            ("seed", "9"),
            ("batch_size", "300"),
            ("fields.id.kind", "sequence"),
            ("fields.v.min", "10"),
            ("fields.v.max", "20"),
            ("fields.ts.start", "2024-01-01T00:00:00Z"),
            ("fields.ts.step", "10"),
        ];
        let a = collect(&spec(&o)).await;
        let b = collect(&spec(&o)).await;
        assert_eq!(a, b);
        let all = arrow::compute::concat_batches(&a[0].schema(), &a).expect("concat");
        assert_eq!(all.num_rows(), 1000);
        let ids = arrow::compute::cast(all.column(0), &DataType::Int64).expect("ids");
        let ids = ids.as_any().downcast_ref::<arrow::array::Int64Array>().expect("i64");
        assert_eq!(ids.values().to_vec(), (0..1000).collect::<Vec<i64>>());
        let v = all.column(1).as_any().downcast_ref::<arrow::array::Float64Array>().expect("f64");
        assert!(v.values().iter().all(|x| (10.0..20.0).contains(x)));
        let ts = all.column(3).as_any().downcast_ref::<arrow::array::TimestampMillisecondArray>().expect("ts");
        assert_eq!(ts.value(1) - ts.value(0), 10);
        assert_eq!(ts.value(0), 1_704_067_200_000);
        let other = collect(&spec(&[("rows_per_second", "0"), ("max_rows", "1000"), ("seed", "10")])).await;
        assert_ne!(other[0].column(1), a[0].column(1), "another seed gives other values");
    }

    #[tokio::test]
    async fn rate_limit_holds() {
        let t = Instant::now();
        let rows: usize = collect(&spec(&[("rows_per_second", "2000"), ("max_rows", "500")]))
            .await
            .iter()
            .map(RecordBatch::num_rows)
            .sum();
        assert_eq!(rows, 500);
        let secs = t.elapsed().as_secs_f64();
        assert!(secs > 0.2 && secs < 2.0, "500 rows at 2000/s took {secs} s");
    }

    #[test]
    fn bad_options_name_the_key() {
        let err = |o: &[(&str, &str)]| {
            crate::build_source(&spec(o), &crate::BuildContext::without_callbacks()).err().expect("error").to_string()
        };
        assert!(err(&[("rows_per_second", "fast")]).contains("'rows_per_second'"));
        assert!(err(&[("fields.nope.kind", "sequence")]).contains("column 'nope'"));
        assert!(err(&[("fields.v.colour", "red")]).contains("unknown setting of column 'v'"));
        assert!(err(&[("fields.v.kind", "zigzag")]).contains("'fields.v.kind'"));
        assert!(err(&[("row_per_second", "1")]).contains("did you mean 'rows_per_second'"));
        assert!(err(&[("flavour", "nexmark")]).contains("requires option 'nexmark.table'"));
        assert!(err(&[("flavour", "nexmark"), ("nexmark.table", "bid")]).contains("no column 'id'"));
    }
}
