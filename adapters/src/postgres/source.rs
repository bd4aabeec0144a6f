//! Wiring of a Postgres logical replication stream into the source framework: the snapshot
//! read through the slot's own snapshot, then pgoutput changes turned into inserts, deletes and
//! clears of the source's keyed rows.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use super::config::{SnapshotMode, SourceConfig, KEYS};
use super::pgoutput::{self, Lsn, Message, OldImage, Relation, ReplicationMessage, Value};
use super::upstream::{self, wire_error, UpstreamColumn};
use super::wire::{self, quote_ident, Connection, ReplicationReader, ReplicationWriter, WireError};
use crate::cdc::{self, Builder};
use crate::connector::{Change, Poll, SourceCapabilities, SourceChunk, SourceConnector, SourceSpec};
use crate::options::OptionReader;
use crate::registry::SourceFactory;
use crate::runner::ConnectorStatus;
use crate::{ConnectorError, Result};

/// Registration.
pub const SOURCE: SourceFactory = SourceFactory { name: "postgres-cdc", keys: KEYS, build };

/// Session settings that make the server's text output what [`values`] reads.
const SESSION_OPTIONS: &str =
    "-c datestyle=ISO,YMD -c timezone=UTC -c extra_float_digits=3 -c bytea_output=hex -c intervalstyle=postgres";
/// How long a poll waits for the first message.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// Standby status updates are sent at least this often (the server's `wal_sender_timeout`
/// defaults to 60 s).
const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// Name of the cursor reading the snapshot.
const CURSOR: &str = "laminar_snapshot";

fn build(
    spec: &SourceSpec,
    r: &mut OptionReader<'_>,
    _ctx: &crate::registry::BuildContext<'_>,
) -> Result<Box<dyn SourceConnector>> {
    let config = SourceConfig::pull(&spec.name, r)?;
    Ok(Box::new(PostgresCdcSource {
        config,
        schema: spec.schema.clone(),
        declared_key: spec.primary_key.clone(),
        status: Arc::new(ConnectorStatus::new(String::new())),
        key: Vec::new(),
        upstream: Vec::new(),
        position: Position::Fresh,
        phase: Phase::Closed,
        relation: None,
        in_transaction: false,
        clear_first: false,
    }))
}

/// Where the source is, as checkpointed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Position {
    /// Never started: take a fresh snapshot.
    Fresh,
    /// In the middle of a snapshot: after a restart, take a fresh one.
    Snapshot,
    /// Streaming: every transaction that committed before this LSN is applied.
    Streaming(Lsn),
}

enum Phase {
    Closed,
    /// Reading the snapshot (a transaction on the replication session, which then streams
    /// from the slot's consistent point).
    Snapshot {
        conn: Connection,
        consistent: Lsn,
    },
    Streaming(Stream),
}

/// A running replication stream: a task reading CopyData into `rx`, and one writing standby
/// status updates with the acknowledged LSN.
struct Stream {
    rx: mpsc::Receiver<std::result::Result<Vec<u8>, WireError>>,
    acked: watch::Sender<u64>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// How the columns of the upstream relation map to the declared ones.
struct RelationMap {
    oid: u32,
    names: Vec<String>,
    /// For each declared column, its index in the relation's tuples.
    declared: Vec<Option<usize>>,
    /// For each key column, its index in the relation's tuples.
    key: Vec<Option<usize>>,
}

/// Streams one table's changes through a logical replication slot.
pub struct PostgresCdcSource {
    config: SourceConfig,
    schema: SchemaRef,
    declared_key: Vec<String>,
    status: Arc<ConnectorStatus>,
    /// The key rows are matched by (resolved at open).
    key: Vec<String>,
    /// The table's columns when the source opened.
    upstream: Vec<UpstreamColumn>,
    position: Position,
    phase: Phase,
    relation: Option<RelationMap>,
    in_transaction: bool,
    /// A fresh snapshot starts by removing whatever rows the source holds.
    clear_first: bool,
}

impl PostgresCdcSource {
    fn peer(&self) -> String {
        format!(
            "postgres {} table {}.{} slot {}",
            self.config.shown, self.config.schema, self.config.table, self.config.slot
        )
    }

    async fn connect(&self) -> Result<Connection> {
        Connection::connect(&self.config.connect, SESSION_OPTIONS)
            .await
            .map_err(|e| wire_error("connecting for replication", &self.config, e))
    }

    /// Runs a query on the session, mapping errors.
    async fn run(conn: &mut Connection, cfg: &SourceConfig, what: &str, sql: &str) -> Result<Vec<wire::Row>> {
        conn.query(sql).await.map_err(|e| wire_error(what, cfg, e))
    }

    /// Drops the slot (a fresh start), waiting a little for a session that still holds it.
    async fn drop_slot(&self, conn: &mut Connection) -> Result<()> {
        let sql = format!("DROP_REPLICATION_SLOT {}", quote_ident(&self.config.slot));
        for attempt in 0..50 {
            match conn.query(&sql).await {
                Ok(_) => return Ok(()),
                Err(WireError::Server(s)) if s.code == "42704" => return Ok(()),
                Err(WireError::Server(s)) if s.code == "55006" && attempt < 49 => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(wire_error("dropping the old replication slot", &self.config, e)),
            }
        }
        Ok(())
    }

    /// Opens the replication stream at `start` (0: the slot's confirmed position), reporting
    /// `acked` as applied until told more.
    async fn stream(&self, conn: Connection, start: Lsn, acked: Lsn) -> Result<Stream> {
        let cmd = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} (proto_version '1', publication_names {})",
            quote_ident(&self.config.slot),
            wire::quote_literal(&quote_ident(&self.config.publication))
        );
        let (reader, writer) =
            conn.start_replication(&cmd).await.map_err(|e| wire_error("starting replication", &self.config, e))?;
        let (tx, rx) = mpsc::channel(8192);
        let (acked_tx, acked_rx) = watch::channel(acked.0);
        let reply = Arc::new(Notify::new());
        let reader = tokio::spawn(read_stream(reader, tx, reply.clone()));
        let writer = tokio::spawn(write_status(writer, acked_rx, reply));
        Ok(Stream { rx, acked: acked_tx, reader, writer })
    }

    /// Creates the slot and starts reading the table's rows as of its consistent point.
    async fn begin_snapshot(&mut self, mut conn: Connection) -> Result<()> {
        let cfg = &self.config;
        let slot = quote_ident(&cfg.slot);
        match cfg.snapshot {
            SnapshotMode::Initial => {
                Self::run(&mut conn, cfg, "starting the snapshot", "BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ")
                    .await?;
                let rows = Self::run(
                    &mut conn,
                    cfg,
                    "creating the replication slot",
                    &format!("CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput USE_SNAPSHOT"),
                )
                .await?;
                let consistent = consistent_point(&rows)?;
                let columns: Vec<String> = self
                    .schema
                    .fields()
                    .iter()
                    .map(|f| {
                        let up =
                            upstream::find(&self.upstream, f.name()).map_or(f.name().as_str(), |c| c.name.as_str());
                        quote_ident(up)
                    })
                    .collect();
                Self::run(
                    &mut conn,
                    cfg,
                    "reading the snapshot",
                    &format!(
                        "DECLARE {CURSOR} NO SCROLL CURSOR FOR SELECT {} FROM {}",
                        columns.join(", "),
                        cfg.qualified()
                    ),
                )
                .await?;
                self.position = Position::Snapshot;
                self.phase = Phase::Snapshot { conn, consistent };
            }
            SnapshotMode::Never => {
                let rows = Self::run(
                    &mut conn,
                    cfg,
                    "creating the replication slot",
                    &format!("CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput NOEXPORT_SNAPSHOT"),
                )
                .await?;
                let consistent = consistent_point(&rows)?;
                let stream = self.stream(conn, consistent, consistent).await?;
                self.position = Position::Streaming(consistent);
                self.phase = Phase::Streaming(stream);
            }
        }
        self.clear_first = true;
        Ok(())
    }

    /// One FETCH of the snapshot; at its end, commits and starts streaming.
    async fn poll_snapshot(&mut self) -> Result<Poll> {
        let mut chunk = SourceChunk::default();
        if std::mem::take(&mut self.clear_first) {
            chunk.changes.push(Change::Clear);
        }
        let Phase::Snapshot { conn, consistent } = &mut self.phase else { return Ok(Poll::Idle(POLL_WAIT)) };
        let consistent = *consistent;
        let rows = Self::run(
            conn,
            &self.config,
            "reading the snapshot",
            &format!("FETCH FORWARD {} FROM {CURSOR}", self.config.batch_size),
        )
        .await?;
        if !rows.is_empty() {
            self.status.add_counter("snapshot_rows", rows.len() as i64);
            let mut batch = Builder::new(self.schema.clone(), &self.key);
            let slot = &self.config.slot;
            for r in &rows {
                batch.insert(r.iter().map(|v| v.as_deref()).collect(), || format!("{slot}@snapshot"));
            }
            chunk.changes.extend(batch.finish().changes);
            return Ok(Poll::Data(chunk));
        }
        let Phase::Snapshot { mut conn, .. } = std::mem::replace(&mut self.phase, Phase::Closed) else {
            unreachable!("checked above")
        };
        Self::run(&mut conn, &self.config, "finishing the snapshot", "COMMIT").await?;
        let stream = self.stream(conn, consistent, Lsn(0)).await?;
        self.phase = Phase::Streaming(stream);
        self.position = Position::Streaming(consistent);
        self.status.set_counter("lsn", consistent.0 as i64);
        Ok(Poll::Data(chunk))
    }

    /// Takes what the stream has (waiting briefly for the first message) and turns it into
    /// changes; the position moves at each commit.
    async fn poll_stream(&mut self) -> Result<Poll> {
        let Phase::Streaming(stream) = &mut self.phase else { return Ok(Poll::Idle(POLL_WAIT)) };
        let first = match tokio::time::timeout(POLL_WAIT, stream.rx.recv()).await {
            Err(_) => return Ok(Poll::Idle(Duration::ZERO)),
            Ok(None) => {
                return Err(ConnectorError::Unavailable(format!("{}: the replication stream ended", self.peer())))
            }
            Ok(Some(m)) => m,
        };
        let mut payloads = vec![first];
        while payloads.len() < self.config.batch_size {
            match stream.rx.try_recv() {
                Ok(m) => payloads.push(m),
                Err(_) => break,
            }
        }
        let mut out = Builder::new(self.schema.clone(), &self.key);
        let before = self.position;
        for p in payloads {
            let p = p.map_err(|e| wire_error("replicating", &self.config, e))?;
            self.apply(&p, &mut out)?;
        }
        let chunk = out.finish();
        if chunk.changes.is_empty() && chunk.dead_letters.is_empty() && self.position == before {
            return Ok(Poll::Idle(Duration::ZERO));
        }
        if let Position::Streaming(l) = self.position {
            self.status.set_counter("lsn", l.0 as i64);
        }
        Ok(Poll::Data(chunk))
    }

    /// Applies one CopyData payload.
    fn apply(&mut self, payload: &[u8], out: &mut Builder) -> Result<()> {
        let bad = |e: pgoutput::DecodeError| ConnectorError::Failed(format!("{}: {e}", self.peer()));
        let (start, data) = match pgoutput::decode_replication(payload).map_err(bad)? {
            ReplicationMessage::Keepalive { end, .. } => {
                // Nothing of ours is pending before `end`: an idle table still moves forward,
                // so the slot does not hold WAL back.
                if !self.in_transaction {
                    if let Position::Streaming(l) = self.position {
                        if end > l {
                            self.position = Position::Streaming(end);
                        }
                    }
                }
                return Ok(());
            }
            ReplicationMessage::XLogData { start, data, .. } => (start, data),
        };
        let msg = pgoutput::decode(data).map_err(bad)?;
        let at = || format!("{}@{start}", self.config.slot);
        match msg {
            Message::Begin { .. } => self.in_transaction = true,
            Message::Commit { end_lsn, .. } => {
                self.in_transaction = false;
                self.status.add_counter("transactions", 1);
                self.position = Position::Streaming(end_lsn);
            }
            Message::Relation(r) => self.relation_changed(r),
            Message::Insert { relation, new } => {
                if let Some(map) = self.mapped(relation) {
                    let row: Vec<Option<&str>> = map.declared.iter().map(|i| i.and_then(|i| text(&new, i))).collect();
                    if let Some(i) = unchanged(&new, map) {
                        out.reject(
                            at(),
                            format!("column '{}' came as an unchanged TOAST value", self.schema.field(i).name()),
                        );
                    } else {
                        out.insert(row, at);
                    }
                }
            }
            Message::Update { relation, old, new } => {
                if let Some(map) = self.mapped(relation) {
                    let old_full = match &old {
                        Some(OldImage::Full(t)) => Some(t),
                        _ => None,
                    };
                    let mut row = Vec::with_capacity(map.declared.len());
                    let mut missing = None;
                    for (d, idx) in map.declared.iter().enumerate() {
                        let v = match idx {
                            None => None,
                            Some(i) => match new.get(*i) {
                                Some(Value::Unchanged) => match old_full.and_then(|t| t.get(*i)) {
                                    Some(Value::Text(s)) => Some(*s),
                                    Some(Value::Null) => None,
                                    _ => {
                                        missing.get_or_insert(d);
                                        None
                                    }
                                },
                                Some(Value::Text(s)) => Some(*s),
                                _ => None,
                            },
                        };
                        row.push(v);
                    }
                    if let Some(d) = missing {
                        out.reject(
                            at(),
                            format!(
                                "update of a row whose column '{}' is an unchanged TOAST value the server did not send: \
                                 run ALTER TABLE {}.{} REPLICA IDENTITY FULL so updates carry it",
                                self.schema.field(d).name(),
                                self.config.schema,
                                self.config.table
                            ),
                        );
                        return Ok(());
                    }
                    if let Some(old) = &old {
                        let old_key: Vec<Option<&str>> =
                            map.key.iter().map(|i| i.and_then(|i| text(old.tuple(), i))).collect();
                        let new_key: Vec<Option<&str>> =
                            map.key.iter().map(|i| i.and_then(|i| text(&new, i))).collect();
                        if old_key != new_key {
                            out.delete(old_key, at);
                        }
                    }
                    out.insert(row, at);
                }
            }
            Message::Delete { relation, old } => {
                if let Some(map) = self.mapped(relation) {
                    let key: Vec<Option<&str>> = map.key.iter().map(|i| i.and_then(|i| text(old.tuple(), i))).collect();
                    out.delete(key, at);
                }
            }
            Message::Truncate { relations, .. } => {
                if self.relation.as_ref().is_some_and(|m| relations.contains(&m.oid)) {
                    out.clear();
                }
            }
            Message::Origin { .. } | Message::Type { .. } | Message::LogicalMessage { .. } => {}
        }
        Ok(())
    }

    fn mapped(&self, relation: u32) -> Option<&RelationMap> {
        self.relation.as_ref().filter(|m| m.oid == relation)
    }

    /// A Relation message: (re)builds the column mapping for our table and reports schema
    /// changes (the declared columns keep streaming; a dropped one reads as NULL).
    fn relation_changed(&mut self, r: Relation) {
        if !(r.namespace == self.config.schema && r.name == self.config.table) {
            return;
        }
        let names: Vec<String> = r.columns.iter().map(|c| c.name.clone()).collect();
        let declared: Vec<Option<usize>> =
            self.schema.fields().iter().map(|f| cdc::find_name(&names, f.name())).collect();
        let key: Vec<Option<usize>> = self.key.iter().map(|k| cdc::find_name(&names, k)).collect();
        let previous: Vec<String> = match &self.relation {
            Some(m) => m.names.clone(),
            None => self.upstream.iter().map(|c| c.name.clone()).collect(),
        };
        let table = format!("{}.{}", self.config.schema, self.config.table);
        cdc::note_schema_change(&self.status, &table, &previous, &names, &self.schema);
        self.relation = Some(RelationMap { oid: r.oid, names, declared, key });
    }
}

fn text<'a>(t: &[Value<'a>], i: usize) -> Option<&'a str> {
    match t.get(i) {
        Some(Value::Text(s)) => Some(s),
        _ => None,
    }
}

/// The first declared column whose new value is an unchanged TOAST placeholder.
fn unchanged(t: &[Value<'_>], map: &RelationMap) -> Option<usize> {
    map.declared.iter().position(|i| i.is_some_and(|i| matches!(t.get(i), Some(Value::Unchanged))))
}

fn consistent_point(rows: &[wire::Row]) -> Result<Lsn> {
    rows.first()
        .and_then(|r| r.get(1).cloned().flatten())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ConnectorError::Failed("CREATE_REPLICATION_SLOT returned no consistent point".into()))
}

/// Reads CopyData until the stream ends; answers keepalives that ask for a reply through the
/// writer (even while the pipeline is not polling).
async fn read_stream(
    mut r: ReplicationReader,
    tx: mpsc::Sender<std::result::Result<Vec<u8>, WireError>>,
    reply: Arc<Notify>,
) {
    loop {
        match wire::read_copy_data(&mut r).await {
            Ok(Some(p)) => {
                if p.first() == Some(&b'k') && p.last() == Some(&1) {
                    reply.notify_one();
                }
                if tx.send(Ok(p)).await.is_err() {
                    return;
                }
            }
            Ok(None) => {
                let _ = tx.send(Err(WireError::Io("the server ended the replication stream".into()))).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// Sends standby status updates: when the acknowledged LSN moves, when the server asks, and
/// every [`STATUS_INTERVAL`]; ends the stream when the source lets go.
async fn write_status(mut w: ReplicationWriter, mut acked: watch::Receiver<u64>, reply: Arc<Notify>) {
    let mut tick = tokio::time::interval(STATUS_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = reply.notified() => {}
            changed = acked.changed() => {
                if changed.is_err() {
                    wire::finish(&mut w).await;
                    return;
                }
            }
        }
        let lsn = Lsn(*acked.borrow_and_update());
        let now_us = (chrono::Utc::now().timestamp_micros()) - 946_684_800_000_000;
        if wire::write_copy_data(&mut w, &pgoutput::encode_status_update(lsn, now_us, false)).await.is_err() {
            return;
        }
    }
}

#[async_trait]
impl SourceConnector for PostgresCdcSource {
    fn capabilities(&self) -> SourceCapabilities {
        cdc::CAPABILITIES
    }

    fn attach(&mut self, status: Arc<ConnectorStatus>) {
        self.status = status;
    }

    async fn open(&mut self) -> Result<()> {
        let mut conn = self.connect().await?;
        let cfg = self.config.clone();
        upstream::check_wal_level(&mut conn, &cfg).await?;
        let table = upstream::describe_table(&mut conn, &cfg).await?;
        self.key = upstream::check_columns(&cfg, &table, &self.schema, &self.declared_key)?;
        self.upstream = table.columns;
        self.relation = None;
        self.in_transaction = false;
        upstream::ensure_publication(&mut conn, &cfg).await?;
        let slot = upstream::slot_state(&mut conn, &cfg).await?;
        match (self.position, slot) {
            (Position::Streaming(lsn), Some(_)) => {
                // A session that just went away may still hold the slot for a moment.
                let mut attempt = 0;
                loop {
                    match self.stream(conn, lsn, lsn).await {
                        Ok(s) => {
                            self.phase = Phase::Streaming(s);
                            break;
                        }
                        Err(e) if e.is_transient() && attempt < 50 => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            conn = self.connect().await?;
                        }
                        Err(e) => return Err(e),
                    }
                }
                self.status.set_counter("lsn", lsn.0 as i64);
            }
            (position, slot) => {
                if let (Position::Streaming(lsn), None) = (position, slot) {
                    // The slot is gone (dropped by hand, or invalidated): what happened since
                    // `lsn` cannot be streamed, so the table is read afresh.
                    self.status.add_counter("resnapshots", 1);
                    self.status.set_last_error(format!(
                        "replication slot '{}' no longer exists (the source was at {lsn}): took a new snapshot",
                        cfg.slot
                    ));
                }
                if slot.is_some() {
                    self.drop_slot(&mut conn).await?;
                }
                self.begin_snapshot(conn).await?;
            }
        }
        self.status.set_counter("connected", 1);
        Ok(())
    }

    async fn poll(&mut self) -> Result<Poll> {
        match self.phase {
            Phase::Closed => Err(ConnectorError::Unavailable(format!("{}: not connected", self.peer()))),
            Phase::Snapshot { .. } => self.poll_snapshot().await,
            Phase::Streaming(_) => self.poll_stream().await,
        }
    }

    fn checkpoint(&self) -> Result<serde_json::Value> {
        Ok(match self.position {
            Position::Fresh => serde_json::Value::Null,
            Position::Snapshot => serde_json::json!({ "slot": self.config.slot, "snapshot": true }),
            Position::Streaming(l) => serde_json::json!({ "slot": self.config.slot, "lsn": l.to_string() }),
        })
    }

    fn restore(&mut self, position: &serde_json::Value) -> Result<()> {
        self.position = match position.get("lsn").and_then(|v| v.as_str()) {
            Some(l) => Position::Streaming(
                l.parse()
                    .map_err(|_| ConnectorError::Failed(format!("checkpointed position {position} is not an LSN")))?,
            ),
            None if position.get("snapshot").is_some() => Position::Snapshot,
            None => Position::Fresh,
        };
        Ok(())
    }

    fn key_columns(&self) -> Option<Vec<String>> {
        (!self.key.is_empty()).then(|| self.key.clone())
    }

    async fn commit_position(&mut self, position: &serde_json::Value) -> Result<()> {
        let Some(lsn) = position.get("lsn").and_then(|v| v.as_str()).and_then(|l| l.parse::<Lsn>().ok()) else {
            return Ok(());
        };
        if let Phase::Streaming(s) = &self.phase {
            s.acked.send_if_modified(|v| {
                let newer = lsn.0 > *v;
                if newer {
                    *v = lsn.0;
                }
                newer
            });
        }
        self.status.set_counter("acked_lsn", lsn.0 as i64);
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::Closed => {}
            Phase::Snapshot { conn, .. } => conn.terminate().await,
            Phase::Streaming(s) => {
                let Stream { rx, acked, reader, writer } = s;
                drop(acked); // the writer ends the stream
                let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
                reader.abort();
                drop(rx);
            }
        }
        self.status.set_counter("connected", 0);
        Ok(())
    }

    fn describe(&self) -> String {
        self.peer()
    }
}
