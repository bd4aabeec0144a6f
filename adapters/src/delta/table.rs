//! Table locations, loading and the mapping between the engine's Arrow types and Delta's.

use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, RecordBatch, RecordBatchOptions, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::kernel::engine::arrow_conversion::TryIntoArrow;
use deltalake::logstore::object_store::ObjectStoreExt;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::{DeltaTable, DeltaTableError};
use url::Url;

use crate::{ConnectorError, Result};

/// URL schemes of object stores and the store family each belongs to.
const CLOUD_SCHEMES: &[(&str, &str)] = &[
    ("s3", "delta-lake-s3"),
    ("s3a", "delta-lake-s3"),
    ("az", "delta-lake-azure"),
    ("abfs", "delta-lake-azure"),
    ("abfss", "delta-lake-azure"),
    ("adl", "delta-lake-azure"),
    ("azure", "delta-lake-azure"),
    ("gs", "delta-lake-gcs"),
];

/// A checked `'table_uri'`: local paths are made absolute (created first when `create`).
pub fn table_url(raw: &str, create: bool) -> Result<Url> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(ConnectorError::Config("'table_uri' must not be empty".into()));
    }
    if let Some((scheme, _)) = raw.split_once("://") {
        let scheme = scheme.to_ascii_lowercase();
        if scheme == "file" {
            let url = Url::parse(raw).map_err(|e| ConnectorError::Config(format!("'table_uri' = '{raw}': {e}")))?;
            let path = url
                .to_file_path()
                .map_err(|_| ConnectorError::Config(format!("'table_uri' = '{raw}' is not a local path")))?;
            return local_url(&path.to_string_lossy(), create);
        }
        if let Some((_, feature)) = CLOUD_SCHEMES.iter().find(|(s, _)| *s == scheme) {
            if !cloud_enabled(&scheme) {
                let shown = crate::options::redact_uri(raw).unwrap_or_else(|| raw.to_string());
                return Err(ConnectorError::Config(format!(
                    "'table_uri' = '{shown}': {scheme}:// tables need a build with the '{feature}' feature"
                )));
            }
            return Url::parse(raw).map_err(|e| ConnectorError::Config(format!("'table_uri': {e}")));
        }
        return Err(ConnectorError::Config(format!(
            "'table_uri' = '{raw}': unknown scheme '{scheme}' (expected a local path, file://, s3://, az://, abfss:// \
             or gs://)"
        )));
    }
    local_url(raw, create)
}

fn cloud_enabled(scheme: &str) -> bool {
    let s3 = matches!(scheme, "s3" | "s3a");
    let azure = matches!(scheme, "az" | "abfs" | "abfss" | "adl" | "azure");
    let gcs = scheme == "gs";
    (s3 && cfg!(feature = "delta-lake-s3"))
        || (azure && cfg!(feature = "delta-lake-azure"))
        || (gcs && cfg!(feature = "delta-lake-gcs"))
}

fn local_url(path: &str, create: bool) -> Result<Url> {
    let p = std::path::Path::new(path);
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| ConnectorError::Config(format!("'table_uri': {e}")))?.join(p)
    };
    if create {
        std::fs::create_dir_all(&abs).map_err(|e| {
            ConnectorError::Failed(format!("cannot create Delta table directory {}: {e}", abs.display()))
        })?;
    }
    let abs = std::fs::canonicalize(&abs).unwrap_or(abs);
    Url::from_directory_path(&abs)
        .map_err(|_| ConnectorError::Config(format!("'table_uri' = '{path}' is not a usable path")))
}

/// The table URI for messages (credentials in the URL userinfo removed).
pub fn describe(url: &Url) -> String {
    if url.scheme() == "file" {
        return url.to_file_path().map(|p| p.display().to_string()).unwrap_or_else(|_| url.to_string());
    }
    let mut u = url.clone();
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.to_string()
}

/// A delta-rs error as a connector error naming the table.
pub fn delta_err(url: &Url, what: &str, e: DeltaTableError) -> ConnectorError {
    let msg = format!("Delta table {}: {what}: {e}", describe(url));
    match e {
        DeltaTableError::ObjectStore { .. } if url.scheme() != "file" => ConnectorError::Unavailable(msg),
        _ => ConnectorError::Failed(msg),
    }
}

/// Registers the object-store handlers compiled into this build (once).
pub fn register_handlers() {
    #[cfg(feature = "delta-lake-s3")]
    super::s3::register();
    #[cfg(feature = "delta-lake-azure")]
    super::azure::register();
    #[cfg(feature = "delta-lake-gcs")]
    super::gcs::register();
}

/// The table at `url`, or None when nothing has been committed there yet.
pub async fn load(url: &Url) -> Result<Option<DeltaTable>> {
    register_handlers();
    let table = DeltaTable::try_from_url(url.clone()).await.map_err(|e| delta_err(url, "cannot open", e))?;
    Ok(if table.version().is_some() { Some(table) } else { None })
}

/// The Arrow schema of a loaded table (partition columns included, in table order).
pub fn arrow_schema(url: &Url, table: &DeltaTable) -> Result<SchemaRef> {
    let snapshot = table.snapshot().map_err(|e| delta_err(url, "cannot read the snapshot", e))?;
    let kernel = snapshot.schema();
    let schema: Schema = kernel.as_ref().try_into_arrow().map_err(|e| {
        ConnectorError::Failed(format!("Delta table {}: its schema has no Arrow form: {e}", describe(url)))
    })?;
    Ok(Arc::new(schema))
}

/// Refuses tables whose files this connector cannot read or write as plain Parquet.
pub fn check_features(url: &Url, table: &DeltaTable) -> Result<()> {
    let snapshot = table.snapshot().map_err(|e| delta_err(url, "cannot read the snapshot", e))?;
    let config = snapshot.metadata().configuration();
    if let Some(mode) = config.get("delta.columnMapping.mode").filter(|m| m.as_str() != "none") {
        return Err(ConnectorError::Config(format!(
            "Delta table {} uses column mapping mode '{mode}', which this connector does not support",
            describe(url)
        )));
    }
    Ok(())
}

/// The Delta-compatible form of an engine type: unsigned integers widen to the next signed
/// type, timestamps become microseconds in UTC, view and large strings become plain ones.
pub fn delta_type(t: &DataType) -> DataType {
    match t {
        DataType::UInt8 => DataType::Int16,
        DataType::UInt16 => DataType::Int32,
        DataType::UInt32 | DataType::UInt64 => DataType::Int64,
        DataType::Float16 => DataType::Float32,
        DataType::Timestamp(_, _) => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        DataType::Date64 => DataType::Date32,
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::List(f) | DataType::LargeList(f) => {
            DataType::List(Arc::new(Field::new(f.name(), delta_type(f.data_type()), true)))
        }
        DataType::Struct(fields) => DataType::Struct(
            fields.iter().map(|f| Arc::new(Field::new(f.name(), delta_type(f.data_type()), true))).collect(),
        ),
        DataType::Dictionary(_, v) => delta_type(v),
        other => other.clone(),
    }
}

/// The schema of a new table for a query's columns (every column nullable, as Delta writers
/// expect for streamed data).
pub fn delta_schema(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema.fields().iter().map(|f| Field::new(f.name(), delta_type(f.data_type()), true)).collect::<Vec<_>>(),
    ))
}

/// Index of the field named `name` (exact, then ignoring case).
pub fn find_field(schema: &Schema, name: &str) -> Option<usize> {
    let fields = schema.fields();
    fields
        .iter()
        .position(|f| f.name() == name)
        .or_else(|| fields.iter().position(|f| f.name().eq_ignore_ascii_case(name)))
}

/// Reads one data file of the table as batches of `schema`: columns matched by name (exact,
/// then ignoring case) and cast to the wanted type, partition columns filled from the file's
/// partition values, columns the file lacks NULL. Files with deletion vectors are refused.
pub async fn read_file(
    url: &Url,
    store: &deltalake::logstore::ObjectStoreRef,
    add: &deltalake::kernel::Add,
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>> {
    if add.deletion_vector.is_some() {
        return Err(ConnectorError::Failed(format!(
            "Delta table {}: file {} has a deletion vector, which this connector cannot apply (rewrite the table \
             with REORG TABLE … APPLY (PURGE) or disable deletion vectors)",
            describe(url),
            add.path
        )));
    }
    if add.path.contains("://") {
        return Err(ConnectorError::Failed(format!(
            "Delta table {}: file {} lies outside the table (absolute paths are not supported)",
            describe(url),
            add.path
        )));
    }
    let path = deltalake::Path::from_url_path(&add.path).map_err(|e| {
        ConnectorError::Failed(format!("Delta table {}: bad file path {}: {e}", describe(url), add.path))
    })?;
    let fail = |what: &str, e: String| {
        ConnectorError::Failed(format!("Delta table {}: cannot {what} {}: {e}", describe(url), add.path))
    };
    let bytes = store
        .get(&path)
        .await
        .map_err(|e| fail("read", e.to_string()))?
        .bytes()
        .await
        .map_err(|e| fail("read", e.to_string()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| fail("decode", e.to_string()))?
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| fail("decode", e.to_string()))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| fail("decode", e.to_string()))?;
        out.push(shape(&batch, add, schema).map_err(|e| fail("convert", e.to_string()))?);
    }
    Ok(out)
}

/// `batch` (a file's columns) as rows of `schema`, with partition values added.
fn shape(batch: &RecordBatch, add: &deltalake::kernel::Add, schema: &SchemaRef) -> Result<RecordBatch> {
    let n = batch.num_rows();
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let col = if let Some(i) = find_field(&batch.schema(), f.name()) {
            let c = batch.column(i);
            if c.data_type() == f.data_type() {
                c.clone()
            } else {
                arrow::compute::cast(c, f.data_type())?
            }
        } else if let Some(v) = partition_value(add, f.name()) {
            match v {
                Some(text) => {
                    let one = StringArray::from(vec![text.as_str()]);
                    let cast = arrow::compute::cast(&one, f.data_type())?;
                    let idx = UInt32Array::from(vec![0u32; n]);
                    arrow::compute::take(&cast, &idx, None)?
                }
                None => new_null_array(f.data_type(), n),
            }
        } else {
            new_null_array(f.data_type(), n)
        };
        cols.push(col);
    }
    Ok(RecordBatch::try_new_with_options(schema.clone(), cols, &RecordBatchOptions::new().with_row_count(Some(n)))?)
}

fn partition_value<'a>(add: &'a deltalake::kernel::Add, name: &str) -> Option<&'a Option<String>> {
    add.partition_values
        .get(name)
        .or_else(|| add.partition_values.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_become_directory_urls_and_unknown_schemes_fail() {
        let dir = tempfile::tempdir().expect("test");
        let p = dir.path().join("t");
        let url = table_url(&p.to_string_lossy(), true).expect("test");
        assert_eq!(url.scheme(), "file");
        assert!(url.path().ends_with("/t/"));
        assert!(p.is_dir());
        let e = table_url("ftp://x/y", false).expect_err("test").to_string();
        assert!(e.contains("unknown scheme 'ftp'"), "{e}");
        if !cfg!(feature = "delta-lake-s3") {
            let e = table_url("s3://bucket/t", false).expect_err("test").to_string();
            assert!(e.contains("delta-lake-s3"), "{e}");
        }
        if !cfg!(feature = "delta-lake-gcs") {
            let e = table_url("gs://c/t", false).expect_err("test").to_string();
            assert!(e.contains("delta-lake-gcs"), "{e}");
        }
        if !cfg!(feature = "delta-lake-azure") {
            let e = table_url("az://c/t", false).expect_err("test").to_string();
            assert!(e.contains("delta-lake-azure"), "{e}");
        }
    }

    #[test]
    fn engine_types_map_to_delta_types() {
        assert_eq!(delta_type(&DataType::UInt32), DataType::Int64);
        assert_eq!(
            delta_type(&DataType::Timestamp(TimeUnit::Millisecond, None)),
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        assert_eq!(delta_type(&DataType::Utf8View), DataType::Utf8);
        assert_eq!(delta_type(&DataType::Int64), DataType::Int64);
    }
}
