//! `file`: rows from files in a directory (source) and rows into files (sink).
//!
//! # Source options
//! - `'path'` (required): a directory (every file in it, in name order) or one file.
//! - `'format'`: `json` (JSON lines, default), `csv`, `parquet`, `avro` (Avro object container
//!   files; columns matched by name), `raw` (each line into the source's single column) or
//!   `debezium` (JSON change envelopes; needs a PRIMARY KEY).
//! - `'watch'`: keep watching the directory for new files (default false: the source ends after
//!   the last file); `'poll_interval_ms'` (default 500) between scans.
//! - `'pattern'`: only files whose name ends with this suffix (e.g. `.jsonl`).
//! - `'batch_size'`: records per batch (default 8192).
//! - `'csv.header'` (default true: the first line names the columns, matched by name) and
//!   `'csv.delimiter'` (default `,`).
//!
//! Files whose name starts with `.` or `_` are skipped (in-progress files of writers). A record
//! that cannot be decoded goes to the dead-letter target with `file:line` (`file#row` for
//! Parquet and Avro) as its position.
//!
//! # Sink options
//! - `'path'` (required): the directory to write into (created if missing).
//! - `'format'`: `json` (default), `csv`, `parquet` or `avro` (object container files).
//! - `'rollover.rows'` (default 1 000 000) and `'rollover.interval_ms'` (default 1000): a file is
//!   committed once it holds this many rows or is this old, at the end of an epoch.
//! - `'prefix'`: file name prefix (default: the sink name; process `i` of a cluster appends
//!   `-p<i>`, each process writing its own files).
//! - `'changelog'`: accept updating queries and add an `op` column (`insert`/`delete`).
//!
//! # Guarantees
//! Sink: rows are written to a hidden in-progress file and committed by an atomic rename to
//! `<prefix>-<first epoch>-<last epoch>.<ext>`, so readers never see a partial file and a file
//! always holds whole epochs. With `'delivery.guarantee' = 'exactly-once'` (checkpoints on,
//! replayable sources) a file is finished at each checkpoint barrier under a hidden
//! `.<name>.pending` name and published only once the checkpoint is durable; after a crash the
//! restart publishes the pending files the checkpoint covers and deletes the others, whose
//! epochs the pipeline writes again: every row lands in exactly one visible file. Source: replayable; the position is (file, byte offset, line), or
//! (file, row) for Parquet and Avro files.
//!
//! # Error handling
//! A missing directory fails `start()` naming the path; unreadable files are dead-lettered
//! whole; I/O errors while writing fail the sink (visible in its metrics).

mod sink;
mod source;

pub use sink::SINK;
pub use source::SOURCE;
