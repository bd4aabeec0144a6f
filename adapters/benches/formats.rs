//! Record format throughput on one core: JSON, CSV and Avro records (10 fields) decoded into
//! Arrow through the same decoders the connectors use (one payload per record, batches of 8192
//! records), and sink rows encoded into one payload per row.
//!
//! `cargo bench -p laminar-adapters --bench formats` (env `LAMINAR_BENCH_RECORDS`, default
//! 1 000 000). Each figure is the median of 5 runs.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use laminar_adapters::format::{Decoder, Encoder, FormatKind, FormatSpec};
use laminar_adapters::Change;
use laminar_dataflow::batch::DiffBatch;

const RUNS: usize = 5;
const CHUNK: usize = 8192;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn decode_all(d: &mut Decoder, records: &[Vec<u8>]) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    for chunk in records.chunks(CHUNK) {
        let payloads: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        let (changes, dead) = d.decode(&payloads, &|i| i.to_string());
        assert!(dead.is_empty(), "{:?}", dead.first());
        for c in changes {
            if let Change::Insert(b) = c {
                out.push(b);
            }
        }
    }
    out
}

fn main() {
    // `cargo test --all-targets` runs this without `--bench`: a quick smoke run then.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let default_records = if smoke { 10_000 } else { 1_000_000 };
    let n: usize = std::env::var("LAMINAR_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(default_records);
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
    let json: Vec<Vec<u8>> = (0..n)
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
            .into_bytes()
        })
        .collect();
    let csv: Vec<Vec<u8>> = (0..n)
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
            .into_bytes()
        })
        .collect();
    println!("{n} records of 10 fields, one thread, {CHUNK} records per decode call, median of {RUNS} runs");

    // The JSON rows decoded once are the input of the encoders (and of the Avro records).
    let mut json_decoder = Decoder::new(&FormatSpec::new(FormatKind::Json), &schema, &[]).expect("decoder");
    let rows = decode_all(&mut json_decoder, &json);
    let mut avro_encoder = Encoder::new(FormatKind::Avro, &schema, false, b',').expect("avro encoder");
    let avro: Vec<Vec<u8>> =
        rows.iter().flat_map(|b| avro_encoder.encode_rows(&DiffBatch::inserts(b.clone())).expect("encode")).collect();

    for (name, kind, records) in
        [("json", FormatKind::Json, &json), ("csv", FormatKind::Csv, &csv), ("avro", FormatKind::Avro, &avro)]
    {
        let mut d = Decoder::new(&FormatSpec::new(kind), &schema, &[]).expect("decoder");
        let mut times = Vec::new();
        for _ in 0..RUNS {
            let t = Instant::now();
            let out = decode_all(&mut d, records);
            times.push(t.elapsed().as_secs_f64());
            assert_eq!(out.iter().map(RecordBatch::num_rows).sum::<usize>(), n);
        }
        let best = median(times);
        let bytes: usize = records.iter().map(Vec::len).sum();
        println!(
            "decode {name:<5} {:>6.2} M records/s  {:>7.1} MB/s",
            n as f64 / best / 1e6,
            bytes as f64 / best / 1e6
        );
    }

    for (name, kind) in [("json", FormatKind::Json), ("csv", FormatKind::Csv), ("avro", FormatKind::Avro)] {
        let mut e = Encoder::new(kind, &schema, false, b',').expect("encoder");
        let mut times = Vec::new();
        for _ in 0..RUNS {
            let t = Instant::now();
            let mut written = 0;
            for b in &rows {
                written += e.encode_rows(&DiffBatch::inserts(b.clone())).expect("encode").len();
            }
            times.push(t.elapsed().as_secs_f64());
            assert_eq!(written, n);
        }
        println!("encode {name:<5} {:>6.2} M records/s (one payload per row)", n as f64 / median(times) / 1e6);
    }
}
