//! Typed configuration of the `postgres-cdc` source, pulled from `WITH (…)` options.

use super::wire::{ConnectParams, SslMode};
use crate::options::OptionReader;
use crate::{ConnectorError, Result};

/// Keys the source reads.
pub const KEYS: &[&str] = &["connection", "table", "slot.name", "publication.name", "snapshot.mode", "batch_size"];

/// What happens at the first start (no checkpointed position).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotMode {
    /// Read the table's current rows, consistent with the slot's start, then stream changes.
    Initial,
    /// Only stream changes made from now on.
    Never,
}

/// The source's configuration.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// Server, credentials and TLS from `connection`.
    pub connect: ConnectParams,
    /// The URI without its password.
    pub shown: String,
    /// Schema of the table.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// Replication slot.
    pub slot: String,
    /// Publication (created for the table if it does not exist).
    pub publication: String,
    /// `snapshot.mode`.
    pub snapshot: SnapshotMode,
    /// Rows per poll at most (snapshot fetches and streamed changes).
    pub batch_size: usize,
}

impl SourceConfig {
    /// Pulls the options; `source` names the default slot and publication.
    pub fn pull(source: &str, r: &mut OptionReader<'_>) -> Result<Self> {
        let uri = r.required_str("connection")?.trim().to_string();
        let shown = crate::options::redact_uri(&uri).unwrap_or_else(|| uri.clone());
        let connect = parse_uri(&uri, &shown)?;
        let table = r.required_str("table")?;
        let (schema, table) = split_table(&table)
            .ok_or_else(|| r.bad("table", &table, "a table name, optionally schema-qualified ('public.users')"))?;
        let derived = default_name(source);
        let slot = r.opt_str("slot.name").unwrap_or_else(|| derived.clone());
        if !valid_slot_name(&slot) {
            return Err(r.bad(
                "slot.name",
                &slot,
                "lower-case letters, digits and underscores, at most 63 characters (Postgres's rule for slot names)",
            ));
        }
        let publication = r.opt_str("publication.name").unwrap_or(derived);
        if publication.is_empty() || publication.len() > 63 {
            return Err(r.bad("publication.name", &publication, "a name of 1 to 63 characters"));
        }
        let snapshot = match r.opt_enum("snapshot.mode", &["initial", "never"])?.as_deref() {
            Some("never") => SnapshotMode::Never,
            _ => SnapshotMode::Initial,
        };
        let batch_size = match r.opt_u64("batch_size")? {
            Some(0) => return Err(r.bad("batch_size", "0", "a positive number of rows")),
            Some(n) => n as usize,
            None => 8192,
        };
        Ok(Self { connect, shown, schema, table, slot, publication, snapshot, batch_size })
    }

    /// `schema.table`, quoted for SQL.
    pub fn qualified(&self) -> String {
        format!("{}.{}", super::wire::quote_ident(&self.schema), super::wire::quote_ident(&self.table))
    }
}

/// `laminar_<source>` in the characters a slot name allows.
fn default_name(source: &str) -> String {
    let mut s: String = format!("laminar_{source}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect();
    s.truncate(63);
    s
}

fn valid_slot_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `schema.table` or `table` (schema `public`); double quotes keep case and dots.
fn split_table(s: &str) -> Option<(String, String)> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = s.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    if quoted || parts.iter().any(String::is_empty) {
        return None;
    }
    match parts.len() {
        1 => Some(("public".into(), parts.remove(0))),
        2 => {
            let t = parts.remove(1);
            Some((parts.remove(0), t))
        }
        _ => None,
    }
}

/// `postgres[ql]://user:password@host:port/database?sslmode=…&sslrootcert=…`; the user and
/// password may also come from `PGUSER`/`PGPASSWORD`.
pub fn parse_uri(uri: &str, shown: &str) -> Result<ConnectParams> {
    parse_uri_option(uri, shown, "connection")
}

/// [`parse_uri`] for the option `option` (named in errors).
pub fn parse_uri_option(uri: &str, shown: &str, option: &str) -> Result<ConnectParams> {
    let bad = |why: &str| {
        ConnectorError::Config(format!(
            "option '{option}' ('{shown}') {why}: expected 'postgresql://user:password@host:5432/database'"
        ))
    };
    let url = url::Url::parse(uri).map_err(|e| bad(&format!("is not a valid URI ({e})")))?;
    if url.scheme() != "postgres" && url.scheme() != "postgresql" {
        return Err(bad("is not a postgresql:// URI"));
    }
    let decode = |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
    let user = match url.username() {
        "" => std::env::var("PGUSER").map_err(|_| bad("names no user (and PGUSER is not set)"))?,
        u => decode(u).unwrap_or_else(|| u.to_string()),
    };
    let password = match url.password() {
        Some(p) => Some(decode(p).unwrap_or_else(|| p.to_string())),
        None => std::env::var("PGPASSWORD").ok(),
    };
    let host = url.host_str().ok_or_else(|| bad("names no host"))?.trim_matches(['[', ']']).to_string();
    let database = url.path().trim_start_matches('/').to_string();
    let database = if database.is_empty() { user.clone() } else { decode(&database).unwrap_or(database) };
    let mut ssl = SslMode::Prefer;
    let mut ca_file = None;
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "sslmode" => ssl = SslMode::parse(&v).ok_or_else(|| bad(&format!("has an unknown sslmode '{v}'")))?,
            "sslrootcert" => {
                if !std::path::Path::new(v.as_ref()).is_file() {
                    return Err(bad(&format!("names an sslrootcert '{v}' that is not a file")));
                }
                ca_file = Some(v.into_owned());
            }
            "application_name" | "connect_timeout" => {}
            other => return Err(bad(&format!("has an unsupported parameter '{other}'"))),
        }
    }
    Ok(ConnectParams {
        host,
        port: url.port().unwrap_or(5432),
        user,
        password,
        database,
        ssl,
        ca_file,
        application_name: "laminardb".into(),
        replication: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_and_tables() {
        let p = parse_uri("postgresql://rep%40x:p%2Fw@db.example.com:6432/shop?sslmode=require", "shown").expect("uri");
        assert_eq!((p.user.as_str(), p.password.as_deref(), p.port), ("rep@x", Some("p/w"), 6432));
        assert_eq!((p.host.as_str(), p.database.as_str(), p.ssl), ("db.example.com", "shop", SslMode::Require));
        let p = parse_uri("postgres://u:p@127.0.0.1/d", "shown").expect("uri");
        assert_eq!((p.port, p.ssl), (5432, SslMode::Prefer));
        assert!(parse_uri("mysql://u:p@h/d", "shown").is_err());
        let e = parse_uri("postgres://u:p@h/d?sslmode=maybe", "shown").expect_err("sslmode");
        assert!(e.to_string().contains("sslmode 'maybe'"), "{e}");
        assert_eq!(split_table("public.users"), Some(("public".into(), "users".into())));
        assert_eq!(split_table("users"), Some(("public".into(), "users".into())));
        assert_eq!(split_table("\"My.Schema\".\"T\""), Some(("My.Schema".into(), "T".into())));
        assert_eq!(split_table("a.b.c"), None);
        assert_eq!(default_name("Pg-Users"), "laminar_pg_users");
    }
}
