//! What the CDC tests of both databases share: waiting for a query to equal the upstream
//! rows, source metrics, command-line SQL sessions, and the scenario of a pipeline killed
//! mid-stream while upstream keeps changing.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use laminardb::{Database, LaminarConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::sorted_query;

/// An in-memory database with one worker.
pub fn memory_db() -> Database {
    Database::open_with_config(":memory:", LaminarConfig { workers: Some(1), ..Default::default() }).expect("open")
}

/// Waits until the query's sorted rows equal `want()` (upstream, re-read each time); the
/// panic says which rows differ and what source `src` reports.
pub fn converge(db: &Database, sql: &str, want: impl Fn() -> Vec<String>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let expected = want();
        let got = sorted_query(db, sql);
        if got == expected {
            return;
        }
        if Instant::now() > deadline {
            let extra: Vec<&String> = got.iter().filter(|r| !expected.contains(r)).take(10).collect();
            let missing: Vec<&String> = expected.iter().filter(|r| !got.contains(r)).take(10).collect();
            panic!(
                "{what}: {} rows here, {} upstream; extra {extra:?}; missing {missing:?}; metrics {:?}",
                got.len(),
                expected.len(),
                db.source_metrics("src").map(|m| (m.details, m.last_error))
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A connector gauge or counter of a source (0 when absent).
pub fn detail(db: &Database, source: &str, key: &str) -> i64 {
    db.source_metrics(source).and_then(|m| m.details.get(key).copied()).unwrap_or_default()
}

/// A database's command-line client fed statements through a pipe.
pub struct SqlSession {
    child: Child,
    stdin: ChildStdin,
}

impl SqlSession {
    /// Starts `client` (its output discarded) reading statements from a pipe.
    pub fn spawn(mut client: Command) -> Self {
        let mut child = client.stdin(Stdio::piped()).stdout(Stdio::null()).spawn().expect("spawn the SQL client");
        let stdin = child.stdin.take().expect("stdin");
        Self { child, stdin }
    }

    /// Sends SQL (ended by `;`).
    pub fn send(&mut self, sql: &str) {
        writeln!(self.stdin, "{sql}").expect("write to the SQL client");
    }

    /// Ends the session once everything sent has run.
    pub fn finish(self) {
        let SqlSession { mut child, stdin } = self;
        drop(stdin);
        let status = child.wait().expect("SQL client");
        assert!(status.success(), "the SQL session failed");
    }
}

/// Published rows of a changelog file sink, consolidated (inserts minus deletes), as canonical
/// JSON without the `op` field.
pub fn consolidated_sink(dir: &std::path::Path) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        for line in std::fs::read_to_string(e.path()).unwrap_or_default().lines().filter(|l| !l.trim().is_empty()) {
            let mut v: serde_json::Value = serde_json::from_str(line).expect("json line");
            let op = v.as_object_mut().and_then(|o| o.remove("op")).and_then(|o| o.as_str().map(String::from));
            *out.entry(v.to_string()).or_default() += if op.as_deref() == Some("delete") { -1 } else { 1 };
        }
    }
    out.retain(|_, c| *c != 0);
    out
}

/// An upstream table `(id INT PRIMARY KEY, grp INT, v BIGINT)` of 2,000 rows in 10 groups, as
/// a kill test drives it.
pub struct KillTest<'a> {
    /// The source's `WITH` options.
    pub source: String,
    /// A client session on the upstream database.
    pub session: &'a (dyn Fn() -> SqlSession + Sync),
    /// SQL deleting row `id`, moving it to group `grp`, and inserting or replacing it with `v`.
    pub delete: &'a (dyn Fn(i64) -> String + Sync),
    /// See `delete`.
    pub regroup: &'a (dyn Fn(i64, i64) -> String + Sync),
    /// See `delete`.
    pub upsert: &'a (dyn Fn(i64, i64, i64) -> String + Sync),
    /// The upstream `grp|count|sum` rows.
    pub totals: &'a dyn Fn() -> Vec<String>,
}

/// `laminardb run` with a per-group aggregate into an exactly-once changelog file sink is
/// killed with SIGKILL six times while upstream keeps changing, then run until the sink
/// catches up: its consolidated rows must be exactly the upstream aggregate (one row per
/// group: nothing lost, nothing written twice).
pub fn killed_pipeline_restarts_exactly(t: KillTest<'_>) {
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("out");
    let sql = dir.path().join("pipeline.sql");
    std::fs::write(
        &sql,
        format!(
            "CREATE SOURCE src (id INT, grp INT, v BIGINT) WITH ({});\n\
             CREATE SINK totals AS SELECT grp, COUNT(*) AS n, SUM(v) AS s FROM src GROUP BY grp WITH (connector = \
             'file', 'path' = '{}', 'format' = 'json', 'changelog' = 'true', 'delivery.guarantee' = 'exactly-once');",
            t.source,
            out.display()
        ),
    )
    .expect("sql");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_laminardb"))
            .args(["run", &sql.display().to_string(), "--db", &dir.path().join("db").display().to_string(), "--quiet"])
            .args(["--checkpoint-interval", "200", "--workers", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn laminardb")
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    let changes = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut rng = StdRng::seed_from_u64(9);
            let mut s = (t.session)();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = rng.random_range(1..=2500);
                s.send(&match rng.random_range(0..4) {
                    0 => (t.delete)(id),
                    1 => (t.regroup)(id, rng.random_range(0..10)),
                    _ => (t.upsert)(id, rng.random_range(0..10), rng.random_range(0..100_000)),
                });
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            s.finish();
            n
        });
        let mut rng = StdRng::seed_from_u64(10);
        for _ in 0..6 {
            let mut child = run();
            std::thread::sleep(Duration::from_millis(rng.random_range(600..1800)));
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().expect("writer")
    });
    assert!(changes > 500, "only {changes} upstream changes");
    let expected: BTreeMap<String, i64> = (t.totals)()
        .iter()
        .map(|r| {
            let f: Vec<i64> = r.split('|').map(|x| x.parse().expect("number")).collect();
            (serde_json::json!({"grp": f[0], "n": f[1], "s": f[2]}).to_string(), 1)
        })
        .collect();
    let mut child = run();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = consolidated_sink(&out);
        if got == expected {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("after 6 kills and {changes} upstream changes the sink holds {got:?}, upstream {expected:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    assert_eq!(consolidated_sink(&out).values().sum::<i64>(), 10, "one current row per group");
}
