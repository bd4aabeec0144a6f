//! The Delta Lake sink: epochs into Delta commits (append, overwrite, MERGE), with the epoch in
//! every commit and `txn` actions making checkpointed commits idempotent.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{new_null_array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use deltalake::datafusion::common::Column;
use deltalake::datafusion::logical_expr::{binary_expr, col, not, Expr, Operator};
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, StructField, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::DeltaTable;
use laminar_dataflow::batch::DiffBatch;
use serde::{Deserialize, Serialize};
use url::Url;

use super::table::{self, delta_err, describe, find_field};
use crate::connector::{SinkCapabilities, SinkConnector, SinkSpec};
use crate::options::OptionReader;
use crate::registry::SinkFactory;
use crate::runner::ConnectorStatus;
use crate::upsert;
use crate::{ConnectorError, Result};

/// Registration.
pub const SINK: SinkFactory = SinkFactory {
    name: "delta-lake",
    keys: &[
        "table_uri",
        "write_mode",
        "merge_key_columns",
        "partition_by",
        "commit_interval_ms",
        "schema_evolution",
        "compaction.every_commits",
        "compaction.target_file_size",
        "vacuum.every_commits",
        "vacuum.retention_hours",
        "app_id",
    ],
    build,
};

/// The column of a MERGE source batch that marks the keys to delete.
const DELETED: &str = "__laminardb_deleted";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Append,
    Overwrite,
    Upsert,
}

fn build(
    spec: &SinkSpec,
    r: &mut OptionReader<'_>,
    _ctx: &crate::registry::BuildContext<'_>,
) -> Result<Box<dyn SinkConnector>> {
    let raw = r.required_str("table_uri")?;
    let url = table::table_url(&raw, false)?;
    let mode = match r.opt_enum("write_mode", &["append", "overwrite", "upsert"])?.as_deref() {
        Some("overwrite") => Mode::Overwrite,
        Some("upsert") => Mode::Upsert,
        _ => Mode::Append,
    };
    let merge_keys = r.opt_str("merge_key_columns");
    if merge_keys.is_some() && mode != Mode::Upsert {
        return Err(ConnectorError::Config("'merge_key_columns' applies to 'write_mode' = 'upsert' only".into()));
    }
    let key_names: Vec<String> = match &merge_keys {
        Some(k) => k.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        None => spec.key_columns.clone(),
    };
    let mut key = Vec::new();
    for n in &key_names {
        key.push(find_field(&spec.schema, n).ok_or_else(|| {
            ConnectorError::Config(format!(
                "'merge_key_columns': the query has no column '{n}' (its columns: {})",
                column_list(&spec.schema)
            ))
        })?);
    }
    if mode == Mode::Upsert && key.is_empty() {
        if !spec.append_only {
            return Err(ConnectorError::Config(
                "'write_mode' = 'upsert' needs a key: set 'merge_key_columns' = 'col1,col2' (the query has no \
                 GROUP BY key)"
                    .into(),
            ));
        }
        // An insert-only query without a key is merged on its first column (an id such as a
        // transaction id, as in `SELECT * FROM transactions`): a later row with the same value
        // replaces the earlier one.
        key = vec![0];
    }
    if mode == Mode::Append && !spec.append_only {
        return Err(ConnectorError::Config(format!(
            "sink '{}': the query produces updates and deletes, which 'write_mode' = 'append' cannot write; use \
             'write_mode' = 'upsert' (MERGE on the key) or 'overwrite'",
            spec.name
        )));
    }
    if mode == Mode::Overwrite && !spec.append_only && key.is_empty() {
        // The whole current result is kept by row.
        key = (0..spec.schema.fields().len()).collect();
    }
    let partition_by: Vec<String> = r
        .opt_str("partition_by")
        .map(|p| p.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    for p in &partition_by {
        if find_field(&spec.schema, p).is_none() {
            return Err(ConnectorError::Config(format!(
                "'partition_by': the query has no column '{p}' (its columns: {})",
                column_list(&spec.schema)
            )));
        }
    }
    let commit_interval = Duration::from_millis(r.opt_u64("commit_interval_ms")?.unwrap_or(0));
    let schema_evolution = r.opt_bool("schema_evolution")?.unwrap_or(true);
    let compaction_every = r.opt_u64("compaction.every_commits")?.unwrap_or(0);
    let compaction_target = r.opt_u64("compaction.target_file_size")?.unwrap_or(128 << 20);
    let compaction_target = NonZeroU64::new(compaction_target)
        .ok_or_else(|| r.bad("compaction.target_file_size", "0", "a size in bytes greater than 0"))?;
    let vacuum_every = r.opt_u64("vacuum.every_commits")?.unwrap_or(0);
    let vacuum_retention = Duration::from_secs(r.opt_u64("vacuum.retention_hours")?.unwrap_or(168) * 3600);
    let app_id = r.opt_str("app_id").unwrap_or_else(|| format!("laminardb-{}", spec.name));
    let transactional = spec.options.get("delivery.guarantee").is_some_and(|g| g.trim() == "exactly-once");
    Ok(Box::new(DeltaSink {
        url,
        mode,
        append_only: spec.append_only,
        query_schema: spec.schema.clone(),
        key,
        partition_by,
        commit_interval,
        schema_evolution,
        compaction_every,
        compaction_target,
        vacuum_every,
        vacuum_retention,
        app_id,
        transactional,
        table: None,
        table_schema: spec.schema.clone(),
        rows: Vec::new(),
        keyed: upsert::Keyed::default(),
        dirty: false,
        epoch: 0,
        staged: Vec::new(),
        last_commit: Instant::now(),
        commits: 0,
        status: None,
    }))
}

fn column_list(schema: &Schema) -> String {
    schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
}

/// Data of one or more epochs made durable at a checkpoint barrier, waiting for the checkpoint.
#[derive(Clone, Serialize, Deserialize)]
struct Staged {
    /// The checkpoint epoch (the `txn` version of its commit).
    epoch: u64,
    /// Files written for append or overwrite.
    adds: Vec<Add>,
    /// Overwrite: the files replace the table's contents.
    replace: bool,
    /// Upsert: the MERGE source (rows plus the deleted flag) as Arrow IPC, index into the blobs.
    merge: Option<usize>,
    /// Skipped when its data is empty.
    #[serde(default)]
    empty: bool,
    #[serde(skip)]
    merge_batch: Option<RecordBatch>,
}

/// Writes epochs into a Delta table.
pub struct DeltaSink {
    url: Url,
    mode: Mode,
    append_only: bool,
    query_schema: SchemaRef,
    /// Merge key (upsert) or row key of the kept result (overwrite of an updating query), as
    /// indices into the query's columns.
    key: Vec<usize>,
    partition_by: Vec<String>,
    commit_interval: Duration,
    schema_evolution: bool,
    compaction_every: u64,
    compaction_target: NonZeroU64,
    vacuum_every: u64,
    vacuum_retention: Duration,
    app_id: String,
    transactional: bool,
    table: Option<DeltaTable>,
    /// The table's columns (what every written batch is conformed to).
    table_schema: SchemaRef,
    /// Append, and overwrite of an append-only query: rows since the last commit (barrier).
    rows: Vec<RecordBatch>,
    /// Upsert: changes since the last commit; overwrite of an updating query: the whole result.
    keyed: upsert::Keyed,
    /// Something to commit (rows or changes) since the last commit.
    dirty: bool,
    epoch: u64,
    /// Exactly-once: data written at barriers, committed when their checkpoint is durable.
    staged: Vec<Staged>,
    last_commit: Instant,
    commits: u64,
    status: Option<Arc<ConnectorStatus>>,
}

impl DeltaSink {
    fn table(&self) -> Result<&DeltaTable> {
        self.table.as_ref().ok_or_else(|| ConnectorError::Failed("the Delta sink is not open".into()))
    }

    fn err(&self, what: &str, e: deltalake::DeltaTableError) -> ConnectorError {
        delta_err(&self.url, what, e)
    }

    /// Creates the table from the query's columns, or checks (and evolves) an existing one.
    async fn prepare_table(&mut self) -> Result<()> {
        let wanted = table::delta_schema(&self.query_schema);
        if self.url.scheme() == "file" {
            // A new local table's directory is made here (an object store needs none).
            table::table_url(&self.url_path_or_uri(), true)?;
        }
        let table = match table::load(&self.url).await? {
            Some(t) => t,
            None => {
                let kernel: StructType = wanted
                    .as_ref()
                    .try_into_kernel()
                    .map_err(|e| ConnectorError::Config(format!("the query's columns have no Delta type: {e}")))?;
                table::register_handlers();
                let t = DeltaTable::try_from_url(self.url.clone()).await.map_err(|e| self.err("cannot open", e))?;
                let created = t
                    .create()
                    .with_columns(kernel.fields().cloned())
                    .with_partition_columns(self.partition_by.clone())
                    .with_save_mode(SaveMode::Ignore)
                    .await;
                match created {
                    Ok(t) => t,
                    // Another writer created it meanwhile.
                    Err(e) => table::load(&self.url).await?.ok_or_else(|| {
                        ConnectorError::Failed(format!("cannot create Delta table {}: {e}", describe(&self.url)))
                    })?,
                }
            }
        };
        table::check_features(&self.url, &table)?;
        let mut table = table;
        let current = table::arrow_schema(&self.url, &table)?;
        // Types of columns both sides have must convert; the query's extra columns are added.
        let mut added = Vec::new();
        for f in wanted.fields() {
            match find_field(&current, f.name()) {
                Some(i) => {
                    let t = current.field(i).data_type();
                    if !arrow::compute::can_cast_types(f.data_type(), t) {
                        return Err(ConnectorError::Config(format!(
                            "column '{}' of the query is {}, but Delta table {} has it as {t}",
                            f.name(),
                            f.data_type(),
                            describe(&self.url)
                        )));
                    }
                }
                None => added.push(f.clone()),
            }
        }
        for f in current.fields() {
            if find_field(&wanted, f.name()).is_none() && !f.is_nullable() {
                return Err(ConnectorError::Config(format!(
                    "Delta table {} has a NOT NULL column '{}' that the query does not produce",
                    describe(&self.url),
                    f.name()
                )));
            }
        }
        if !added.is_empty() {
            let names: Vec<String> = added.iter().map(|f| f.name().clone()).collect();
            if !self.schema_evolution {
                return Err(ConnectorError::Config(format!(
                    "Delta table {} has no column(s) {} of the query, and 'schema_evolution' is off",
                    describe(&self.url),
                    names.join(", ")
                )));
            }
            let fields: Vec<StructField> = added
                .iter()
                .map(|f| {
                    let s = Schema::new(vec![f.as_ref().clone()]);
                    let k: StructType = (&s)
                        .try_into_kernel()
                        .map_err(|e| ConnectorError::Config(format!("column '{}' has no Delta type: {e}", f.name())))?;
                    let field = k.fields().next().cloned();
                    field.ok_or_else(|| ConnectorError::Failed("empty schema".into()))
                })
                .collect::<Result<_>>()?;
            table = table
                .add_columns()
                .with_fields(fields)
                .await
                .map_err(|e| self.err("cannot add the query's new columns", e))?;
            if let Some(s) = &self.status {
                s.add_counter("schema_changes", 1);
                s.set_last_error(format!(
                    "added column(s) {} of the query to Delta table {}",
                    names.join(", "),
                    describe(&self.url)
                ));
            }
        }
        self.table_schema = table::arrow_schema(&self.url, &table)?;
        self.table = Some(table);
        Ok(())
    }

    fn url_path_or_uri(&self) -> String {
        if self.url.scheme() == "file" {
            if let Ok(p) = self.url.to_file_path() {
                return p.to_string_lossy().into_owned();
            }
        }
        self.url.to_string()
    }

    /// Rows of the query as rows of the table: columns by name, cast to the table's types,
    /// NULL where the query lacks a (nullable) column.
    fn conform(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let n = batch.num_rows();
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.table_schema.fields().len());
        for f in self.table_schema.fields() {
            let c = match find_field(&batch.schema(), f.name()) {
                Some(i) => {
                    let c = batch.column(i);
                    if c.data_type() == f.data_type() {
                        c.clone()
                    } else {
                        arrow::compute::cast(c, f.data_type())?
                    }
                }
                None => new_null_array(f.data_type(), n),
            };
            cols.push(c);
        }
        Ok(RecordBatch::try_new_with_options(
            self.table_schema.clone(),
            cols,
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )?)
    }

    /// Writes `rows` as data files of the table (not yet committed).
    async fn write_files(&self, rows: &[RecordBatch]) -> Result<Vec<Add>> {
        let rows: Vec<&RecordBatch> = rows.iter().filter(|b| b.num_rows() > 0).collect();
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let table = self.table()?;
        let mut writer = RecordBatchWriter::for_table(table).map_err(|e| self.err("cannot write", e))?;
        for b in rows {
            writer.write(b.clone()).await.map_err(|e| self.err("cannot write", e))?;
        }
        writer.flush().await.map_err(|e| self.err("cannot write", e))
    }

    /// What the data since the last commit becomes: written files, or a MERGE source.
    async fn stage(&mut self, epoch: u64) -> Result<Staged> {
        let mut staged =
            Staged { epoch, adds: Vec::new(), replace: false, merge: None, empty: false, merge_batch: None };
        match self.mode {
            Mode::Append => {
                let rows = std::mem::take(&mut self.rows);
                staged.adds = self.write_files(&rows).await?;
                staged.empty = staged.adds.is_empty();
            }
            Mode::Overwrite if self.append_only => {
                let rows = std::mem::take(&mut self.rows);
                staged.adds = self.write_files(&rows).await?;
                staged.replace = true;
                staged.empty = !self.dirty;
            }
            Mode::Overwrite => {
                self.keyed.compact(&self.query_schema)?;
                let rows = self.conform(&self.keyed.batches[0])?;
                staged.adds = self.write_files(&[rows]).await?;
                staged.replace = true;
                staged.empty = !self.dirty;
            }
            Mode::Upsert => {
                let batch = self.merge_source()?;
                self.keyed.clear();
                staged.empty = batch.num_rows() == 0;
                staged.merge_batch = Some(batch);
            }
        }
        self.dirty = false;
        Ok(staged)
    }

    /// The folded changes as a MERGE source: the table's columns plus the deleted flag.
    fn merge_source(&self) -> Result<RecordBatch> {
        let refs: Vec<&RecordBatch> = self.keyed.batches.iter().collect();
        let mut idx = Vec::new();
        let mut deleted = Vec::new();
        // A deleted key still needs its key values: its last retracted row carries them.
        let mut last_seen: HashMap<&str, (usize, usize)> = HashMap::new();
        if self.keyed.rows.values().any(Option::is_none) {
            for (b, batch) in self.keyed.batches.iter().enumerate() {
                let keys = upsert::key_strings(batch, &self.key)?;
                for (i, k) in keys.into_iter().enumerate() {
                    if let Some((key, None)) = self.keyed.rows.get_key_value(&k) {
                        last_seen.insert(key.as_str(), (b, i));
                    }
                }
            }
        }
        for (k, v) in &self.keyed.rows {
            match v {
                Some(v) => {
                    idx.push(v.at);
                    deleted.push(false);
                }
                None => {
                    if let Some(at) = last_seen.get(k.as_str()) {
                        idx.push(*at);
                        deleted.push(true);
                    }
                }
            }
        }
        let rows = if idx.is_empty() {
            RecordBatch::new_empty(self.query_schema.clone())
        } else {
            arrow::compute::interleave_record_batch(&refs, &idx)?
        };
        let rows = self.conform(&rows)?;
        let mut fields: Vec<Field> = rows.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(DELETED, DataType::Boolean, false));
        let mut cols = rows.columns().to_vec();
        cols.push(Arc::new(BooleanArray::from(deleted)));
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
    }

    /// Commits one staged piece of data (with the `txn` action when `txn`).
    async fn commit_staged(&mut self, staged: Staged, txn: bool) -> Result<()> {
        if staged.empty {
            return Ok(());
        }
        let mut props = CommitProperties::default().with_metadata([
            ("laminardb.epoch".to_string(), serde_json::json!(staged.epoch)),
            ("laminardb.app_id".to_string(), serde_json::json!(self.app_id)),
        ]);
        if txn {
            props = props.with_application_transaction(Transaction::new(&self.app_id, staged.epoch as i64));
        }
        let mut table = self.table.take().ok_or_else(|| ConnectorError::Failed("the Delta sink is not open".into()))?;
        let result = self.commit_into(&mut table, staged, props).await;
        self.table = Some(table);
        result?;
        self.commits += 1;
        self.last_commit = Instant::now();
        if let Some(s) = &self.status {
            s.set_counter("delta_commits", self.commits as i64);
            if let Some(v) = self.table.as_ref().and_then(DeltaTable::version) {
                s.set_counter("delta_version", v as i64);
            }
        }
        self.maintain().await
    }

    async fn commit_into(&self, table: &mut DeltaTable, staged: Staged, props: CommitProperties) -> Result<()> {
        if let Some(batch) = staged.merge_batch {
            let merged = self.merge(table.clone(), batch, props).await?;
            *table = merged;
            return Ok(());
        }
        let mut actions: Vec<Action> = Vec::new();
        if staged.replace {
            // The files to remove are those of the newest version.
            table.update_state().await.map_err(|e| self.err("cannot read the log", e))?;
            let snapshot = table.snapshot().map_err(|e| self.err("cannot read the snapshot", e))?;
            for f in snapshot.log_data().iter() {
                actions.push(Action::Remove(f.remove_action(true)));
            }
        }
        actions.extend(staged.adds.into_iter().map(Action::Add));
        let partition_by = if self.partition_by.is_empty() { None } else { Some(self.partition_by.clone()) };
        let operation = DeltaOperation::Write {
            mode: if staged.replace { SaveMode::Overwrite } else { SaveMode::Append },
            partition_by,
            predicate: None,
        };
        // An append needs no fresh snapshot: if another writer committed meanwhile, the commit
        // is retried on the next version after delta-rs' conflict check.
        let snapshot = table.snapshot().map_err(|e| self.err("cannot read the snapshot", e))?;
        let done = CommitBuilder::from(props)
            .with_actions(actions)
            .build(Some(snapshot), table.log_store(), operation)
            .await
            .map_err(|e| self.err("cannot commit", e))?;
        table.state = Some(done.snapshot);
        Ok(())
    }

    /// MERGE of the changed keys: deleted keys are deleted, others updated or inserted.
    async fn merge(&self, table: DeltaTable, batch: RecordBatch, props: CommitProperties) -> Result<DeltaTable> {
        let ctx = SessionContext::new();
        let df = ctx.read_batch(batch).map_err(|e| ConnectorError::Failed(format!("MERGE source: {e}")))?;
        let names: Vec<String> = self.table_schema.fields().iter().map(|f| f.name().clone()).collect();
        let key_names: Vec<String> = self
            .key
            .iter()
            .filter_map(|&i| find_field(&self.table_schema, self.query_schema.field(i).name()))
            .map(|i| names[i].clone())
            .collect();
        let target = |n: &str| col(Column::new(Some("target"), n));
        let source = |n: &str| col(Column::new(Some("source"), n));
        let mut predicate: Option<Expr> = None;
        for k in &key_names {
            // NULL keys (a GROUP BY over a nullable column) match each other.
            let e = binary_expr(target(k), Operator::IsNotDistinctFrom, source(k));
            predicate = Some(match predicate {
                Some(p) => p.and(e),
                None => e,
            });
        }
        let predicate = predicate.ok_or_else(|| ConnectorError::Failed("MERGE needs key columns".into()))?;
        let fail = |e: deltalake::DeltaTableError| self.err("MERGE failed", e);
        let update_names = names.clone();
        let insert_names = names.clone();
        let (table, _metrics) = table
            .merge(df, predicate)
            .with_source_alias("source")
            .with_target_alias("target")
            .with_commit_properties(props)
            .when_matched_delete(|d| d.predicate(source(DELETED)))
            .map_err(fail)?
            .when_matched_update(move |mut u| {
                for n in &update_names {
                    u = u.update(Column::new_unqualified(n.as_str()), source(n));
                }
                u
            })
            .map_err(fail)?
            .when_not_matched_insert(move |mut i| {
                i = i.predicate(not(source(DELETED)));
                for n in &insert_names {
                    i = i.set(Column::new_unqualified(n.as_str()), source(n));
                }
                i
            })
            .map_err(fail)?
            .await
            .map_err(fail)?;
        Ok(table)
    }

    /// Compaction and vacuum, when due.
    async fn maintain(&mut self) -> Result<()> {
        let compact = self.compaction_every > 0 && self.commits.is_multiple_of(self.compaction_every);
        let vacuum = self.vacuum_every > 0 && self.commits.is_multiple_of(self.vacuum_every);
        if !compact && !vacuum {
            return Ok(());
        }
        let mut table = self.table.take().ok_or_else(|| ConnectorError::Failed("the Delta sink is not open".into()))?;
        let mut result = Ok(());
        if compact {
            match table.clone().optimize().with_target_size(self.compaction_target).await {
                Ok((t, metrics)) => {
                    table = t;
                    if let Some(s) = &self.status {
                        s.add_counter("files_compacted", metrics.num_files_removed as i64);
                    }
                }
                Err(e) => result = Err(self.err("compaction failed", e)),
            }
        }
        if vacuum && result.is_ok() {
            let retention = chrono::Duration::from_std(self.vacuum_retention).unwrap_or(chrono::Duration::days(7));
            match table.clone().vacuum().with_retention_period(retention).with_enforce_retention_duration(false).await {
                Ok((t, metrics)) => {
                    table = t;
                    if let Some(s) = &self.status {
                        s.add_counter("files_vacuumed", metrics.files_deleted.len() as i64);
                    }
                }
                Err(e) => result = Err(self.err("vacuum failed", e)),
            }
        }
        self.table = Some(table);
        result
    }

    fn commit_due(&self) -> bool {
        self.commit_interval.is_zero() || self.last_commit.elapsed() >= self.commit_interval
    }

    /// Commits what was written since the last commit (at-least-once).
    async fn flush(&mut self) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let staged = self.stage(self.epoch).await?;
        self.commit_staged(staged, false).await
    }

    /// Reads the table's current rows into the kept result (overwrite of an updating query
    /// resuming from a checkpoint: the table holds the result as of that checkpoint).
    async fn reload_result(&mut self) -> Result<()> {
        let table = self.table()?;
        let store = table.object_store();
        let snapshot = table.snapshot().map_err(|e| self.err("cannot read the snapshot", e))?;
        #[allow(deprecated)]
        let adds: Vec<Add> = snapshot.log_data().iter().map(|f| f.add_action()).collect();
        let schema = self.query_schema.clone();
        let mut batches = Vec::new();
        for add in &adds {
            batches.extend(table::read_file(&self.url, &store, add, &schema).await?);
        }
        self.keyed.clear();
        for b in batches {
            self.keyed.apply(&DiffBatch::inserts(b), &self.key)?;
        }
        Ok(())
    }
}

/// Checkpoint state: the staged data, with MERGE sources as Arrow IPC blobs after the JSON.
fn encode_state(staged: &[Staged]) -> Result<Vec<u8>> {
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    let mut list = staged.to_vec();
    for s in &mut list {
        if let Some(b) = &s.merge_batch {
            let mut buf = Vec::new();
            {
                let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &b.schema())?;
                w.write(b)?;
                w.finish()?;
            }
            s.merge = Some(blobs.len());
            blobs.push(buf);
        }
    }
    let json = serde_json::to_vec(&(list, blobs.iter().map(Vec::len).collect::<Vec<_>>()))
        .map_err(|e| ConnectorError::Failed(e.to_string()))?;
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    for b in blobs {
        out.extend(b);
    }
    Ok(out)
}

fn decode_state(bytes: &[u8]) -> Result<Vec<Staged>> {
    let bad = || ConnectorError::Failed("the Delta sink's checkpoint state is damaged".into());
    let len = u64::from_le_bytes(bytes.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
    let json = bytes.get(8..8 + len).ok_or_else(bad)?;
    let (mut list, sizes): (Vec<Staged>, Vec<usize>) = serde_json::from_slice(json).map_err(|_| bad())?;
    let mut at = 8 + len;
    let mut blobs = Vec::new();
    for n in sizes {
        blobs.push(bytes.get(at..at + n).ok_or_else(bad)?);
        at += n;
    }
    for s in &mut list {
        if let Some(i) = s.merge {
            let blob = blobs.get(i).ok_or_else(bad)?;
            let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(*blob), None)?;
            let schema = reader.schema();
            let batches: Vec<RecordBatch> = reader.collect::<std::result::Result<_, _>>()?;
            s.merge_batch = Some(arrow::compute::concat_batches(&schema, &batches)?);
        }
    }
    Ok(list)
}

#[async_trait]
impl SinkConnector for DeltaSink {
    fn capabilities(&self) -> SinkCapabilities {
        SinkCapabilities { upsert: self.mode != Mode::Append, changelog: false, exactly_once: true, parallel: false }
    }

    fn attach(&mut self, status: Arc<ConnectorStatus>) {
        self.status = Some(status);
    }

    async fn open(&mut self) -> Result<()> {
        if self.table.is_none() {
            self.prepare_table().await?;
        }
        Ok(())
    }

    async fn begin(&mut self, epoch: u64) -> Result<()> {
        self.epoch = epoch;
        Ok(())
    }

    async fn write(&mut self, batch: &DiffBatch) -> Result<()> {
        match self.mode {
            Mode::Append => {
                let rows = upsert::expand_inserts(batch)?;
                let rows = self.conform(&rows)?;
                self.rows.push(rows);
            }
            Mode::Overwrite if self.append_only => {
                let rows = upsert::expand_inserts(batch)?;
                let rows = self.conform(&rows)?;
                self.rows.push(rows);
            }
            Mode::Overwrite | Mode::Upsert => self.keyed.apply(batch, &self.key)?,
        }
        self.dirty = true;
        Ok(())
    }

    async fn pre_commit(&mut self, epoch: u64) -> Result<()> {
        if self.transactional {
            // A checkpoint barrier: the data up to here is written now, committed once the
            // checkpoint is durable.
            let staged = self.stage(epoch).await?;
            self.staged.push(staged);
        }
        Ok(())
    }

    fn checkpoint_state(&mut self) -> Option<Vec<u8>> {
        if !self.transactional {
            return None;
        }
        match encode_state(&self.staged) {
            Ok(s) => Some(s),
            Err(e) => {
                if let Some(st) = &self.status {
                    st.set_last_error(e.to_string());
                }
                None
            }
        }
    }

    async fn commit(&mut self, epoch: u64) -> Result<()> {
        if self.transactional {
            let ready: Vec<Staged> = self.staged.iter().filter(|s| s.epoch <= epoch).cloned().collect();
            self.staged.retain(|s| s.epoch > epoch);
            for s in ready {
                self.commit_staged(s, true).await?;
            }
            return Ok(());
        }
        if self.commit_due() {
            self.flush().await?;
        }
        Ok(())
    }

    async fn recover(&mut self, checkpoint: u64, state: Option<&[u8]>) -> Result<()> {
        let table = self.table()?;
        let done = table
            .snapshot()
            .map_err(|e| self.err("cannot read the snapshot", e))?
            .transaction_version(table.log_store().as_ref(), &self.app_id)
            .await
            .map_err(|e| self.err("cannot read the log", e))?
            .unwrap_or(-1);
        if let Some(bytes) = state {
            for s in decode_state(bytes)? {
                // Committed before the crash: the table's txn version says so.
                if s.epoch <= checkpoint && (s.epoch as i64) > done {
                    self.commit_staged(s, true).await?;
                }
            }
        }
        if self.mode == Mode::Overwrite && !self.append_only {
            self.reload_result().await?;
        }
        Ok(())
    }

    fn tick_interval(&self) -> Option<Duration> {
        if self.transactional || self.commit_interval.is_zero() {
            None
        } else {
            Some(self.commit_interval)
        }
    }

    async fn tick(&mut self) -> Result<()> {
        if self.commit_due() {
            self.flush().await?;
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        if self.transactional {
            // Epochs after the last checkpoint are written again by the next run.
            return Ok(());
        }
        if self.table.is_some() {
            self.flush().await?;
        }
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
    fn checkpoint_state_round_trips_files_and_merge_sources() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new(DELETED, DataType::Boolean, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(arrow::array::Int64Array::from(vec![1, 2])), Arc::new(BooleanArray::from(vec![false, true]))],
        )
        .expect("test");
        let add = Add { path: "part-1.parquet".into(), size: 10, data_change: true, ..Default::default() };
        let staged = vec![
            Staged { epoch: 3, adds: vec![add], replace: true, merge: None, empty: false, merge_batch: None },
            Staged {
                epoch: 5,
                adds: vec![],
                replace: false,
                merge: None,
                empty: false,
                merge_batch: Some(batch.clone()),
            },
        ];
        let back = decode_state(&encode_state(&staged).expect("test")).expect("test");
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].epoch, 3);
        assert!(back[0].replace);
        assert_eq!(back[0].adds[0].path, "part-1.parquet");
        assert_eq!(back[1].merge_batch.as_ref().expect("test"), &batch);
        assert!(decode_state(&[1, 2, 3]).is_err());
    }
}
