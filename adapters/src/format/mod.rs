//! Record formats shared by every transport: `json`, `csv`, `raw`, `debezium` (and, for files,
//! `parquet`). A [`Decoder`] turns a slice of payloads into Arrow changes plus dead letters;
//! an [`Encoder`] turns changes into payloads.
//!
//! Columns are matched by name (JSON keys, CSV header names); values are coerced to the declared
//! column types (numbers and RFC 3339 strings into timestamps, numeric strings into numbers).
//! A record that fails is isolated and returned as a dead letter: its neighbours still arrive.

mod csv;
mod debezium;
mod encode;
mod json;
mod raw;

use arrow::datatypes::SchemaRef;

pub use encode::Encoder;

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
}

/// Option keys read by [`FormatSpec::pull`].
pub const FORMAT_KEYS: &[&str] = &["format", "csv.header", "csv.delimiter"];

impl FormatSpec {
    /// A format with default options.
    pub fn new(kind: FormatKind) -> Self {
        Self { kind, csv_header: true, csv_delimiter: b',' }
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
            FormatKind::Parquet | FormatKind::Avro => {
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
        };
        let letters =
            failures.into_iter().map(|(i, reason)| DeadLetter::new(position(i), reason, payloads[i])).collect();
        (changes, letters)
    }
}

#[cfg(test)]
mod tests;
