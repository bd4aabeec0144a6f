//! `laminardb run` as 2 and 3 real processes on loopback (`--process`/`--hosts`): a generated
//! source split across the processes (each keeps its share of the row numbers), an aggregate and
//! a join exchanged by key between them, and the final query on process 0 prints exactly what one
//! process prints; the other processes' results are empty.

use std::io::Write;
use std::process::{Command, Stdio};

const PIPELINE: &str = "
CREATE SOURCE trades (symbol VARCHAR NOT NULL, sym BIGINT, price BIGINT, volume BIGINT) WITH (
    connector = 'datagen', 'rows_per_second' = '0', 'max_rows' = '30000', 'seed' = '7',
    'fields.symbol.values' = 'AAPL,MSFT,GOOG,AMZN,META', 'fields.sym.min' = '0', 'fields.sym.max' = '4',
    'fields.price.min' = '100', 'fields.price.max' = '200', 'fields.volume.min' = '1', 'fields.volume.max' = '1000');
CREATE SOURCE sectors (id BIGINT, sector VARCHAR) WITH (
    connector = 'datagen', 'rows_per_second' = '0', 'max_rows' = '5', 'fields.id.kind' = 'sequence',
    'fields.id.start' = '0', 'fields.sector.values' = 'tech');
CREATE MATERIALIZED VIEW summary AS
    SELECT symbol, COUNT(*) AS trades, MIN(price) AS lo, MAX(price) AS hi, SUM(volume) AS volume
    FROM trades GROUP BY symbol;
CREATE MATERIALIZED VIEW by_sector AS
    SELECT s.sector, COUNT(*) AS trades, SUM(t.volume) AS volume
    FROM trades t JOIN sectors s ON t.sym = s.id GROUP BY s.sector;
SELECT * FROM summary ORDER BY symbol;
SELECT * FROM by_sector ORDER BY sector;
";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

/// The query results printed by a run: the lines between "stopping" and "done".
fn results(stdout: &str) -> String {
    let after = stdout.split_once("stopping").map_or("", |(_, r)| r);
    let body = after.split_once('\n').map_or("", |(_, r)| r);
    body.split("done:").next().unwrap_or_default().to_string()
}

/// Starts the pipeline on `processes` processes (1: alone), with `extra` arguments (`{i}`
/// stands for the process index).
fn spawn(dir: &std::path::Path, pipeline_sql: &str, processes: usize, extra: &[&str]) -> Vec<std::process::Child> {
    let pipeline = dir.join("pipeline.sql");
    std::fs::write(&pipeline, pipeline_sql).expect("write pipeline");
    let hosts = dir.join(format!("hosts{processes}.txt"));
    let mut f = std::fs::File::create(&hosts).expect("hosts");
    for _ in 0..processes {
        writeln!(f, "127.0.0.1:{}", free_port()).expect("write hosts");
    }
    drop(f);
    (0..processes)
        .map(|i| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_laminardb"));
            cmd.arg("run").arg(&pipeline).args(["--quiet", "--workers", "2"]);
            cmd.args(extra.iter().map(|a| a.replace("{i}", &i.to_string())));
            if processes > 1 {
                cmd.arg("--process").arg(i.to_string()).arg("--hosts").arg(&hosts);
            }
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn laminardb")
        })
        .collect()
}

/// Waits for every process; returns each one's printed results.
fn finish(children: Vec<std::process::Child>) -> Vec<String> {
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("wait");
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
            results(&stdout)
        })
        .collect()
}

/// Runs the pipeline on `processes` processes (1: alone); returns each one's printed results.
fn run(dir: &std::path::Path, processes: usize) -> Vec<String> {
    finish(spawn(dir, PIPELINE, processes, &[]))
}

#[test]
fn a_pipeline_on_several_processes_prints_what_one_process_prints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alone = run(dir.path(), 1).remove(0);
    for symbol in ["AAPL", "MSFT", "GOOG", "AMZN", "META", "tech"] {
        assert!(alone.contains(symbol), "{alone}");
    }
    assert!(alone.contains("30000"), "every generated trade is joined to its sector: {alone}");
    for processes in [2, 3] {
        let results = run(dir.path(), processes);
        assert_eq!(results[0], alone, "process 0 of {processes} sees the whole result");
        for r in &results[1..] {
            for symbol in ["AAPL", "tech"] {
                assert!(!r.contains(symbol), "the result is gathered on process 0: {r}");
            }
        }
    }
}

/// Two processes taking checkpoints every 100 ms into their own directories are killed
/// (SIGKILL) in the middle of the input; the same commands restart them from the cluster's last
/// checkpoint, and process 0 prints exactly what one uninterrupted process prints.
#[test]
fn a_killed_cluster_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The same pipeline, generated at a rate that leaves time to kill it half way.
    let slow = PIPELINE.replacen(
        "'rows_per_second' = '0', 'max_rows' = '30000'",
        "'rows_per_second' = '15000', 'max_rows' = '30000'",
        1,
    );
    let alone = finish(spawn(dir.path(), &slow, 1, &[])).remove(0);
    assert!(alone.contains("30000"), "{alone}");
    let db = dir.path().join("p{i}");
    let db = db.to_str().expect("path");
    let args = ["--db", db, "--checkpoint-interval", "100"];
    let mut children = spawn(dir.path(), &slow, 2, &args);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    for c in &mut children {
        assert!(c.try_wait().expect("status").is_none(), "still running when killed");
        c.kill().expect("kill");
        c.wait().expect("wait");
    }
    for p in 0..2 {
        let ckpts = dir.path().join(format!("p{p}")).join("checkpoints");
        let n = std::fs::read_dir(&ckpts)
            .map_or(0, |d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("ckpt-")).count());
        assert!(n > 0, "process {p} wrote its part of the cluster's checkpoints before the kill");
    }
    let results = finish(spawn(dir.path(), &slow, 2, &args));
    assert_eq!(results[0], alone, "the restarted cluster's result is the uninterrupted one");
}
