//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod cdc;
pub mod kafka;
pub mod mysql;
pub mod postgres;
pub mod rabbitmq;
pub mod registry;

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use laminardb::{Database, LaminarConfig};

/// An in-memory database with `workers` timely workers.
pub fn db_with_workers(workers: usize) -> Database {
    Database::open_with_config(":memory:", LaminarConfig { workers: Some(workers), ..Default::default() })
        .expect("open")
}

/// Rows of the batches rendered as `a|b|c` strings.
pub fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let opts = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let fmts: Vec<ArrayFormatter> =
            b.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).expect("formatter")).collect();
        for i in 0..b.num_rows() {
            out.push(fmts.iter().map(|f| f.value(i).to_string()).collect::<Vec<_>>().join("|"));
        }
    }
    out
}

/// Sorted rows of a query.
pub fn sorted_query(db: &Database, sql: &str) -> Vec<String> {
    let mut r = rows(&db.query(sql).unwrap_or_else(|e| panic!("{sql}: {e}")).batches);
    r.sort();
    r
}
