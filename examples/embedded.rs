//! Embedding LaminarDB in a Rust program: a trades feed inserted from the program, a filtered
//! stream, an incremental aggregate, a live subscription, and ad-hoc queries over the results.
//!
//! Run with `cargo run --example embedded`.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use laminardb::{Database, Result};

fn main() -> Result<()> {
    let db = Database::open(":memory:")?;
    db.execute(
        "CREATE SOURCE trades (symbol VARCHAR NOT NULL, price DOUBLE, volume BIGINT, ts TIMESTAMP, \
         WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)",
    )?;
    db.execute("CREATE STREAM big_trades AS SELECT symbol, price, volume FROM trades WHERE volume >= 900")?;
    db.execute(
        "CREATE MATERIALIZED VIEW summary AS \
         SELECT symbol, COUNT(*) AS trades, ROUND(AVG(price), 2) AS avg_price, MAX(price) AS max_price, SUM(volume) AS volume \
         FROM trades GROUP BY symbol",
    )?;
    db.start()?;
    let sub = db.subscribe("summary")?;

    let schema = db.schema("trades")?;
    let symbols = ["AAPL", "MSFT", "GOOG", "AMZN"];
    let mut seed: u64 = 42;
    let mut next = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) as i64
    };
    for round in 0..10 {
        let n = 1000;
        let sym: Vec<&str> = (0..n).map(|i| symbols[(i + round) % symbols.len()]).collect();
        let price: Vec<f64> = (0..n).map(|_| 100.0 + (next() % 5000) as f64 / 100.0).collect();
        let volume: Vec<i64> = (0..n).map(|_| next() % 1000).collect();
        let ts: Vec<i64> = (0..n).map(|i| 1_700_000_000_000_000 + (round * n + i) as i64 * 1000).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(sym)),
                Arc::new(Float64Array::from(price)),
                Arc::new(Int64Array::from(volume)),
                Arc::new(arrow::array::TimestampMicrosecondArray::from(ts)),
            ],
        )?;
        db.insert("trades", &batch)?;
        if let Ok(update) = sub.next_timeout(Duration::from_secs(5)) {
            println!("epoch {} changed {} symbol(s)", update.epoch, update.batch.num_rows());
        }
    }
    db.flush()?;
    println!("\nsummary (materialized view):");
    println!("{}", db.query("SELECT * FROM summary ORDER BY symbol")?.pretty());
    println!("\nlargest trades (stream):");
    println!("{}", db.query("SELECT * FROM big_trades ORDER BY volume DESC, price DESC LIMIT 5")?.pretty());
    let m = db.metrics();
    println!(
        "\ningested {} rows in {} batches, {} epochs, watermark {:?}",
        m.total_events_ingested, m.total_batches, m.total_cycles, m.pipeline_watermark
    );
    db.shutdown()?;
    Ok(())
}
