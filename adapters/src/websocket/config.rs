//! Typed configuration of the WebSocket source and sink, pulled from `WITH (…)` options.

use std::net::SocketAddr;
use std::time::Duration;

use crate::format::{FormatKind, FormatSpec};
use crate::options::OptionReader;
use crate::{ConnectorError, Result};

/// Which side of the connection LaminarDB takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Connects to `url`.
    Client,
    /// Listens on `bind_address`.
    Server,
}

/// How the client mode reconnects: `reconnect.initial_delay_ms` doubling up to
/// `reconnect.max_delay_ms`, at most `reconnect.max_retries` times in a row (0: forever).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// First delay after a lost connection.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
    /// Failed attempts in a row before giving up (0: never give up).
    pub max_retries: u64,
}

impl Backoff {
    /// The delay before attempt `attempt` (1-based) of a series of failures.
    pub fn delay(&self, attempt: u64) -> Duration {
        let shift = attempt.saturating_sub(1).min(30) as u32;
        self.initial.saturating_mul(1u32 << shift).min(self.max)
    }

    /// True once `failures` failed attempts in a row exhaust the retries.
    pub fn exhausted(&self, failures: u64) -> bool {
        self.max_retries != 0 && failures > self.max_retries
    }
}

/// Client-mode settings shared by the source and the sink.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `url`: `ws://` or `wss://`.
    pub url: String,
    /// `auth`: the `Authorization` header's value (a secret).
    pub auth: Option<String>,
    /// Reconnection.
    pub backoff: Backoff,
    /// `ping_interval_ms` (0: no pings).
    pub ping_interval: Duration,
    /// `tls.ca_file`: PEM certificates trusted besides the built-in web roots (wss://).
    pub ca_file: Option<String>,
}

/// Where the connection is made.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// Client mode.
    Client(ClientOptions),
    /// Server mode: the address to listen on.
    Server(SocketAddr),
}

impl Endpoint {
    /// The mode.
    pub fn mode(&self) -> Mode {
        match self {
            Endpoint::Client(_) => Mode::Client,
            Endpoint::Server(_) => Mode::Server,
        }
    }

    /// For messages (never holds the `auth` value).
    pub fn describe(&self) -> String {
        match self {
            Endpoint::Client(c) => {
                format!("websocket client of {}", crate::options::redact_uri(&c.url).unwrap_or_else(|| c.url.clone()))
            }
            Endpoint::Server(a) => format!("websocket server on {a}"),
        }
    }
}

fn pull_endpoint(r: &mut OptionReader<'_>, default: Mode) -> Result<Endpoint> {
    let mode = match r.opt_enum("mode", &["client", "server"])?.as_deref() {
        Some("client") => Mode::Client,
        Some(_) => Mode::Server,
        None => default,
    };
    match mode {
        Mode::Server => {
            let Some(bind) = r.opt_str("bind_address") else {
                return Err(ConnectorError::Config(
                    "missing required option 'bind_address' for 'mode' = 'server' (e.g. '0.0.0.0:8080')".into(),
                ));
            };
            let addr: SocketAddr =
                bind.trim().parse().map_err(|_| r.bad("bind_address", &bind, "host:port, e.g. '0.0.0.0:8080'"))?;
            for k in ["url", "auth", "ping_interval_ms", "tls.ca_file"] {
                if r.opt_str(k).is_some() {
                    return Err(ConnectorError::Config(format!("option '{k}' applies to 'mode' = 'client' only")));
                }
            }
            Ok(Endpoint::Server(addr))
        }
        Mode::Client => {
            let Some(url) = r.opt_str("url") else {
                return Err(ConnectorError::Config(
                    "missing required option 'url' for 'mode' = 'client' (e.g. 'wss://host/path')".into(),
                ));
            };
            let url = url.trim().to_string();
            if !(url.starts_with("ws://") || url.starts_with("wss://")) || url.len() <= "wss://".len() {
                return Err(r.bad("url", &url, "a ws:// or wss:// URL"));
            }
            if r.opt_str("bind_address").is_some() {
                return Err(ConnectorError::Config("option 'bind_address' applies to 'mode' = 'server' only".into()));
            }
            let initial = r.opt_u64("reconnect.initial_delay_ms")?.unwrap_or(1_000);
            let max = r.opt_u64("reconnect.max_delay_ms")?.unwrap_or(30_000);
            if initial == 0 || max < initial {
                return Err(ConnectorError::Config(format!(
                    "'reconnect.initial_delay_ms' ({initial}) must be positive and at most 'reconnect.max_delay_ms' ({max})"
                )));
            }
            let max_retries = r.opt_u64("reconnect.max_retries")?.unwrap_or(0);
            let ping = r.opt_u64("ping_interval_ms")?.unwrap_or(30_000);
            Ok(Endpoint::Client(ClientOptions {
                url,
                auth: r.opt_str("auth"),
                backoff: Backoff {
                    initial: Duration::from_millis(initial),
                    max: Duration::from_millis(max),
                    max_retries,
                },
                ping_interval: Duration::from_millis(ping),
                ca_file: r.opt_str("tls.ca_file"),
            }))
        }
    }
}

/// The source's configuration.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// Client (default) or server mode.
    pub endpoint: Endpoint,
    /// `format`: json (default), csv, raw.
    pub format: FormatSpec,
    /// `batch_size`: messages per poll at most (default 10,000).
    pub batch_size: usize,
    /// `max_message_bytes`: larger messages are refused by the WebSocket layer (default 16 MiB).
    pub max_message_bytes: usize,
}

/// Keys the source reads.
pub const SOURCE_KEYS: &[&str] = &[
    "mode",
    "url",
    "bind_address",
    "format",
    "csv.header",
    "csv.delimiter",
    "auth",
    "reconnect.initial_delay_ms",
    "reconnect.max_delay_ms",
    "reconnect.max_retries",
    "ping_interval_ms",
    "tls.ca_file",
    "batch_size",
    "max_message_bytes",
];

impl SourceConfig {
    /// Reads and checks the options.
    pub fn pull(r: &mut OptionReader<'_>) -> Result<Self> {
        let endpoint = pull_endpoint(r, Mode::Client)?;
        let format = FormatSpec::pull(r, FormatKind::Json, &[FormatKind::Json, FormatKind::Csv, FormatKind::Raw])?;
        let batch_size = r.opt_u64("batch_size")?.unwrap_or(10_000).max(1) as usize;
        let max_message_bytes = r.opt_u64("max_message_bytes")?.unwrap_or(16 << 20).max(1024) as usize;
        Ok(Self { endpoint, format, batch_size, max_message_bytes })
    }
}

/// What the server-mode sink does with a client whose queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowClientPolicy {
    /// The client misses the messages that do not fit (counted); others are unaffected.
    Drop,
    /// The client is disconnected.
    Disconnect,
}

/// The sink's configuration.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// Server (default) or client mode.
    pub endpoint: Endpoint,
    /// `format`: json (default), csv, raw.
    pub format: FormatSpec,
    /// `slow_client_policy` (server mode; default drop).
    pub slow_client_policy: SlowClientPolicy,
    /// `replay_buffer_size`: recent messages sent to a client when it connects (default 0).
    pub replay_buffer_size: usize,
    /// `client_queue_size`: messages queued per client before the policy applies (default 4,096).
    pub client_queue_size: usize,
    /// `snapshot_on_connect`: for updating queries, a new client first receives the current
    /// row of every key (default true).
    pub snapshot_on_connect: bool,
    /// `buffer_size`: client mode, messages held while disconnected before the pipeline waits
    /// (default 10,000).
    pub buffer_size: usize,
}

/// Keys the sink reads.
pub const SINK_KEYS: &[&str] = &[
    "mode",
    "url",
    "bind_address",
    "format",
    "csv.delimiter",
    "auth",
    "reconnect.initial_delay_ms",
    "reconnect.max_delay_ms",
    "reconnect.max_retries",
    "ping_interval_ms",
    "tls.ca_file",
    "slow_client_policy",
    "replay_buffer_size",
    "client_queue_size",
    "snapshot_on_connect",
    "buffer_size",
    "key.columns",
];

impl SinkConfig {
    /// Reads and checks the options.
    pub fn pull(r: &mut OptionReader<'_>) -> Result<Self> {
        let endpoint = pull_endpoint(r, Mode::Server)?;
        let format = FormatSpec::pull(r, FormatKind::Json, &[FormatKind::Json, FormatKind::Csv, FormatKind::Raw])?;
        let slow_client_policy = match r.opt_enum("slow_client_policy", &["drop", "disconnect"])?.as_deref() {
            Some("disconnect") => SlowClientPolicy::Disconnect,
            _ => SlowClientPolicy::Drop,
        };
        let replay_buffer_size = r.opt_u64("replay_buffer_size")?.unwrap_or(0) as usize;
        let client_queue_size = r.opt_u64("client_queue_size")?.unwrap_or(4_096).max(1) as usize;
        let snapshot_on_connect = r.opt_bool("snapshot_on_connect")?.unwrap_or(true);
        let buffer_size = r.opt_u64("buffer_size")?.unwrap_or(10_000).max(1) as usize;
        if endpoint.mode() == Mode::Client {
            for (k, set) in [
                ("slow_client_policy", slow_client_policy != SlowClientPolicy::Drop),
                ("replay_buffer_size", replay_buffer_size != 0),
            ] {
                if set {
                    return Err(ConnectorError::Config(format!("option '{k}' applies to 'mode' = 'server' only")));
                }
            }
        }
        Ok(Self {
            endpoint,
            format,
            slow_client_policy,
            replay_buffer_size,
            client_queue_size,
            snapshot_on_connect,
            buffer_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Options;

    fn reader(pairs: &[(&str, &str)]) -> Options {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn modes_need_their_address() {
        let o = reader(&[("mode", "server")]);
        let mut r = OptionReader::new("websocket", o);
        let e = SourceConfig::pull(&mut r).expect_err("no bind_address");
        assert!(e.to_string().contains("bind_address"), "{e}");
        let mut r = OptionReader::new("websocket", reader(&[]));
        let e = SourceConfig::pull(&mut r).expect_err("no url");
        assert!(e.to_string().contains("'url'"), "{e}");
        let mut r = OptionReader::new("websocket", reader(&[("mode", "client")]));
        let e = SinkConfig::pull(&mut r).expect_err("no url");
        assert!(e.to_string().contains("'url'"), "{e}");
        let mut r = OptionReader::new("websocket", reader(&[]));
        let e = SinkConfig::pull(&mut r).expect_err("sink defaults to server mode");
        assert!(e.to_string().contains("bind_address"), "{e}");
        let mut r = OptionReader::new("websocket", reader(&[("url", "http://x")]));
        let e = SourceConfig::pull(&mut r).expect_err("not ws");
        assert!(e.to_string().contains("url"), "{e}");
    }

    #[test]
    fn defaults_follow_the_documentation() {
        let mut r = OptionReader::new("websocket", reader(&[("url", "wss://feed.example/prices")]));
        let c = SourceConfig::pull(&mut r).expect("valid");
        let Endpoint::Client(c) = c.endpoint else { panic!("client mode is the source's default") };
        assert_eq!(
            c.backoff,
            Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(30), max_retries: 0 }
        );
        assert_eq!(c.ping_interval, Duration::from_secs(30));
        let mut r = OptionReader::new("websocket", reader(&[("bind_address", "127.0.0.1:0")]));
        let s = SinkConfig::pull(&mut r).expect("valid");
        assert_eq!(s.endpoint.mode(), Mode::Server);
        assert_eq!(s.slow_client_policy, SlowClientPolicy::Drop);
        assert_eq!(s.replay_buffer_size, 0);
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let b = Backoff { initial: Duration::from_millis(100), max: Duration::from_millis(700), max_retries: 3 };
        let d: Vec<u128> = (1..=5).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(d, vec![100, 200, 400, 700, 700]);
        assert!(!b.exhausted(3) && b.exhausted(4));
        assert!(!Backoff { max_retries: 0, ..b }.exhausted(1_000_000));
    }
}
