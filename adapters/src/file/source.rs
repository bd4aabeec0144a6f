//! Wiring of the file reader into the source framework.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::connector::{Change, Poll, SourceCapabilities, SourceChunk, SourceConnector, SourceSpec};
use crate::dlq::DeadLetter;
use crate::format::{conform_rows, row_json, Decoder, FormatKind, FormatSpec};
use crate::options::OptionReader;
use crate::registry::SourceFactory;
use crate::{ConnectorError, Result};

/// Registration.
pub const SOURCE: SourceFactory = SourceFactory {
    name: "file",
    keys: &["path", "format", "watch", "poll_interval_ms", "pattern", "batch_size", "csv.header", "csv.delimiter"],
    build,
};

fn build(
    spec: &SourceSpec,
    r: &mut OptionReader<'_>,
    _ctx: &crate::registry::BuildContext<'_>,
) -> Result<Box<dyn SourceConnector>> {
    let path = PathBuf::from(r.required_str("path")?);
    let format = FormatSpec::pull(
        r,
        FormatKind::Json,
        &[
            FormatKind::Json,
            FormatKind::Csv,
            FormatKind::Parquet,
            FormatKind::Avro,
            FormatKind::Raw,
            FormatKind::Debezium,
        ],
    )?;
    format.reject_record_options("file")?;
    let watch = r.opt_bool("watch")?.unwrap_or(false);
    let poll_interval = Duration::from_millis(r.opt_u64("poll_interval_ms")?.unwrap_or(500).max(1));
    let pattern = r.opt_str("pattern");
    let batch_size = r.opt_u64("batch_size")?.unwrap_or(8192).max(1) as usize;
    let decoder = match format.kind {
        FormatKind::Parquet | FormatKind::Avro => None,
        _ => Some(Decoder::new(&format, &spec.schema, &spec.primary_key)?),
    };
    Ok(Box::new(FileSource {
        path,
        format,
        watch,
        poll_interval,
        pattern,
        batch_size,
        schema: spec.schema.clone(),
        decoder,
        done: Vec::new(),
        current: None,
    }))
}

enum Reader {
    Lines {
        file: BufReader<File>,
        offset: u64,
        line: u64,
    },
    /// `row`: rows of the file read so far; `skip`: rows to pass over (resuming a position).
    Parquet {
        reader: ParquetRecordBatchReader,
        row: u64,
        skip: u64,
    },
    Avro {
        reader: Box<arrow_avro::reader::Reader<BufReader<File>>>,
        row: u64,
        skip: u64,
    },
}

struct Current {
    name: String,
    path: PathBuf,
    reader: Reader,
}

/// Reads files from a directory.
pub struct FileSource {
    path: PathBuf,
    format: FormatSpec,
    watch: bool,
    poll_interval: Duration,
    pattern: Option<String>,
    batch_size: usize,
    schema: SchemaRef,
    decoder: Option<Decoder>,
    /// Files read completely (names), in order.
    done: Vec<String>,
    current: Option<Current>,
}

impl FileSource {
    fn list(&self) -> Result<Vec<(String, PathBuf)>> {
        if self.path.is_file() {
            let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            return Ok(vec![(name, self.path.clone())]);
        }
        let rd = std::fs::read_dir(&self.path)
            .map_err(|e| ConnectorError::Unavailable(format!("cannot read directory {}: {e}", self.path.display())))?;
        let mut files: Vec<(String, PathBuf)> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .filter(|(n, _)| !n.starts_with('.') && !n.starts_with('_'))
            .filter(|(n, _)| self.pattern.as_ref().is_none_or(|p| n.ends_with(p.as_str())))
            .collect();
        files.sort();
        Ok(files)
    }

    fn open_file(&mut self, name: String, path: PathBuf) -> Result<std::result::Result<(), DeadLetter>> {
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => return Ok(Err(DeadLetter::new(name, format!("cannot open: {e}"), b""))),
        };
        let reader = match self.format.kind {
            FormatKind::Parquet => {
                match ParquetRecordBatchReaderBuilder::try_new(file)
                    .and_then(|b| b.with_batch_size(self.batch_size).build())
                {
                    Ok(reader) => Reader::Parquet { reader, row: 0, skip: 0 },
                    Err(e) => return Ok(Err(DeadLetter::new(name, format!("not a readable Parquet file: {e}"), b""))),
                }
            }
            FormatKind::Avro => {
                match arrow_avro::reader::ReaderBuilder::new()
                    .with_batch_size(self.batch_size)
                    .build(BufReader::with_capacity(1 << 20, file))
                {
                    Ok(r) => Reader::Avro { reader: Box::new(r), row: 0, skip: 0 },
                    Err(e) => {
                        return Ok(Err(DeadLetter::new(name, format!("not a readable Avro container file: {e}"), b"")))
                    }
                }
            }
            _ => {
                let mut file = BufReader::with_capacity(1 << 20, file);
                let mut line = 0;
                let mut offset = 0;
                if self.format.kind == FormatKind::Csv {
                    let header = if self.format.csv_header {
                        let mut h = String::new();
                        offset = file.read_line(&mut h).map_err(|e| io_err(&path, e))? as u64;
                        line = 1;
                        let d = self.format.csv_delimiter as char;
                        Some(
                            h.trim_end_matches(['\r', '\n'])
                                .split(d)
                                .map(|s| s.trim_matches('"').to_string())
                                .collect(),
                        )
                    } else {
                        None
                    };
                    if let Some(dec) = self.decoder.as_mut() {
                        if let Err(e) = dec.set_csv_header(header) {
                            return Ok(Err(DeadLetter::new(format!("{name}:1"), e.to_string(), b"")));
                        }
                    }
                }
                Reader::Lines { file, offset, line }
            }
        };
        self.current = Some(Current { name, path, reader });
        Ok(Ok(()))
    }

    /// Reads up to `batch_size` records of the current file; `None` at its end.
    fn read_current(&mut self) -> Result<Option<SourceChunk>> {
        let Some(cur) = self.current.as_mut() else { return Ok(None) };
        match &mut cur.reader {
            Reader::Lines { file, offset, line } => {
                let mut buf = Vec::with_capacity(self.batch_size * 64);
                let mut ends = Vec::with_capacity(self.batch_size);
                let mut lines = Vec::with_capacity(self.batch_size);
                while ends.len() < self.batch_size {
                    let n = file.read_until(b'\n', &mut buf).map_err(|e| io_err(&cur.path, e))?;
                    if n == 0 {
                        break;
                    }
                    *offset += n as u64;
                    *line += 1;
                    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        buf.pop();
                    }
                    if buf.len() == ends.last().copied().unwrap_or(0) {
                        continue; // blank line
                    }
                    ends.push(buf.len());
                    lines.push(*line);
                }
                if ends.is_empty() {
                    return Ok(None);
                }
                let mut payloads = Vec::with_capacity(ends.len());
                let mut start = 0;
                for &e in &ends {
                    payloads.push(&buf[start..e]);
                    start = e;
                }
                let name = cur.name.clone();
                let dec = self.decoder.as_mut().ok_or_else(|| ConnectorError::Failed("no decoder".into()))?;
                let (changes, dead_letters) = dec.decode(&payloads, &|i| format!("{name}:{}", lines[i]));
                Ok(Some(SourceChunk { changes, dead_letters, watermark: None }))
            }
            Reader::Parquet { reader, row, skip } => {
                let next = skip_rows(reader.next(), row, skip);
                let first = *row;
                *row += next.as_ref().map_or(0, |b| b.as_ref().map_or(0, |b| b.num_rows() as u64));
                Ok(self.columnar(next, first))
            }
            Reader::Avro { reader, row, skip } => {
                let next = skip_rows(reader.next(), row, skip);
                let first = *row;
                *row += next.as_ref().map_or(0, |b| b.as_ref().map_or(0, |b| b.num_rows() as u64));
                Ok(self.columnar(next, first))
            }
        }
    }

    /// A batch from a columnar file (Parquet, Avro) matched to the source's columns; rows that do
    /// not fit are dead letters (`file#row`); an unreadable rest of the file is one dead letter.
    fn columnar(
        &mut self,
        next: Option<std::result::Result<RecordBatch, arrow::error::ArrowError>>,
        first_row: u64,
    ) -> Option<SourceChunk> {
        let name = self.current.as_ref().map(|c| c.name.clone()).unwrap_or_default();
        match next {
            None => None,
            Some(Err(e)) => {
                let letter = DeadLetter::new(name, format!("cannot read the file: {e}"), b"");
                self.current = None;
                Some(SourceChunk { dead_letters: vec![letter], ..SourceChunk::default() })
            }
            Some(Ok(b)) => {
                let (good, fails) = conform_rows(&b, &self.schema);
                let dead_letters = fails
                    .into_iter()
                    .map(|(i, reason)| {
                        DeadLetter::new(format!("{name}#{}", first_row + i as u64), reason, &row_json(&b, i))
                    })
                    .collect();
                Some(SourceChunk {
                    changes: good.map(Change::Insert).into_iter().collect(),
                    dead_letters,
                    watermark: None,
                })
            }
        }
    }
}

/// Drops the first `skip` rows (already delivered before a restart) from a columnar batch.
fn skip_rows(
    mut next: Option<std::result::Result<RecordBatch, arrow::error::ArrowError>>,
    row: &mut u64,
    skip: &mut u64,
) -> Option<std::result::Result<RecordBatch, arrow::error::ArrowError>> {
    if let Some(Ok(b)) = &next {
        if *skip > 0 {
            let n = (*skip).min(b.num_rows() as u64);
            *skip -= n;
            *row += n;
            next = Some(Ok(b.slice(n as usize, b.num_rows() - n as usize)));
        }
    }
    next
}

fn io_err(path: &Path, e: std::io::Error) -> ConnectorError {
    ConnectorError::Unavailable(format!("cannot read {}: {e}", path.display()))
}

#[async_trait]
impl SourceConnector for FileSource {
    fn capabilities(&self) -> SourceCapabilities {
        SourceCapabilities {
            replayable: true,
            changelog: self.decoder.as_ref().is_some_and(Decoder::is_changelog),
            bounded: !self.watch,
            watermarks: false,
            key_from_peer: false,
            partitioned: false,
        }
    }

    async fn open(&mut self) -> Result<()> {
        if !self.path.exists() {
            return Err(ConnectorError::Unavailable(format!("path {} does not exist", self.path.display())));
        }
        Ok(())
    }

    async fn poll(&mut self) -> Result<Poll> {
        loop {
            if self.current.is_some() {
                if let Some(chunk) = self.read_current()? {
                    return Ok(Poll::Data(chunk));
                }
                if let Some(c) = self.current.take() {
                    self.done.push(c.name);
                }
            }
            let next = self.list()?.into_iter().find(|(n, _)| !self.done.contains(n));
            match next {
                Some((name, path)) => {
                    if let Err(letter) = self.open_file(name.clone(), path)? {
                        self.done.push(name);
                        return Ok(Poll::Data(SourceChunk { dead_letters: vec![letter], ..SourceChunk::default() }));
                    }
                }
                None if self.watch => return Ok(Poll::Idle(self.poll_interval)),
                None => return Ok(Poll::Finished),
            }
        }
    }

    fn checkpoint(&self) -> Result<serde_json::Value> {
        let current = match &self.current {
            Some(Current { name, reader: Reader::Lines { offset, line, .. }, .. }) => {
                serde_json::json!({ "name": name, "offset": offset, "line": line })
            }
            Some(Current {
                name, reader: Reader::Parquet { row, skip, .. } | Reader::Avro { row, skip, .. }, ..
            }) => {
                serde_json::json!({ "name": name, "row": row + skip })
            }
            None => serde_json::Value::Null,
        };
        Ok(serde_json::json!({ "done": self.done, "current": current }))
    }

    fn restore(&mut self, position: &serde_json::Value) -> Result<()> {
        let bad = || ConnectorError::Failed("bad file source position".into());
        self.done = serde_json::from_value(position["done"].clone()).map_err(|_| bad())?;
        let cur = &position["current"];
        if let Some(name) = cur["name"].as_str() {
            let path = if self.path.is_file() { self.path.clone() } else { self.path.join(name) };
            if let Ok(Ok(())) = self.open_file(name.to_string(), path) {
                match self.current.as_mut().map(|c| &mut c.reader) {
                    Some(Reader::Lines { file, offset, line }) => {
                        *offset = cur["offset"].as_u64().ok_or_else(bad)?;
                        *line = cur["line"].as_u64().ok_or_else(bad)?;
                        file.seek(SeekFrom::Start(*offset)).map_err(|e| ConnectorError::Failed(e.to_string()))?;
                    }
                    Some(Reader::Parquet { skip, .. } | Reader::Avro { skip, .. }) => {
                        *skip = cur["row"].as_u64().ok_or_else(bad)?;
                    }
                    None => {}
                }
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
