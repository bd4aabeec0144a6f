//! The test MariaDB server (started by `scripts/services.sh`; its URI in
//! `LAMINAR_TEST_MYSQL_URI`): SQL through the `mariadb` command-line client, and the upstream
//! rows in the form the tests compare.

use std::process::Command;

/// The URI of the test server (a user with replication privileges, all on `laminar_test`).
pub fn uri() -> String {
    std::env::var("LAMINAR_TEST_MYSQL_URI").unwrap_or_else(|_| {
        panic!("LAMINAR_TEST_MYSQL_URI is not set: start MariaDB with `eval \"$(scripts/services.sh start)\"`")
    })
}

/// The URI with other credentials.
pub fn uri_as(user: &str, password: &str) -> String {
    let u = uri();
    let at = u.find('@').expect("uri has credentials");
    format!("mysql://{user}:{password}@{}", &u[at + 1..])
}

fn client_args() -> Vec<String> {
    let u = url::Url::parse(&uri()).expect("uri");
    vec![
        "--no-defaults".into(),
        "-h".into(),
        u.host_str().expect("host").into(),
        "-P".into(),
        u.port().unwrap_or(3306).to_string(),
        "-u".into(),
        u.username().into(),
        format!("-p{}", u.password().unwrap_or_default()),
        u.path().trim_start_matches('/').into(),
    ]
}

/// Runs SQL (statements separated by `;`); returns tab-separated rows without headers, NULL as
/// `NULL`.
pub fn mysql(sql: &str) -> String {
    let out = Command::new("mariadb").args(client_args()).args(["-N", "-B", "-e", sql]).output().expect("run mariadb");
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sorted rows of a query, fields joined by `|`.
pub fn mysql_rows(sql: &str) -> Vec<String> {
    let mut rows: Vec<String> = mysql(sql).lines().filter(|l| !l.is_empty()).map(|l| l.replace('\t', "|")).collect();
    rows.sort();
    rows
}

/// A client session fed statements one by one.
pub fn session() -> super::cdc::SqlSession {
    let mut client = Command::new("mariadb");
    client.args(client_args());
    super::cdc::SqlSession::spawn(client)
}
