//! Wiring of the file reader into the source framework.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::array::{new_null_array, ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::connector::{Poll, SourceCapabilities, SourceChunk, SourceConnector, SourceSpec};
use crate::dlq::DeadLetter;
use crate::format::{Decoder, FormatKind, FormatSpec};
use crate::options::OptionReader;
use crate::registry::SourceFactory;
use crate::{ConnectorError, Result};

/// Registration.
pub const SOURCE: SourceFactory = SourceFactory {
    name: "file",
    keys: &["path", "format", "watch", "poll_interval_ms", "pattern", "batch_size", "csv.header", "csv.delimiter"],
    build,
};

fn build(spec: &SourceSpec, r: &mut OptionReader<'_>) -> Result<Box<dyn SourceConnector>> {
    let path = PathBuf::from(r.required_str("path")?);
    let format = FormatSpec::pull(
        r,
        FormatKind::Json,
        &[FormatKind::Json, FormatKind::Csv, FormatKind::Parquet, FormatKind::Raw, FormatKind::Debezium],
    )?;
    let watch = r.opt_bool("watch")?.unwrap_or(false);
    let poll_interval = Duration::from_millis(r.opt_u64("poll_interval_ms")?.unwrap_or(500).max(1));
    let pattern = r.opt_str("pattern");
    let batch_size = r.opt_u64("batch_size")?.unwrap_or(8192).max(1) as usize;
    let decoder = match format.kind {
        FormatKind::Parquet => None,
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
    Lines { file: BufReader<File>, offset: u64, line: u64 },
    Parquet(ParquetRecordBatchReader),
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
                    Ok(r) => Reader::Parquet(r),
                    Err(e) => return Ok(Err(DeadLetter::new(name, format!("not a readable Parquet file: {e}"), b""))),
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
            Reader::Parquet(r) => match r.next() {
                None => Ok(None),
                Some(Err(e)) => {
                    let letter = DeadLetter::new(cur.name.clone(), format!("cannot read Parquet data: {e}"), b"");
                    self.current = None;
                    Ok(Some(SourceChunk { dead_letters: vec![letter], ..SourceChunk::default() }))
                }
                Some(Ok(b)) => match project(&b, &self.schema) {
                    Ok(batch) => Ok(Some(SourceChunk::insert(batch))),
                    Err(reason) => {
                        let letter = DeadLetter::new(cur.name.clone(), reason, b"");
                        self.current = None;
                        Ok(Some(SourceChunk { dead_letters: vec![letter], ..SourceChunk::default() }))
                    }
                },
            },
        }
    }
}

fn io_err(path: &Path, e: std::io::Error) -> ConnectorError {
    ConnectorError::Unavailable(format!("cannot read {}: {e}", path.display()))
}

/// Columns of `schema` taken from `b` by name (cast; missing nullable columns are NULL).
fn project(b: &RecordBatch, schema: &SchemaRef) -> std::result::Result<RecordBatch, String> {
    let cols = schema
        .fields()
        .iter()
        .map(|f| match b.schema().fields().iter().position(|g| g.name().eq_ignore_ascii_case(f.name())) {
            Some(i) => arrow::compute::cast(b.column(i), f.data_type())
                .map_err(|e| format!("column '{}' cannot be read as {}: {e}", f.name(), f.data_type())),
            None if f.is_nullable() => Ok(new_null_array(f.data_type(), b.num_rows())),
            None => Err(format!("the file has no column '{}', which is NOT NULL", f.name())),
        })
        .collect::<std::result::Result<Vec<ArrayRef>, String>>()?;
    RecordBatch::try_new(schema.clone(), cols).map_err(|e| e.to_string())
}

#[async_trait]
impl SourceConnector for FileSource {
    fn capabilities(&self) -> SourceCapabilities {
        SourceCapabilities {
            replayable: true,
            changelog: self.decoder.as_ref().is_some_and(Decoder::is_changelog),
            bounded: !self.watch,
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
            _ => serde_json::Value::Null,
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
                if let Some(Current { reader: Reader::Lines { file, offset, line }, .. }) = self.current.as_mut() {
                    *offset = cur["offset"].as_u64().ok_or_else(bad)?;
                    *line = cur["line"].as_u64().ok_or_else(bad)?;
                    file.seek(SeekFrom::Start(*offset)).map_err(|e| ConnectorError::Failed(e.to_string()))?;
                }
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
