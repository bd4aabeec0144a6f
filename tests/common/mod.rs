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

/// A free loopback port (for a server or a cluster process).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

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

/// Runs a pipeline process, killing it with SIGKILL after each of `delays` and starting it
/// again, until it finishes by itself (a run started after the last delay is left to finish).
/// Returns how many times it was killed; panics when a run fails.
pub fn run_with_kills(
    mut spawn: impl FnMut() -> std::process::Child,
    delays: impl IntoIterator<Item = std::time::Duration>,
) -> usize {
    use std::time::Instant;
    let mut kills = 0;
    for delay in delays {
        let mut child = spawn();
        let deadline = Instant::now() + delay;
        while Instant::now() < deadline {
            if let Some(s) = child.try_wait().expect("poll") {
                // Finished before the kill: the pipeline is done.
                assert!(s.success(), "a resumed run failed");
                return kills;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        kills += 1;
    }
    let out = spawn().wait_with_output().expect("last run");
    assert!(out.status.success(), "the last run failed: {}", String::from_utf8_lossy(&out.stderr));
    kills
}
