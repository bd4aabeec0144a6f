//! The `laminardb` command line: `laminardb run pipeline.sql` and `laminardb sql [DIR]`.
//!
//! `run` executes a file of statements, starts the pipeline and prints progress (rows in and
//! out per source and sink, buffer use, backpressure, watermark) every second until Ctrl-C or
//! until every connector source has finished; then it drains the pipeline and shuts down.
//! `sql` opens an interactive prompt on a database directory (`:memory:` by default).
//! The same code runs as the Rust binary and as the Python package's console script.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use crate::{Database, ExecuteResult, LaminarConfig};

const USAGE: &str = "usage:
  laminardb run PIPELINE.sql [--db DIR] [--duration SECONDS] [--quiet]
                [--checkpoint-interval MS] [--workers N] [--process I --hosts FILE]
      Execute the statements in PIPELINE.sql, start the pipeline and show live progress
      until Ctrl-C (or until every connector source has finished). With --db, objects the
      directory's catalog already holds are kept, and the pipeline resumes from the newest
      checkpoint there (--checkpoint-interval takes one every MS milliseconds).
      With --process and --hosts, run as process I of a cluster: FILE lists every
      process's host:port, one per line; start the same pipeline (and --workers) on each.
  laminardb sql [DIR]
      Interactive SQL prompt on the database in DIR (default: in memory).
  laminardb --version";

/// Runs the command line with `args` (without the program name). `interrupted` is polled
/// about every 100 ms; returns the process exit code.
pub fn main_with(args: &[String], interrupted: &dyn Fn() -> bool, out: &mut dyn Write) -> i32 {
    let result = match args.first().map(String::as_str) {
        Some("run") => run(&args[1..], interrupted, out),
        Some("sql") => repl(args.get(1).map(String::as_str).unwrap_or(":memory:"), interrupted, out),
        Some("--version") | Some("-V") => {
            writeln!(out, "laminardb {}", env!("CARGO_PKG_VERSION")).map_err(|e| e.to_string())
        }
        Some("--help") | Some("-h") | None => writeln!(out, "{USAGE}").map_err(|e| e.to_string()),
        Some(other) => Err(format!("unknown command '{other}'\n{USAGE}")),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(out, "error: {e}");
            1
        }
    }
}

/// Reads a hosts file: one `host:port` per line, in process order; blank lines and lines
/// starting with `#` are skipped.
pub fn read_hosts(path: &str) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read hosts file {path}: {e}"))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect())
}

/// Splits SQL text into statements at `;` outside quotes and comments.
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                cur.push(c);
                if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    cur.push(c);
                }
                '-' if chars.peek() == Some(&'-') => {
                    for c in chars.by_ref() {
                        if c == '\n' {
                            cur.push('\n');
                            break;
                        }
                    }
                }
                ';' => {
                    if !cur.trim().is_empty() {
                        out.push(cur.trim().to_string());
                    }
                    cur.clear();
                }
                _ => cur.push(c),
            },
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

fn print_result(r: ExecuteResult, out: &mut dyn Write) -> std::io::Result<()> {
    match r {
        ExecuteResult::Ddl { ddl_type, ddl_object } => writeln!(out, "{ddl_type} {ddl_object}"),
        ExecuteResult::RowsAffected(n) => writeln!(out, "{n} rows"),
        ExecuteResult::Query(q) | ExecuteResult::Metadata(q) => writeln!(out, "{}", q.pretty()),
    }
}

fn run(args: &[String], interrupted: &dyn Fn() -> bool, out: &mut dyn Write) -> Result<(), String> {
    let mut file = None;
    let mut dir = ":memory:".to_string();
    let mut duration: Option<Duration> = None;
    let mut quiet = false;
    let mut config = LaminarConfig::default();
    let mut process: Option<usize> = None;
    let mut hosts: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--db" => dir = it.next().ok_or("--db needs a directory")?.clone(),
            "--duration" => {
                let s = it.next().ok_or("--duration needs seconds")?;
                duration =
                    Some(Duration::from_secs_f64(s.parse::<f64>().map_err(|_| format!("bad --duration '{s}'"))?));
            }
            "--quiet" | "-q" => quiet = true,
            "--checkpoint-interval" => {
                let s = it.next().ok_or("--checkpoint-interval needs milliseconds")?;
                config.checkpoint_interval_ms =
                    Some(s.parse().map_err(|_| format!("bad --checkpoint-interval '{s}'"))?);
            }
            "--workers" => {
                let s = it.next().ok_or("--workers needs a number")?;
                config.workers = Some(s.parse().map_err(|_| format!("bad --workers '{s}'"))?);
            }
            "--process" => {
                let s = it.next().ok_or("--process needs an index")?;
                process = Some(s.parse().map_err(|_| format!("bad --process '{s}'"))?);
            }
            "--hosts" => hosts = Some(it.next().ok_or("--hosts needs a file")?.clone()),
            f if file.is_none() && !f.starts_with('-') => file = Some(f.to_string()),
            other => return Err(format!("unexpected argument '{other}'\n{USAGE}")),
        }
    }
    let file = file.ok_or_else(|| format!("run needs a pipeline file\n{USAGE}"))?;
    config.cluster = match (process, hosts) {
        (None, None) => None,
        (Some(p), Some(h)) => Some(crate::ClusterConfig::new(p, read_hosts(&h)?)),
        _ => return Err("--process and --hosts go together".into()),
    };
    let sql = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {file}: {e}"))?;
    let db = Database::open_with_config(&dir, config).map_err(|e| e.to_string())?;
    let mut queries = Vec::new();
    for stmt in split_statements(&sql) {
        let upper = stmt.trim_start().to_ascii_uppercase();
        if upper.starts_with("SELECT") || upper.starts_with("WITH") {
            // Ad-hoc queries run at the end, on the final results.
            queries.push(stmt);
            continue;
        }
        match db.execute(&stmt) {
            Ok(r) => print_result(r, out).map_err(|e| e.to_string())?,
            // Reopening a directory: its catalog already holds the pipeline.
            Err(crate::LaminarError::AlreadyExists(m)) if dir != ":memory:" => {
                writeln!(out, "kept: {m}").map_err(|e| e.to_string())?
            }
            Err(e) => return Err(format!("{e}\n  in: {}", first_line(&stmt))),
        }
    }
    db.start().map_err(|e| e.to_string())?;
    writeln!(out, "pipeline running (Ctrl-C to stop)").map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut last_print = Instant::now();
    let mut last_in = 0u64;
    let reason = loop {
        std::thread::sleep(Duration::from_millis(100));
        if interrupted() {
            break "interrupted";
        }
        if duration.is_some_and(|d| started.elapsed() >= d) {
            break "duration reached";
        }
        let sources = db.all_source_metrics();
        let connected: Vec<_> = sources.iter().filter(|m| m.connector_state.is_some()).collect();
        // A connector that runs on another process of the cluster is done here.
        let done = !connected.is_empty()
            && connected.iter().all(|m| {
                matches!(m.connector_state.as_deref(), Some("finished" | "failed" | crate::database::ELSEWHERE))
            });
        if !quiet && (last_print.elapsed() >= Duration::from_secs(1) || done) {
            let m = db.metrics();
            let secs = last_print.elapsed().as_secs_f64().max(1e-3);
            let rate = (m.total_events_ingested.saturating_sub(last_in)) as f64 / secs;
            last_in = m.total_events_ingested;
            last_print = Instant::now();
            let _ = writeln!(
                out,
                "[{:>6.1}s] in {} ({:.0}/s)  out {}  dropped {}{}",
                started.elapsed().as_secs_f64(),
                m.total_events_ingested,
                rate,
                m.total_events_emitted,
                m.total_events_dropped,
                m.pipeline_watermark.map(|w| format!("  watermark {}", show_time(w))).unwrap_or_default()
            );
            for s in &sources {
                let _ = writeln!(
                    out,
                    "    source {:<16} rows {:<10} buffer {}/{}{}{}{}",
                    s.name,
                    s.total_events,
                    s.pending,
                    s.capacity,
                    if s.is_backpressured { "  BACKPRESSURED" } else { "" },
                    s.connector_state.as_ref().map(|c| format!("  {c}")).unwrap_or_default(),
                    if s.dead_letters > 0 { format!("  dead letters {}", s.dead_letters) } else { String::new() }
                );
            }
            for k in db.all_sink_metrics() {
                let _ = writeln!(
                    out,
                    "    sink   {:<16} rows {:<10} epochs {:<8} {}{}",
                    k.name,
                    k.rows_written,
                    k.epochs_committed,
                    k.state,
                    k.last_error.map(|e| format!("  error: {e}")).unwrap_or_default()
                );
            }
        }
        if done {
            break "all sources finished";
        }
    };
    writeln!(out, "stopping ({reason}) …").map_err(|e| e.to_string())?;
    // In a cluster: until every process got here, so that process 0's results are complete.
    db.barrier().map_err(|e| e.to_string())?;
    for q in queries {
        let r = db.execute(&q).map_err(|e| format!("{e}\n  in: {}", first_line(&q)))?;
        print_result(r, out).map_err(|e| e.to_string())?;
    }
    db.shutdown().map_err(|e| e.to_string())?;
    let m = db.metrics();
    writeln!(
        out,
        "done: {} rows in, {} rows out, {} dropped",
        m.total_events_ingested, m.total_events_emitted, m.total_events_dropped
    )
    .map_err(|e| e.to_string())?;
    db.close().map_err(|e| e.to_string())
}

/// An event time (ms since the epoch) as `YYYY-MM-DD HH:MM:SS.mmm` (UTC).
fn show_time(ms: i64) -> String {
    match arrow::temporal_conversions::timestamp_ms_to_datetime(ms) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
        None => ms.to_string(),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

fn repl(dir: &str, interrupted: &dyn Fn() -> bool, out: &mut dyn Write) -> Result<(), String> {
    let db = Database::open(dir).map_err(|e| e.to_string())?;
    writeln!(
        out,
        "LaminarDB {} — statements end with ';'. START; / SHUTDOWN; / FLUSH; control the pipeline, \\q quits.",
        env!("CARGO_PKG_VERSION")
    )
    .map_err(|e| e.to_string())?;
    let stdin = std::io::stdin();
    let mut buf = String::new();
    loop {
        let _ = write!(out, "{}", if buf.is_empty() { "laminardb> " } else { "       ...> " });
        let _ = out.flush();
        let mut line = String::new();
        match stdin.lock().read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        if interrupted() {
            break;
        }
        if buf.is_empty() && matches!(line.trim(), "\\q" | "quit" | "exit") {
            break;
        }
        buf.push_str(&line);
        if !buf.trim_end().ends_with(';') {
            continue;
        }
        for stmt in split_statements(&buf) {
            let r = match stmt.to_ascii_uppercase().as_str() {
                "START" => db.start().map(|_| None),
                "SHUTDOWN" => db.shutdown().map(|_| None),
                "FLUSH" => db.flush().map(|_| None),
                _ => db.execute(&stmt).map(Some),
            };
            match r {
                Ok(Some(r)) => print_result(r, out).map_err(|e| e.to_string())?,
                Ok(None) => writeln!(out, "ok").map_err(|e| e.to_string())?,
                Err(e) => writeln!(out, "error: {e}").map_err(|e| e.to_string())?,
            }
        }
        buf.clear();
    }
    db.close().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements_outside_quotes_and_comments() {
        let s = split_statements("CREATE SOURCE a (x INT); -- a comment; here\nINSERT INTO a VALUES (';'); ;SELECT 1");
        assert_eq!(s, vec!["CREATE SOURCE a (x INT)", "INSERT INTO a VALUES (';')", "SELECT 1"]);
    }

    #[test]
    fn run_executes_a_pipeline_file_until_its_sources_finish() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("p.sql");
        std::fs::write(
            &file,
            "CREATE SOURCE g (k VARCHAR, v BIGINT) WITH (connector = 'datagen', 'rows_per_second' = '0', \
             'max_rows' = '1000', 'fields.k.values' = 'x,y');\n\
             CREATE MATERIALIZED VIEW t AS SELECT k, COUNT(*) AS n FROM g GROUP BY k;\n\
             SELECT SUM(n) AS total FROM t;",
        )
        .expect("write");
        let mut out = Vec::new();
        let code = main_with(&["run".into(), file.display().to_string()], &|| false, &mut out);
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(code, 0, "{text}");
        assert!(text.contains("all sources finished"), "{text}");
        assert!(text.contains("| 1000  |"), "{text}");
        assert!(text.contains("done: 1000 rows in"), "{text}");
        let mut out = Vec::new();
        assert_eq!(main_with(&["nope".into()], &|| false, &mut out), 1);
    }
}
