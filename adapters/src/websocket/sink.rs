//! Wiring of the WebSocket sink: a fan-out server (default) or a client pushing to one peer.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use laminar_dataflow::batch::DiffBatch;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};

use super::client::{connect, tls_config, ClientStream};
use super::config::{ClientOptions, Endpoint, SinkConfig, SlowClientPolicy, SINK_KEYS};
use crate::connector::{SinkCapabilities, SinkConnector, SinkSpec};
use crate::format::{Encoder, FormatKind};
use crate::options::OptionReader;
use crate::registry::SinkFactory;
use crate::runner::{ConnectorState, ConnectorStatus};
use crate::{ConnectorError, Result};

/// Registration.
pub const SINK: SinkFactory = SinkFactory { name: "websocket", keys: SINK_KEYS, build };

fn build(
    spec: &SinkSpec,
    r: &mut OptionReader<'_>,
    _ctx: &crate::registry::BuildContext<'_>,
) -> Result<Box<dyn SinkConnector>> {
    let key_names = r.opt_str("key.columns");
    let config = SinkConfig::pull(r)?;
    let rows = RowFormat::new(config.format.kind, spec, key_names)?;
    let tls = match &config.endpoint {
        Endpoint::Client(c) => Some(tls_config(c)?),
        Endpoint::Server(_) => None,
    };
    Ok(Box::new(WebSocketSink {
        config,
        rows,
        tls,
        status: Arc::new(ConnectorStatus::new(String::new())),
        pending: HashMap::new(),
        table: HashMap::new(),
        out: Out::Closed,
    }))
}

/// Turns rows into message payloads.
struct RowFormat {
    kind: FormatKind,
    encoder: Option<Encoder>,
    append_only: bool,
    /// Key columns of an updating query.
    key: Vec<usize>,
}

impl RowFormat {
    fn new(kind: FormatKind, spec: &SinkSpec, key_names: Option<String>) -> Result<Self> {
        let encoder = match kind {
            FormatKind::Raw => {
                crate::format::raw::check_sink(&spec.schema, spec.append_only)?;
                None
            }
            _ => Some(Encoder::new(kind, &spec.schema, false, b',')?),
        };
        let key = crate::upsert::sink_key(spec, key_names)?;
        Ok(Self { kind, encoder, append_only: spec.append_only, key })
    }

    /// One payload per row.
    fn payloads(&mut self, rows: &RecordBatch) -> Result<Vec<Bytes>> {
        match self.encoder.as_mut() {
            Some(e) => Ok(e.encode_rows(&DiffBatch::inserts(rows.clone()))?.into_iter().map(Bytes::from).collect()),
            None => Ok(crate::format::raw::payloads(rows.column(0))?.into_iter().map(Bytes::from).collect()),
        }
    }

    /// The key of each row as a JSON object of the key columns.
    fn keys(&self, rows: &RecordBatch) -> Result<Vec<String>> {
        crate::upsert::key_strings(rows, &self.key)
    }

    /// The message of one change of an updating query.
    fn change(&self, op: &str, key: &str, row: &Bytes) -> Message {
        let text = match self.kind {
            FormatKind::Csv => format!("{},{op}", String::from_utf8_lossy(row)),
            _ => format!("{{\"op\":\"{op}\",\"key\":{key},\"row\":{}}}", String::from_utf8_lossy(row)),
        };
        Message::Text(Utf8Bytes::from(text))
    }

    /// A text message, or a binary one for a payload that is not UTF-8 (raw BYTEA values).
    fn message(&self, payload: Bytes) -> Message {
        if std::str::from_utf8(&payload).is_err() {
            return Message::Binary(payload);
        }
        Utf8Bytes::try_from(payload).map_or_else(|_| Message::Binary(Bytes::new()), Message::Text)
    }
}

/// Where messages go.
enum Out {
    /// Not open.
    Closed,
    /// Server mode.
    Server { hub: Arc<Hub>, stop: watch::Sender<bool>, acceptor: JoinHandle<()> },
    /// Client mode.
    Client { tx: mpsc::Sender<Outgoing>, writer: JoinHandle<()>, failed: Arc<Mutex<Option<String>>> },
}

/// Sends every change of the query to WebSocket clients (server mode) or to one WebSocket
/// server (client mode).
pub struct WebSocketSink {
    config: SinkConfig,
    rows: RowFormat,
    tls: Option<Arc<rustls::ClientConfig>>,
    status: Arc<ConnectorStatus>,
    /// Updating queries: key → its row at the end of the epoch so far (None: deleted), with the
    /// row it replaces.
    pending: HashMap<String, Option<Bytes>>,
    /// Updating queries: the current row of every key.
    table: HashMap<String, Bytes>,
    out: Out,
}

impl WebSocketSink {
    /// Sends `messages`; in server mode `table` updates the snapshot new clients receive, in
    /// the same step under the hub's lock (a client connecting meanwhile gets either the table
    /// before these changes and then them, or the table after).
    async fn send(&mut self, messages: Vec<Message>, table: Vec<(String, Option<Message>)>) -> Result<()> {
        if messages.is_empty() && table.is_empty() {
            return Ok(());
        }
        self.status.add_counter("messages", messages.len() as i64);
        match &self.out {
            Out::Closed => Err(ConnectorError::Failed("the WebSocket sink is not open".into())),
            Out::Server { hub, .. } => {
                hub.broadcast(messages, table);
                Ok(())
            }
            Out::Client { tx, failed, .. } => {
                for m in messages {
                    if tx.send(Outgoing::Message(m)).await.is_err() {
                        let why = failed.lock().clone().unwrap_or_else(|| "the connection task ended".into());
                        return Err(ConnectorError::Failed(why));
                    }
                }
                Ok(())
            }
        }
    }

    /// Updating queries: the epoch's net change per key as messages, and what it does to the
    /// table new clients receive first (key → its row as an insert, or None: gone).
    fn settle(&mut self) -> (Vec<Message>, Vec<(String, Option<Message>)>) {
        let mut out = Vec::with_capacity(self.pending.len());
        let mut table = Vec::with_capacity(self.pending.len());
        let pending = std::mem::take(&mut self.pending);
        for (key, row) in pending {
            match row {
                Some(row) => {
                    let op = match self.table.get(&key) {
                        Some(old) if *old == row => continue,
                        Some(_) => "update",
                        None => "insert",
                    };
                    out.push(self.rows.change(op, &key, &row));
                    table.push((key.clone(), Some(self.rows.change("insert", &key, &row))));
                    self.table.insert(key, row);
                }
                None => {
                    if let Some(old) = self.table.remove(&key) {
                        out.push(self.rows.change("delete", &key, &old));
                        table.push((key, None));
                    }
                }
            }
        }
        (out, table)
    }
}

#[async_trait]
impl SinkConnector for WebSocketSink {
    fn capabilities(&self) -> SinkCapabilities {
        SinkCapabilities { upsert: true, changelog: true, exactly_once: false, parallel: false }
    }

    fn attach(&mut self, status: Arc<ConnectorStatus>) {
        self.status = status;
    }

    async fn open(&mut self) -> Result<()> {
        let ws_config = WebSocketConfig::default();
        match self.config.endpoint.clone() {
            Endpoint::Server(addr) => {
                let listener = TcpListener::bind(addr).await.map_err(|e| {
                    ConnectorError::Unavailable(format!("websocket server cannot listen on {addr}: {e}"))
                })?;
                if let Ok(a) = listener.local_addr() {
                    self.status.set_counter("port", i64::from(a.port()));
                }
                self.status.set_counter("clients", 0);
                let hub = Arc::new(Hub {
                    policy: self.config.slow_client_policy,
                    queue: self.config.client_queue_size,
                    status: self.status.clone(),
                    inner: Mutex::new(HubInner {
                        clients: Vec::new(),
                        replay: VecDeque::new(),
                        replay_cap: self.config.replay_buffer_size,
                        snapshot: (!self.rows.append_only && self.config.snapshot_on_connect).then(HashMap::new),
                        next_id: 0,
                    }),
                });
                let (stop, stop_rx) = watch::channel(false);
                let acceptor = tokio::spawn(accept(listener, hub.clone(), ws_config, stop_rx));
                self.out = Out::Server { hub, stop, acceptor };
            }
            Endpoint::Client(opts) => {
                let tls = self.tls.clone().ok_or_else(|| ConnectorError::Failed("no TLS settings".into()))?;
                let first = connect(&opts, &tls, ws_config).await?;
                self.status.set_counter("connected", 1);
                let (tx, rx) = mpsc::channel(self.config.buffer_size);
                let failed = Arc::new(Mutex::new(None));
                let writer = ClientWriter { opts, tls, ws_config, status: self.status.clone(), failed: failed.clone() };
                let writer = tokio::spawn(writer.run(first, rx));
                self.out = Out::Client { tx, writer, failed };
            }
        }
        Ok(())
    }

    async fn write(&mut self, batch: &DiffBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.rows.append_only {
            let expanded = crate::upsert::expand_inserts(batch)?;
            let messages: Vec<Message> =
                self.rows.payloads(&expanded)?.into_iter().map(|p| self.rows.message(p)).collect();
            return self.send(messages, Vec::new()).await;
        }
        let keys = self.rows.keys(&batch.data)?;
        let payloads = self.rows.payloads(&batch.data)?;
        for (i, (key, row)) in keys.into_iter().zip(payloads).enumerate() {
            crate::upsert::fold(&mut self.pending, key, row, batch.diff(i) > 0);
        }
        Ok(())
    }

    async fn commit(&mut self, _epoch: u64) -> Result<()> {
        if !self.rows.append_only {
            let (messages, table) = self.settle();
            self.send(messages, table).await?;
        }
        if let Out::Client { tx, failed, .. } = &self.out {
            // The epoch is delivered once every message of it is written to the socket.
            let (ack, done) = oneshot::channel();
            let ended =
                || ConnectorError::Failed(failed.lock().clone().unwrap_or_else(|| "the connection task ended".into()));
            tx.send(Outgoing::Flush(ack)).await.map_err(|_| ended())?;
            done.await.map_err(|_| ended())?;
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.out, Out::Closed) {
            Out::Closed => {}
            Out::Server { hub, stop, acceptor } => {
                let _ = stop.send(true);
                hub.disconnect_all();
                let _ = tokio::time::timeout(Duration::from_secs(2), acceptor).await;
            }
            Out::Client { tx, writer, .. } => {
                drop(tx);
                let mut writer = writer;
                if tokio::time::timeout(Duration::from_secs(5), &mut writer).await.is_err() {
                    writer.abort();
                }
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.config.endpoint.describe()
    }
}

/// The connected clients of the server mode.
struct Hub {
    policy: SlowClientPolicy,
    queue: usize,
    status: Arc<ConnectorStatus>,
    inner: Mutex<HubInner>,
}

struct HubInner {
    clients: Vec<ClientQueue>,
    replay: VecDeque<Message>,
    replay_cap: usize,
    /// Updating queries (with `snapshot_on_connect`): every key's current row as an insert.
    snapshot: Option<HashMap<String, Message>>,
    next_id: u64,
}

struct ClientQueue {
    id: u64,
    tx: mpsc::Sender<Message>,
    /// Notified when the disconnect policy drops the client.
    kick: Arc<tokio::sync::Notify>,
}

impl Hub {
    /// Queues `messages` for every client without waiting, and applies `table` to the snapshot
    /// new clients receive.
    fn broadcast(&self, messages: Vec<Message>, table: Vec<(String, Option<Message>)>) {
        let mut inner = self.inner.lock();
        if let Some(snapshot) = inner.snapshot.as_mut() {
            for (k, m) in table {
                match m {
                    Some(m) => snapshot.insert(k, m),
                    None => snapshot.remove(&k),
                };
            }
        }
        let mut gone: Vec<u64> = Vec::new();
        let mut dropped = 0i64;
        for c in &inner.clients {
            for m in &messages {
                match c.tx.try_send(m.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => match self.policy {
                        SlowClientPolicy::Drop => dropped += 1,
                        SlowClientPolicy::Disconnect => {
                            gone.push(c.id);
                            c.kick.notify_one();
                            self.status.add_counter("slow_client_disconnects", 1);
                            break;
                        }
                    },
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        gone.push(c.id);
                        break;
                    }
                }
            }
        }
        if dropped > 0 {
            self.status.add_counter("slow_client_drops", dropped);
        }
        if !gone.is_empty() {
            // Dropping the sender ends the client's writer, which closes the connection.
            inner.clients.retain(|c| !gone.contains(&c.id));
        }
        if inner.replay_cap > 0 {
            for m in messages {
                if inner.replay.len() == inner.replay_cap {
                    inner.replay.pop_front();
                }
                inner.replay.push_back(m);
            }
        }
    }

    fn disconnect_all(&self) {
        self.inner.lock().clients.clear();
    }
}

/// Accepts clients until stopped.
async fn accept(listener: TcpListener, hub: Arc<Hub>, ws_config: WebSocketConfig, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            a = listener.accept() => {
                let Ok((tcp, peer)) = a else { continue };
                tokio::spawn(serve_client(tcp, peer, hub.clone(), ws_config, stop.clone()));
            }
        }
    }
}

async fn serve_client(
    tcp: TcpStream,
    peer: SocketAddr,
    hub: Arc<Hub>,
    ws_config: WebSocketConfig,
    mut stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let handshake = tokio_tungstenite::accept_async_with_config(tcp, Some(ws_config));
    let ws = match tokio::time::timeout(Duration::from_secs(10), handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            hub.status.set_last_error(format!("websocket client {peer}: handshake failed: {e}"));
            return;
        }
        Err(_) => return,
    };
    let (tx, mut rx) = mpsc::channel::<Message>(hub.queue);
    let kick = Arc::new(tokio::sync::Notify::new());
    // What the client gets first (the current table of an updating query, else the replay
    // buffer), taken together with its registration so that nothing is missed or doubled.
    let initial: Vec<Message> = {
        let mut inner = hub.inner.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.clients.push(ClientQueue { id, tx, kick: kick.clone() });
        match &inner.snapshot {
            Some(t) => t.values().cloned().collect(),
            None => inner.replay.iter().cloned().collect(),
        }
    };
    hub.status.add_counter("clients", 1);
    hub.status.add_counter("connections", 1);
    let (mut sink, mut stream) = ws.split();
    let work = async {
        for m in initial {
            sink.feed(m).await.map_err(|e| e.to_string())?;
        }
        sink.flush().await.map_err(|e| e.to_string())?;
        loop {
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                m = rx.recv() => match m {
                    // The hub let go of this client (shutdown).
                    None => return Ok(()),
                    Some(m) => {
                        sink.feed(m).await.map_err(|e| e.to_string())?;
                        let mut n = 0;
                        while n < 512 {
                            match rx.try_recv() {
                                Ok(m) => sink.feed(m).await.map_err(|e| e.to_string())?,
                                Err(_) => break,
                            }
                            n += 1;
                        }
                        sink.flush().await.map_err(|e| e.to_string())?;
                    }
                },
                m = stream.next() => match m {
                    None | Some(Ok(Message::Close(_))) => return Err(String::new()),
                    Some(Err(e)) => return Err(e.to_string()),
                    Some(Ok(_)) => {}
                },
            }
        }
    };
    // The disconnect policy cuts the client off at once, even while a write to it is stuck.
    let result: Option<Result<(), String>> = tokio::select! {
        r = work => Some(r),
        _ = kick.notified() => None,
    };
    match result {
        None => {
            if let Ok(ws) = sink.reunite(stream) {
                // Reset rather than close: the client's unread backlog is not delivered.
                let _ = ws.get_ref().set_zero_linger();
            }
        }
        Some(r) => {
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Close(None))).await;
            if let Err(e) = r {
                if !e.is_empty() {
                    hub.status.set_last_error(format!("websocket client {peer}: {e}"));
                }
            }
        }
    }
    hub.status.add_counter("clients", -1);
}

/// What the client-mode sink hands its connection task.
enum Outgoing {
    Message(Message),
    /// Acknowledged once everything before it is written.
    Flush(oneshot::Sender<()>),
}

/// Client mode: writes to one connection, reconnecting with backoff; messages wait in the
/// channel meanwhile (a full channel makes the pipeline wait).
struct ClientWriter {
    opts: ClientOptions,
    tls: Arc<rustls::ClientConfig>,
    ws_config: WebSocketConfig,
    status: Arc<ConnectorStatus>,
    failed: Arc<Mutex<Option<String>>>,
}

impl ClientWriter {
    async fn run(self, first: ClientStream, mut rx: mpsc::Receiver<Outgoing>) {
        let mut ws = Some(first);
        // A message whose write failed: sent again first after reconnecting.
        let mut retry: Option<Message> = None;
        let mut failures = 0u64;
        loop {
            let Some(mut conn) = ws.take() else {
                failures += 1;
                if self.opts.backoff.exhausted(failures) {
                    let why = format!(
                        "websocket {}: gave up after {} reconnect attempts ({})",
                        self.opts.url,
                        self.opts.backoff.max_retries,
                        self.status.last_error().unwrap_or_default()
                    );
                    *self.failed.lock() = Some(why.clone());
                    self.status.set_last_error(why);
                    self.status.set_state(ConnectorState::Failed);
                    return;
                }
                self.status.set_state(ConnectorState::Retrying);
                tokio::time::sleep(self.opts.backoff.delay(failures)).await;
                if rx.is_closed() && rx.is_empty() && retry.is_none() {
                    return;
                }
                self.status.retries.fetch_add(1, Ordering::Relaxed);
                self.status.add_counter("reconnects", 1);
                match connect(&self.opts, &self.tls, self.ws_config).await {
                    Ok(c) => {
                        ws = Some(c);
                        self.status.set_counter("connected", 1);
                        self.status.set_state(ConnectorState::Running);
                    }
                    Err(e) => self.status.set_last_error(e.to_string()),
                }
                continue;
            };
            failures = 0;
            match self.pump(&mut conn, &mut rx, &mut retry).await {
                Ok(()) => {
                    let _ = conn.close(None).await;
                    return;
                }
                Err(e) => {
                    self.status.set_counter("connected", 0);
                    self.status.set_last_error(format!("websocket {}: {e}", self.opts.url));
                }
            }
        }
    }

    /// Writes until the sink closes (`Ok`) or the connection fails (`Err`).
    async fn pump(
        &self,
        conn: &mut ClientStream,
        rx: &mut mpsc::Receiver<Outgoing>,
        retry: &mut Option<Message>,
    ) -> Result<(), String> {
        if let Some(m) = retry.take() {
            if let Err(e) = conn.send(m.clone()).await {
                *retry = Some(m);
                return Err(e.to_string());
            }
        }
        let ping_every = self.opts.ping_interval;
        let mut ping = tokio::time::interval(if ping_every.is_zero() { Duration::from_secs(3600) } else { ping_every });
        ping.tick().await;
        let mut unflushed = false;
        loop {
            tokio::select! {
                _ = ping.tick(), if !ping_every.is_zero() => {
                    conn.send(Message::Ping(Bytes::new())).await.map_err(|e| e.to_string())?;
                }
                m = conn.next() => match m {
                    None | Some(Ok(Message::Close(_))) => return Err("connection closed by the server".into()),
                    Some(Err(e)) => return Err(e.to_string()),
                    Some(Ok(_)) => {}
                },
                item = rx.recv() => match item {
                    None => {
                        conn.flush().await.map_err(|e| e.to_string())?;
                        return Ok(());
                    }
                    Some(Outgoing::Message(m)) => {
                        if let Err(e) = conn.feed(m.clone()).await {
                            *retry = Some(m);
                            return Err(e.to_string());
                        }
                        unflushed = true;
                        if rx.is_empty() {
                            conn.flush().await.map_err(|e| e.to_string())?;
                            unflushed = false;
                        }
                    }
                    Some(Outgoing::Flush(ack)) => {
                        if unflushed {
                            conn.flush().await.map_err(|e| e.to_string())?;
                            unflushed = false;
                        }
                        let _ = ack.send(());
                    }
                },
            }
        }
    }
}
