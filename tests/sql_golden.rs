//! SQL golden-file tests: every `tests/sql/*.slt` file is a script of statements and queries with
//! their expected results (or expected errors).
//!
//! Format (blank-line separated records):
//! - `statement ok` + SQL: must succeed.
//! - `statement error <text>` + SQL: must fail with a message containing `<text>`.
//! - `query` + SQL + `----` + rows (`a|b|c`, sorted): the rows must match, in any order.
//! - `start`, `flush`, `shutdown`: pipeline lifecycle (`query` flushes first).
//! - `insert <source>` + JSON rows: rows inserted through `insert_json`.
//! - `delete <source>` + JSON keys: rows deleted from an upsert source.

mod common;

use std::path::Path;

fn run_file(path: &Path, workers: usize) {
    let text = std::fs::read_to_string(path).expect("read");
    let db = common::db_with_workers(workers);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("?").to_string();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((lineno, line)) = lines.next() {
        let line = line.trim_end();
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let here = format!("{name}:{}", lineno + 1);
        let mut body = Vec::new();
        while let Some((_, l)) = lines.peek() {
            if l.trim().is_empty() {
                break;
            }
            body.push(l.to_string());
            lines.next();
        }
        let directive: Vec<&str> = line.splitn(3, ' ').collect();
        match directive[0] {
            "start" => db.start().unwrap_or_else(|e| panic!("{here}: start: {e}")),
            "flush" => db.flush().unwrap_or_else(|e| panic!("{here}: flush: {e}")),
            "shutdown" => db.shutdown().unwrap_or_else(|e| panic!("{here}: shutdown: {e}")),
            "statement" => {
                let sql = body.join("\n");
                let res = db.execute(&sql);
                match directive.get(1).copied() {
                    Some("ok") => {
                        res.unwrap_or_else(|e| panic!("{here}: expected success, got: {e}\n{sql}"));
                    }
                    Some("error") => {
                        let want = line.split_once("error").map(|x| x.1.trim()).unwrap_or("");
                        match res {
                            Ok(_) => panic!("{here}: expected an error containing '{want}'\n{sql}"),
                            Err(e) => {
                                assert!(e.to_string().contains(want), "{here}: error '{e}' does not contain '{want}'")
                            }
                        }
                    }
                    other => panic!("{here}: unknown statement kind {other:?}"),
                }
            }
            "insert" | "delete" => {
                let source = directive.get(1).copied().unwrap_or_else(|| panic!("{here}: insert needs a source"));
                let json = body.join("\n");
                if directive[0] == "insert" {
                    db.insert_json(source, &json).unwrap_or_else(|e| panic!("{here}: insert: {e}"));
                } else {
                    let schema = db.schema(source).expect("schema");
                    let keys = laminardb::ingest::batch_from_json_rows(&schema, &json).expect("keys");
                    db.delete(source, &keys).unwrap_or_else(|e| panic!("{here}: delete: {e}"));
                }
            }
            "query" => {
                let split =
                    body.iter().position(|l| l.trim() == "----").unwrap_or_else(|| panic!("{here}: query lacks ----"));
                let sql = body[..split].join("\n");
                let mut expected: Vec<String> = body[split + 1..].iter().map(|s| s.trim().to_string()).collect();
                expected.sort();
                db.flush().unwrap_or_else(|e| panic!("{here}: flush: {e}"));
                let got = common::sorted_query(&db, &sql);
                let errors: Vec<String> = db
                    .all_stream_metrics()
                    .into_iter()
                    .filter_map(|m| m.last_error.map(|e| format!("{}: {e}", m.name)))
                    .collect();
                assert_eq!(got, expected, "{here}: wrong rows for\n{sql}\nstream errors: {errors:?}");
            }
            other => panic!("{here}: unknown directive '{other}'"),
        }
    }
    db.shutdown().expect("shutdown");
}

#[test]
fn sql_golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sql");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/sql")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "expected golden files in {}", dir.display());
    for f in &files {
        eprintln!("golden file {}", f.display());
        for workers in [1, 2] {
            run_file(f, workers);
        }
    }
}
