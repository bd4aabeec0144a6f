//! Wiring of WebSocket connections into the source framework.
//!
//! Reading runs in background tasks (one per connection) that hand messages to a bounded
//! channel; [`SourceConnector::poll`] drains and decodes it. When the pipeline's buffer is full
//! the runner stops polling, the channel fills, the tasks stop reading their sockets, and TCP
//! flow control pushes back on the senders.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message};

use super::client::{connect, tls_config};
use super::config::{ClientOptions, Endpoint, SourceConfig, SOURCE_KEYS};
use crate::connector::{Poll, SourceCapabilities, SourceChunk, SourceConnector, SourceSpec};
use crate::format::Decoder;
use crate::options::OptionReader;
use crate::registry::SourceFactory;
use crate::runner::{ConnectorState, ConnectorStatus};
use crate::{ConnectorError, Result};

/// Registration.
pub const SOURCE: SourceFactory = SourceFactory { name: "websocket", keys: SOURCE_KEYS, build };

/// How long one poll waits for a first message.
const POLL_WAIT: Duration = Duration::from_millis(50);

fn build(
    spec: &SourceSpec,
    r: &mut OptionReader<'_>,
    _ctx: &crate::registry::BuildContext<'_>,
) -> Result<Box<dyn SourceConnector>> {
    let config = SourceConfig::pull(r)?;
    let decoder = Decoder::new(&config.format, &spec.schema, &spec.primary_key)?;
    let tls = match &config.endpoint {
        Endpoint::Client(c) => Some(tls_config(c)?),
        Endpoint::Server(_) => None,
    };
    Ok(Box::new(WebSocketSource {
        config,
        decoder,
        tls,
        status: Arc::new(ConnectorStatus::new(String::new())),
        rx: None,
        stop: None,
        tasks: Vec::new(),
        local_addr: None,
        failed: None,
    }))
}

/// What the connection tasks hand to `poll`.
enum Incoming {
    /// One message's payload and where it came from (for dead letters).
    Message { from: Arc<str>, seq: u64, payload: Bytes },
    /// The client gave up reconnecting.
    Fatal(ConnectorError),
}

/// Reads JSON, CSV or raw messages from a WebSocket peer (client mode) or from every client
/// that connects (server mode).
pub struct WebSocketSource {
    config: SourceConfig,
    decoder: Decoder,
    tls: Option<Arc<rustls::ClientConfig>>,
    status: Arc<ConnectorStatus>,
    rx: Option<mpsc::Receiver<Incoming>>,
    stop: Option<watch::Sender<bool>>,
    tasks: Vec<JoinHandle<()>>,
    local_addr: Option<SocketAddr>,
    /// The client gave up reconnecting: reported by the next poll.
    failed: Option<ConnectorError>,
}

impl WebSocketSource {
    fn ws_config(&self) -> WebSocketConfig {
        WebSocketConfig::default().max_message_size(Some(self.config.max_message_bytes))
    }
}

/// Splits a message into records: JSON lines or CSV lines in one message are several records,
/// and so are the elements of a top-level JSON array.
fn records(payload: &Bytes, json: bool, out: &mut Vec<Bytes>) {
    let trimmed = payload.trim_ascii();
    if json && trimmed.first() == Some(&b'[') {
        if let Ok(items) = serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(trimmed) {
            out.extend(items.into_iter().map(|v| Bytes::copy_from_slice(v.get().as_bytes())));
            return;
        }
    }
    if !trimmed.contains(&b'\n') {
        out.push(payload.clone());
        return;
    }
    let base = payload.as_ptr() as usize;
    for line in payload.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.trim_ascii().is_empty() {
            continue;
        }
        let start = line.as_ptr() as usize - base;
        out.push(payload.slice(start..start + line.len()));
    }
}

#[async_trait]
impl SourceConnector for WebSocketSource {
    fn capabilities(&self) -> SourceCapabilities {
        SourceCapabilities {
            replayable: false,
            changelog: false,
            bounded: false,
            watermarks: false,
            key_from_peer: false,
            partitioned: false,
        }
    }

    fn attach(&mut self, status: Arc<ConnectorStatus>) {
        self.status = status;
    }

    async fn open(&mut self) -> Result<()> {
        let (tx, rx) = mpsc::channel(self.config.batch_size.max(64));
        let (stop_tx, stop_rx) = watch::channel(false);
        match &self.config.endpoint {
            Endpoint::Client(opts) => {
                let tls = self.tls.clone().ok_or_else(|| ConnectorError::Failed("no TLS settings".into()))?;
                // The first connection is made here, so that a wrong URL fails `start()`.
                let stream = connect(opts, &tls, self.ws_config()).await?;
                self.status.set_counter("connected", 1);
                let task = ClientReader {
                    opts: opts.clone(),
                    tls,
                    ws_config: self.ws_config(),
                    tx,
                    stop: stop_rx,
                    status: self.status.clone(),
                    from: Arc::from(opts.url.as_str()),
                };
                self.tasks.push(tokio::spawn(task.run(stream)));
            }
            Endpoint::Server(addr) => {
                let listener = TcpListener::bind(addr).await.map_err(|e| {
                    ConnectorError::Unavailable(format!("websocket server cannot listen on {addr}: {e}"))
                })?;
                self.local_addr = listener.local_addr().ok();
                if let Some(a) = self.local_addr {
                    self.status.set_counter("port", i64::from(a.port()));
                }
                self.status.set_counter("clients", 0);
                let ws_config = self.ws_config();
                let status = self.status.clone();
                self.tasks.push(tokio::spawn(serve(listener, ws_config, tx, stop_rx, status)));
            }
        }
        self.rx = Some(rx);
        self.stop = Some(stop_tx);
        Ok(())
    }

    async fn poll(&mut self) -> Result<Poll> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let Some(rx) = self.rx.as_mut() else {
            return Err(ConnectorError::Failed("the WebSocket source is not open".into()));
        };
        let first = match tokio::time::timeout(POLL_WAIT, rx.recv()).await {
            Err(_) => return Ok(Poll::Idle(Duration::ZERO)),
            Ok(None) => return Err(ConnectorError::Failed("the WebSocket connection tasks ended".into())),
            Ok(Some(m)) => m,
        };
        let json = self.config.format.kind == crate::format::FormatKind::Json;
        let mut payloads: Vec<Bytes> = Vec::new();
        let mut positions: Vec<(Arc<str>, u64)> = Vec::new();
        let mut next = Some(first);
        let mut messages = 0usize;
        while let Some(m) = next.take() {
            match m {
                Incoming::Fatal(e) => {
                    if payloads.is_empty() {
                        return Err(e);
                    }
                    // Deliver what came before; the error comes with the next poll.
                    self.failed = Some(e);
                    break;
                }
                Incoming::Message { from, seq, payload } => {
                    let before = payloads.len();
                    records(&payload, json, &mut payloads);
                    positions.extend((before..payloads.len()).map(|_| (from.clone(), seq)));
                    messages += 1;
                }
            }
            if messages >= self.config.batch_size {
                break;
            }
            next = self.rx.as_mut().and_then(|rx| rx.try_recv().ok());
        }
        self.status.add_counter("messages", messages as i64);
        let slices: Vec<&[u8]> = payloads.iter().map(|b| &b[..]).collect();
        let (changes, dead_letters) =
            self.decoder.decode(&slices, &|i| format!("{}#{}", positions[i].0, positions[i].1));
        Ok(Poll::Data(SourceChunk { changes, dead_letters, watermark: None }))
    }

    async fn close(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        for t in self.tasks.drain(..) {
            if tokio::time::timeout(Duration::from_secs(2), t).await.is_err() {
                // The task is stuck writing to a channel nobody reads any more: it ends when
                // the receiver is dropped below.
            }
        }
        self.rx = None;
        self.status.set_counter("connected", 0);
        Ok(())
    }

    fn describe(&self) -> String {
        match (&self.config.endpoint, self.local_addr) {
            (Endpoint::Server(_), Some(a)) => format!("websocket server on {a}"),
            (e, _) => e.describe(),
        }
    }
}

/// Client mode: reads from one connection and reconnects with backoff when it is lost.
struct ClientReader {
    opts: ClientOptions,
    tls: Arc<rustls::ClientConfig>,
    ws_config: WebSocketConfig,
    tx: mpsc::Sender<Incoming>,
    stop: watch::Receiver<bool>,
    status: Arc<ConnectorStatus>,
    from: Arc<str>,
}

impl ClientReader {
    async fn run(mut self, first: super::client::ClientStream) {
        let mut stream = Some(first);
        let mut seq = 0u64;
        let mut failures = 0u64;
        loop {
            if let Some(s) = stream.take() {
                failures = 0;
                self.status.set_counter("connected", 1);
                if self.status.state() == ConnectorState::Retrying {
                    self.status.set_state(ConnectorState::Running);
                }
                match self.read(s, &mut seq).await {
                    Ok(()) => return, // stopped
                    Err(e) => {
                        self.status.set_counter("connected", 0);
                        self.status.set_last_error(e);
                    }
                }
            }
            failures += 1;
            if self.opts.backoff.exhausted(failures) {
                let e = ConnectorError::Failed(format!(
                    "websocket {}: gave up after {} reconnect attempts ({})",
                    self.from,
                    self.opts.backoff.max_retries,
                    self.status.last_error().unwrap_or_default()
                ));
                let _ = self.tx.send(Incoming::Fatal(e)).await;
                return;
            }
            self.status.set_state(ConnectorState::Retrying);
            let delay = self.opts.backoff.delay(failures);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.changed() => return,
            }
            self.status.retries.fetch_add(1, Ordering::Relaxed);
            self.status.add_counter("reconnects", 1);
            match connect(&self.opts, &self.tls, self.ws_config).await {
                Ok(s) => stream = Some(s),
                Err(e) => self.status.set_last_error(e.to_string()),
            }
        }
    }

    /// Reads until the connection ends (`Err` with the reason) or the source stops (`Ok`).
    async fn read(&mut self, mut ws: super::client::ClientStream, seq: &mut u64) -> Result<(), String> {
        let ping_every = self.opts.ping_interval;
        let mut ping = tokio::time::interval(if ping_every.is_zero() { Duration::from_secs(3600) } else { ping_every });
        ping.tick().await;
        // A peer that answers no ping for two intervals is gone.
        let mut awaiting_pong = 0u32;
        loop {
            tokio::select! {
                _ = self.stop.changed() => {
                    let _ = ws.close(None).await;
                    return Ok(());
                }
                _ = ping.tick(), if !ping_every.is_zero() => {
                    if awaiting_pong >= 2 {
                        return Err(format!("websocket {}: no pong for {} ms", self.from, 2 * ping_every.as_millis()));
                    }
                    awaiting_pong += 1;
                    ws.send(Message::Ping(Bytes::new())).await.map_err(|e| format!("websocket {}: {e}", self.from))?;
                }
                m = ws.next() => match m {
                    None => return Err(format!("websocket {}: connection closed", self.from)),
                    Some(Err(e)) => return Err(format!("websocket {}: {e}", self.from)),
                    Some(Ok(Message::Close(frame))) => {
                        return Err(format!("websocket {}: closed by the server ({})", self.from,
                            frame.map(|f| f.reason.to_string()).unwrap_or_default()));
                    }
                    Some(Ok(Message::Pong(_))) => awaiting_pong = 0,
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                        awaiting_pong = 0;
                        *seq += 1;
                        let payload = match m { Message::Text(t) => Bytes::from(t), Message::Binary(b) => b, _ => Bytes::new() };
                        // Waits while the pipeline is full: the socket is not read meanwhile.
                        let item = Incoming::Message { from: self.from.clone(), seq: *seq, payload };
                        tokio::select! {
                            r = self.tx.send(item) => if r.is_err() { return Ok(()) },
                            _ = self.stop.changed() => return Ok(()),
                        }
                    }
                    Some(Ok(_)) => {}
                },
            }
        }
    }
}

/// Server mode: accepts clients until stopped; each client is read by its own task.
async fn serve(
    listener: TcpListener,
    ws_config: WebSocketConfig,
    tx: mpsc::Sender<Incoming>,
    mut stop: watch::Receiver<bool>,
    status: Arc<ConnectorStatus>,
) {
    let mut readers: Vec<JoinHandle<()>> = Vec::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            a = listener.accept() => {
                let Ok((tcp, peer)) = a else { continue };
                readers.retain(|r| !r.is_finished());
                readers.push(tokio::spawn(read_client(tcp, peer, ws_config, tx.clone(), stop.clone(), status.clone())));
            }
        }
    }
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
    }
}

async fn read_client(
    tcp: TcpStream,
    peer: SocketAddr,
    ws_config: WebSocketConfig,
    tx: mpsc::Sender<Incoming>,
    mut stop: watch::Receiver<bool>,
    status: Arc<ConnectorStatus>,
) {
    let _ = tcp.set_nodelay(true);
    let handshake = tokio_tungstenite::accept_async_with_config(tcp, Some(ws_config));
    let mut ws = match tokio::time::timeout(Duration::from_secs(10), handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            status.set_last_error(format!("websocket client {peer}: handshake failed: {e}"));
            return;
        }
        Err(_) => return,
    };
    status.add_counter("clients", 1);
    status.add_counter("connections", 1);
    let from: Arc<str> = Arc::from(peer.to_string().as_str());
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = stop.changed() => {
                let _ = ws.close(None).await;
                break;
            }
            m = ws.next() => match m {
                None | Some(Ok(Message::Close(_))) => break,
                Some(Err(e)) => {
                    status.set_last_error(format!("websocket client {peer}: {e}"));
                    break;
                }
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    seq += 1;
                    let payload = match m { Message::Text(t) => Bytes::from(t), Message::Binary(b) => b, _ => Bytes::new() };
                    let item = Incoming::Message { from: from.clone(), seq, payload };
                    tokio::select! {
                        r = tx.send(item) => if r.is_err() { break },
                        _ = stop.changed() => break,
                    }
                }
                Some(Ok(_)) => {}
            },
        }
    }
    status.add_counter("clients", -1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str, json: bool) -> Vec<String> {
        let mut out = Vec::new();
        records(&Bytes::from(s.to_string()), json, &mut out);
        out.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect()
    }

    #[test]
    fn a_message_may_hold_several_records() {
        assert_eq!(split(r#"{"a":1}"#, true), vec![r#"{"a":1}"#]);
        assert_eq!(split("{\"a\":1}\n{\"a\":2}\r\n\n", true), vec![r#"{"a":1}"#, r#"{"a":2}"#]);
        assert_eq!(split(r#" [{"a":1}, {"a":2}] "#, true), vec![r#"{"a":1}"#, r#"{"a":2}"#]);
        assert_eq!(split("1,x\n2,y", false), vec!["1,x", "2,y"]);
        // Not a JSON array after all: one record (the decoder reports it).
        assert_eq!(split("[oops", true), vec!["[oops"]);
    }
}
