//! Record format throughput on one core: JSON and CSV records (10 fields) decoded into Arrow
//! through the same decoders the connectors use, and JSON encoding of sink rows.
//!
//! `cargo bench --bench formats` (env `LAMINAR_BENCH_RECORDS`, default 1 000 000).

use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use laminar_adapters::format::{Decoder, Encoder, FormatKind, FormatSpec};
use laminar_dataflow::batch::DiffBatch;

fn main() {
    let n: usize = std::env::var("LAMINAR_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("user_id", DataType::Int64, true),
        Field::new("symbol", DataType::Utf8, true),
        Field::new("side", DataType::Utf8, true),
        Field::new("price", DataType::Float64, true),
        Field::new("qty", DataType::Int32, true),
        Field::new("venue", DataType::Utf8, true),
        Field::new("ok", DataType::Boolean, true),
        Field::new("fee", DataType::Float64, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
    ]));
    let json: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"id":{i},"user_id":{},"symbol":"SYM{}","side":"{}","price":{}.25,"qty":{},"venue":"XNAS","ok":true,"fee":0.{},"ts":"2024-01-01T00:00:{:02}.{:03}Z"}}"#,
                i % 9973,
                i % 100,
                if i % 2 == 0 { "buy" } else { "sell" },
                100 + i % 50,
                i % 1000,
                i % 97,
                (i / 1000) % 60,
                i % 1000
            )
        })
        .collect();
    let csv: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{i},{},SYM{},{},{}.25,{},XNAS,true,0.{},2024-01-01T00:00:{:02}.{:03}",
                i % 9973,
                i % 100,
                if i % 2 == 0 { "buy" } else { "sell" },
                100 + i % 50,
                i % 1000,
                i % 97,
                (i / 1000) % 60,
                i % 1000
            )
        })
        .collect();
    println!("{n} records of 10 fields, one thread, batches of 8192 records");
    let mut batches = Vec::new();
    for (name, kind, records) in [("json", FormatKind::Json, &json), ("csv", FormatKind::Csv, &csv)] {
        let mut d = Decoder::new(&FormatSpec::new(kind), &schema, &[]).expect("decoder");
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            let mut rows = 0;
            let mut out = Vec::new();
            for chunk in records.chunks(8192) {
                let payloads: Vec<&[u8]> = chunk.iter().map(|s| s.as_bytes()).collect();
                let (changes, dead) = d.decode(&payloads, &|i| i.to_string());
                assert!(dead.is_empty(), "{:?}", dead.first());
                for c in changes {
                    if let laminar_adapters::Change::Insert(b) = c {
                        rows += b.num_rows();
                        out.push(b);
                    }
                }
            }
            assert_eq!(rows, n);
            best = best.min(t.elapsed().as_secs_f64());
            batches = out;
        }
        let bytes: usize = records.iter().map(|r| r.len()).sum();
        println!(
            "decode {name:<5} {:>6.2} M records/s  {:>7.1} MB/s",
            n as f64 / best / 1e6,
            bytes as f64 / best / 1e6
        );
    }
    let e = Encoder::new(FormatKind::Json, &schema, false, b',').expect("encoder");
    let t = Instant::now();
    let mut written = 0;
    for b in &batches {
        written += e.encode_rows(&DiffBatch::inserts(b.clone())).expect("encode").len();
    }
    println!(
        "encode json  {:>6.2} M records/s (one payload per row)",
        written as f64 / t.elapsed().as_secs_f64() / 1e6
    );
}
