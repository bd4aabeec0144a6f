//! Upserts as position deletes: which row of which data file holds each key, and the delete
//! files that retire the rows a commit replaces.
//!
//! A position delete file is a Parquet file of `(file_path, pos)` pairs, sorted, written in the
//! partition of the data files it points into; a reader drops those rows of data files whose
//! data sequence number is not newer than the delete file's. Readers that do not apply
//! equality deletes (pyiceberg among them) apply these.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Int64Type, SchemaRef};
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::io::FileIO;
use iceberg::spec::{
    DataContentType, DataFile, DataFileFormat, NestedField, PrimitiveType, Schema as IcebergSchema, Struct, Type,
};
use iceberg::table::Table;
use iceberg::writer::file_writer::location_generator::{DefaultLocationGenerator, LocationGenerator};
use iceberg::writer::file_writer::{FileWriter, FileWriterBuilder, ParquetWriterBuilder};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ProjectionMask, PARQUET_FIELD_ID_META_KEY};
use parquet::file::properties::WriterProperties;

use crate::upsert;
use crate::{ConnectorError, Result};

/// Field id of a position delete file's `file_path` column (fixed by the table format).
const FILE_PATH_ID: i32 = 2147483546;
/// Field id of a position delete file's `pos` column.
const POS_ID: i32 = 2147483545;

fn failed(what: &str, e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Failed(format!("{what}: {e}"))
}

/// Where a data file sits: its partition spec and values. A position delete file is written in
/// the partition of the data files it points into.
#[derive(Clone, Debug)]
pub(super) struct FileInfo {
    pub spec_id: i32,
    pub partition: Struct,
}

/// A live file of a snapshot.
pub(super) struct LiveFile {
    pub path: String,
    pub content: DataContentType,
    pub info: FileInfo,
    /// The snapshot that added it.
    pub added_by: Option<i64>,
}

/// The live files (data and deletes) of the table's current snapshot.
pub(super) async fn live_files(table: &Table) -> Result<Vec<LiveFile>> {
    let md = table.metadata();
    let Some(current) = md.current_snapshot() else { return Ok(Vec::new()) };
    let list =
        table.manifest_list_reader(current).load().await.map_err(|e| failed("cannot read the manifest list", e))?;
    let mut out = Vec::new();
    for m in list.entries() {
        let manifest = m
            .load_manifest(table.file_io())
            .await
            .map_err(|e| failed(&format!("cannot read manifest {}", m.manifest_path), e))?;
        for e in manifest.entries().iter().filter(|e| e.is_alive()) {
            let f = e.data_file();
            out.push(LiveFile {
                path: f.file_path().to_string(),
                content: f.content_type(),
                info: FileInfo { spec_id: m.partition_spec_id, partition: f.partition().clone() },
                added_by: e.snapshot_id(),
            });
        }
    }
    Ok(out)
}

/// Each key's rows: (data file, row position). A key normally has one row; a table written by
/// appends before may hold several, and an upsert retires them all.
#[derive(Default)]
pub(super) struct KeyIndex {
    keys: HashMap<String, Vec<(Arc<str>, i64)>>,
}

impl KeyIndex {
    /// Forgets `key`, returning where its rows were.
    pub fn take(&mut self, key: &str) -> Vec<(Arc<str>, i64)> {
        self.keys.remove(key).unwrap_or_default()
    }

    /// Records a row of `key`.
    pub fn put(&mut self, key: String, file: Arc<str>, pos: i64) {
        self.keys.entry(key).or_default().push((file, pos));
    }

    /// How many keys have rows.
    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

/// The key columns (the table's fields, with their field ids) read from every row of the
/// table's current snapshot that no position delete retired.
pub(super) async fn build_index(table: &Table, key: &SchemaRef) -> Result<KeyIndex> {
    let files = live_files(table).await?;
    if let Some(f) = files.iter().find(|f| f.content == DataContentType::EqualityDeletes) {
        return Err(ConnectorError::Failed(format!(
            "the table has equality delete files (e.g. {}), which the upsert sink does not apply; rewrite the table \
             (compaction) or write it with 'write_mode' = 'append'",
            f.path
        )));
    }
    let mut deleted: HashMap<String, HashSet<i64>> = HashMap::new();
    for f in files.iter().filter(|f| f.content == DataContentType::PositionDeletes) {
        for (path, pos) in read_position_deletes(table.file_io(), &f.path).await? {
            deleted.entry(path).or_default().insert(pos);
        }
    }
    let mut index = KeyIndex::default();
    let none = HashSet::new();
    for f in files.iter().filter(|f| f.content == DataContentType::Data) {
        let gone = deleted.get(&f.path).unwrap_or(&none);
        let path: Arc<str> = f.path.as_str().into();
        for (pos, k) in read_keys(table.file_io(), &f.path, key).await?.into_iter().enumerate() {
            if !gone.contains(&(pos as i64)) {
                index.put(k, path.clone(), pos as i64);
            }
        }
    }
    Ok(index)
}

/// Finds the root column of `schema` with field id `id` (or, for files written without ids,
/// the column named `name`).
fn column_of(schema: &arrow::datatypes::Schema, id: Option<&String>, name: &str) -> Option<usize> {
    if let Some(id) = id {
        if let Some(i) =
            schema.fields().iter().position(|f| f.metadata().get(PARQUET_FIELD_ID_META_KEY).is_some_and(|v| v == id))
        {
            return Some(i);
        }
        if schema.fields().iter().any(|f| f.metadata().contains_key(PARQUET_FIELD_ID_META_KEY)) {
            return None;
        }
    }
    schema.index_of(name).ok()
}

/// Reads a Parquet file of the table whole into memory.
async fn open(file_io: &FileIO, path: &str) -> Result<ParquetRecordBatchReaderBuilder<bytes::Bytes>> {
    let input = file_io.new_input(path).map_err(|e| failed(&format!("cannot open {path}"), e))?;
    let data = input.read().await.map_err(|e| failed(&format!("cannot read {path}"), e))?;
    ParquetRecordBatchReaderBuilder::try_new(data).map_err(|e| failed(&format!("cannot read {path}"), e))
}

/// The key of every row of the data file at `path`, in row order (a column the file lacks,
/// added to the table later, reads as NULL).
pub(super) async fn read_keys(file_io: &FileIO, path: &str, key: &SchemaRef) -> Result<Vec<String>> {
    let builder = open(file_io, path).await?;
    let file_schema = builder.schema().clone();
    let mut roots: Vec<usize> = key
        .fields()
        .iter()
        .filter_map(|f| column_of(&file_schema, f.metadata().get(PARQUET_FIELD_ID_META_KEY), f.name()))
        .collect();
    roots.sort_unstable();
    roots.dedup();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| failed(&format!("cannot read {path}"), e))?;
    let all: Vec<usize> = (0..key.fields().len()).collect();
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| failed(&format!("cannot read {path}"), e))?;
        let schema = batch.schema();
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(key.fields().len());
        for f in key.fields() {
            let c = match column_of(&schema, f.metadata().get(PARQUET_FIELD_ID_META_KEY), f.name()) {
                Some(i) if batch.column(i).data_type() == f.data_type() => batch.column(i).clone(),
                Some(i) => arrow::compute::cast(batch.column(i), f.data_type())?,
                None => new_null_array(f.data_type(), batch.num_rows()),
            };
            cols.push(c);
        }
        let keys = RecordBatch::try_new(key.clone(), cols)?;
        out.extend(upsert::key_strings(&keys, &all)?);
    }
    Ok(out)
}

/// The `(file_path, pos)` pairs of a position delete file.
async fn read_position_deletes(file_io: &FileIO, path: &str) -> Result<Vec<(String, i64)>> {
    let builder = open(file_io, path).await?;
    let schema = builder.schema().clone();
    let (Some(p), Some(n)) = (
        column_of(&schema, Some(&FILE_PATH_ID.to_string()), "file_path"),
        column_of(&schema, Some(&POS_ID.to_string()), "pos"),
    ) else {
        return Err(ConnectorError::Failed(format!("{path} is not a position delete file (no file_path and pos)")));
    };
    let reader = builder.with_batch_size(64 * 1024).build().map_err(|e| failed(&format!("cannot read {path}"), e))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| failed(&format!("cannot read {path}"), e))?;
        let paths = arrow::compute::cast(batch.column(p), &arrow::datatypes::DataType::Utf8)?;
        let paths = paths.as_string::<i32>();
        let pos = arrow::compute::cast(batch.column(n), &arrow::datatypes::DataType::Int64)?;
        let pos = pos.as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            if paths.is_valid(i) && pos.is_valid(i) {
                out.push((paths.value(i).to_string(), pos.value(i)));
            }
        }
    }
    Ok(out)
}

/// The schema of a position delete file.
fn delete_schema() -> Result<IcebergSchema> {
    IcebergSchema::builder()
        .with_fields([
            Arc::new(NestedField::required(FILE_PATH_ID, "file_path", Type::Primitive(PrimitiveType::String))),
            Arc::new(NestedField::required(POS_ID, "pos", Type::Primitive(PrimitiveType::Long))),
        ])
        .build()
        .map_err(|e| failed("position delete schema", e))
}

/// Writes position delete files retiring `rows` (data file → positions): one file per
/// partition the data files are in, rows sorted by path and position; each with its partition
/// spec id.
pub(super) async fn write_deletes(
    table: &Table,
    rows: &[(String, Vec<i64>)],
    info: &HashMap<String, FileInfo>,
    props: &WriterProperties,
    name_prefix: &str,
) -> Result<Vec<(i32, DataFile)>> {
    if rows.iter().all(|(_, p)| p.is_empty()) {
        return Ok(Vec::new());
    }
    let schema = Arc::new(delete_schema()?);
    let arrow_schema = Arc::new(schema_to_arrow_schema(&schema).map_err(|e| failed("position delete schema", e))?);
    // Group by partition: (spec id, partition values) → rows.
    let mut groups: Vec<(FileInfo, Vec<(&str, i64)>)> = Vec::new();
    for (path, positions) in rows {
        let fi = info.get(path).ok_or_else(|| {
            ConnectorError::Failed(format!(
                "data file {path} is not among the table's files (removed by another writer?)"
            ))
        })?;
        let g = match groups.iter().position(|(g, _)| g.spec_id == fi.spec_id && g.partition == fi.partition) {
            Some(g) => g,
            None => {
                groups.push((fi.clone(), Vec::new()));
                groups.len() - 1
            }
        };
        groups[g].1.extend(positions.iter().map(|p| (path.as_str(), *p)));
    }
    let md = table.metadata();
    let locations = DefaultLocationGenerator::new(md).map_err(|e| failed("delete file location", e))?;
    let parquet = ParquetWriterBuilder::new(props.clone(), schema.clone());
    let mut out = Vec::new();
    for (n, (fi, mut pairs)) in groups.into_iter().enumerate() {
        if pairs.is_empty() {
            continue;
        }
        pairs.sort_unstable();
        pairs.dedup();
        let batch = RecordBatch::try_new(
            arrow_schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(pairs.iter().map(|(p, _)| *p))) as ArrayRef,
                Arc::new(Int64Array::from_iter_values(pairs.iter().map(|(_, n)| *n))),
            ],
        )?;
        let location = locations.generate_location(None, &format!("{name_prefix}-deletes-{n}.parquet"));
        let output =
            table.file_io().new_output(&location).map_err(|e| failed(&format!("cannot create {location}"), e))?;
        let mut writer = parquet.build(output).await.map_err(|e| failed(&format!("cannot write {location}"), e))?;
        writer.write(&batch).await.map_err(|e| failed(&format!("cannot write {location}"), e))?;
        for mut b in writer.close().await.map_err(|e| failed(&format!("cannot write {location}"), e))? {
            b.content(DataContentType::PositionDeletes)
                .partition(fi.partition.clone())
                .partition_spec_id(fi.spec_id)
                .file_format(DataFileFormat::Parquet);
            if let Some(only) = pairs.first().map(|(p, _)| *p).filter(|p| pairs.iter().all(|(q, _)| q == p)) {
                b.referenced_data_file(Some(only.to_string()));
            }
            out.push((fi.spec_id, b.build().map_err(|e| failed("position delete file", e))?));
        }
    }
    Ok(out)
}
