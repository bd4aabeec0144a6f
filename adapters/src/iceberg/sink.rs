//! The Iceberg sink: epochs into Parquet data files and Iceberg snapshots, each snapshot
//! carrying the epoch so that a replay after a crash does not commit twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{new_null_array, ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use iceberg::arrow::{
    arrow_schema_to_schema_auto_assign_ids, arrow_type_to_type, schema_to_arrow_schema, RecordBatchPartitionSplitter,
};
use iceberg::io::FileIO;
use iceberg::spec::{
    deserialize_data_file_from_json, serialize_data_file_to_json, DataContentType, DataFile, DataFileFormat,
    FormatVersion, ManifestFile, ManifestListWriter, ManifestWriterBuilder, NestedField, NestedFieldRef, Operation,
    Snapshot, SnapshotReference, SnapshotRetention, SnapshotSummaryCollector, Summary, Transform, UnboundPartitionSpec,
    MAIN_BRANCH,
};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use iceberg::{NamespaceIdent, TableCreation, TableIdent, TableRequirement, TableUpdate};
use laminar_dataflow::batch::DiffBatch;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use super::catalog::{Catalog, CatalogTarget, Committed, SqlBackend, SqlCatalog};
use super::merge;
use super::rest::{RestAuth, RestCatalog};
use crate::connector::{SinkCapabilities, SinkConnector, SinkSpec};
use crate::options::OptionReader;
use crate::registry::SinkFactory;
use crate::runner::ConnectorStatus;
use crate::upsert;
use crate::{ConnectorError, Result};

/// Registration.
pub const SINK: SinkFactory = SinkFactory {
    name: "iceberg",
    keys: &[
        "catalog_uri",
        "catalog.type",
        "catalog.name",
        "table",
        "write_mode",
        "warehouse",
        "commit_interval_ms",
        "target_file_size",
        "schema_evolution",
        "partition_by",
        "app_id",
        "merge_key_columns",
        "catalog.token",
        "catalog.credential",
        "catalog.oauth2-server-uri",
        "catalog.scope",
        "glue.region",
        "glue.id",
    ],
    build,
};

/// Snapshot summary keys the sink writes.
const EPOCH_KEY: &str = "laminardb.epoch";
const APP_KEY: &str = "laminardb.app-id";

/// How many times a commit that lost a race with another writer is rebuilt and retried.
const COMMIT_ATTEMPTS: usize = 20;

fn build(
    spec: &SinkSpec,
    r: &mut OptionReader<'_>,
    _ctx: &crate::registry::BuildContext<'_>,
) -> Result<Box<dyn SinkConnector>> {
    let uri = r.required_str("catalog_uri")?;
    let kind = r.opt_str("catalog.type");
    let target = CatalogTarget::parse(&uri, kind.as_deref())?;
    let catalog_name = r.opt_str("catalog.name").unwrap_or_else(|| "default".into());
    let table = r.required_str("table")?;
    let parts: Vec<String> = table.split('.').map(|s| s.trim().to_string()).collect();
    if parts.len() < 2 || parts.iter().any(String::is_empty) {
        return Err(r.bad("table", &table, "a name with its namespace: 'namespace.table'"));
    }
    let (name, ns) = parts.split_last().map(|(n, ns)| (n.clone(), ns.to_vec())).unwrap_or_default();
    let ident = TableIdent::new(
        NamespaceIdent::from_vec(ns).map_err(|e| ConnectorError::Config(format!("'table': {e}")))?,
        name,
    );
    let upsert = r.opt_enum("write_mode", &["append", "upsert"])?.as_deref() == Some("upsert");
    let merge_keys = r.opt_str("merge_key_columns");
    if merge_keys.is_some() && !upsert {
        return Err(ConnectorError::Config("'merge_key_columns' applies to 'write_mode' = 'upsert' only".into()));
    }
    let mut key_names: Vec<String> = match &merge_keys {
        Some(k) => k.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        None => spec.key_columns.clone(),
    };
    for n in &key_names {
        if find_field(&spec.schema, n).is_none() {
            return Err(ConnectorError::Config(format!(
                "'merge_key_columns': the query has no column '{n}' (its columns: {})",
                spec.schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    if upsert && key_names.is_empty() {
        if !spec.append_only {
            return Err(ConnectorError::Config(
                "'write_mode' = 'upsert' needs a key: set 'merge_key_columns' = 'col1,col2' (the query has no \
                 GROUP BY key)"
                    .into(),
            ));
        }
        // An insert-only query without a key merges on its first column (an id): a later row
        // with the same value replaces the earlier one.
        key_names = vec![spec.schema.field(0).name().clone()];
    }
    if !upsert && !spec.append_only {
        return Err(ConnectorError::Config(format!(
            "sink '{}': the query produces updates and deletes, which 'write_mode' = 'append' cannot write; use \
             'write_mode' = 'upsert' (merge on the key)",
            spec.name
        )));
    }
    let warehouse = r.opt_str("warehouse");
    let commit_interval = Duration::from_millis(r.opt_u64("commit_interval_ms")?.unwrap_or(0));
    let target_file_size = r.opt_u64("target_file_size")?.unwrap_or(128 << 20);
    if target_file_size == 0 {
        return Err(r.bad("target_file_size", "0", "a size in bytes greater than 0"));
    }
    // Checked here so that a query the table format cannot hold fails at CREATE.
    iceberg_schema(&spec.schema)?;
    let schema_evolution = r.opt_bool("schema_evolution")?.unwrap_or(true);
    let partition_by = match r.opt_str("partition_by") {
        Some(p) => parse_partitioning(&p, &spec.schema)?,
        None => Vec::new(),
    };
    let app_id = r.opt_str("app_id").unwrap_or_else(|| format!("laminardb-{}", spec.name));
    let transactional = spec.options.get("delivery.guarantee").is_some_and(|g| g.trim() == "exactly-once");
    let glue_region = r.opt_str("glue.region");
    let glue_id = r.opt_str("glue.id");
    if (glue_region.is_some() || glue_id.is_some()) && !matches!(target, CatalogTarget::Glue(_)) {
        return Err(ConnectorError::Config("'glue.region' and 'glue.id' apply to a Glue catalog only".into()));
    }
    let token = r.opt_str("catalog.token");
    let credential = r.opt_str("catalog.credential");
    let token_uri = r.opt_str("catalog.oauth2-server-uri");
    let scope = r.opt_str("catalog.scope").unwrap_or_else(|| "catalog".into());
    let rest_only = [
        ("catalog.token", token.is_some()),
        ("catalog.credential", credential.is_some()),
        ("catalog.oauth2-server-uri", token_uri.is_some()),
    ];
    let catalog = match target {
        CatalogTarget::Sqlite(path) => {
            if let Some((key, _)) = rest_only.iter().find(|(_, set)| *set) {
                return Err(ConnectorError::Config(format!("'{key}' applies to a REST catalog only")));
            }
            Catalog::Sql(SqlCatalog::new(SqlBackend::Sqlite(path), catalog_name))
        }
        #[cfg(feature = "iceberg-postgres")]
        CatalogTarget::Postgres(uri) => {
            if let Some((key, _)) = rest_only.iter().find(|(_, set)| *set) {
                return Err(ConnectorError::Config(format!("'{key}' applies to a REST catalog only")));
            }
            let shown = crate::options::redact_uri(&uri).unwrap_or_else(|| uri.clone());
            let mut params = crate::postgres::config::parse_uri_option(&uri, &shown, "catalog_uri")?;
            params.replication = false;
            params.application_name = "laminardb-iceberg".into();
            Catalog::Sql(SqlCatalog::new(SqlBackend::Postgres(params, shown), catalog_name))
        }
        #[cfg(not(feature = "iceberg-postgres"))]
        CatalogTarget::Postgres(_) => {
            return Err(ConnectorError::Config(
                "a Postgres SQL catalog needs the iceberg-postgres feature of this build".into(),
            ))
        }
        #[cfg(feature = "iceberg-glue")]
        CatalogTarget::Glue(uri) => {
            if let Some((key, _)) = rest_only.iter().find(|(_, set)| *set) {
                return Err(ConnectorError::Config(format!(
                    "'{key}' applies to a REST catalog only (Glue uses the AWS_* credentials)"
                )));
            }
            Catalog::Glue(super::glue::GlueCatalog::new(&uri, glue_region, glue_id)?)
        }
        #[cfg(not(feature = "iceberg-glue"))]
        CatalogTarget::Glue(_) => {
            return Err(ConnectorError::Config("a Glue catalog needs the iceberg-glue feature of this build".into()))
        }
        CatalogTarget::Rest(uri) => {
            let auth = match (token, credential) {
                (Some(_), Some(_)) => {
                    return Err(ConnectorError::Config(
                        "set one of 'catalog.token' and 'catalog.credential', not both".into(),
                    ))
                }
                (Some(t), None) => RestAuth::Token(t),
                (None, Some(c)) => {
                    let (id, secret) = c.split_once(':').ok_or_else(|| {
                        ConnectorError::Config("'catalog.credential' is 'client_id:client_secret'".into())
                    })?;
                    RestAuth::Credential { client_id: id.into(), secret: secret.into(), token_uri, scope }
                }
                (None, None) => RestAuth::None,
            };
            // For a REST catalog, 'warehouse' names the warehouse the server serves.
            Catalog::Rest(RestCatalog::new(&uri, warehouse.clone(), auth)?)
        }
    };
    Ok(Box::new(IcebergSink {
        catalog,
        ident,
        upsert,
        key_names,
        table_key: Vec::new(),
        key_schema: Arc::new(Schema::empty()),
        keyed: upsert::Keyed::default(),
        index: None,
        file_info: HashMap::new(),
        warehouse,
        query_schema: spec.schema.clone(),
        commit_interval,
        target_file_size: target_file_size as usize,
        schema_evolution,
        partition_by,
        app_id,
        transactional,
        file_io: table_file_io(),
        table: None,
        table_schema: spec.schema.clone(),
        rows: Vec::new(),
        staged: Vec::new(),
        epoch: 0,
        last_commit: Instant::now(),
        commits: 0,
        retired: 0,
        conflicts: 0,
        status: None,
    }))
}

/// How the sink reads and writes table files: local paths, and `s3://` with the S3 feature.
fn table_file_io() -> FileIO {
    #[cfg(feature = "iceberg-s3")]
    return super::storage::file_io(HashMap::new());
    #[cfg(not(feature = "iceberg-s3"))]
    return FileIO::new_with_fs();
}

/// The query's columns as Arrow types an Iceberg table holds (every column optional).
fn iceberg_arrow_type(name: &str, t: &DataType) -> Result<DataType> {
    Ok(match t {
        DataType::Boolean | DataType::Int32 | DataType::Int64 | DataType::Float32 | DataType::Float64 => t.clone(),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 | DataType::UInt16 => DataType::Int32,
        DataType::UInt32 | DataType::UInt64 => DataType::Int64,
        DataType::Float16 => DataType::Float32,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
            DataType::LargeBinary
        }
        DataType::Date32 | DataType::Date64 => DataType::Date32,
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.as_ref().map(|_| "+00:00".into())),
        DataType::Time32(_) | DataType::Time64(_) => DataType::Time64(TimeUnit::Microsecond),
        DataType::Decimal128(p, s) if *p <= 38 => t.clone(),
        other => {
            return Err(ConnectorError::Config(format!(
                "column '{name}' has type {other}, which an Iceberg table cannot hold"
            )))
        }
    })
}

/// The Iceberg schema of a table made for the query (field ids assigned in column order).
fn iceberg_schema(query: &Schema) -> Result<iceberg::spec::Schema> {
    let fields: Vec<Field> = query
        .fields()
        .iter()
        .map(|f| Ok(Field::new(f.name(), iceberg_arrow_type(f.name(), f.data_type())?, true)))
        .collect::<Result<_>>()?;
    arrow_schema_to_schema_auto_assign_ids(&Schema::new(fields))
        .map_err(|e| ConnectorError::Config(format!("the query's columns have no Iceberg schema: {e}")))
}

/// Data of the epochs up to a checkpoint barrier, written at the barrier and committed once the
/// checkpoint is durable.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Staged {
    /// The checkpoint epoch (recorded in the snapshot summary).
    epoch: u64,
    /// The data files, in Iceberg's JSON form of a manifest entry's file.
    files: Vec<String>,
    /// Upsert: rows the commit retires (data file → positions).
    #[serde(default)]
    deletes: Vec<(String, Vec<i64>)>,
    /// Upsert: the keys the commit changes.
    #[serde(default)]
    changed: Vec<String>,
}

/// What one commit adds: data files and, for upserts, the rows it retires.
#[derive(Default)]
struct Pending {
    data: Vec<DataFile>,
    /// Data file → positions of rows the commit retires.
    deletes: Vec<(String, Vec<i64>)>,
    /// The keys the commit changes (rows another writer appends meanwhile with one of these
    /// keys are retired too).
    changed: Vec<String>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.data.is_empty() && self.deletes.iter().all(|(_, p)| p.is_empty())
    }
}

/// Writes epochs into an Iceberg table.
pub struct IcebergSink {
    catalog: Catalog,
    ident: TableIdent,
    /// `'write_mode' = 'upsert'`: a row replaces the table's rows with its key.
    upsert: bool,
    /// The merge key's columns (upsert).
    key_names: Vec<String>,
    /// The merge key's positions among the table's columns.
    table_key: Vec<usize>,
    /// The merge key's fields of the table (with their field ids).
    key_schema: SchemaRef,
    /// Upsert: the last state of each key changed since the last commit (or barrier), in the
    /// table's columns.
    keyed: upsert::Keyed,
    /// Upsert: where each key's row is (read from the table when first needed).
    index: Option<merge::KeyIndex>,
    /// Partition of each data file a delete may point into.
    file_info: HashMap<String, merge::FileInfo>,
    warehouse: Option<String>,
    query_schema: SchemaRef,
    commit_interval: Duration,
    target_file_size: usize,
    schema_evolution: bool,
    /// Partition fields of a table the sink creates: (query column, transform).
    partition_by: Vec<(usize, Transform)>,
    app_id: String,
    transactional: bool,
    file_io: FileIO,
    table: Option<Table>,
    /// The table's columns as Arrow (with their field ids): what written batches are made into.
    table_schema: SchemaRef,
    /// Rows since the last commit (or barrier).
    rows: Vec<RecordBatch>,
    staged: Vec<Staged>,
    epoch: u64,
    last_commit: Instant,
    commits: u64,
    /// Rows retired by the sink's position deletes (upsert).
    retired: u64,
    /// Commits rebuilt after another writer committed first.
    conflicts: u64,
    status: Option<Arc<ConnectorStatus>>,
}

/// Where a written row's key went: (key, data file, position).
type Placed = (String, Arc<str>, i64);

/// Parquet settings of the files the sink writes.
fn writer_properties() -> WriterProperties {
    WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default())).build()
}

impl IcebergSink {
    fn table(&self) -> Result<&Table> {
        self.table.as_ref().ok_or_else(|| ConnectorError::Failed("the Iceberg sink is not open".into()))
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::Failed(format!("Iceberg table {} in {}: {what}: {e}", self.ident, self.catalog.describe()))
    }

    /// Where a table the sink creates goes: the namespace's `location` + `<table>`, else
    /// `'warehouse'` (or the SQL catalog database's directory) + `<namespace>.db/<table>`, as
    /// pyiceberg lays it out; None lets a REST catalog decide.
    async fn new_table_location(&self) -> Result<Option<String>> {
        if let Some(ns) = self.catalog.namespace_location(&self.ident).await? {
            return Ok(Some(format!("{}/{}", ns.trim_end_matches('/'), self.ident.name)));
        }
        let base = match (&self.catalog, &self.warehouse) {
            (Catalog::Rest(_), _) => return Ok(None),
            (_, Some(w)) if w.contains("://") => w.trim_end_matches('/').to_string(),
            (_, Some(w)) => {
                format!("file://{}", std::path::absolute(w).map_err(|e| self.err("'warehouse'", e))?.display())
            }
            (c, None) => match c.default_warehouse() {
                Some(d) => format!("file://{}", d.display()),
                None => return Ok(None),
            },
        };
        Ok(Some(format!("{base}/{}.db/{}", self.ident.namespace.join("."), self.ident.name)))
    }

    /// Loads the table, creating it from the query's columns if the catalog lacks it.
    async fn prepare_table(&mut self) -> Result<()> {
        let table = match self.catalog.load(&self.ident, &self.file_io).await? {
            Some(t) => t,
            None => {
                let location = self.new_table_location().await?;
                if let Some(path) = location.as_deref().and_then(|l| l.strip_prefix("file://")) {
                    std::fs::create_dir_all(path).map_err(|e| self.err(&format!("cannot create {path}"), e))?;
                }
                let schema = iceberg_schema(&self.query_schema)?;
                let mut spec = UnboundPartitionSpec::builder();
                for (column, transform) in &self.partition_by {
                    let name = self.query_schema.field(*column).name();
                    let field = schema
                        .field_by_name(name)
                        .ok_or_else(|| self.err("partition_by", format!("no column '{name}'")))?;
                    spec = spec
                        .add_partition_field(field.id, partition_field_name(name, transform), *transform)
                        .map_err(|e| self.err(&format!("'partition_by' on '{name}'"), e))?;
                }
                let creation = TableCreation::builder()
                    .name(self.ident.name.clone())
                    .location_opt(location)
                    .schema(schema)
                    .partition_spec(spec.build())
                    .properties([("write.parquet.compression-codec".to_string(), "zstd".to_string())])
                    .build();
                self.catalog.create(&self.ident, creation, &self.file_io).await?
            }
        };
        self.set_table(table)?;
        if self.schema_evolution {
            self.evolve_schema().await?;
        }
        if self.upsert && self.table()?.metadata().format_version() != FormatVersion::V2 {
            return Err(self.err(
                "'write_mode' = 'upsert'",
                format!(
                    "the table has format version {}; upserts write position delete files, which need format \
                     version 2",
                    self.table()?.metadata().format_version()
                ),
            ));
        }
        Ok(())
    }

    /// Adds the query's columns the table lacks (optional, new field ids) as a new current
    /// schema; rows written before read NULL there.
    async fn evolve_schema(&mut self) -> Result<()> {
        let mut last = String::new();
        for _ in 0..COMMIT_ATTEMPTS {
            let table = self.table()?.clone();
            let md = table.metadata();
            let current = md.current_schema();
            let missing: Vec<&Field> = self
                .query_schema
                .fields()
                .iter()
                .filter(|f| find_field(&self.table_schema, f.name()).is_none())
                .map(|f| f.as_ref())
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            let mut fields: Vec<NestedFieldRef> = current.as_struct().fields().to_vec();
            let mut next = md.last_column_id();
            for f in &missing {
                let t = arrow_type_to_type(&iceberg_arrow_type(f.name(), f.data_type())?)
                    .map_err(|e| self.err(&format!("column '{}' has no Iceberg type", f.name()), e))?;
                next += 1;
                fields.push(Arc::new(NestedField::optional(next, f.name(), t)));
            }
            let next_id = md.schemas_iter().map(|s| s.schema_id()).max().unwrap_or(0) + 1;
            let schema = iceberg::spec::Schema::builder()
                .with_schema_id(next_id)
                .with_fields(fields)
                .with_identifier_field_ids(current.identifier_field_ids())
                .build()
                .map_err(|e| self.err("cannot add the query's new columns", e))?;
            let updates = vec![TableUpdate::AddSchema { schema }, TableUpdate::SetCurrentSchema { schema_id: -1 }];
            let requirements = [
                TableRequirement::UuidMatch { uuid: md.uuid() },
                TableRequirement::CurrentSchemaIdMatch { current_schema_id: md.current_schema_id() },
            ];
            match self.catalog.commit(&table, &requirements, updates).await? {
                Committed::Done(t) => {
                    self.set_table(*t)?;
                    if let Some(s) = &self.status {
                        s.set_counter("schema_changes", 1);
                    }
                    return Ok(());
                }
                Committed::Conflict(why) => {
                    last = why;
                    let fresh = self.catalog.load(&self.ident, &self.file_io).await?;
                    self.set_table(fresh.ok_or_else(|| self.err("schema change", "the table was dropped"))?)?;
                }
            }
        }
        Err(self.err(&format!("schema change lost to other writers {COMMIT_ATTEMPTS} times"), last))
    }

    fn set_table(&mut self, table: Table) -> Result<()> {
        let schema = schema_to_arrow_schema(table.metadata().current_schema())
            .map_err(|e| self.err("the table's schema has no Arrow form", e))?;
        for f in schema.fields() {
            if f.is_nullable() {
                continue;
            }
            if find_field(&self.query_schema, f.name()).is_none() {
                return Err(self.err(
                    "the query cannot fill the table",
                    format!("required column '{}' is not among the query's columns", f.name()),
                ));
            }
        }
        let mut key = Vec::with_capacity(self.key_names.len());
        for n in &self.key_names {
            key.push(find_field(&schema, n).ok_or_else(|| {
                self.err("'merge_key_columns'", format!("the table has no column '{n}' to merge on"))
            })?);
        }
        self.key_schema = Arc::new(schema.project(&key)?);
        self.table_key = key;
        self.table_schema = Arc::new(schema);
        self.table = Some(table);
        Ok(())
    }

    /// Rows of the query as rows of the table: columns by name, cast to the table's types,
    /// NULL where the query lacks a column.
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

    /// Writes `rows` as Parquet data files of the table (not yet committed), one set per
    /// partition the rows fall in. File names are unique (a time-ordered UUID and the epoch), so
    /// a rerun never overwrites a live file. With `track`, also where each row's key went:
    /// (key, data file, position).
    async fn write_files(&self, rows: &[RecordBatch], track: bool) -> Result<(Vec<DataFile>, Vec<Placed>)> {
        let rows: Vec<&RecordBatch> = rows.iter().filter(|b| b.num_rows() > 0).collect();
        if rows.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let table = self.table()?;
        let md = table.metadata();
        let parquet = ParquetWriterBuilder::new(writer_properties(), md.current_schema().clone());
        let locations = DefaultLocationGenerator::new(md).map_err(|e| self.err("data location", e))?;
        let names = DefaultFileNameGenerator::new(
            format!("{}-e{}", uuid::Uuid::now_v7(), self.epoch),
            None,
            DataFileFormat::Parquet,
        );
        let rolling =
            RollingFileWriterBuilder::new(parquet, self.target_file_size, table.file_io().clone(), locations, names);
        let builder = DataFileWriterBuilder::new(rolling);
        let spec = md.default_partition_spec();
        let io = |e: iceberg::Error| self.err("cannot write", e);
        // One writer per partition, with the keys of its rows in order.
        let mut writers = Vec::new();
        let mut by_partition: HashMap<iceberg::spec::Struct, usize> = HashMap::new();
        if spec.is_unpartitioned() {
            writers.push((builder.build(None).await.map_err(io)?, Vec::new()));
            for b in rows {
                writers[0].0.write(b.clone()).await.map_err(io)?;
                if track {
                    writers[0].1.extend(upsert::key_strings(b, &self.table_key)?);
                }
            }
        } else {
            let splitter =
                RecordBatchPartitionSplitter::try_new_with_computed_values(md.current_schema().clone(), spec.clone())
                    .map_err(|e| self.err("cannot partition", e))?;
            for b in rows {
                for (key, part) in splitter.split(b).map_err(|e| self.err("cannot partition", e))? {
                    let w = match by_partition.get(key.data()) {
                        Some(w) => *w,
                        None => {
                            by_partition.insert(key.data().clone(), writers.len());
                            writers.push((builder.build(Some(key)).await.map_err(io)?, Vec::new()));
                            writers.len() - 1
                        }
                    };
                    if track {
                        writers[w].1.extend(upsert::key_strings(&part, &self.table_key)?);
                    }
                    writers[w].0.write(part).await.map_err(io)?;
                }
            }
        }
        let mut files = Vec::new();
        let mut placed = Vec::new();
        for (mut w, keys) in writers {
            let written = w.close().await.map_err(io)?;
            if track {
                // A partition's rows went into its files in order, each file holding `record_count`.
                let mut keys = keys.into_iter();
                for f in &written {
                    let path: Arc<str> = f.file_path().into();
                    for pos in 0..f.record_count() as i64 {
                        let k = keys.next().ok_or_else(|| self.err("cannot write", "more rows written than given"))?;
                        placed.push((k, path.clone(), pos));
                    }
                }
                if keys.next().is_some() {
                    return Err(self.err("cannot write", "fewer rows written than given"));
                }
            }
            files.extend(written);
        }
        Ok((files, placed))
    }

    /// Reads where each key's row is, if not known yet (upsert).
    async fn ensure_index(&mut self) -> Result<()> {
        if self.index.is_some() {
            return Ok(());
        }
        let table = self.table()?.clone();
        let index =
            merge::build_index(&table, &self.key_schema).await.map_err(|e| self.err("cannot read the table", e))?;
        self.refresh_file_info().await?;
        if let Some(s) = &self.status {
            s.set_counter("iceberg_keys", index.len() as i64);
        }
        self.index = Some(index);
        Ok(())
    }

    /// Learns the partition of every live data file of the table.
    async fn refresh_file_info(&mut self) -> Result<()> {
        let table = self.table()?.clone();
        for f in merge::live_files(&table).await.map_err(|e| self.err("cannot read the table", e))? {
            if f.content == DataContentType::Data {
                self.file_info.insert(f.path, f.info);
            }
        }
        Ok(())
    }

    /// The rows changed since the last commit as a commit: their new rows written as data
    /// files, their old rows to retire (upsert).
    async fn prepare_upsert(&mut self) -> Result<Pending> {
        if self.keyed.rows.is_empty() {
            return Ok(Pending::default());
        }
        self.ensure_index().await?;
        let keyed = std::mem::take(&mut self.keyed);
        let mut at = Vec::new();
        let mut changed = Vec::with_capacity(keyed.rows.len());
        for (k, v) in &keyed.rows {
            changed.push(k.clone());
            if let Some(v) = v {
                at.push(v.at);
            }
        }
        let rows = if at.is_empty() {
            Vec::new()
        } else {
            let refs: Vec<&RecordBatch> = keyed.batches.iter().collect();
            vec![arrow::compute::interleave_record_batch(&refs, &at)?]
        };
        let (data, placed) = self.write_files(&rows, true).await?;
        let spec_id = self.table()?.metadata().default_partition_spec_id();
        for f in &data {
            self.file_info
                .insert(f.file_path().to_string(), merge::FileInfo { spec_id, partition: f.partition().clone() });
        }
        let index = self.index.as_mut().ok_or_else(|| ConnectorError::Failed("the key index is not read".into()))?;
        let mut deletes: HashMap<Arc<str>, Vec<i64>> = HashMap::new();
        for k in &changed {
            for (file, pos) in index.take(k) {
                deletes.entry(file).or_default().push(pos);
            }
        }
        for (k, file, pos) in placed {
            index.put(k, file, pos);
        }
        if let Some(s) = &self.status {
            s.set_counter("iceberg_keys", index.len() as i64);
        }
        Ok(Pending { data, deletes: deletes.into_iter().map(|(f, p)| (f.to_string(), p)).collect(), changed })
    }

    /// The rows since the last commit (or barrier) as a commit.
    async fn prepare(&mut self) -> Result<Pending> {
        if self.upsert {
            return self.prepare_upsert().await;
        }
        let rows = std::mem::take(&mut self.rows);
        let (data, _) = self.write_files(&rows, false).await?;
        Ok(Pending { data, ..Pending::default() })
    }

    /// After losing a commit race: the snapshots other writers committed on top of `base`. Rows
    /// they appended with a key this commit changes are retired by it too, the others are
    /// indexed; a snapshot that rewrote or deleted rows makes the index stale, which fails.
    async fn rebase(&mut self, base: Option<i64>, p: &mut Pending) -> Result<()> {
        let table = self.table()?.clone();
        let md = table.metadata();
        let mut theirs = std::collections::HashSet::new();
        let mut at = md.current_snapshot();
        while let Some(s) = at {
            if Some(s.snapshot_id()) == base {
                break;
            }
            if s.summary().operation != Operation::Append {
                return Err(self.err(
                    "upsert",
                    format!(
                        "another writer committed snapshot {} ('{}') that rewrites or deletes rows while this sink \
                         upserts into the table; the sink must be the only writer changing existing rows",
                        s.snapshot_id(),
                        s.summary().operation.as_str()
                    ),
                ));
            }
            theirs.insert(s.snapshot_id());
            at = s.parent_snapshot_id().and_then(|id| md.snapshot_by_id(id));
        }
        if at.is_none() && base.is_some() {
            return Err(self.err("upsert", "the snapshot this sink wrote on is gone from the table's history"));
        }
        let changed: std::collections::HashSet<&str> = p.changed.iter().map(String::as_str).collect();
        let files = merge::live_files(&table).await.map_err(|e| self.err("cannot read the table", e))?;
        for f in files {
            if f.content != DataContentType::Data || !f.added_by.is_some_and(|s| theirs.contains(&s)) {
                continue;
            }
            let keys = merge::read_keys(table.file_io(), &f.path, &self.key_schema).await?;
            let file: Arc<str> = f.path.as_str().into();
            let mut retired = Vec::new();
            for (pos, k) in keys.into_iter().enumerate() {
                if changed.contains(k.as_str()) {
                    retired.push(pos as i64);
                } else if let Some(index) = self.index.as_mut() {
                    index.put(k, file.clone(), pos as i64);
                }
            }
            if !retired.is_empty() {
                p.deletes.push((f.path.clone(), retired));
            }
            self.file_info.insert(f.path, f.info);
        }
        Ok(())
    }

    /// Commits `p` as one snapshot recording `epoch`, rebuilding the snapshot on top of
    /// whatever another writer committed meanwhile.
    async fn commit_pending(&mut self, mut p: Pending, epoch: u64) -> Result<()> {
        if p.is_empty() {
            return Ok(());
        }
        if p.deletes.iter().any(|(f, _)| !self.file_info.contains_key(f)) {
            self.refresh_file_info().await?;
        }
        let mut last = String::new();
        for _ in 0..COMMIT_ATTEMPTS {
            let table = self.table()?.clone();
            let deletes = merge::write_deletes(
                &table,
                &p.deletes,
                &self.file_info,
                &writer_properties(),
                &format!("{}-e{epoch}", uuid::Uuid::now_v7()),
            )
            .await
            .map_err(|e| self.err("cannot write the position deletes", e))?;
            let props =
                HashMap::from([(EPOCH_KEY.to_string(), epoch.to_string()), (APP_KEY.to_string(), self.app_id.clone())]);
            let (updates, requirements) = new_snapshot(&table, &p.data, &deletes, props)
                .await
                .map_err(|e| self.err("cannot write the snapshot", e))?;
            match self.catalog.commit(&table, &requirements, updates).await? {
                Committed::Done(t) => {
                    self.set_table(*t)?;
                    self.commits += 1;
                    self.retired += p.deletes.iter().map(|(_, p)| p.len() as u64).sum::<u64>();
                    self.last_commit = Instant::now();
                    if let Some(s) = &self.status {
                        s.set_counter("iceberg_commits", self.commits as i64);
                        if self.upsert {
                            s.set_counter("iceberg_retired_rows", self.retired as i64);
                        }
                        if let Some(id) = self.table.as_ref().and_then(|t| t.metadata().current_snapshot_id()) {
                            s.set_counter("iceberg_snapshot_id", id);
                        }
                    }
                    return Ok(());
                }
                Committed::Conflict(why) => {
                    last = why;
                    // This attempt's delete files are rewritten for the next one.
                    for (_, f) in &deletes {
                        drop(table.file_io().delete(f.file_path()).await);
                    }
                    self.conflicts += 1;
                    if let Some(s) = &self.status {
                        s.set_counter("iceberg_commit_conflicts", self.conflicts as i64);
                    }
                    let base = table.metadata().current_snapshot_id();
                    let fresh = self.catalog.load(&self.ident, &self.file_io).await?;
                    let fresh = fresh.ok_or_else(|| self.err("commit", "the table was dropped"))?;
                    self.set_table(fresh)?;
                    if self.upsert {
                        self.rebase(base, &mut p).await?;
                    }
                }
            }
        }
        Err(self.err(&format!("commit lost to other writers {COMMIT_ATTEMPTS} times"), last))
    }

    /// The newest epoch this sink (its app id) committed to the table.
    fn committed_epoch(&self) -> Result<Option<u64>> {
        let table = self.table()?;
        Ok(table
            .metadata()
            .snapshots()
            .filter(|s| s.summary().additional_properties.get(APP_KEY) == Some(&self.app_id))
            .filter_map(|s| s.summary().additional_properties.get(EPOCH_KEY)?.parse::<u64>().ok())
            .max())
    }

    fn encode_files(&self, files: Vec<DataFile>) -> Result<Vec<String>> {
        let table = self.table()?;
        let md = table.metadata();
        files
            .into_iter()
            .map(|f| {
                serialize_data_file_to_json(f, md.default_partition_type(), md.format_version())
                    .map_err(|e| self.err("cannot record a data file", e))
            })
            .collect()
    }

    /// A commit staged at a barrier, as listed in a checkpoint.
    fn decode_staged(&self, s: Staged) -> Result<Pending> {
        Ok(Pending { data: self.decode_files(&s.files)?, deletes: s.deletes, changed: s.changed })
    }

    fn decode_files(&self, files: &[String]) -> Result<Vec<DataFile>> {
        let table = self.table()?;
        let md = table.metadata();
        files
            .iter()
            .map(|json| {
                deserialize_data_file_from_json(
                    json,
                    md.default_partition_spec_id(),
                    md.default_partition_type(),
                    md.current_schema(),
                )
                .map_err(|e| self.err("the checkpoint's data file list is damaged", e))
            })
            .collect()
    }

    /// Rows or changes since the last commit (or barrier).
    fn has_changes(&self) -> bool {
        !self.rows.is_empty() || !self.keyed.rows.is_empty()
    }

    fn commit_due(&self) -> bool {
        self.has_changes() && self.last_commit.elapsed() >= self.commit_interval
    }

    /// Writes and commits the rows since the last commit.
    async fn flush(&mut self) -> Result<()> {
        let p = self.prepare().await?;
        self.commit_pending(p, self.epoch).await
    }
}

/// Parses `'partition_by'`: comma-separated `col`, `identity(col)`, `year(col)`, `month(col)`,
/// `day(col)`, `hour(col)`, `bucket(N, col)` or `truncate(W, col)`.
fn parse_partitioning(text: &str, query: &Schema) -> Result<Vec<(usize, Transform)>> {
    let bad = |item: &str, why: String| {
        ConnectorError::Config(format!(
            "'partition_by': '{item}' {why} (write e.g. 'region, day(ts), bucket(16, id), truncate(4, name)')"
        ))
    };
    // Split at the commas outside parentheses.
    let mut items = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    let mut out = Vec::new();
    for item in items.into_iter().map(str::trim).filter(|s| !s.is_empty()) {
        let (transform, column) = match item.split_once('(') {
            None => (Transform::Identity, item),
            Some((name, rest)) => {
                let args = rest.strip_suffix(')').ok_or_else(|| bad(item, "lacks its closing parenthesis".into()))?;
                let args: Vec<&str> = args.split(',').map(str::trim).collect();
                let n = |a: &str| {
                    a.parse::<u32>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad(item, format!("needs a positive number, not '{a}'")))
                };
                match (name.trim().to_ascii_lowercase().as_str(), args.as_slice()) {
                    ("identity", [c]) => (Transform::Identity, *c),
                    ("year" | "years", [c]) => (Transform::Year, *c),
                    ("month" | "months", [c]) => (Transform::Month, *c),
                    ("day" | "days", [c]) => (Transform::Day, *c),
                    ("hour" | "hours", [c]) => (Transform::Hour, *c),
                    ("bucket", [k, c]) => (Transform::Bucket(n(k)?), *c),
                    ("truncate", [w, c]) => (Transform::Truncate(n(w)?), *c),
                    (other, _) => {
                        return Err(bad(
                            item,
                            format!(
                                "is not a partition transform ('{other}' with {} argument(s)): use identity, year, \
                                 month, day, hour (one column), bucket or truncate (a number and a column)",
                                args.len()
                            ),
                        ))
                    }
                }
            }
        };
        let column = column.trim().trim_matches('"');
        let idx = find_field(query, column).ok_or_else(|| {
            bad(
                item,
                format!(
                    "names no column of the query (its columns: {})",
                    query.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        let t = iceberg_arrow_type(column, query.field(idx).data_type())?;
        let t = arrow_type_to_type(&t).map_err(|e| bad(item, e.to_string()))?;
        if transform.result_type(&t).is_err() {
            return Err(bad(item, format!("cannot apply to column '{column}' of type {t}")));
        }
        out.push((idx, transform));
    }
    Ok(out)
}

/// The partition field's name, as other engines name it (`ts_day`, `id_bucket`, …).
fn partition_field_name(column: &str, t: &Transform) -> String {
    match t {
        Transform::Identity => column.to_string(),
        Transform::Year => format!("{column}_year"),
        Transform::Month => format!("{column}_month"),
        Transform::Day => format!("{column}_day"),
        Transform::Hour => format!("{column}_hour"),
        Transform::Bucket(_) => format!("{column}_bucket"),
        Transform::Truncate(_) => format!("{column}_trunc"),
        other => format!("{column}_{other}"),
    }
}

fn find_field(schema: &Schema, name: &str) -> Option<usize> {
    schema.index_of(name).ok().or_else(|| schema.fields().iter().position(|f| f.name().eq_ignore_ascii_case(name)))
}

/// The updates and requirements of a snapshot adding data `files` and position `deletes` on top
/// of `table`'s current snapshot: a new data manifest and a delete manifest per partition spec,
/// the current snapshot's manifests carried over, summary totals carried forward. An `append`
/// when it only adds data, else an `overwrite` (or a `delete` when it only retires rows).
async fn new_snapshot(
    table: &Table,
    files: &[DataFile],
    deletes: &[(i32, DataFile)],
    properties: HashMap<String, String>,
) -> iceberg::Result<(Vec<TableUpdate>, Vec<TableRequirement>)> {
    let md = table.metadata();
    let snapshot_id = loop {
        let (a, b) = uuid::Uuid::new_v4().as_u64_pair();
        let id = ((a ^ b) >> 1) as i64;
        if md.snapshots().all(|s| s.snapshot_id() != id) {
            break id;
        }
    };
    let sequence = md.next_sequence_number();
    let commit = uuid::Uuid::now_v7();
    let schema = md.current_schema().clone();
    let spec = md.default_partition_spec().as_ref().clone();
    let mut manifests: Vec<ManifestFile> = Vec::new();
    if let Some(current) = md.current_snapshot() {
        let list = table.manifest_list_reader(current).load().await?;
        manifests.extend(
            list.entries()
                .iter()
                .filter(|m| m.has_added_files() || m.has_existing_files() || m.has_deleted_files())
                .cloned(),
        );
    }
    let mut collector = SnapshotSummaryCollector::default();
    if !files.is_empty() {
        let out = table.file_io().new_output(format!("{}/metadata/{commit}-m0.avro", md.location()))?;
        let builder = ManifestWriterBuilder::new(out, Some(snapshot_id), schema.clone(), spec);
        let mut writer = match md.format_version() {
            FormatVersion::V1 => builder.build_v1(),
            FormatVersion::V2 => builder.build_v2_data(),
            FormatVersion::V3 => builder.build_v3_data(),
        };
        for f in files {
            collector.add_file(f, schema.clone(), md.default_partition_spec().clone());
            // Its data sequence number is inherited from the snapshot's when the list is read.
            writer.add_file(f.clone(), -1)?;
        }
        manifests.push(writer.write_manifest_file().await?);
    }
    // Delete files go into delete manifests, one per partition spec they are written in.
    let mut specs: Vec<i32> = deletes.iter().map(|(s, _)| *s).collect();
    specs.sort_unstable();
    specs.dedup();
    for (n, spec_id) in specs.into_iter().enumerate() {
        let spec = md.partition_spec_by_id(spec_id).ok_or_else(|| {
            iceberg::Error::new(iceberg::ErrorKind::DataInvalid, format!("no partition spec {spec_id}"))
        })?;
        let out = table.file_io().new_output(format!("{}/metadata/{commit}-d{n}.avro", md.location()))?;
        let builder = ManifestWriterBuilder::new(out, Some(snapshot_id), schema.clone(), spec.as_ref().clone());
        let mut writer = match md.format_version() {
            FormatVersion::V1 => {
                return Err(iceberg::Error::new(
                    iceberg::ErrorKind::FeatureUnsupported,
                    "a format-version 1 table cannot hold delete files",
                ))
            }
            FormatVersion::V2 => builder.build_v2_deletes(),
            FormatVersion::V3 => builder.build_v3_deletes(),
        };
        for (_, f) in deletes.iter().filter(|(s, _)| *s == spec_id) {
            collector.add_file(f, schema.clone(), spec.clone());
            writer.add_file(f.clone(), -1)?;
        }
        manifests.push(writer.write_manifest_file().await?);
    }
    let list_path = format!("{}/metadata/snap-{snapshot_id}-0-{commit}.avro", md.location());
    let out = table.file_io().new_output(&list_path)?.writer().await?;
    let parent = md.current_snapshot_id();
    let mut list = match md.format_version() {
        FormatVersion::V1 => ManifestListWriter::v1(out, snapshot_id, parent),
        FormatVersion::V2 => ManifestListWriter::v2(out, snapshot_id, parent, sequence),
        FormatVersion::V3 => ManifestListWriter::v3(out, snapshot_id, parent, sequence, Some(md.next_row_id())),
    };
    list.add_manifests(manifests.into_iter())?;
    let next_row_id = list.next_row_id();
    list.close().await?;
    let operation = match (files.is_empty(), deletes.is_empty()) {
        (_, true) => Operation::Append,
        (true, false) => Operation::Delete,
        (false, false) => Operation::Overwrite,
    };
    let mut summary = properties;
    let added = collector.build();
    let previous = md.current_snapshot().map(|s| s.summary().additional_properties.clone()).unwrap_or_default();
    for (total, add) in [
        ("total-records", "added-records"),
        ("total-files-size", "added-files-size"),
        ("total-data-files", "added-data-files"),
        ("total-delete-files", "added-delete-files"),
        ("total-position-deletes", "added-position-deletes"),
        ("total-equality-deletes", "added-equality-deletes"),
    ] {
        let before = previous.get(total).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let plus = added.get(add).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        summary.insert(total.to_string(), (before + plus).to_string());
    }
    summary.extend(added);
    let snapshot = Snapshot::builder()
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(parent)
        .with_sequence_number(sequence)
        .with_timestamp_ms(chrono::Utc::now().timestamp_millis())
        .with_manifest_list(list_path)
        .with_summary(Summary { operation, additional_properties: summary })
        .with_schema_id(md.current_schema_id());
    let snapshot = match next_row_id {
        Some(next) => snapshot.with_row_range(md.next_row_id(), next - md.next_row_id()).build(),
        None => snapshot.build(),
    };
    Ok((
        vec![
            TableUpdate::AddSnapshot { snapshot },
            TableUpdate::SetSnapshotRef {
                ref_name: MAIN_BRANCH.to_string(),
                reference: SnapshotReference::new(snapshot_id, SnapshotRetention::branch(None, None, None)),
            },
        ],
        vec![
            TableRequirement::UuidMatch { uuid: md.uuid() },
            TableRequirement::RefSnapshotIdMatch { r#ref: MAIN_BRANCH.to_string(), snapshot_id: parent },
        ],
    ))
}

#[async_trait]
impl SinkConnector for IcebergSink {
    fn capabilities(&self) -> SinkCapabilities {
        SinkCapabilities { upsert: self.upsert, changelog: false, exactly_once: true, parallel: false }
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
        if self.upsert {
            // Keyed in the table's columns, so that a key reads the same here and in the files.
            let rows = DiffBatch { data: self.conform(&batch.data)?, diffs: batch.diffs.clone() };
            return self.keyed.apply(&rows, &self.table_key);
        }
        let rows = upsert::expand_inserts(batch)?;
        let rows = self.conform(&rows)?;
        self.rows.push(rows);
        Ok(())
    }

    async fn pre_commit(&mut self, epoch: u64) -> Result<()> {
        if self.transactional {
            // A checkpoint barrier: the data up to here is written now and committed once the
            // checkpoint is durable.
            let p = self.prepare().await?;
            let files = self.encode_files(p.data)?;
            self.staged.push(Staged { epoch, files, deletes: p.deletes, changed: p.changed });
        }
        Ok(())
    }

    fn checkpoint_state(&mut self) -> Option<Vec<u8>> {
        if !self.transactional {
            return None;
        }
        match serde_json::to_vec(&self.staged) {
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
                let p = self.decode_staged(s.clone())?;
                self.commit_pending(p, s.epoch).await?;
            }
            return Ok(());
        }
        if self.commit_due() {
            self.flush().await?;
        }
        Ok(())
    }

    async fn recover(&mut self, checkpoint: u64, state: Option<&[u8]>) -> Result<()> {
        let done = self.committed_epoch()?;
        let Some(bytes) = state else { return Ok(()) };
        let staged: Vec<Staged> =
            serde_json::from_slice(bytes).map_err(|e| self.err("the checkpoint's state of the sink is damaged", e))?;
        for s in staged {
            // Committed before the crash: a snapshot of this sink records the epoch.
            if s.epoch <= checkpoint && done.is_none_or(|d| s.epoch > d) {
                let epoch = s.epoch;
                let p = self.decode_staged(s)?;
                self.commit_pending(p, epoch).await?;
            }
        }
        // Upsert: where the keys are is read again from what the table holds now.
        self.index = None;
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
        if self.table.is_some() && self.has_changes() {
            self.flush().await?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("{} in {}", self.ident, self.catalog.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_types_become_iceberg_types() {
        let query = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("small", DataType::Int16, true),
            Field::new("name", DataType::Utf8View, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("tz", DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())), true),
            Field::new("amount", DataType::Decimal128(18, 2), true),
        ]);
        let s = iceberg_schema(&query).expect("schema");
        let arrow = schema_to_arrow_schema(&s).expect("arrow");
        let types: Vec<String> = arrow.fields().iter().map(|f| format!("{}:{}", f.name(), f.data_type())).collect();
        assert_eq!(
            types,
            [
                "id:Int64",
                "small:Int32",
                "name:Utf8",
                "ts:Timestamp(µs)",
                "tz:Timestamp(µs, \"+00:00\")",
                "amount:Decimal128(18, 2)"
            ]
        );
        let parts = parse_partitioning("name, day(ts), bucket(16, id), truncate(4, name)", &query).expect("spec");
        assert_eq!(
            parts,
            [(2, Transform::Identity), (3, Transform::Day), (0, Transform::Bucket(16)), (2, Transform::Truncate(4))]
        );
        for (text, needle) in [
            ("nope", "names no column"),
            ("day(id)", "cannot apply"),
            ("bucket(id)", "not a partition transform"),
            ("bucket(0, id)", "positive number"),
            ("day(ts", "closing parenthesis"),
        ] {
            let e = parse_partitioning(text, &query).expect_err(text).to_string();
            assert!(e.contains(needle) && e.contains("'partition_by'"), "{text}: {e}");
        }
        let bad = Schema::new(vec![Field::new("l", DataType::new_list(DataType::Int32, true), true)]);
        let e = iceberg_schema(&bad).expect_err("a list").to_string();
        assert!(e.contains("column 'l'"), "{e}");
    }
}
