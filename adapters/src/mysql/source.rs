//! Wiring of a MySQL/MariaDB binary log stream into the source framework: a consistent snapshot
//! with its binlog position, then row events turned into keyed inserts and deletes.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use mysql_async::binlog::events::{Event, EventData, OptionalMetadataField, RowsEventData, TableMapEvent};
use mysql_async::binlog::row::BinlogRow;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, GnoInterval, Sid, Value};

use super::config::{SourceConfig, KEYS};
use super::position::{self, BinlogPosition, MariaGtid};
use super::upstream::{self, error, Column, Flavor, Table, Text};
use crate::cdc::{self, Builder};
use crate::connector::{Change, Poll, SourceCapabilities, SourceChunk, SourceConnector, SourceSpec};
use crate::options::OptionReader;
use crate::registry::SourceFactory;
use crate::runner::ConnectorStatus;
use crate::{ConnectorError, Result};

/// Registration.
pub const SOURCE: SourceFactory = SourceFactory { name: "mysql-cdc", keys: KEYS, build };

/// How long a poll waits for the first event.
const POLL_WAIT: Duration = Duration::from_millis(100);

fn build(
    spec: &SourceSpec,
    r: &mut OptionReader<'_>,
    _ctx: &crate::registry::BuildContext<'_>,
) -> Result<Box<dyn SourceConnector>> {
    let config = SourceConfig::pull(&spec.name, r)?;
    Ok(Box::new(MysqlCdcSource {
        config,
        schema: spec.schema.clone(),
        declared_key: spec.primary_key.clone(),
        status: Arc::new(ConnectorStatus::new(String::new())),
        key: Vec::new(),
        table: Table::default(),
        declared: Vec::new(),
        flavor: Flavor::MariaDb,
        position: Position::Fresh,
        phase: Phase::Closed,
        current: BinlogPosition::default(),
        pending_maria: None,
        pending_mysql: None,
        table_map: None,
        clear_first: false,
    }))
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Position {
    Fresh,
    Snapshot,
    Streaming(BinlogPosition),
}

enum Phase {
    Closed,
    /// Reading the table in a consistent-snapshot transaction on `conn`, by key order
    /// (`after`: the last key read) or by offset (no key); then streaming from `start`.
    Snapshot {
        conn: Conn,
        start: BinlogPosition,
        after: Option<Vec<Text>>,
        offset: u64,
    },
    Streaming {
        stream: Box<BinlogStream>,
        control: Conn,
    },
}

/// Streams one table's row changes from the binary log.
pub struct MysqlCdcSource {
    config: SourceConfig,
    schema: SchemaRef,
    declared_key: Vec<String>,
    status: Arc<ConnectorStatus>,
    key: Vec<String>,
    table: Table,
    /// For each declared column, its index among the table's columns.
    declared: Vec<Option<usize>>,
    flavor: Flavor,
    /// The position of the last applied transaction (checkpointed).
    position: Position,
    phase: Phase,
    /// Where the stream is (file and offset move with every event; GTIDs at commits).
    current: BinlogPosition,
    pending_maria: Option<MariaGtid>,
    pending_mysql: Option<([u8; 16], u64)>,
    /// The last table map of this table (its id and column types).
    table_map: Option<(u64, TableMapEvent<'static>)>,
    clear_first: bool,
}

fn lit(t: &Text) -> String {
    match t {
        Text::Null => "NULL".into(),
        Text::Str(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''")),
        Text::Bin(b) => format!("X'{}'", b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
    }
}

fn ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

impl MysqlCdcSource {
    fn peer(&self) -> String {
        format!("mysql {} table {}.{}", self.config.shown, self.config.schema, self.config.table)
    }

    async fn connect(&self) -> Result<Conn> {
        let opts = self.config.opts();
        match tokio::time::timeout(Duration::from_secs(15), Conn::new(opts)).await {
            Err(_) => Err(ConnectorError::Unavailable(format!("{}: no answer within 15 s", self.peer()))),
            Ok(r) => r.map_err(|e| error("connecting", &self.config, e)),
        }
    }

    /// Checks, before a snapshot, that the user may read the binary log as a replica: a
    /// non-blocking dump from the current end (it returns at once).
    async fn probe_replication(&self) -> Result<()> {
        let cfg = &self.config;
        let mut conn = self.connect().await?;
        let rows =
            Self::rows(&mut conn, cfg, "reading the binlog position (needs REPLICATION CLIENT)", "SHOW MASTER STATUS")
                .await?;
        let r = rows.into_iter().next().unwrap_or_default();
        let file = match r.first().cloned().map(|v| upstream::from_text_protocol(v, &text_column())) {
            Some(Text::Str(s)) => s,
            _ => return Ok(()),
        };
        let request =
            BinlogStreamRequest::new(cfg.server_id).with_non_blocking().with_filename(file.as_bytes()).with_pos(4u64);
        let mut stream = conn.get_binlog_stream(request).await.map_err(|e| error("reading the binary log", cfg, e))?;
        if let Ok(Some(Err(e))) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            return Err(error("reading the binary log", cfg, e));
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.close()).await;
        Ok(())
    }

    async fn rows(conn: &mut Conn, cfg: &SourceConfig, what: &str, sql: &str) -> Result<Vec<Vec<Value>>> {
        let rows: Vec<mysql_async::Row> = conn.query(sql).await.map_err(|e| error(what, cfg, e))?;
        Ok(rows.into_iter().map(|r| r.unwrap()).collect())
    }

    /// Describes the table and maps the declared columns onto it.
    async fn describe(&mut self, conn: &mut Conn) -> Result<()> {
        self.table = upstream::describe(conn, &self.config).await?;
        self.declared = self.schema.fields().iter().map(|f| upstream::find(&self.table.columns, f.name())).collect();
        Ok(())
    }

    /// Starts the consistent snapshot: a transaction whose reads match a binlog position.
    async fn begin_snapshot(&mut self, mut conn: Conn) -> Result<()> {
        let cfg = self.config.clone();
        conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(|e| error("starting the snapshot", &cfg, e))?;
        let start = match self.flavor {
            Flavor::MariaDb => {
                // MariaDB reports the binlog position of a consistent snapshot: no lock needed.
                conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                    .await
                    .map_err(|e| error("starting the snapshot", &cfg, e))?;
                let status = Self::rows(
                    &mut conn,
                    &cfg,
                    "reading the snapshot's position",
                    "SHOW STATUS LIKE 'binlog_snapshot_%'",
                )
                .await?;
                let mut file = String::new();
                let mut pos = 0u64;
                for r in status {
                    let mut it = r.into_iter().map(|v| upstream::from_text_protocol(v, &text_column()));
                    let (k, v) = (it.next(), it.next());
                    if let (Some(Text::Str(k)), Some(Text::Str(v))) = (k, v) {
                        match k.as_str() {
                            "Binlog_snapshot_file" => file = v,
                            "Binlog_snapshot_position" => pos = v.parse().unwrap_or(0),
                            _ => {}
                        }
                    }
                }
                if file.is_empty() {
                    return Err(ConnectorError::Failed(format!(
                        "{}: the server reports no binlog snapshot position",
                        self.peer()
                    )));
                }
                let gtid = Self::rows(
                    &mut conn,
                    &cfg,
                    "reading the snapshot's GTID",
                    &format!("SELECT BINLOG_GTID_POS('{file}', {pos})"),
                )
                .await?
                .into_iter()
                .next()
                .and_then(|r| r.into_iter().next())
                .map(|v| upstream::from_text_protocol(v, &text_column()));
                let maria = match gtid {
                    Some(Text::Str(g)) => position::MariaGtidState::parse(&g).unwrap_or_default(),
                    _ => Default::default(),
                };
                BinlogPosition { file, pos, maria, mysql: Default::default() }
            }
            Flavor::MySql { gtids } => {
                // MySQL: a short global read lock pins the position the snapshot starts at.
                conn.query_drop("FLUSH TABLES WITH READ LOCK")
                    .await
                    .map_err(|e| error("locking for the snapshot (needs RELOAD)", &cfg, e))?;
                let started = async {
                    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT").await?;
                    let rows: Vec<mysql_async::Row> = conn.query("SHOW MASTER STATUS").await?;
                    Ok::<_, mysql_async::Error>(rows)
                }
                .await;
                let _ = conn.query_drop("UNLOCK TABLES").await;
                let rows = started.map_err(|e| error("starting the snapshot", &cfg, e))?;
                let r = rows.into_iter().next().map(|r| r.unwrap()).unwrap_or_default();
                let text = |i: usize| match r.get(i).cloned().map(|v| upstream::from_text_protocol(v, &text_column())) {
                    Some(Text::Str(s)) => s,
                    _ => String::new(),
                };
                let mysql = if gtids {
                    position::MysqlGtidSet::parse(&text(4)).unwrap_or_default()
                } else {
                    Default::default()
                };
                BinlogPosition { file: text(0), pos: text(1).parse().unwrap_or(4), maria: Default::default(), mysql }
            }
        };
        self.position = Position::Snapshot;
        self.clear_first = true;
        self.phase = Phase::Snapshot { conn, start, after: None, offset: 0 };
        Ok(())
    }

    /// One page of the snapshot; at its end, commits and starts streaming.
    async fn poll_snapshot(&mut self) -> Result<Poll> {
        let mut out = Builder::new(self.schema.clone(), &self.key);
        if std::mem::take(&mut self.clear_first) {
            out.clear();
        }
        let cfg = self.config.clone();
        let pk: Vec<usize> =
            self.table.primary_key.iter().filter_map(|k| upstream::find(&self.table.columns, k)).collect();
        let Phase::Snapshot { conn, after, offset, .. } = &mut self.phase else { return Ok(Poll::Idle(POLL_WAIT)) };
        // The primary key first (for paging), then the declared columns.
        let mut cols: Vec<String> = pk.iter().map(|&i| ident(&self.table.columns[i].name)).collect();
        cols.extend(self.declared.iter().map(|d| d.map_or("NULL".into(), |i| ident(&self.table.columns[i].name))));
        let from = format!("{}.{}", ident(&cfg.schema), ident(&cfg.table));
        let sql = if pk.is_empty() {
            format!("SELECT {} FROM {from} LIMIT {} OFFSET {offset}", cols.join(", "), cfg.batch_size)
        } else {
            let key_cols: Vec<String> = pk.iter().map(|&i| ident(&self.table.columns[i].name)).collect();
            let filter = match after {
                Some(last) => format!(
                    " WHERE ({}) > ({})",
                    key_cols.join(", "),
                    last.iter().map(lit).collect::<Vec<_>>().join(", ")
                ),
                None => String::new(),
            };
            format!(
                "SELECT {} FROM {from}{filter} ORDER BY {} LIMIT {}",
                cols.join(", "),
                key_cols.join(", "),
                cfg.batch_size
            )
        };
        let rows = Self::rows(conn, &cfg, "reading the snapshot", &sql).await?;
        if !rows.is_empty() {
            self.status.add_counter("snapshot_rows", rows.len() as i64);
            *offset += rows.len() as u64;
            let n_pk = pk.len();
            let mut last = None;
            for r in rows {
                let mut vals = r.into_iter();
                let key: Vec<Text> = pk
                    .iter()
                    .map(|&i| upstream::from_text_protocol(vals.next().unwrap_or(Value::NULL), &self.table.columns[i]))
                    .collect();
                let texts: Vec<Option<String>> = self
                    .declared
                    .iter()
                    .zip(self.schema.fields())
                    .map(|(d, f)| {
                        let v = vals.next().unwrap_or(Value::NULL);
                        d.and_then(|i| upstream::from_text_protocol(v, &self.table.columns[i]).render(f.data_type()))
                    })
                    .collect();
                out.insert(texts.iter().map(Option::as_deref).collect(), || {
                    format!("{}.{}@snapshot", cfg.schema, cfg.table)
                });
                if n_pk > 0 {
                    last = Some(key);
                }
            }
            if last.is_some() {
                *after = last;
            }
            return Ok(Poll::Data(out.finish()));
        }
        let Phase::Snapshot { mut conn, start, .. } = std::mem::replace(&mut self.phase, Phase::Closed) else {
            unreachable!("checked above")
        };
        conn.query_drop("COMMIT").await.map_err(|e| error("finishing the snapshot", &cfg, e))?;
        self.start_stream(conn, start.clone()).await?;
        self.position = Position::Streaming(start);
        Ok(Poll::Data(out.finish()))
    }

    /// Opens the binlog stream at `at` on a new connection (`control` stays for queries).
    async fn start_stream(&mut self, control: Conn, at: BinlogPosition) -> Result<()> {
        let cfg = self.config.clone();
        let mut conn = self.connect().await?;
        let mut request = BinlogStreamRequest::new(cfg.server_id);
        // Heartbeats every 30 s keep an idle stream's connection known to be alive.
        conn.query_drop("SET @master_heartbeat_period = 30000000000")
            .await
            .map_err(|e| error("replicating", &cfg, e))?;
        match self.flavor {
            Flavor::MariaDb => {
                // GTID events of MariaDB's own kind, and (when known) resuming after a GTID state.
                conn.query_drop("SET @mariadb_slave_capability = 4")
                    .await
                    .map_err(|e| error("replicating", &cfg, e))?;
                if !at.maria.is_empty() {
                    conn.query_drop(format!("SET @slave_connect_state = '{}'", at.maria))
                        .await
                        .map_err(|e| error("replicating", &cfg, e))?;
                    conn.query_drop("SET @slave_gtid_strict_mode = 0")
                        .await
                        .map_err(|e| error("replicating", &cfg, e))?;
                } else {
                    request = request.with_filename(at.file.as_bytes()).with_pos(at.pos);
                }
            }
            Flavor::MySql { gtids } => {
                if gtids && !at.mysql.is_empty() {
                    let sids: Vec<Sid<'static>> = at
                        .mysql
                        .iter()
                        .map(|(u, r)| {
                            Sid::new(*u).with_intervals(r.iter().map(|(a, b)| GnoInterval::new(*a, b + 1)).collect())
                        })
                        .collect();
                    request = request.with_gtid().with_gtid_set(sids);
                } else {
                    request = request.with_filename(at.file.as_bytes()).with_pos(at.pos);
                }
            }
        }
        let stream = conn.get_binlog_stream(request).await.map_err(|e| error("starting the binlog stream", &cfg, e))?;
        self.current = at;
        self.pending_maria = None;
        self.pending_mysql = None;
        self.phase = Phase::Streaming { stream: Box::new(stream), control };
        self.status.set_counter("binlog_pos", self.current.pos as i64);
        Ok(())
    }

    async fn poll_stream(&mut self) -> Result<Poll> {
        let Phase::Streaming { stream, .. } = &mut self.phase else { return Ok(Poll::Idle(POLL_WAIT)) };
        let first = match tokio::time::timeout(POLL_WAIT, stream.next()).await {
            Err(_) => return Ok(Poll::Idle(Duration::ZERO)),
            Ok(None) => return Err(ConnectorError::Unavailable(format!("{}: the binlog stream ended", self.peer()))),
            Ok(Some(e)) => e.map_err(|e| error("replicating", &self.config, e))?,
        };
        let mut events = vec![first];
        while events.len() < self.config.batch_size {
            match stream.next().now_or_never() {
                Some(Some(Ok(e))) => events.push(e),
                Some(Some(Err(e))) => return Err(error("replicating", &self.config, e)),
                _ => break,
            }
        }
        let mut out = Builder::new(self.schema.clone(), &self.key);
        let before = self.position.clone();
        for ev in &events {
            // DDL, or a table map of a width the table no longer has: describe it again before
            // the next event (its rows), so they are read with the columns they were written with.
            if self.apply(ev, &mut out)? {
                self.schema_changed().await;
            }
        }
        let chunk = out.finish();
        if chunk.changes.is_empty() && chunk.dead_letters.is_empty() && self.position == before {
            return Ok(Poll::Idle(Duration::ZERO));
        }
        self.status.set_counter("binlog_pos", self.current.pos as i64);
        Ok(Poll::Data(chunk))
    }

    /// Marks the transaction just ended as applied.
    fn committed(&mut self, log_pos: u32) {
        if log_pos > 0 {
            self.current.pos = u64::from(log_pos);
        }
        if let Some(g) = self.pending_maria.take() {
            self.current.maria.apply(g);
        }
        if let Some((u, g)) = self.pending_mysql.take() {
            self.current.mysql.add(u, g);
        }
        self.status.add_counter("transactions", 1);
        self.position = Position::Streaming(self.current.clone());
    }

    /// Applies one event; true when the table must be described again before the next one
    /// (DDL on it, or a table map of another width than the table as last described).
    fn apply(&mut self, ev: &Event, out: &mut Builder) -> Result<bool> {
        let header = ev.header();
        let bad = |e: std::io::Error| ConnectorError::Failed(format!("{}: malformed binlog event: {e}", self.peer()));
        match header.event_type_raw() {
            position::MARIA_GTID_EVENT => {
                self.pending_maria = position::parse_maria_gtid_event(header.server_id(), ev.data());
                return Ok(false);
            }
            position::MYSQL_GTID_EVENT => {
                self.pending_mysql = position::parse_mysql_gtid_event(ev.data());
                return Ok(false);
            }
            _ => {}
        }
        let Some(data) = ev.read_data().map_err(bad)? else { return Ok(false) };
        match data {
            EventData::RotateEvent(r) => {
                self.current.file = r.name().to_string();
                self.current.pos = r.position();
            }
            EventData::XidEvent(_) => self.committed(header.log_pos()),
            EventData::QueryEvent(q) => {
                let sql = q.query().to_string();
                let upper = sql.trim().to_ascii_uppercase();
                if upper == "BEGIN" {
                    return Ok(false);
                }
                // COMMIT of a non-transactional table, or DDL (its own transaction).
                self.committed(header.log_pos());
                let lower = sql.to_ascii_lowercase();
                let ours = lower.contains(&self.config.table.to_ascii_lowercase());
                if ours && (upper.starts_with("ALTER") || upper.starts_with("TRUNCATE") || upper.starts_with("DROP")) {
                    if upper.starts_with("TRUNCATE") {
                        out.clear();
                    }
                    return Ok(upper.starts_with("ALTER"));
                }
            }
            EventData::TableMapEvent(t)
                if t.database_name() == self.config.schema && t.table_name() == self.config.table =>
            {
                let other_width = t.columns_count() as usize != self.table.columns.len();
                self.table_map = Some((t.table_id(), t.into_owned()));
                return Ok(other_width);
            }
            EventData::RowsEvent(rows) => self.apply_rows(&rows, out)?,
            _ => {}
        }
        Ok(false)
    }

    fn apply_rows(&mut self, rows: &RowsEventData<'_>, out: &mut Builder) -> Result<()> {
        // The table map read just before (the stream's own cache lets go of it at the end of
        // a statement, which may come before a batch of events is applied).
        let Some((_, tme)) = self.table_map.as_ref().filter(|(id, _)| *id == rows.table_id()) else { return Ok(()) };
        let at = format!("{}:{}", self.current.file, self.current.pos);
        let key_idx: Vec<usize> = self.key.iter().filter_map(|k| self.schema.index_of(k).ok()).collect();
        let layout = self.layout(tme);
        for r in rows.rows(tme) {
            let (before, after) = match r {
                Ok(x) => x,
                Err(e) => {
                    out.reject(at.clone(), format!("row image does not decode: {e}"));
                    continue;
                }
            };
            let before = match before.map(|b| self.render(b, &layout)).transpose() {
                Ok(b) => b,
                Err(reason) => {
                    out.reject(at.clone(), reason);
                    continue;
                }
            };
            let after = match after.map(|a| self.render(a, &layout)).transpose() {
                Ok(a) => a,
                Err(reason) => {
                    out.reject(at.clone(), reason);
                    continue;
                }
            };
            let key_of = |row: &Vec<Option<String>>| -> Vec<Option<String>> {
                key_idx.iter().map(|&i| row[i].clone()).collect()
            };
            match (before, after) {
                (None, Some(a)) => out.insert(a.iter().map(Option::as_deref).collect(), || at.clone()),
                (Some(b), Some(a)) => {
                    let (kb, ka) = (key_of(&b), key_of(&a));
                    if kb != ka {
                        out.delete(kb.iter().map(Option::as_deref).collect(), || at.clone());
                    }
                    out.insert(a.iter().map(Option::as_deref).collect(), || at.clone());
                }
                (Some(b), None) => {
                    let kb = key_of(&b);
                    out.delete(kb.iter().map(Option::as_deref).collect(), || at.clone());
                }
                (None, None) => {}
            }
        }
        Ok(())
    }

    /// Where each declared column is in the row images of `tme`, and its upstream description:
    /// by name when the table map carries column names (`binlog_row_metadata = FULL`, exact
    /// across DDL), else by the position in the table as last described.
    fn layout(&self, tme: &TableMapEvent<'_>) -> Vec<Option<(usize, usize)>> {
        let names: Option<Vec<String>> = tme.iter_optional_meta().find_map(|m| match m {
            Ok(OptionalMetadataField::ColumnName(names)) => {
                names.iter_names().map(|n| n.ok().map(|n| n.name().into_owned())).collect()
            }
            _ => None,
        });
        let width = tme.columns_count() as usize;
        self.schema
            .fields()
            .iter()
            .zip(&self.declared)
            .map(|(f, d)| match &names {
                Some(names) => cdc::find_name(names, f.name()).zip(*d),
                None => d.filter(|i| *i < width).map(|i| (i, i)),
            })
            .collect()
    }

    /// A row image as the text of each declared column.
    fn render(
        &self,
        mut row: BinlogRow,
        layout: &[Option<(usize, usize)>],
    ) -> std::result::Result<Vec<Option<String>>, String> {
        let mut out = Vec::with_capacity(layout.len());
        for (place, f) in layout.iter().zip(self.schema.fields()) {
            let v = match place {
                Some((at, col)) if *at < row.len() => match row.take(*at) {
                    Some(v) => upstream::from_binlog(v, &self.table.columns[*col])?.render(f.data_type()),
                    None => None,
                },
                _ => None,
            };
            out.push(v);
        }
        Ok(out)
    }

    /// Re-reads the table's columns after DDL and reports the change.
    async fn schema_changed(&mut self) {
        let old: Vec<String> = self.table.columns.iter().map(|c| c.name.clone()).collect();
        let Phase::Streaming { control, .. } = &mut self.phase else { return };
        let cfg = self.config.clone();
        let Ok(table) = upstream::describe(control, &cfg).await else { return };
        let new: Vec<String> = table.columns.iter().map(|c| c.name.clone()).collect();
        if new == old {
            return;
        }
        self.table = table;
        self.declared = self.schema.fields().iter().map(|f| upstream::find(&self.table.columns, f.name())).collect();
        cdc::note_schema_change(&self.status, &format!("{}.{}", cfg.schema, cfg.table), &old, &new, &self.schema);
    }
}

/// A stand-in column description for reading server status values as text.
fn text_column() -> Column {
    Column {
        name: String::new(),
        data_type: "varchar".into(),
        column_type: "varchar".into(),
        unsigned: false,
        labels: Vec::new(),
    }
}

#[async_trait]
impl SourceConnector for MysqlCdcSource {
    fn capabilities(&self) -> SourceCapabilities {
        cdc::CAPABILITIES
    }

    fn attach(&mut self, status: Arc<ConnectorStatus>) {
        self.status = status;
    }

    async fn open(&mut self) -> Result<()> {
        let mut conn = self.connect().await?;
        let cfg = self.config.clone();
        self.flavor = upstream::check_server(&mut conn, &cfg).await?;
        self.describe(&mut conn).await?;
        self.key = upstream::check_columns(&cfg, &self.table, &self.schema, &self.declared_key)?;
        match self.position.clone() {
            Position::Streaming(at) => match self.start_stream(conn, at.clone()).await {
                Ok(()) => {}
                // The binlog it needs is gone: read the table afresh.
                Err(e) if e.to_string().contains("error 1236") => {
                    self.status.add_counter("resnapshots", 1);
                    self.status.set_last_error(format!("{e}; took a new snapshot"));
                    let conn = self.connect().await?;
                    self.begin_snapshot(conn).await?;
                }
                Err(e) => return Err(e),
            },
            Position::Fresh | Position::Snapshot if cfg.snapshot => {
                self.probe_replication().await?;
                self.begin_snapshot(conn).await?
            }
            Position::Fresh | Position::Snapshot => {
                let rows = Self::rows(&mut conn, &cfg, "reading the binlog position", "SHOW MASTER STATUS").await?;
                let r = rows.into_iter().next().unwrap_or_default();
                let text = |i: usize| match r.get(i).cloned().map(|v| upstream::from_text_protocol(v, &text_column())) {
                    Some(Text::Str(s)) => s,
                    _ => String::new(),
                };
                let at = BinlogPosition { file: text(0), pos: text(1).parse().unwrap_or(4), ..Default::default() };
                self.clear_first = true;
                self.start_stream(conn, at.clone()).await?;
                self.position = Position::Streaming(at);
            }
        }
        self.status.set_counter("connected", 1);
        Ok(())
    }

    async fn poll(&mut self) -> Result<Poll> {
        match self.phase {
            Phase::Closed => Err(ConnectorError::Unavailable(format!("{}: not connected", self.peer()))),
            Phase::Snapshot { .. } => self.poll_snapshot().await,
            Phase::Streaming { .. } => {
                if std::mem::take(&mut self.clear_first) {
                    return Ok(Poll::Data(SourceChunk { changes: vec![Change::Clear], ..Default::default() }));
                }
                self.poll_stream().await
            }
        }
    }

    fn checkpoint(&self) -> Result<serde_json::Value> {
        Ok(match &self.position {
            Position::Fresh => serde_json::Value::Null,
            Position::Snapshot => serde_json::json!({ "snapshot": true }),
            Position::Streaming(p) => p.to_json(),
        })
    }

    fn restore(&mut self, position: &serde_json::Value) -> Result<()> {
        self.position = if position.get("file").is_some() {
            Position::Streaming(BinlogPosition::from_json(position).map_err(ConnectorError::Failed)?)
        } else if position.get("snapshot").is_some() {
            Position::Snapshot
        } else {
            Position::Fresh
        };
        Ok(())
    }

    fn key_columns(&self) -> Option<Vec<String>> {
        (!self.key.is_empty()).then(|| self.key.clone())
    }

    async fn close(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::Closed => {}
            Phase::Snapshot { conn, .. } => {
                let _ = conn.disconnect().await;
            }
            Phase::Streaming { stream, control } => {
                let _ = tokio::time::timeout(Duration::from_secs(2), stream.close()).await;
                let _ = control.disconnect().await;
            }
        }
        self.status.set_counter("connected", 0);
        Ok(())
    }

    fn describe(&self) -> String {
        self.peer()
    }
}
