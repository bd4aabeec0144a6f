//! Typed access to `WITH (…)` options: pull each key into a typed value; whatever is left over
//! is an error ("unknown option … did you mean …?").

use std::collections::BTreeMap;

use crate::ConnectorError;

/// Raw options (keys lower-cased).
pub type Options = BTreeMap<String, String>;

/// Option keys whose values are secrets: never echoed back (also as the last part of a dotted
/// key, e.g. `'schema.registry.password'`).
pub const SECRET_KEYS: &[&str] = &[
    "password",
    "sasl.password",
    "sasl.jaas.config",
    "auth",
    "token",
    "secret",
    "credential",
    "api_key",
    "aws_secret_access_key",
    "aws_session_token",
    "basic.auth.user.info",
];

/// What a secret is replaced with in messages, `SHOW CREATE` and logs.
pub const MASK: &str = "***";

/// True when the value of `key` must not appear in messages.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|s| key == *s || key.ends_with(&format!(".{s}")) || key.ends_with(&format!("_{s}")))
}

/// `value` of `key` as it may be shown: secrets masked, and the password of a URI
/// (`scheme://user:password@host`) masked. `None` when it can be shown as it is.
pub fn redact(key: &str, value: &str) -> Option<String> {
    if is_secret(key) {
        return Some(MASK.to_string());
    }
    redact_uri(value)
}

/// A URI with its password masked, `None` if it has none. Comma-separated lists of URIs are
/// handled element by element.
pub fn redact_uri(value: &str) -> Option<String> {
    let mut changed = false;
    let parts: Vec<String> = value
        .split(',')
        .map(|part| {
            let Some(scheme_end) = part.find("://") else { return part.to_string() };
            let rest = &part[scheme_end + 3..];
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let authority = &rest[..authority_end];
            let Some(at) = authority.rfind('@') else { return part.to_string() };
            let userinfo = &authority[..at];
            let Some(colon) = userinfo.find(':') else { return part.to_string() };
            changed = true;
            format!("{}{}:{MASK}{}", &part[..scheme_end + 3], &userinfo[..colon], &part[scheme_end + 3 + at..])
        })
        .collect();
    changed.then(|| parts.join(","))
}

/// `sql` with the secret option values of `options` masked (each `'value'` literal of a secret
/// is replaced), for `SHOW CREATE`, topology and messages.
pub fn redact_sql(sql: &str, options: &Options) -> String {
    let mut out = sql.to_string();
    for (k, v) in options {
        if let Some(masked) = redact(k, v) {
            let quoted = format!("'{}'", v.replace('\'', "''"));
            out = out.replace(&quoted, &format!("'{}'", masked.replace('\'', "''")));
        }
    }
    out
}

/// Shows options with their secrets masked (for `Debug` output).
pub struct Redacted<'a>(pub &'a Options);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in self.0 {
            match redact(k, v) {
                Some(masked) => m.entry(k, &masked),
                None => m.entry(k, v),
            };
        }
        m.finish()
    }
}

/// Pulls typed values out of a connector's options.
pub struct OptionReader<'a> {
    connector: &'a str,
    remaining: Options,
}

impl<'a> OptionReader<'a> {
    /// Starts reading `options` for `connector` (`connector` itself is not an option here).
    pub fn new(connector: &'a str, mut options: Options) -> Self {
        options.remove("connector");
        Self { connector, remaining: options }
    }

    /// A required string.
    pub fn required_str(&mut self, key: &str) -> Result<String, ConnectorError> {
        self.remaining
            .remove(key)
            .ok_or_else(|| ConnectorError::Config(format!("connector '{}' requires option '{key}'", self.connector)))
    }

    /// An optional string.
    pub fn opt_str(&mut self, key: &str) -> Option<String> {
        self.remaining.remove(key)
    }

    /// An optional unsigned integer.
    pub fn opt_u64(&mut self, key: &str) -> Result<Option<u64>, ConnectorError> {
        match self.remaining.remove(key) {
            None => Ok(None),
            Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
                ConnectorError::Config(format!(
                    "option '{key}' of connector '{}' must be a non-negative integer, got '{}'",
                    self.connector,
                    if is_secret(key) { "***" } else { v.as_str() }
                ))
            }),
        }
    }

    /// An optional boolean (`true`/`false`).
    pub fn opt_bool(&mut self, key: &str) -> Result<Option<bool>, ConnectorError> {
        match self.remaining.remove(key) {
            None => Ok(None),
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(Some(true)),
                "false" | "0" | "no" | "off" => Ok(Some(false)),
                _ => Err(ConnectorError::Config(format!(
                    "option '{key}' of connector '{}' must be true or false, got '{v}'",
                    self.connector
                ))),
            },
        }
    }

    /// An optional value from a fixed set.
    pub fn opt_enum(&mut self, key: &str, allowed: &[&str]) -> Result<Option<String>, ConnectorError> {
        match self.remaining.remove(key) {
            None => Ok(None),
            Some(v) => {
                let lv = v.to_ascii_lowercase();
                if allowed.contains(&lv.as_str()) {
                    Ok(Some(lv))
                } else {
                    Err(ConnectorError::Config(format!(
                        "option '{key}' of connector '{}' must be one of {}, got '{v}'",
                        self.connector,
                        allowed.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(", ")
                    )))
                }
            }
        }
    }

    /// A required unsigned integer.
    pub fn required_u64(&mut self, key: &str) -> Result<u64, ConnectorError> {
        match self.opt_u64(key)? {
            Some(v) => Ok(v),
            None => Err(ConnectorError::Config(format!("connector '{}' requires option '{key}'", self.connector))),
        }
    }

    /// An optional signed integer.
    pub fn opt_i64(&mut self, key: &str) -> Result<Option<i64>, ConnectorError> {
        match self.remaining.remove(key) {
            None => Ok(None),
            Some(v) => v.trim().parse::<i64>().map(Some).map_err(|_| self.bad(key, &v, "an integer")),
        }
    }

    /// An optional floating-point number.
    pub fn opt_f64(&mut self, key: &str) -> Result<Option<f64>, ConnectorError> {
        match self.remaining.remove(key) {
            None => Ok(None),
            Some(v) => v.trim().parse::<f64>().map(Some).map_err(|_| self.bad(key, &v, "a number")),
        }
    }

    /// An optional single character (delimiters, quotes).
    pub fn opt_char(&mut self, key: &str) -> Result<Option<u8>, ConnectorError> {
        match self.remaining.remove(key) {
            None => Ok(None),
            Some(v) => {
                let v2 = if v == "\\t" { "\t".to_string() } else { v.clone() };
                match v2.as_bytes() {
                    [b] => Ok(Some(*b)),
                    _ => Err(self.bad(key, &v, "a single ASCII character")),
                }
            }
        }
    }

    /// Removes and returns every option whose key starts with `prefix` (prefix stripped).
    pub fn take_prefixed(&mut self, prefix: &str) -> Vec<(String, String)> {
        let keys: Vec<String> = self.remaining.keys().filter(|k| k.starts_with(prefix)).cloned().collect();
        keys.into_iter().filter_map(|k| self.remaining.remove(&k).map(|v| (k[prefix.len()..].to_string(), v))).collect()
    }

    /// The connector name these options belong to.
    pub fn connector(&self) -> &str {
        self.connector
    }

    /// A "bad value" error for `key` (secret values are not echoed).
    pub fn bad(&self, key: &str, value: &str, expected: &str) -> ConnectorError {
        ConnectorError::Config(format!(
            "option '{key}' of connector '{}' must be {expected}, got '{}'",
            self.connector,
            if is_secret(key) { "***" } else { value }
        ))
    }

    /// Fails on any key not pulled, suggesting the closest known key.
    pub fn finish(self, known: &[&str]) -> Result<(), ConnectorError> {
        if let Some(key) = self.remaining.keys().next() {
            let hint = closest(key, known).map(|k| format!(" (did you mean '{k}'?)")).unwrap_or_default();
            return Err(ConnectorError::Config(format!(
                "unknown option '{key}' for connector '{}'{hint}",
                self.connector
            )));
        }
        Ok(())
    }
}

/// The known key closest to `key` by edit distance, if reasonably close, else a known key that
/// `key` (of at least 4 characters) begins, e.g. `prefetch` for `prefetch_count`.
pub fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let by_distance = known
        .iter()
        .map(|k| (levenshtein(key, k), *k))
        .filter(|(d, k)| *d <= (k.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k);
    by_distance.or_else(|| {
        let lower = key.to_ascii_lowercase();
        (lower.len() >= 4).then(|| known.iter().find(|k| k.starts_with(lower.as_str())).copied()).flatten()
    })
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_suggests_closest() {
        let mut o = Options::new();
        o.insert("bootstrap.server".into(), "x".into());
        let r = OptionReader::new("kafka", o);
        let e = r.finish(&["bootstrap.servers", "topic"]).expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "unknown option 'bootstrap.server' for connector 'kafka' (did you mean 'bootstrap.servers'?)"
        );
        assert_eq!(closest("prefetch", &["uri", "prefetch_count"]), Some("prefetch_count"));
        assert_eq!(closest("xyzw", &["uri", "prefetch_count"]), None);
    }

    #[test]
    fn typed_values() {
        let mut o = Options::new();
        o.insert("n".into(), "12".into());
        o.insert("b".into(), "nope".into());
        let mut r = OptionReader::new("c", o);
        assert_eq!(r.opt_u64("n").expect("n"), Some(12));
        assert!(r.opt_bool("b").expect_err("b").to_string().contains("'b'"));
        assert!(r.required_str("x").expect_err("x").to_string().contains("requires option 'x'"));
        assert!(is_secret("sasl.password"));
    }

    #[test]
    fn secrets_are_masked_everywhere() {
        assert!(is_secret("schema.registry.password") && is_secret("AUTH") && !is_secret("topic"));
        assert_eq!(
            redact("connection", "postgresql://u:hunter2@h:5432/db").as_deref(),
            Some("postgresql://u:***@h:5432/db")
        );
        assert_eq!(redact("uri", "amqp://guest@h").as_deref(), None);
        assert_eq!(redact("url", "ws://a:b@h/x?t=1,ws://c:d@g").as_deref(), Some("ws://a:***@h/x?t=1,ws://c:***@g"));
        let mut o = Options::new();
        o.insert("sasl.password".into(), "s3cr'et".into());
        o.insert("connection".into(), "mysql://root:pw@localhost/db".into());
        o.insert("topic".into(), "t".into());
        let sql = "CREATE SOURCE s (a INT) WITH ('sasl.password' = 's3cr''et', 'connection' = 'mysql://root:pw@localhost/db', 'topic' = 't')";
        let red = redact_sql(sql, &o);
        assert_eq!(
            red,
            "CREATE SOURCE s (a INT) WITH ('sasl.password' = '***', 'connection' = 'mysql://root:***@localhost/db', 'topic' = 't')"
        );
        let dbg = format!("{:?}", Redacted(&o));
        assert!(!dbg.contains("s3cr") && !dbg.contains(":pw@") && dbg.contains("\"t\""), "{dbg}");
    }
}
