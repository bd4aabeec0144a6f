//! The sink side of callback connectors: batching, the `op` column, retries.

use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use laminar_dataflow::batch::DiffBatch;

use crate::connector::{SinkCapabilities, SinkConnector, SinkSpec};
use crate::format::{Encoder, FormatKind};
use crate::options::OptionReader;
use crate::{ConnectorError, Result};

/// Hands batches to user code (a Python function, a Rust closure).
#[async_trait]
pub trait Deliver: Send {
    /// Called once when the sink starts.
    async fn open(&mut self) -> Result<()> {
        Ok(())
    }

    /// Delivers one batch; `Err` carries the failure as text (e.g. a Python traceback).
    async fn deliver(&mut self, batch: RecordBatch) -> std::result::Result<(), String>;

    /// Called once when the sink stops.
    async fn close(&mut self) -> Result<()> {
        Ok(())
    }

    /// A short description for metrics.
    fn describe(&self) -> String;
}

/// Options of a callback sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// At most this many rows per call (None: one call per epoch).
    pub batch_size: Option<usize>,
    /// How long rows may wait for a full batch.
    pub max_delay: Duration,
    /// Retries of a failing call.
    pub retries: u32,
}

impl Options {
    /// Reads `'batch_size'`, `'max_delay_ms'` and `'retries'`.
    pub fn pull(r: &mut OptionReader<'_>) -> Result<Self> {
        let batch_size = match r.opt_u64("batch_size")? {
            Some(0) => return Err(r.bad("batch_size", "0", "a positive number of rows")),
            Some(n) => Some(n as usize),
            None => None,
        };
        let max_delay = Duration::from_millis(r.opt_u64("max_delay_ms")?.unwrap_or(0));
        let retries = r.opt_u64("retries")?.unwrap_or(3).min(u32::MAX as u64) as u32;
        Ok(Self { batch_size, max_delay, retries })
    }
}

/// A sink that hands each epoch's rows (or batches of `batch_size` rows) to a [`Deliver`].
pub struct CallbackSink {
    name: String,
    options: Options,
    deliver: Box<dyn Deliver>,
    /// Prepares rows: multiplicities expanded, `op` column for updating queries.
    rows: Encoder,
    held: Vec<RecordBatch>,
    held_rows: usize,
    held_since: Option<Instant>,
}

impl CallbackSink {
    /// A sink for `spec` delivering through `deliver`.
    pub fn new(spec: &SinkSpec, name: String, options: Options, deliver: Box<dyn Deliver>) -> Result<Self> {
        let rows = Encoder::new(FormatKind::Json, &spec.schema, !spec.append_only, b',')?;
        Ok(Self { name, options, deliver, rows, held: Vec::new(), held_rows: 0, held_since: None })
    }

    /// Schema of the delivered batches.
    pub fn schema(&self) -> SchemaRef {
        self.rows.schema().clone()
    }

    async fn call(&mut self, batch: RecordBatch) -> Result<()> {
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            match self.deliver.deliver(batch.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt >= self.options.retries => {
                    return Err(ConnectorError::Failed(format!(
                        "Python sink '{}' failed after {} attempt{}: {e}",
                        self.name,
                        attempt + 1,
                        if attempt == 0 { "" } else { "s" }
                    )))
                }
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Delivers `n` held rows (all of them when `n` is None) as one batch.
    async fn deliver_held(&mut self, n: Option<usize>) -> Result<()> {
        if self.held_rows == 0 {
            return Ok(());
        }
        let all = arrow::compute::concat_batches(&self.schema(), &self.held)?;
        let n = n.unwrap_or(all.num_rows()).min(all.num_rows());
        let rest = all.slice(n, all.num_rows() - n);
        self.held = if rest.num_rows() > 0 { vec![rest] } else { Vec::new() };
        self.held_rows = all.num_rows() - n;
        if self.held_rows == 0 {
            self.held_since = None;
        }
        self.call(all.slice(0, n)).await
    }

    async fn deliver_due(&mut self, end_of_epoch: bool) -> Result<()> {
        let due = self.held_since.is_some_and(|t| t.elapsed() >= self.options.max_delay);
        if self.held_rows > 0 && (due || (end_of_epoch && self.options.batch_size.is_none())) {
            self.deliver_held(None).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl SinkConnector for CallbackSink {
    fn capabilities(&self) -> SinkCapabilities {
        SinkCapabilities { upsert: false, changelog: true, exactly_once: false, parallel: true }
    }

    async fn open(&mut self) -> Result<()> {
        self.deliver.open().await
    }

    async fn write(&mut self, batch: &DiffBatch) -> Result<()> {
        let rows = self.rows.prepare(batch)?;
        if rows.num_rows() == 0 {
            return Ok(());
        }
        self.held_rows += rows.num_rows();
        self.held.push(rows);
        self.held_since.get_or_insert_with(Instant::now);
        if let Some(size) = self.options.batch_size {
            while self.held_rows >= size {
                self.deliver_held(Some(size)).await?;
            }
        }
        Ok(())
    }

    async fn commit(&mut self, _epoch: u64) -> Result<()> {
        self.deliver_due(true).await
    }

    async fn abort(&mut self, _epoch: u64) -> Result<()> {
        self.held.clear();
        self.held_rows = 0;
        self.held_since = None;
        Ok(())
    }

    fn tick_interval(&self) -> Option<Duration> {
        self.options.batch_size.map(|_| self.options.max_delay.max(Duration::from_millis(1)))
    }

    async fn tick(&mut self) -> Result<()> {
        self.deliver_due(false).await
    }

    async fn close(&mut self) -> Result<()> {
        let flushed = self.deliver_held(None).await;
        let closed = self.deliver.close().await;
        flushed.and(closed)
    }

    fn describe(&self) -> String {
        self.deliver.describe()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use parking_lot::Mutex;

    use super::*;

    struct Collect {
        got: Arc<Mutex<Vec<RecordBatch>>>,
        fail_first: usize,
    }

    #[async_trait]
    impl Deliver for Collect {
        async fn deliver(&mut self, batch: RecordBatch) -> std::result::Result<(), String> {
            if self.fail_first > 0 {
                self.fail_first -= 1;
                return Err("boom".into());
            }
            self.got.lock().push(batch);
            Ok(())
        }

        fn describe(&self) -> String {
            "collect".into()
        }
    }

    fn spec(append_only: bool) -> SinkSpec {
        SinkSpec {
            name: "s".into(),
            schema: Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)])),
            append_only,
            key_columns: vec![],
            options: Default::default(),
            part: crate::Split::WHOLE,
        }
    }

    fn batch(spec: &SinkSpec, v: Vec<i64>, d: Vec<i64>) -> DiffBatch {
        let data = RecordBatch::try_new(spec.schema.clone(), vec![Arc::new(Int64Array::from(v))]).expect("b");
        DiffBatch::with_diffs(data, Int64Array::from(d)).expect("d")
    }

    #[tokio::test]
    async fn batches_per_epoch_or_by_size_with_op_column_and_retries() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let s = spec(false);
        let opts = Options { batch_size: None, max_delay: Duration::ZERO, retries: 2 };
        let mut sink = CallbackSink::new(&s, "c".into(), opts, Box::new(Collect { got: got.clone(), fail_first: 2 }))
            .expect("sink");
        sink.write(&batch(&s, vec![1, 2], vec![1, -1])).await.expect("w");
        sink.write(&batch(&s, vec![3], vec![1])).await.expect("w");
        sink.commit(1).await.expect("commit after two retries");
        let b = got.lock()[0].clone();
        assert_eq!(b.num_rows(), 3, "one call per epoch");
        let ops = b.column(1).as_any().downcast_ref::<StringArray>().expect("op");
        assert_eq!(ops.iter().flatten().collect::<Vec<_>>(), vec!["insert", "delete", "insert"]);
        // Batch size 2: five rows become calls of 2, 2 and (at the epoch's end) 1.
        let got = Arc::new(Mutex::new(Vec::new()));
        let s = spec(true);
        let opts = Options { batch_size: Some(2), max_delay: Duration::ZERO, retries: 0 };
        let mut sink = CallbackSink::new(&s, "c".into(), opts, Box::new(Collect { got: got.clone(), fail_first: 0 }))
            .expect("sink");
        sink.write(&batch(&s, vec![1, 2, 3, 4, 5], vec![1; 5])).await.expect("w");
        sink.commit(1).await.expect("c");
        let sizes: Vec<usize> = got.lock().iter().map(RecordBatch::num_rows).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
        assert_eq!(got.lock()[0].num_columns(), 1, "no op column for an append-only query");
        // A callback that keeps failing fails the sink, naming it.
        let opts = Options { batch_size: None, max_delay: Duration::ZERO, retries: 1 };
        let mut sink = CallbackSink::new(&s, "bad".into(), opts, Box::new(Collect { got, fail_first: 10 })).expect("s");
        sink.write(&batch(&s, vec![1], vec![1])).await.expect("w");
        let err = sink.commit(1).await.expect_err("fails");
        assert_eq!(err.to_string(), "Python sink 'bad' failed after 2 attempts: boom");
    }
}
