//! Wiring of the file writer into the sink framework: whole epochs per file, atomic commit.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use laminar_dataflow::batch::DiffBatch;
use parquet::arrow::ArrowWriter;

use crate::connector::{SinkCapabilities, SinkConnector, SinkSpec};
use crate::format::{Encoder, FormatKind, FormatSpec};
use crate::options::OptionReader;
use crate::registry::SinkFactory;
use crate::{ConnectorError, Result};

/// Registration.
pub const SINK: SinkFactory = SinkFactory {
    name: "file",
    keys: &[
        "path",
        "format",
        "rollover.rows",
        "rollover.interval_ms",
        "prefix",
        "changelog",
        "csv.header",
        "csv.delimiter",
    ],
    build,
};

fn build(
    spec: &SinkSpec,
    r: &mut OptionReader<'_>,
    _ctx: &crate::registry::BuildContext<'_>,
) -> Result<Box<dyn SinkConnector>> {
    let dir = PathBuf::from(r.required_str("path")?);
    let format = FormatSpec::pull(
        r,
        FormatKind::Json,
        &[FormatKind::Json, FormatKind::Csv, FormatKind::Parquet, FormatKind::Avro],
    )?;
    format.reject_record_options("file")?;
    let rollover_rows = r.opt_u64("rollover.rows")?.unwrap_or(1_000_000).max(1);
    let rollover_interval = Duration::from_millis(r.opt_u64("rollover.interval_ms")?.unwrap_or(1000));
    let prefix = r.opt_str("prefix").unwrap_or_else(|| spec.name.clone());
    if prefix.contains(['/', '\\']) || prefix.starts_with('.') {
        return Err(r.bad("prefix", &prefix, "a file name prefix (no '/', not starting with '.')"));
    }
    // Each process of a cluster writes its own files.
    let prefix = prefix + &spec.part.suffix();
    let changelog = r.opt_bool("changelog")?.unwrap_or(false);
    let transactional = spec.options.get("delivery.guarantee").is_some_and(|g| g.trim() == "exactly-once");
    let columnar = matches!(format.kind, FormatKind::Parquet | FormatKind::Avro);
    let encoder_kind = if columnar { FormatKind::Json } else { format.kind };
    let encoder = Encoder::new(encoder_kind, &spec.schema, changelog, format.csv_delimiter)?;
    if format.kind == FormatKind::Avro {
        crate::format::avro::avro_schema_for(encoder.schema())?;
    }
    Ok(Box::new(FileSink {
        dir,
        format,
        rollover_rows,
        rollover_interval,
        prefix,
        changelog,
        encoder,
        open: None,
        committed: Vec::new(),
        transactional,
        pending: Vec::new(),
    }))
}

enum Writer {
    Text(BufWriter<File>),
    Parquet(Box<ArrowWriter<File>>),
    Avro(Box<arrow_avro::writer::AvroWriter<BufWriter<File>>>),
}

struct OpenFile {
    tmp: PathBuf,
    writer: Writer,
    first_epoch: u64,
    last_epoch: u64,
    rows: u64,
    opened: Instant,
}

/// Writes rows into files.
pub struct FileSink {
    dir: PathBuf,
    format: FormatSpec,
    rollover_rows: u64,
    rollover_interval: Duration,
    prefix: String,
    changelog: bool,
    encoder: Encoder,
    open: Option<OpenFile>,
    /// Files committed by this sink since it started.
    committed: Vec<PathBuf>,
    /// Exactly-once: files are published only for epochs a durable checkpoint covers.
    transactional: bool,
    /// Exactly-once: finished files waiting for their checkpoint (first and last epoch, hidden
    /// path).
    pending: Vec<(u64, u64, PathBuf)>,
}

fn io(what: &str, path: &std::path::Path, e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Failed(format!("file sink cannot {what} {}: {e}", path.display()))
}

impl FileSink {
    fn extension(&self) -> &'static str {
        match self.format.kind {
            FormatKind::Csv => "csv",
            FormatKind::Parquet => "parquet",
            FormatKind::Avro => "avro",
            _ => "jsonl",
        }
    }

    fn schema(&self) -> SchemaRef {
        self.encoder.schema().clone()
    }

    fn ensure_open(&mut self, epoch: u64) -> Result<&mut OpenFile> {
        if self.open.is_none() {
            let tmp = self.dir.join(format!(".{}-{epoch:012}.inprogress", self.prefix));
            let file = File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
            let writer = match self.format.kind {
                FormatKind::Parquet => Writer::Parquet(Box::new(
                    ArrowWriter::try_new(file, self.schema(), None).map_err(|e| io("write", &tmp, e))?,
                )),
                FormatKind::Avro => Writer::Avro(Box::new(
                    arrow_avro::writer::AvroWriter::new(
                        BufWriter::with_capacity(1 << 20, file),
                        arrow::datatypes::Schema::new(self.schema().fields().clone()),
                    )
                    .map_err(|e| io("write", &tmp, e))?,
                )),
                _ => Writer::Text(BufWriter::with_capacity(1 << 20, file)),
            };
            self.open =
                Some(OpenFile { tmp, writer, first_epoch: epoch, last_epoch: epoch, rows: 0, opened: Instant::now() });
        }
        self.open.as_mut().ok_or_else(|| ConnectorError::Failed("no open file".into()))
    }

    /// The final name of a file holding epochs `first..=last`.
    fn final_name(&self, first: u64, last: u64) -> String {
        format!("{}-{first:012}-{last:012}.{}", self.prefix, self.extension())
    }

    /// Makes the in-progress file durable and visible under its final name (or, exactly-once,
    /// under a hidden pending name until its checkpoint commits it).
    fn commit_file(&mut self) -> Result<()> {
        let Some(f) = self.open.take() else { return Ok(()) };
        let file = match f.writer {
            Writer::Text(w) => w.into_inner().map_err(|e| io("write", &f.tmp, e.error()))?,
            Writer::Parquet(w) => w.into_inner().map_err(|e| io("write", &f.tmp, e))?,
            Writer::Avro(mut w) => {
                w.finish().map_err(|e| io("write", &f.tmp, e))?;
                w.into_inner().into_inner().map_err(|e| io("write", &f.tmp, e.error()))?
            }
        };
        file.sync_all().map_err(|e| io("sync", &f.tmp, e))?;
        let name = self.final_name(f.first_epoch, f.last_epoch);
        if self.transactional {
            let pending = self.dir.join(format!(".{name}.pending"));
            std::fs::rename(&f.tmp, &pending).map_err(|e| io("pre-commit", &pending, e))?;
            self.sync_dir();
            self.pending.push((f.first_epoch, f.last_epoch, pending));
            return Ok(());
        }
        let dest = self.dir.join(name);
        std::fs::rename(&f.tmp, &dest).map_err(|e| io("commit", &dest, e))?;
        self.sync_dir();
        self.committed.push(dest);
        Ok(())
    }

    fn sync_dir(&self) {
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
    }

    /// Pending files of this sink in the directory: (first epoch, last epoch, path).
    fn pending_files(&self) -> Vec<(u64, u64, PathBuf)> {
        let head = format!(".{}-", self.prefix);
        let tail = format!(".{}.pending", self.extension());
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        rd.flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                let epochs = n.strip_prefix(&head)?.strip_suffix(&tail)?;
                let (a, b) = epochs.split_once('-')?;
                Some((a.parse().ok()?, b.parse().ok()?, e.path()))
            })
            .collect()
    }

    /// Publishes a pending file under its final name.
    fn publish(&mut self, first: u64, last: u64, pending: &std::path::Path) -> Result<()> {
        let dest = self.dir.join(self.final_name(first, last));
        std::fs::rename(pending, &dest).map_err(|e| io("commit", &dest, e))?;
        self.committed.push(dest);
        Ok(())
    }
}

#[async_trait]
impl SinkConnector for FileSink {
    fn capabilities(&self) -> SinkCapabilities {
        SinkCapabilities { upsert: false, changelog: self.changelog, exactly_once: true, parallel: true }
    }

    async fn open(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io("create directory", &self.dir, e))?;
        // Leftovers of an interrupted run were never committed: remove them.
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            let stale = format!(".{}-", self.prefix);
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&stale) && n.ends_with(".inprogress") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    async fn begin(&mut self, epoch: u64) -> Result<()> {
        self.ensure_open(epoch)?.last_epoch = epoch;
        Ok(())
    }

    async fn write(&mut self, batch: &DiffBatch) -> Result<()> {
        let rows = self.encoder.prepare(batch)?;
        let header = self.format.kind == FormatKind::Csv && self.format.csv_header;
        let epoch = self.open.as_ref().map(|f| f.last_epoch).unwrap_or(0);
        let first = self.open.as_ref().is_none_or(|f| f.rows == 0);
        let mut text = Vec::new();
        if !matches!(self.format.kind, FormatKind::Parquet | FormatKind::Avro) {
            self.encoder.encode_into(&rows, &mut text, header && first)?;
        }
        let f = self.ensure_open(epoch)?;
        match &mut f.writer {
            Writer::Parquet(w) => w.write(&rows).map_err(|e| io("write", &f.tmp, e))?,
            Writer::Avro(w) => {
                let plain = arrow::array::RecordBatch::try_new(
                    std::sync::Arc::new(arrow::datatypes::Schema::new(rows.schema().fields().clone())),
                    rows.columns().to_vec(),
                )?;
                w.write(&plain).map_err(|e| io("write", &f.tmp, e))?
            }
            Writer::Text(w) => w.write_all(&text).map_err(|e| io("write", &f.tmp, e))?,
        }
        f.rows += rows.num_rows() as u64;
        Ok(())
    }

    async fn pre_commit(&mut self, _epoch: u64) -> Result<()> {
        if self.transactional {
            // A checkpoint barrier: everything written so far must survive a crash.
            return self.commit_file();
        }
        let due = self
            .open
            .as_ref()
            .is_some_and(|f| f.rows >= self.rollover_rows || f.opened.elapsed() >= self.rollover_interval);
        if due {
            self.commit_file()?;
        }
        Ok(())
    }

    async fn commit(&mut self, epoch: u64) -> Result<()> {
        if !self.transactional {
            return Ok(());
        }
        let ready: Vec<(u64, u64, PathBuf)> = self.pending.iter().filter(|p| p.1 <= epoch).cloned().collect();
        self.pending.retain(|p| p.1 > epoch);
        for (first, last, path) in ready {
            self.publish(first, last, &path)?;
        }
        self.sync_dir();
        Ok(())
    }

    async fn recover(&mut self, checkpoint: u64, _state: Option<&[u8]>) -> Result<()> {
        // Files pre-committed for epochs the checkpoint covers are published; later ones are
        // discarded, since the pipeline writes those epochs again.
        for (first, last, path) in self.pending_files() {
            if last <= checkpoint {
                self.publish(first, last, &path)?;
            } else {
                std::fs::remove_file(&path).map_err(|e| io("discard", &path, e))?;
            }
        }
        self.sync_dir();
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        if self.transactional {
            // Epochs after the last checkpoint are not kept (the next run writes them again);
            // pending files stay for the recovery of the next run.
            if let Some(f) = self.open.take() {
                let _ = std::fs::remove_file(&f.tmp);
            }
            return Ok(());
        }
        if self.open.as_ref().is_some_and(|f| f.rows == 0) {
            if let Some(f) = self.open.take() {
                let _ = std::fs::remove_file(&f.tmp);
            }
        }
        self.commit_file()
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}
