//! The Delta Lake source: the table's snapshot, then each new version's data files, read from
//! the transaction log.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use deltalake::kernel::{Action, Add, Remove};
use deltalake::logstore::{get_actions, ObjectStoreRef};
use deltalake::DeltaTable;
use serde::{Deserialize, Serialize};
use url::Url;

use super::table::{self, delta_err, describe, find_field};
use crate::connector::{Change, Poll, SourceCapabilities, SourceChunk, SourceConnector, SourceSpec};
use crate::options::OptionReader;
use crate::registry::SourceFactory;
use crate::runner::ConnectorStatus;
use crate::{ConnectorError, Result};

/// Registration.
pub const SOURCE: SourceFactory =
    SourceFactory { name: "delta-lake", keys: &["table_uri", "poll_interval_ms", "starting_version"], build };

/// Rows handed over per poll at most (a big file is split over several polls).
const MAX_ROWS_PER_POLL: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    /// The current snapshot, then later versions.
    Snapshot,
    /// The changes of this version and later ones.
    Version(u64),
    /// Versions committed after the source starts.
    Latest,
}

fn build(
    spec: &SourceSpec,
    r: &mut OptionReader<'_>,
    _ctx: &crate::registry::BuildContext<'_>,
) -> Result<Box<dyn SourceConnector>> {
    let raw = r.required_str("table_uri")?;
    let url = table::table_url(&raw, false)?;
    let poll_interval = Duration::from_millis(r.opt_u64("poll_interval_ms")?.unwrap_or(5000).max(1));
    let start = match r.opt_str("starting_version") {
        None => Start::Snapshot,
        Some(v) if v.trim().eq_ignore_ascii_case("latest") => Start::Latest,
        Some(v) => match v.trim().parse::<u64>() {
            Ok(n) => Start::Version(n),
            _ => return Err(r.bad("starting_version", &v, "a table version (0, 1, …) or 'latest'")),
        },
    };
    Ok(Box::new(DeltaSource {
        name: spec.name.clone(),
        url,
        poll_interval,
        start,
        schema: spec.schema.clone(),
        key: spec.primary_key.clone(),
        split: spec.split,
        watermark: spec.watermark_column.is_some(),
        table: None,
        store: None,
        pos: Position::default(),
        restored: None,
        unit: None,
        output: None,
        next_check: Instant::now(),
        status: None,
        columns: Vec::new(),
    }))
}

/// Where the source is: inside the unit of work of `version` (its snapshot, or its commit),
/// at step `step`, with `row` rows of that step already handed over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Position {
    version: u64,
    snapshot: bool,
    step: usize,
    row: usize,
}

/// One piece of a unit of work.
#[derive(Clone, Debug)]
enum Step {
    /// The rows of one added file.
    File(Box<Add>),
    /// Keyed sources: the keys of rows in `removed` files that `added` files do not bring back.
    Deletes { removed: Vec<Add>, added: Vec<Add> },
    /// Unkeyed sources: the rows of `added` files beyond those of `removed` files.
    Diff { removed: Vec<Add>, added: Vec<Add> },
}

/// The steps of one version (the snapshot, or one commit).
struct Unit {
    version: u64,
    steps: Vec<Step>,
}

/// Reads a Delta table.
pub struct DeltaSource {
    name: String,
    url: Url,
    poll_interval: Duration,
    start: Start,
    schema: SchemaRef,
    key: Vec<String>,
    /// This process's share of the files (a cluster of processes; unkeyed sources only).
    split: crate::connector::Split,
    /// The source has an event-time watermark (derived from each process's own rows).
    watermark: bool,
    table: Option<DeltaTable>,
    store: Option<ObjectStoreRef>,
    /// The position after everything handed over.
    pos: Position,
    restored: Option<Position>,
    unit: Option<Unit>,
    /// The output of the current step (all of it; `pos.row` says how much is handed over).
    output: Option<Vec<Change>>,
    next_check: Instant,
    status: Option<Arc<ConnectorStatus>>,
    /// The table's column names when last checked (for schema-change reports).
    columns: Vec<String>,
}

fn file_of_remove(r: &Remove) -> Add {
    Add {
        path: r.path.clone(),
        partition_values: r.partition_values.clone().unwrap_or_default(),
        size: r.size.unwrap_or(0),
        data_change: true,
        deletion_vector: r.deletion_vector.clone(),
        ..Default::default()
    }
}

impl DeltaSource {
    fn err(&self, what: &str, e: deltalake::DeltaTableError) -> ConnectorError {
        delta_err(&self.url, what, e)
    }

    fn store(&self) -> Result<&ObjectStoreRef> {
        self.store.as_ref().ok_or_else(|| ConnectorError::Failed("the Delta source is not open".into()))
    }

    fn counter(&self, name: &'static str, delta: i64) {
        if let Some(s) = &self.status {
            s.add_counter(name, delta);
        }
    }

    /// Checks the declared columns against the table's (at open and at metadata changes).
    fn check_schema(&mut self, table_schema: &arrow::datatypes::Schema) -> Result<()> {
        for f in self.schema.fields() {
            let Some(i) = find_field(table_schema, f.name()) else {
                let names: Vec<&str> = table_schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(ConnectorError::Config(format!(
                    "column '{}' is declared in source '{}', but Delta table {} has no such column (its columns: {})",
                    f.name(),
                    self.name,
                    describe(&self.url),
                    names.join(", ")
                )));
            };
            let t = table_schema.field(i).data_type();
            if !arrow::compute::can_cast_types(t, f.data_type()) {
                return Err(ConnectorError::Config(format!(
                    "column '{}' of source '{}' is declared {}, but Delta table {} has it as {t}, which does not convert",
                    f.name(),
                    self.name,
                    f.data_type(),
                    describe(&self.url)
                )));
            }
        }
        let names: Vec<String> = table_schema.fields().iter().map(|f| f.name().clone()).collect();
        if !self.columns.is_empty() && self.columns != names {
            if let Some(s) = &self.status {
                crate_note_schema_change(s, &describe(&self.url), &self.columns, &names);
            }
        }
        self.columns = names;
        Ok(())
    }

    /// The unit of work of the snapshot at `version`.
    async fn snapshot_unit(&mut self, version: u64) -> Result<Unit> {
        let mut table = table::load(&self.url)
            .await?
            .ok_or_else(|| ConnectorError::Failed(format!("Delta table {} does not exist", describe(&self.url))))?;
        if table.version() != Some(version) {
            table.load_version(version).await.map_err(|e| {
                self.err(&format!("cannot resume from version {version} (it may have been vacuumed)"), e)
            })?;
        }
        let snapshot = table.snapshot().map_err(|e| self.err("cannot read the snapshot", e))?;
        // The files as `add` actions: what `read_file` and the position's file order use.
        #[allow(deprecated)]
        let mut adds: Vec<Add> = snapshot.log_data().iter().map(|f| f.add_action()).collect();
        adds.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Unit { version, steps: adds.into_iter().map(|a| Step::File(Box::new(a))).collect() })
    }

    /// The unit of work of commit `version`, or None if it is not committed yet.
    async fn commit_unit(&mut self, version: u64) -> Result<Option<Unit>> {
        let table = self.table.as_ref().ok_or_else(|| ConnectorError::Failed("the Delta source is not open".into()))?;
        let log = table.log_store();
        let Some(bytes) = log.read_commit_entry(version).await.map_err(|e| self.err("cannot read the log", e))? else {
            return Ok(None);
        };
        let actions =
            get_actions(version, &bytes).map_err(|e| self.err(&format!("cannot parse version {version}"), e))?;
        let mut added = Vec::new();
        let mut removed = Vec::new();
        let mut schema_changed = false;
        for a in actions {
            match a {
                Action::Add(a) if a.data_change => added.push(a),
                Action::Remove(r) if r.data_change => removed.push(file_of_remove(&r)),
                Action::Metadata(_) => schema_changed = true,
                _ => {}
            }
        }
        if schema_changed {
            let mut t = table::load(&self.url)
                .await?
                .ok_or_else(|| ConnectorError::Failed(format!("Delta table {} is gone", describe(&self.url))))?;
            t.load_version(version).await.map_err(|e| self.err("cannot read the log", e))?;
            table::check_features(&self.url, &t)?;
            let s = table::arrow_schema(&self.url, &t)?;
            self.check_schema(&s)?;
        }
        added.sort_by(|a, b| a.path.cmp(&b.path));
        let mut steps = Vec::new();
        if removed.is_empty() {
            steps.extend(added.into_iter().map(|a| Step::File(Box::new(a))));
        } else if !self.key.is_empty() {
            steps.push(Step::Deletes { removed, added: added.clone() });
            steps.extend(added.into_iter().map(|a| Step::File(Box::new(a))));
        } else {
            steps.push(Step::Diff { removed, added });
        }
        Ok(Some(Unit { version, steps }))
    }

    /// A missing commit while later versions exist means the log was cleaned up past the
    /// source's position (log retention): an error, rather than waiting forever.
    async fn check_not_skipped(&self) -> Result<()> {
        let table = self.table.as_ref().ok_or_else(|| ConnectorError::Failed("the Delta source is not open".into()))?;
        let latest = table.get_latest_version().await.map_err(|e| self.err("cannot read the log", e))?;
        // A writer may have committed it (and more) since it was looked for.
        let appeared = || async {
            table.log_store().read_commit_entry(self.pos.version).await.map(|e| e.is_some()).unwrap_or(false)
        };
        if latest > self.pos.version && !appeared().await {
            return Err(ConnectorError::Failed(format!(
                "Delta table {}: version {} is no longer in the transaction log (the latest is {latest}); the log \
                 was cleaned up past the source's position, so restart the source from a fresh snapshot \
                 (drop and create it again)",
                describe(&self.url),
                self.pos.version
            )));
        }
        Ok(())
    }

    async fn read_all(&self, files: &[Add]) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for f in files {
            out.extend(table::read_file(&self.url, self.store()?, f, &self.schema).await?);
        }
        Ok(out)
    }

    /// True when this process runs `step` of the unit of `version`: in a cluster, a file is read
    /// by one process (chosen by its path), the comparison of a commit that rewrites files by one
    /// process (chosen by the version). Every process walks the same steps, so positions keep
    /// their meaning.
    fn owns(&self, version: u64, step: &Step) -> bool {
        match step {
            Step::File(add) => self.split.owns(path_hash(&add.path)),
            Step::Deletes { .. } | Step::Diff { .. } => self.split.owns(version),
        }
    }

    /// The changes of one step.
    async fn run_step(&self, step: &Step) -> Result<Vec<Change>> {
        match step {
            Step::File(add) => {
                let batches = table::read_file(&self.url, self.store()?, add, &self.schema).await?;
                self.counter("files_read", 1);
                Ok(batches.into_iter().filter(|b| b.num_rows() > 0).map(Change::Insert).collect())
            }
            Step::Deletes { removed, added } => {
                let key: Vec<usize> = self.key.iter().filter_map(|k| find_field(&self.schema, k)).collect();
                let fields: Vec<SortField> =
                    key.iter().map(|&i| SortField::new(self.schema.field(i).data_type().clone())).collect();
                let conv = RowConverter::new(fields)?;
                let mut kept = HashSet::new();
                for b in self.read_all(added).await? {
                    let cols: Vec<_> = key.iter().map(|&i| b.column(i).clone()).collect();
                    let rows = conv.convert_columns(&cols)?;
                    kept.extend(rows.iter().map(|r| r.owned()));
                }
                let mut out = Vec::new();
                for b in self.read_all(removed).await? {
                    let cols: Vec<_> = key.iter().map(|&i| b.column(i).clone()).collect();
                    let rows = conv.convert_columns(&cols)?;
                    let idx: Vec<u32> =
                        (0..b.num_rows()).filter(|&i| !kept.contains(&rows.row(i).owned())).map(|i| i as u32).collect();
                    if !idx.is_empty() {
                        out.push(Change::Delete(arrow::compute::take_record_batch(&b, &UInt32Array::from(idx))?));
                    }
                }
                Ok(out)
            }
            Step::Diff { removed, added } => {
                let fields: Vec<SortField> =
                    self.schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect();
                let conv = RowConverter::new(fields)?;
                let mut gone: HashMap<arrow::row::OwnedRow, usize> = HashMap::new();
                let mut removed_rows = 0usize;
                for b in self.read_all(removed).await? {
                    let rows = conv.convert_columns(b.columns())?;
                    removed_rows += b.num_rows();
                    for r in rows.iter() {
                        *gone.entry(r.owned()).or_default() += 1;
                    }
                }
                let mut out = Vec::new();
                let mut readded = 0usize;
                for b in self.read_all(added).await? {
                    let rows = conv.convert_columns(b.columns())?;
                    let mut idx = Vec::new();
                    for (i, r) in rows.iter().enumerate() {
                        match gone.get_mut(&r.owned()) {
                            Some(n) if *n > 0 => {
                                *n -= 1;
                                readded += 1;
                            }
                            _ => idx.push(i as u32),
                        }
                    }
                    if !idx.is_empty() {
                        out.push(Change::Insert(arrow::compute::take_record_batch(&b, &UInt32Array::from(idx))?));
                    }
                }
                let deleted = removed_rows - readded;
                if deleted > 0 {
                    self.counter("rows_deleted_upstream", deleted as i64);
                    if let Some(s) = &self.status {
                        s.set_last_error(format!(
                            "Delta table {} deleted {deleted} row(s); source '{}' has no PRIMARY KEY, so they stay \
                             (declare one to apply deletes)",
                            describe(&self.url),
                            self.name
                        ));
                    }
                }
                Ok(out)
            }
        }
    }

    /// Hands over up to [`MAX_ROWS_PER_POLL`] rows of the current step's output, from `pos.row`.
    fn take_output(&mut self) -> Vec<Change> {
        let Some(all) = &self.output else { return Vec::new() };
        let mut skip = self.pos.row;
        let mut budget = MAX_ROWS_PER_POLL;
        let mut out = Vec::new();
        for c in all {
            let n = c.num_rows();
            if skip >= n {
                skip -= n;
                continue;
            }
            let take = (n - skip).min(budget);
            let part = match c {
                Change::Insert(b) => Change::Insert(b.slice(skip, take)),
                Change::Delete(b) => Change::Delete(b.slice(skip, take)),
                Change::Clear => Change::Clear,
            };
            out.push(part);
            self.pos.row += take;
            budget -= take;
            skip = 0;
            if budget == 0 {
                break;
            }
        }
        let total: usize = all.iter().map(Change::num_rows).sum();
        if self.pos.row >= total {
            self.output = None;
            self.pos.step += 1;
            self.pos.row = 0;
        }
        out
    }
}

/// A hash of a file path that is the same in every process and every run (FNV-1a).
fn path_hash(path: &str) -> u64 {
    path.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn crate_note_schema_change(status: &ConnectorStatus, table: &str, old: &[String], new: &[String]) {
    let added: Vec<&String> = new.iter().filter(|n| !old.contains(n)).collect();
    let dropped: Vec<&String> = old.iter().filter(|n| !new.contains(n)).collect();
    status.add_counter("schema_changes", 1);
    status.set_last_error(format!(
        "Delta table {table} changed its columns (added: {:?}, dropped: {:?}); reading the declared columns",
        added, dropped
    ));
}

#[async_trait]
impl SourceConnector for DeltaSource {
    fn capabilities(&self) -> SourceCapabilities {
        SourceCapabilities {
            replayable: true,
            changelog: !self.key.is_empty(),
            bounded: false,
            watermarks: false,
            key_from_peer: false,
            // A key's rows must all come through one process, and a rewritten file's keys may
            // have been read by another: keyed sources run on process 0. So do sources with a
            // watermark: a process whose files are older (or that has none) would hold it back.
            partitioned: self.key.is_empty() && !self.watermark,
        }
    }

    fn attach(&mut self, status: Arc<ConnectorStatus>) {
        self.status = Some(status);
    }

    async fn open(&mut self) -> Result<()> {
        let table = table::load(&self.url).await?.ok_or_else(|| {
            ConnectorError::Failed(format!(
                "Delta table {} does not exist (no _delta_log with a commit at that location)",
                describe(&self.url)
            ))
        })?;
        table::check_features(&self.url, &table)?;
        let schema = table::arrow_schema(&self.url, &table)?;
        self.check_schema(&schema)?;
        let latest = table.version().unwrap_or(0);
        self.store = Some(table.object_store());
        self.table = Some(table);
        self.pos = match self.restored {
            Some(p) => p,
            None => match self.start {
                Start::Snapshot => Position { version: latest, snapshot: true, step: 0, row: 0 },
                Start::Version(v) => Position { version: v, snapshot: false, step: 0, row: 0 },
                Start::Latest => Position { version: latest + 1, snapshot: false, step: 0, row: 0 },
            },
        };
        if self.pos.snapshot {
            self.unit = Some(self.snapshot_unit(self.pos.version).await?);
        }
        Ok(())
    }

    async fn poll(&mut self) -> Result<Poll> {
        loop {
            if self.unit.is_none() {
                let wait = self.next_check.saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    return Ok(Poll::Idle(wait.min(Duration::from_millis(100))));
                }
                match self.commit_unit(self.pos.version).await? {
                    Some(u) => self.unit = Some(u),
                    None => {
                        self.check_not_skipped().await?;
                        self.next_check = Instant::now() + self.poll_interval;
                        continue;
                    }
                }
            }
            let Some(unit) = &self.unit else { continue };
            if self.pos.step >= unit.steps.len() {
                // The unit is done: next comes the commit after it.
                let v = unit.version;
                if let Some(s) = &self.status {
                    s.set_counter("delta_version", v as i64);
                }
                self.unit = None;
                self.pos = Position { version: v + 1, snapshot: false, step: 0, row: 0 };
                continue;
            }
            if self.output.is_none() {
                let step = unit.steps[self.pos.step].clone();
                let mine = self.owns(unit.version, &step);
                self.output = Some(if mine { self.run_step(&step).await? } else { Vec::new() });
            }
            let changes = self.take_output();
            if changes.is_empty() {
                continue;
            }
            return Ok(Poll::Data(SourceChunk { changes, ..SourceChunk::default() }));
        }
    }

    fn checkpoint(&self) -> Result<serde_json::Value> {
        serde_json::to_value(self.pos).map_err(|e| ConnectorError::Failed(e.to_string()))
    }

    fn restore(&mut self, position: &serde_json::Value) -> Result<()> {
        if position.is_null() {
            return Ok(());
        }
        let p: Position = serde_json::from_value(position.clone())
            .map_err(|e| ConnectorError::Failed(format!("bad Delta source position {position}: {e}")))?;
        self.restored = Some(p);
        Ok(())
    }

    fn describe(&self) -> String {
        describe(&self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_through_json() {
        let p = Position { version: 7, snapshot: true, step: 3, row: 100 };
        let v = serde_json::to_value(p).expect("test");
        assert_eq!(serde_json::from_value::<Position>(v).expect("test"), p);
    }
}
