//! The test Postgres server (started by `scripts/services.sh`; its URI in
//! `LAMINAR_TEST_POSTGRES_URI`): running SQL through psql, unique names, and the upstream
//! rows in the form the tests compare.

use std::process::Command;

/// The URI of the test server (a user with REPLICATION that owns the test database).
pub fn uri() -> String {
    std::env::var("LAMINAR_TEST_POSTGRES_URI").unwrap_or_else(|_| {
        panic!("LAMINAR_TEST_POSTGRES_URI is not set: start Postgres with `eval \"$(scripts/services.sh start)\"`")
    })
}

/// The URI with other credentials.
pub fn uri_as(user: &str, password: &str) -> String {
    let u = uri();
    let at = u.find('@').expect("uri has credentials");
    format!("postgres://{user}:{password}@{}", &u[at + 1..])
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{prefix}_{}_{nanos}", std::process::id())
}

/// Runs SQL through psql, each non-empty line as its own statement (and transaction); returns
/// the unaligned, tuples-only output (`a|b` per row, NULL as `NULL`).
pub fn psql(sql: &str) -> String {
    let mut cmd = Command::new("psql");
    cmd.args([&uri(), "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-P", "null=NULL"]);
    for statement in sql.lines().map(str::trim).filter(|l| !l.is_empty()) {
        cmd.args(["-c", statement]);
    }
    let out = cmd.output().expect("run psql");
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sorted output rows of a query.
pub fn psql_rows(sql: &str) -> Vec<String> {
    let mut rows: Vec<String> = psql(sql).lines().filter(|l| !l.is_empty()).map(String::from).collect();
    rows.sort();
    rows
}

/// A psql session fed statements one by one (for a steady stream of upstream transactions).
pub fn session() -> super::cdc::SqlSession {
    let mut psql = Command::new("psql");
    psql.args([&uri(), "-X", "-q", "-v", "ON_ERROR_STOP=1"]);
    super::cdc::SqlSession::spawn(psql)
}
