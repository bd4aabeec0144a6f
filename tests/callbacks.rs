//! Sources and sinks registered by the program (`connector = 'python'`), through the Rust API:
//! closures standing in for Python code, run by the same framework.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use laminardb::connectors::callback::{Deliver, SinkBuilder, SourceBuilder};
use laminardb::connectors::{ConnectorError, Poll, SourceCapabilities, SourceChunk, SourceConnector};
use laminardb::{codes, Database};
use parking_lot::Mutex;

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]))
}

/// Counts to `n` in batches of 100, then fails if `fail` is set.
struct Counter {
    next: i64,
    n: i64,
    fail: bool,
}

#[async_trait::async_trait]
impl SourceConnector for Counter {
    fn capabilities(&self) -> SourceCapabilities {
        SourceCapabilities::default()
    }

    async fn poll(&mut self) -> Result<Poll, ConnectorError> {
        if self.next >= self.n {
            return if self.fail { Err(ConnectorError::Failed("counter broke".into())) } else { Ok(Poll::Finished) };
        }
        let end = (self.next + 100).min(self.n);
        let batch = RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from_iter_values(self.next..end))])?;
        self.next = end;
        Ok(Poll::Data(SourceChunk::insert(batch)))
    }

    fn describe(&self) -> String {
        "counter".into()
    }
}

fn counter(n: i64, fail: bool) -> SourceBuilder {
    Arc::new(move |_spec| Ok(Box::new(Counter { next: 0, n, fail }) as Box<dyn SourceConnector>))
}

struct Collect(Arc<Mutex<Vec<RecordBatch>>>);

#[async_trait::async_trait]
impl Deliver for Collect {
    async fn deliver(&mut self, batch: RecordBatch) -> Result<(), String> {
        self.0.lock().push(batch);
        Ok(())
    }

    fn describe(&self) -> String {
        "collect".into()
    }
}

fn collect(into: Arc<Mutex<Vec<RecordBatch>>>) -> SinkBuilder {
    Arc::new(move |_spec| Ok(Box::new(Collect(into.clone())) as Box<dyn Deliver>))
}

#[test]
fn registered_source_and_sink_move_rows_and_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("dir");
    let got = Arc::new(Mutex::new(Vec::new()));
    {
        let db = Database::open(dir.path()).expect("open");
        db.register_source_callback("nums", schema(), None, &[], counter(1000, false), false).expect("source");
        db.register_sink_callback("out_cb", collect(got.clone()), false).expect("sink");
        let err = db
            .execute("CREATE SINK bad AS SELECT v FROM nums WITH (connector = 'python', 'name' = 'missing')")
            .expect_err("unknown callback");
        assert_eq!(err.code(), codes::CONNECTOR_CONFIG);
        assert!(err.to_string().contains("no Python sink named 'missing' is registered (registered: out_cb)"), "{err}");
        db.execute(
            "CREATE SINK evens AS SELECT v FROM nums WHERE v % 2 = 0 WITH (connector = 'python', 'name' = 'out_cb')",
        )
        .expect("sink");
        let again = db.register_sink_callback("out_cb", collect(got.clone()), false).expect_err("twice");
        assert!(again.to_string().contains("already registered"), "{again}");
        db.start().expect("start");
        wait_for("the counter", || {
            db.source_metrics("nums").and_then(|m| m.connector_state).as_deref() == Some("finished")
        });
        db.flush().expect("flush");
        db.shutdown().expect("shutdown");
    }
    let sum: i64 = got
        .lock()
        .iter()
        .map(|b| b.column(0).as_any().downcast_ref::<Int64Array>().expect("i64").values().iter().sum::<i64>())
        .sum();
    assert_eq!(sum, (0..1000).filter(|v| v % 2 == 0).sum::<i64>());
    // The catalog keeps both; the program registers its code again.
    let db = Database::open(dir.path()).expect("reopen");
    assert_eq!(db.sources().len(), 1);
    let err = db.start().expect_err("nothing registered");
    assert!(
        err.to_string().contains("register_sink('out_cb'") || err.to_string().contains("register_source('nums'"),
        "{err}"
    );
    db.register_source_callback("nums", schema(), None, &[], counter(10, false), false).expect("bind");
    db.register_sink_callback("out_cb", collect(got.clone()), false).expect("bind sink");
    let wrong = Arc::new(Schema::new(vec![Field::new("w", DataType::Utf8, true)]));
    assert!(db.register_source_callback("nums", wrong, None, &[], counter(1, false), true).is_err());
    db.start().expect("start after registering");
    db.shutdown().expect("shutdown");
}

#[test]
fn a_failing_source_is_raised_by_shutdown_and_by_a_waiting_subscription() {
    let db = common::db_with_workers(1);
    db.register_source_callback("bad", schema(), None, &[], counter(150, true), false).expect("source");
    db.register_source_callback("good", schema(), None, &[], counter(300, false), false).expect("source");
    db.execute("CREATE STREAM s AS SELECT v FROM bad").expect("stream");
    let sub = db.subscribe("s").expect("sub");
    db.start().expect("start");
    let mut rows = 0;
    let err = loop {
        match sub.next_timeout(Duration::from_secs(10)) {
            Ok(c) => rows += c.batch.num_rows(),
            Err(e) => break e,
        }
    };
    assert_eq!(rows, 150, "everything before the failure arrives");
    assert_eq!(err.code(), codes::CONNECTOR_FAILED, "{err}");
    assert!(err.to_string().contains("counter broke"), "{err}");
    wait_for("good", || db.source_metrics("good").is_some_and(|m| m.total_events == 300));
    let err = db.shutdown().expect_err("shutdown reports the failure");
    assert!(err.to_string().contains("source 'bad' failed: counter broke"), "{err}");
}
