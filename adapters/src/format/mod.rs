//! Record formats shared by every transport: `json`, `csv`, `raw`, `avro` (plain datums or the
//! Confluent Schema Registry wire format), `debezium` (and, for files, `parquet` and Avro
//! container files). A [`Decoder`] turns a slice of payloads into Arrow changes plus dead
//! letters; an [`Encoder`] turns changes into payloads.
//!
//! Columns are matched by name (JSON keys, CSV header names); values are coerced to the declared
//! column types (numbers and RFC 3339 strings into timestamps, numeric strings into numbers).
//! A record that fails is isolated and returned as a dead letter: its neighbours still arrive.

pub mod avro;
mod csv;
mod debezium;
mod encode;
mod json;
pub mod raw;
pub mod registry;

use arrow::array::{new_null_array, ArrayRef, RecordBatch};
use arrow::compute::CastOptions;
use arrow::datatypes::SchemaRef;

pub use encode::Encoder;
pub use registry::RegistryConfig;

/// Records that failed: `(index of the payload, reason)`.
pub type Failures = Vec<(usize, String)>;

use crate::connector::Change;
use crate::dlq::DeadLetter;
use crate::options::OptionReader;
use crate::{ConnectorError, Result};

/// The format of records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatKind {
    /// One JSON object per record.
    Json,
    /// One CSV line per record.
    Csv,
    /// The whole payload into the source's single column.
    Raw,
    /// A Debezium JSON change envelope per record (`before`/`after`/`op`).
    Debezium,
    /// Parquet files (file connector only).
    Parquet,
    /// Avro (with optional Confluent Schema Registry framing).
    Avro,
}

impl FormatKind {
    /// The SQL name.
    pub fn name(self) -> &'static str {
        match self {
            FormatKind::Json => "json",
            FormatKind::Csv => "csv",
            FormatKind::Raw => "raw",
            FormatKind::Debezium => "debezium",
            FormatKind::Parquet => "parquet",
            FormatKind::Avro => "avro",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "json" => FormatKind::Json,
            "csv" => FormatKind::Csv,
            "raw" => FormatKind::Raw,
            "debezium" | "debezium-json" => FormatKind::Debezium,
            "parquet" => FormatKind::Parquet,
            "avro" => FormatKind::Avro,
            _ => return None,
        })
    }
}

/// A format with its options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatSpec {
    /// Which format.
    pub kind: FormatKind,
    /// CSV: the first record of each file is a header (`'csv.header'`, default true).
    pub csv_header: bool,
    /// CSV: field delimiter (`'csv.delimiter'`, default `,`).
    pub csv_delimiter: u8,
    /// Avro: the writer schema of plain records (`'avro.schema'`, JSON).
    pub avro_schema: Option<String>,
    /// Avro: records are in the Confluent wire format, schemas in this registry
    /// (`'schema.registry.url'`, `'schema.registry.username'`, `'schema.registry.password'`).
    pub registry: Option<RegistryConfig>,
}

/// Option keys read by [`FormatSpec::pull`].
pub const FORMAT_KEYS: &[&str] = &[
    "format",
    "csv.header",
    "csv.delimiter",
    "avro.schema",
    "schema.registry.url",
    "schema.registry.username",
    "schema.registry.password",
];

impl FormatSpec {
    /// A format with default options.
    pub fn new(kind: FormatKind) -> Self {
        Self { kind, csv_header: true, csv_delimiter: b',', avro_schema: None, registry: None }
    }

    /// Fails when Avro record options are set for a connector that reads or writes Avro
    /// container files (which carry their own schema).
    pub fn reject_record_options(&self, connector: &str) -> Result<()> {
        for (key, set) in
            [("avro.schema", self.avro_schema.is_some()), ("schema.registry.url", self.registry.is_some())]
        {
            if set {
                return Err(ConnectorError::Config(format!(
                    "option '{key}' does not apply to connector '{connector}': Avro container files carry their own schema"
                )));
            }
        }
        Ok(())
    }

    /// Reads `'format'` (one of `allowed`, default `default`) and its options.
    pub fn pull(r: &mut OptionReader<'_>, default: FormatKind, allowed: &[FormatKind]) -> Result<Self> {
        let kind = match r.opt_str("format") {
            None => default,
            Some(v) => {
                let lv = v.trim().to_ascii_lowercase();
                match FormatKind::parse(&lv).filter(|k| allowed.contains(k)) {
                    Some(k) => k,
                    None => {
                        let names: Vec<String> = allowed.iter().map(|k| format!("'{}'", k.name())).collect();
                        return Err(ConnectorError::Config(format!(
                            "option 'format' of connector '{}' must be one of {}, got '{v}'",
                            r.connector(),
                            names.join(", ")
                        )));
                    }
                }
            }
        };
        let mut spec = Self::new(kind);
        if let Some(h) = r.opt_bool("csv.header")? {
            spec.csv_header = h;
        }
        if let Some(d) = r.opt_char("csv.delimiter")? {
            spec.csv_delimiter = d;
        }
        if kind == FormatKind::Avro {
            spec.avro_schema = r.opt_str("avro.schema");
            if let Some(url) = r.opt_str("schema.registry.url") {
                spec.registry = Some(RegistryConfig {
                    url: url.trim().to_string(),
                    username: r.opt_str("schema.registry.username"),
                    password: r.opt_str("schema.registry.password"),
                });
            }
        }
        Ok(spec)
    }
}

/// Decodes payloads of one format into changes of a source's schema.
pub enum Decoder {
    /// JSON objects.
    Json(json::JsonDecoder),
    /// CSV lines.
    Csv(csv::CsvDecoder),
    /// Raw payloads.
    Raw(raw::RawDecoder),
    /// Debezium envelopes.
    Debezium(debezium::DebeziumDecoder),
    /// Avro records.
    Avro(Box<avro::AvroDecoder>),
}

impl Decoder {
    /// A decoder for `spec` producing rows of `schema`. Checks at CREATE time that the format
    /// fits the schema (raw needs one text/binary column; debezium a primary key).
    pub fn new(spec: &FormatSpec, schema: &SchemaRef, primary_key: &[String]) -> Result<Self> {
        Ok(match spec.kind {
            FormatKind::Json => Decoder::Json(json::JsonDecoder::new(schema.clone())?),
            FormatKind::Csv => Decoder::Csv(csv::CsvDecoder::new(schema.clone(), spec.csv_delimiter)),
            FormatKind::Raw => Decoder::Raw(raw::RawDecoder::new(schema.clone())?),
            FormatKind::Debezium => Decoder::Debezium(debezium::DebeziumDecoder::new(schema.clone(), primary_key)?),
            FormatKind::Avro => Decoder::Avro(Box::new(avro::AvroDecoder::new(
                schema.clone(),
                spec.avro_schema.as_deref(),
                spec.registry.clone(),
            )?)),
            FormatKind::Parquet => {
                return Err(ConnectorError::Config(format!(
                    "format '{}' is not a record format for this connector",
                    spec.kind.name()
                )))
            }
        })
    }

    /// True if the format emits deletions (needs a PRIMARY KEY source).
    pub fn is_changelog(&self) -> bool {
        matches!(self, Decoder::Debezium(_))
    }

    /// CSV only: the column names of the records that follow (a file's header line).
    pub fn set_csv_header(&mut self, names: Option<Vec<String>>) -> Result<()> {
        if let Decoder::Csv(c) = self {
            c.set_header(names)?;
        }
        Ok(())
    }

    /// Fetches what decoding `payloads` needs from outside the record (Avro writer schemas from
    /// the schema registry; cached). Call it before [`Decoder::decode`]; a transient error
    /// (registry unreachable) should be retried later without losing the payloads.
    pub async fn prepare(&mut self, payloads: &[&[u8]]) -> Result<()> {
        match self {
            Decoder::Avro(d) => d.prepare(payloads).await,
            _ => Ok(()),
        }
    }

    /// Decodes `payloads`; failures become dead letters whose position is `position(i)`.
    pub fn decode(&mut self, payloads: &[&[u8]], position: &dyn Fn(usize) -> String) -> (Vec<Change>, Vec<DeadLetter>) {
        let (changes, failures) = match self {
            Decoder::Json(d) => {
                let (b, f) = d.decode(payloads);
                (b.map(Change::Insert).into_iter().collect(), f)
            }
            Decoder::Csv(d) => {
                let (b, f) = d.decode(payloads);
                (b.map(Change::Insert).into_iter().collect(), f)
            }
            Decoder::Raw(d) => {
                let (b, f) = d.decode(payloads);
                (b.map(Change::Insert).into_iter().collect(), f)
            }
            Decoder::Debezium(d) => d.decode(payloads),
            Decoder::Avro(d) => {
                let (b, f) = d.decode(payloads);
                (b.map(Change::Insert).into_iter().collect(), f)
            }
        };
        let letters =
            failures.into_iter().map(|(i, reason)| DeadLetter::new(position(i), reason, payloads[i])).collect();
        (changes, letters)
    }
}

const STRICT: CastOptions<'static> =
    CastOptions { safe: false, format_options: arrow::util::display::FormatOptions::new() };

/// `batch`'s columns matched to `target` by name (case-insensitive) and cast to its types;
/// columns `target` lacks are ignored, a missing nullable column is NULL. A value that does not
/// fit its column is an error (never silently NULL).
pub fn conform(batch: &RecordBatch, target: &SchemaRef) -> std::result::Result<RecordBatch, String> {
    let cols = target
        .fields()
        .iter()
        .map(|f| match batch.schema().fields().iter().position(|g| g.name().eq_ignore_ascii_case(f.name())) {
            Some(i) if batch.column(i).data_type() == f.data_type() => Ok(batch.column(i).clone()),
            Some(i) => arrow::compute::cast_with_options(batch.column(i), f.data_type(), &STRICT)
                .map_err(|e| format!("column '{}' cannot be read as {}: {e}", f.name(), f.data_type())),
            None if f.is_nullable() => Ok(new_null_array(f.data_type(), batch.num_rows())),
            None => Err(format!("no column '{}', which is NOT NULL", f.name())),
        })
        .collect::<std::result::Result<Vec<ArrayRef>, String>>()?;
    RecordBatch::try_new(target.clone(), cols).map_err(|e| e.to_string())
}

/// [`conform`], isolating the rows that fail: the good rows (in order) and `(row, reason)`.
pub fn conform_rows(batch: &RecordBatch, target: &SchemaRef) -> (Option<RecordBatch>, Failures) {
    match conform(batch, target) {
        Ok(b) => (Some(b), Vec::new()),
        Err(_) => {
            let mut good = Vec::new();
            let mut failures = Vec::new();
            for i in 0..batch.num_rows() {
                match conform(&batch.slice(i, 1), target) {
                    Ok(b) => good.push(b),
                    Err(e) => failures.push((i, e)),
                }
            }
            let b = if good.is_empty() { None } else { arrow::compute::concat_batches(target, &good).ok() };
            (b, failures)
        }
    }
}

/// Row `i` of `batch` as a JSON object (the payload of a dead letter from a columnar file).
pub fn row_json(batch: &RecordBatch, i: usize) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
        let _ = w.write(&batch.slice(i, 1));
        let _ = w.finish();
    }
    while out.last() == Some(&b'\n') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests;
