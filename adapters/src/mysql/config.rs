//! Typed configuration of the `mysql-cdc` source, pulled from `WITH (…)` options.

use mysql_async::{Opts, OptsBuilder, SslOpts};

use crate::options::OptionReader;
use crate::{ConnectorError, Result};

/// Keys the source reads.
pub const KEYS: &[&str] = &["connection", "table", "server_id", "snapshot.mode", "batch_size"];

/// TLS as `ssl-mode` asks (MySQL's client names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP (the default).
    Disabled,
    /// TLS without checking the certificate.
    Required,
    /// TLS with a certificate from a trusted CA (any host name).
    VerifyCa,
    /// TLS with a trusted certificate for the host name.
    VerifyIdentity,
}

/// The source's configuration.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User.
    pub user: String,
    /// Password (from the URI or `MYSQL_PWD`).
    pub password: Option<String>,
    /// The URI's database (default for `table`).
    pub database: String,
    /// TLS.
    pub ssl: SslMode,
    /// `ssl-ca`: PEM certificates to trust besides the web's roots.
    pub ca_file: Option<String>,
    /// The URI without its password.
    pub shown: String,
    /// Database of the table.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// Replica id this source registers with (unique among the server's replicas).
    pub server_id: u32,
    /// Read the table first (`initial`) or only changes (`never`).
    pub snapshot: bool,
    /// Rows per poll at most.
    pub batch_size: usize,
}

impl SourceConfig {
    /// Pulls the options; `source` seeds the default `server_id`.
    pub fn pull(source: &str, r: &mut OptionReader<'_>) -> Result<Self> {
        let uri = r.required_str("connection")?.trim().to_string();
        let shown = crate::options::redact_uri(&uri).unwrap_or_else(|| uri.clone());
        let bad = |why: &str| {
            ConnectorError::Config(format!(
                "option 'connection' ('{shown}') {why}: expected 'mysql://user:password@host:3306/database'"
            ))
        };
        let url = url::Url::parse(&uri).map_err(|e| bad(&format!("is not a valid URI ({e})")))?;
        if url.scheme() != "mysql" && url.scheme() != "mariadb" {
            return Err(bad("is not a mysql:// URI"));
        }
        let decode =
            |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
        let user = match url.username() {
            "" => std::env::var("MYSQL_USER").map_err(|_| bad("names no user (and MYSQL_USER is not set)"))?,
            u => decode(u).unwrap_or_else(|| u.to_string()),
        };
        let password = match url.password() {
            Some(p) => Some(decode(p).unwrap_or_else(|| p.to_string())),
            None => std::env::var("MYSQL_PWD").ok(),
        };
        let host = url.host_str().ok_or_else(|| bad("names no host"))?.trim_matches(['[', ']']).to_string();
        let database = decode(url.path().trim_start_matches('/')).unwrap_or_default();
        let mut ssl = SslMode::Disabled;
        let mut ca_file = None;
        for (k, v) in url.query_pairs() {
            match k.replace('_', "-").to_ascii_lowercase().as_str() {
                "ssl-mode" | "sslmode" => {
                    ssl = match v.to_ascii_lowercase().replace('_', "-").as_str() {
                        "disabled" | "disable" | "preferred" | "prefer" => SslMode::Disabled,
                        "required" | "require" => SslMode::Required,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-identity" | "verify-full" => SslMode::VerifyIdentity,
                        other => return Err(bad(&format!("has an unknown ssl-mode '{other}'"))),
                    }
                }
                "ssl-ca" => {
                    if !std::path::Path::new(v.as_ref()).is_file() {
                        return Err(bad(&format!("names an ssl-ca '{v}' that is not a file")));
                    }
                    ca_file = Some(v.into_owned());
                }
                other => return Err(bad(&format!("has an unsupported parameter '{other}'"))),
            }
        }
        let table = r.required_str("table")?;
        let (schema, table) = match table.split_once('.') {
            Some((d, t)) if !d.is_empty() && !t.is_empty() && !t.contains('.') => {
                (d.trim_matches('`').to_string(), t.trim_matches('`').to_string())
            }
            None if !table.is_empty() => {
                if database.is_empty() {
                    return Err(r.bad("table", &table, "'database.table' (the connection URI names no database)"));
                }
                (database.clone(), table.trim_matches('`').to_string())
            }
            _ => return Err(r.bad("table", &table, "a table name, optionally 'database.table'")),
        };
        let server_id = match r.opt_u64("server_id")? {
            Some(0) => return Err(r.bad("server_id", "0", "a positive number unique among the server's replicas")),
            Some(n) if n > u64::from(u32::MAX) => return Err(r.bad("server_id", &n.to_string(), "at most 4294967295")),
            Some(n) => n as u32,
            None => default_server_id(&format!("{source}/{schema}.{table}/{}", std::process::id())),
        };
        let snapshot = r.opt_enum("snapshot.mode", &["initial", "never"])?.as_deref() != Some("never");
        let batch_size = match r.opt_u64("batch_size")? {
            Some(0) => return Err(r.bad("batch_size", "0", "a positive number of rows")),
            Some(n) => n as usize,
            None => 8192,
        };
        Ok(Self {
            host,
            port: url.port().unwrap_or(3306),
            user,
            password,
            database,
            ssl,
            ca_file,
            shown,
            schema,
            table,
            server_id,
            snapshot,
            batch_size,
        })
    }

    /// Connection options for mysql_async.
    pub fn opts(&self) -> Opts {
        let mut b = OptsBuilder::default()
            .ip_or_hostname(self.host.clone())
            .tcp_port(self.port)
            .user(Some(self.user.clone()))
            .pass(self.password.clone())
            .prefer_socket(false)
            .stmt_cache_size(0)
            .init(vec!["SET time_zone = '+00:00'".to_string()]);
        if !self.database.is_empty() {
            b = b.db_name(Some(self.database.clone()));
        }
        if self.ssl != SslMode::Disabled {
            let mut ssl = SslOpts::default();
            if let Some(ca) = &self.ca_file {
                ssl = ssl.with_root_certs(vec![std::path::PathBuf::from(ca).into()]);
            }
            ssl = match self.ssl {
                SslMode::Required => {
                    ssl.with_danger_accept_invalid_certs(true).with_danger_skip_domain_validation(true)
                }
                SslMode::VerifyCa => ssl.with_danger_skip_domain_validation(true),
                _ => ssl,
            };
            b = b.ssl_opts(Some(ssl));
        }
        b.into()
    }
}

/// A replica id from the source, its table and this process (two pipelines connected at the
/// same time must not share one: the server drops the older), away from the small numbers
/// servers use.
fn default_server_id(source: &str) -> u32 {
    let mut h: u32 = 2_166_136_261;
    for b in source.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(16_777_619);
    }
    100_000 + h % 1_000_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pull(opts: &[(&str, &str)]) -> Result<SourceConfig> {
        let o = opts.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        SourceConfig::pull("orders", &mut OptionReader::new("mysql-cdc", o))
    }

    #[test]
    fn uris_tables_and_server_ids() {
        let c = pull(&[("connection", "mysql://cdc%40x:p%2Fw@db:3307/shop?ssl-mode=VERIFY_CA"), ("table", "orders")])
            .expect("config");
        assert_eq!((c.user.as_str(), c.password.as_deref(), c.port), ("cdc@x", Some("p/w"), 3307));
        assert_eq!((c.schema.as_str(), c.table.as_str(), c.ssl), ("shop", "orders", SslMode::VerifyCa));
        assert_eq!(c.server_id, default_server_id(&format!("orders/shop.orders/{}", std::process::id())));
        let c = pull(&[("connection", "mysql://u:p@h/shop"), ("table", "other.t"), ("server_id", "1001")]).expect("c");
        assert_eq!((c.schema.as_str(), c.table.as_str(), c.server_id), ("other", "t", 1001));
        let e = pull(&[("connection", "mysql://u:p@h"), ("table", "t")]).expect_err("no database");
        assert!(e.to_string().contains("database.table"), "{e}");
        let e = pull(&[("connection", "postgres://u:p@h/d"), ("table", "t")]).expect_err("scheme");
        assert!(e.to_string().contains("mysql://") && !e.to_string().contains(":p@"), "{e}");
        let e = pull(&[("connection", "mysql://u:p@h/d"), ("table", "t"), ("server_id", "0")]).expect_err("zero");
        assert!(e.to_string().contains("server_id"), "{e}");
    }
}
