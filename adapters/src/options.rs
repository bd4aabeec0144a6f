//! Typed access to `WITH (…)` options: pull each key into a typed value; whatever is left over
//! is an error ("unknown option … did you mean …?").

use std::collections::BTreeMap;

use crate::ConnectorError;

/// Raw options (keys lower-cased).
pub type Options = BTreeMap<String, String>;

/// Option keys whose values are secrets: never echoed back.
pub const SECRET_KEYS: &[&str] = &["password", "sasl.password", "auth", "token", "secret", "aws_secret_access_key"];

/// True when the value of `key` must not appear in messages.
pub fn is_secret(key: &str) -> bool {
    SECRET_KEYS.iter().any(|s| key == *s || key.ends_with(&format!(".{s}")))
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

/// The known key closest to `key` by edit distance, if reasonably close.
pub fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (levenshtein(key, k), *k))
        .filter(|(d, k)| *d <= (k.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
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
}
