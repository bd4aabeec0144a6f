//! Avro records ↔ Arrow through arrow-avro.
//!
//! Two framings of a record:
//! - plain: the payload is the Avro binary encoding of one datum, written with the schema in
//!   `'avro.schema'` (Avro schema JSON; default: the schema arrow-avro derives from the source's
//!   columns);
//! - Confluent Schema Registry wire format (when `'schema.registry.url'` is set): a magic byte
//!   `0`, the writer schema's id (4 bytes, big-endian), then the datum. Writer schemas are
//!   fetched by id from the registry ([`super::registry`]) before decoding and cached.
//!
//! Records are decoded with their writer schema and then matched to the source's columns by
//! name and cast (fields the source does not have are ignored; a missing nullable column is
//! NULL). A record that fails (bad framing, unknown schema id, truncated or corrupt body, a value
//! that does not fit its column) becomes a dead letter; its neighbours still arrive.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow_avro::reader::ReaderBuilder;
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, FingerprintStrategy, SchemaStore};
use arrow_avro::writer::format::{AvroBinaryFormat, AvroSoeFormat};
use arrow_avro::writer::WriterBuilder;

use super::registry::{Lookup, RegistryConfig, SchemaRegistry};
use super::{conform_rows, Failures};
use crate::{ConnectorError, Result};

/// The id under which a plain decoder keeps its one writer schema (an unlikely one, so that
/// zero padding after a datum is not taken for a record header).
const PLAIN_ID: u32 = 0x4C44_4231;
/// Confluent wire-format header: magic byte and schema id.
const HEADER: usize = 5;

/// The Avro schema (JSON) arrow-avro writes for `schema`.
pub fn avro_schema_for(schema: &Schema) -> Result<String> {
    let plain = Schema::new(schema.fields().clone());
    AvroSchema::try_from(&plain)
        .map(|s| s.json_string)
        .map_err(|e| ConnectorError::Config(format!("the columns cannot be written as Avro: {e}")))
}

fn check_schema(json: &str) -> std::result::Result<AvroSchema, String> {
    let s = AvroSchema::new(json.to_string());
    let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
    store.set(Fingerprint::Id(PLAIN_ID), s.clone()).map_err(|e| format!("invalid Avro schema: {e}"))?;
    ReaderBuilder::new()
        .with_writer_schema_store(store)
        .build_decoder()
        .map_err(|e| format!("unsupported Avro schema: {e}"))?;
    Ok(s)
}

enum Framing {
    Plain,
    Confluent(Box<SchemaRegistry>),
}

/// Decodes Avro records (one per payload).
pub struct AvroDecoder {
    target: SchemaRef,
    framing: Framing,
    /// Writer schemas by id (plain: one, under [`PLAIN_ID`]).
    known: BTreeMap<u32, AvroSchema>,
    /// Ids that cannot be used, with the reason.
    unusable: BTreeMap<u32, String>,
    decoder: Option<arrow_avro::reader::Decoder>,
    frame: Vec<u8>,
}

impl AvroDecoder {
    /// A decoder producing rows of `target`. `writer_schema`: the `'avro.schema'` option (plain
    /// framing); `registry`: Confluent framing. Checks the schema now (CREATE time; no I/O).
    pub fn new(target: SchemaRef, writer_schema: Option<&str>, registry: Option<RegistryConfig>) -> Result<Self> {
        let mut known = BTreeMap::new();
        let framing = match registry {
            Some(cfg) => {
                if writer_schema.is_some() {
                    return Err(ConnectorError::Config(
                        "options 'avro.schema' and 'schema.registry.url' exclude each other: with a registry, \
                         each record names its writer schema"
                            .into(),
                    ));
                }
                Framing::Confluent(Box::new(SchemaRegistry::new(cfg)?))
            }
            None => {
                let json = match writer_schema {
                    Some(s) => s.to_string(),
                    None => avro_schema_for(&target)?,
                };
                let s =
                    check_schema(&json).map_err(|e| ConnectorError::Config(format!("option 'avro.schema': {e}")))?;
                known.insert(PLAIN_ID, s);
                Framing::Plain
            }
        };
        Ok(Self { target, framing, known, unusable: BTreeMap::new(), decoder: None, frame: Vec::new() })
    }

    /// The registry client (Confluent framing).
    pub fn registry(&self) -> Option<&SchemaRegistry> {
        match &self.framing {
            Framing::Confluent(r) => Some(r),
            Framing::Plain => None,
        }
    }

    /// Looks up the writer schemas of `payloads` that are not known yet. A transient error
    /// (registry unreachable) should be retried without losing the payloads.
    pub async fn prepare(&mut self, payloads: &[&[u8]]) -> Result<()> {
        let Framing::Confluent(registry) = &mut self.framing else { return Ok(()) };
        let mut changed = false;
        for p in payloads {
            let Some(id) = header_id(p) else { continue };
            if self.known.contains_key(&id) || self.unusable.contains_key(&id) {
                continue;
            }
            match registry.schema_by_id(id).await? {
                Lookup::Found(json) => match check_schema(&json) {
                    Ok(s) => {
                        self.known.insert(id, s);
                        changed = true;
                    }
                    Err(e) => {
                        self.unusable.insert(id, format!("writer schema id {id}: {e}"));
                    }
                },
                Lookup::Unusable(reason) => {
                    self.unusable.insert(id, reason);
                }
            }
        }
        if changed {
            self.decoder = None;
        }
        Ok(())
    }

    fn fresh_decoder(&self) -> std::result::Result<arrow_avro::reader::Decoder, String> {
        let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
        for (id, s) in &self.known {
            store.set(Fingerprint::Id(*id), s.clone()).map_err(|e| e.to_string())?;
        }
        ReaderBuilder::new()
            .with_batch_size(8192)
            .with_writer_schema_store(store)
            .build_decoder()
            .map_err(|e| e.to_string())
    }

    /// Checks a payload's framing; returns the bytes to feed the decoder (prefixed as the
    /// decoder expects) or why it cannot be decoded.
    fn framed<'p>(&'p self, p: &'p [u8], scratch: &'p mut Vec<u8>) -> std::result::Result<&'p [u8], String> {
        match &self.framing {
            Framing::Plain => {
                scratch.clear();
                scratch.push(0);
                scratch.extend_from_slice(&PLAIN_ID.to_be_bytes());
                scratch.extend_from_slice(p);
                Ok(scratch.as_slice())
            }
            Framing::Confluent(_) => {
                let Some(id) = header_id(p) else {
                    return Err("not in the Confluent wire format (magic byte 0 and a 4-byte schema id)".into());
                };
                if let Some(reason) = self.unusable.get(&id) {
                    return Err(reason.clone());
                }
                if !self.known.contains_key(&id) {
                    return Err(format!("writer schema id {id} was not looked up"));
                }
                Ok(p)
            }
        }
    }

    /// Decodes every payload; returns the good rows (in order) and `(index, reason)` failures.
    pub fn decode(&mut self, payloads: &[&[u8]]) -> (Option<RecordBatch>, Failures) {
        let mut failures: Failures = Vec::new();
        if payloads.is_empty() {
            return (None, failures);
        }
        let mut decoder = match self.decoder.take().map_or_else(|| self.fresh_decoder(), Ok) {
            Ok(d) => d,
            Err(e) => return (None, (0..payloads.len()).map(|i| (i, e.clone())).collect()),
        };
        let mut scratch = std::mem::take(&mut self.frame);
        // Batches of rows decoded so far, each with the payload indexes of its rows.
        let mut parts: Vec<(RecordBatch, Vec<usize>)> = Vec::new();
        // Payloads decoded into the current (unflushed) rows of `decoder`.
        let mut pending: Vec<usize> = Vec::new();
        let mut i = 0;
        while i < payloads.len() {
            let input = match self.framed(payloads[i], &mut scratch) {
                Ok(b) => b,
                Err(reason) => {
                    failures.push((i, reason));
                    i += 1;
                    continue;
                }
            };
            match feed(&mut decoder, input, &mut parts, &mut pending) {
                Ok(()) => {
                    pending.push(i);
                    i += 1;
                }
                Err(reason) => {
                    // The decoder holds part of the bad record: start over with a fresh one, keeping
                    // the good records of the current batch.
                    failures.push((i, reason));
                    match self.fresh_decoder() {
                        Ok(d) => decoder = d,
                        Err(e) => {
                            failures.extend((i + 1..payloads.len()).map(|j| (j, e.clone())));
                            break;
                        }
                    }
                    let redo = std::mem::take(&mut pending);
                    for &j in &redo {
                        if let Ok(input) = self.framed(payloads[j], &mut scratch) {
                            if let Err(reason) = feed(&mut decoder, input, &mut parts, &mut pending) {
                                failures.push((j, reason));
                                continue;
                            }
                            pending.push(j);
                        }
                    }
                    i += 1;
                }
            }
        }
        if let Err(e) = flush(&mut decoder, &mut parts, &mut pending) {
            failures.extend(pending.drain(..).map(|j| (j, e.clone())));
        }
        self.frame = scratch;
        self.decoder = Some(decoder);
        let mut good = Vec::new();
        for (batch, rows) in parts {
            let (b, fails) = conform_rows(&batch, &self.target);
            failures.extend(fails.into_iter().map(|(r, reason)| (rows[r], reason)));
            good.extend(b);
        }
        failures.sort_by_key(|f| f.0);
        let batch = match good.len() {
            0 => None,
            1 => good.pop(),
            _ => arrow::compute::concat_batches(&self.target, &good).ok(),
        };
        (batch, failures)
    }
}

/// Feeds one framed record; flushes finished rows into `parts` when the decoder asks for it (a
/// new writer schema, or a full batch). Fails unless exactly one whole datum was decoded.
fn feed(
    decoder: &mut arrow_avro::reader::Decoder,
    input: &[u8],
    parts: &mut Vec<(RecordBatch, Vec<usize>)>,
    pending: &mut Vec<usize>,
) -> std::result::Result<(), String> {
    let mut offset = 0;
    let mut base = decoder.capacity();
    loop {
        let n = decoder.decode(&input[offset..]).map_err(|e| format!("invalid Avro record: {e}"))?;
        offset += n;
        if offset == input.len() {
            break;
        }
        if decoder.batch_is_full() {
            // A record with another writer schema (or a full batch): finish the rows so far.
            flush(decoder, parts, pending)?;
            base = decoder.capacity();
            continue;
        }
        return Err(if n == 0 || base == decoder.capacity() {
            "invalid Avro record: truncated datum".to_string()
        } else {
            format!("invalid Avro record: {} bytes left over after the datum", input.len() - offset)
        });
    }
    if base.saturating_sub(decoder.capacity()) != 1 {
        return Err("invalid Avro record: no complete datum".into());
    }
    Ok(())
}

fn flush(
    decoder: &mut arrow_avro::reader::Decoder,
    parts: &mut Vec<(RecordBatch, Vec<usize>)>,
    pending: &mut Vec<usize>,
) -> std::result::Result<(), String> {
    match decoder.flush().map_err(|e| format!("invalid Avro record: {e}"))? {
        Some(b) => {
            let rows = std::mem::take(pending);
            if b.num_rows() != rows.len() {
                return Err(format!("decoded {} rows from {} records", b.num_rows(), rows.len()));
            }
            parts.push((b, rows));
        }
        None => pending.clear(),
    }
    Ok(())
}

/// The schema id of a Confluent-framed payload.
fn header_id(p: &[u8]) -> Option<u32> {
    if p.len() < HEADER || p[0] != 0 {
        return None;
    }
    Some(u32::from_be_bytes([p[1], p[2], p[3], p[4]]))
}

/// Encodes rows as Avro records, one payload per row: plain datums, or the Confluent wire format
/// once the schema id is known ([`AvroEncoder::use_schema_id`]).
pub struct AvroEncoder {
    schema: SchemaRef,
    avro_json: String,
    schema_id: Option<u32>,
    encoder: arrow_avro::writer::Encoder,
}

impl AvroEncoder {
    /// An encoder for rows of `schema` (plain datums until a schema id is set).
    pub fn new(schema: SchemaRef) -> Result<Self> {
        let avro_json = avro_schema_for(&schema)?;
        let encoder = WriterBuilder::new(Schema::new(schema.fields().clone()))
            .build_encoder::<AvroBinaryFormat>()
            .map_err(|e| ConnectorError::Config(format!("the columns cannot be written as Avro: {e}")))?;
        Ok(Self { schema, avro_json, schema_id: None, encoder })
    }

    /// The Avro schema JSON the records are written with (to register).
    pub fn avro_schema(&self) -> &str {
        &self.avro_json
    }

    /// Writes the Confluent wire format with this registry id from now on.
    pub fn use_schema_id(&mut self, id: u32) -> Result<()> {
        self.encoder = WriterBuilder::new(Schema::new(self.schema.fields().clone()))
            .with_fingerprint_strategy(FingerprintStrategy::Id(id))
            .build_encoder::<AvroSoeFormat>()
            .map_err(|e| ConnectorError::Failed(format!("cannot write Avro: {e}")))?;
        self.schema_id = Some(id);
        Ok(())
    }

    /// The registry id in use, if any.
    pub fn schema_id(&self) -> Option<u32> {
        self.schema_id
    }

    /// One payload per row of `rows` (which must have the encoder's columns).
    pub fn encode(&mut self, rows: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let plain = RecordBatch::try_new(Arc::new(Schema::new(self.schema.fields().clone())), rows.columns().to_vec())?;
        let _ = self.encoder.flush();
        self.encoder.encode(&plain).map_err(|e| ConnectorError::Failed(format!("cannot write Avro: {e}")))?;
        Ok(self.encoder.flush().iter().map(|b| b.to_vec()).collect())
    }
}
