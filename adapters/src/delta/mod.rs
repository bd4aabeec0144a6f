//! `delta-lake`: rows from a Delta Lake table (source) and rows into one (sink), through
//! delta-rs.
//!
//! # Protocol
//! A Delta table is a directory of Parquet data files plus a transaction log (`_delta_log/`,
//! one JSON commit per table version). A version's commit lists the files it adds and removes
//! (`add`/`remove` actions, each flagged `dataChange`), metadata changes and application
//! transactions (`txn`: an application id and a version number a writer uses to make its
//! commits idempotent).
//!
//! # Source options
//! - `'table_uri'` (required): a local path, `file://`, `s3://` (feature `delta-lake-s3`),
//!   `az://`/`abfss://`/`adl://` (feature `delta-lake-azure`) or `gs://` (feature
//!   `delta-lake-gcs`), all on by default.
//! - `'poll_interval_ms'` (default 5000): how often the log is checked for new versions.
//! - `'starting_version'`: read the changes of this version and later ones instead of the
//!   current snapshot first (`latest`: only versions committed after the source starts).
//!
//! The source first reads every file of the current snapshot, then each new version's files.
//! Commits that only rearrange files (`dataChange = false` on every action: OPTIMIZE,
//! compaction, `ZORDER`) are skipped, so compaction never produces duplicates. Commits that
//! remove data files with `dataChange = true` (DELETE, UPDATE, MERGE, overwrite) are read as
//! changes: with a PRIMARY KEY the rows of removed files whose key is not re-added are deleted
//! and the added rows upserted; without one, only rows the commit adds beyond those it removes
//! are emitted (rows it deletes are counted in the `rows_deleted_upstream` metric). Declared
//! columns are matched to the table's by name (exact, then ignoring case), partition columns
//! included; a declared column the table lacks, or one whose type cannot be converted, fails
//! `start()` naming it.
//!
//! In a cluster of processes, a source without a PRIMARY KEY or a WATERMARK is split by file:
//! every process follows the log, and each data file is read by one of them (by a hash of its
//! path); a commit that rewrites files is compared by one process (by its version). A keyed
//! source runs on process 0, since the keys of a rewritten file may have come through another
//! process; so does one with a watermark, which a process with older files (or none) would
//! hold back.
//!
//! # Sink options
//! - `'table_uri'` (required): as for the source; the table is created from the query's columns
//!   if it does not exist.
//! - `'write_mode'`: `append` (default), `overwrite` (each commit replaces the table's contents:
//!   with the rows written since the last commit, or for an updating query its whole current
//!   result) or `upsert` (MERGE on the key: `'merge_key_columns'` = `'a,b'`, default the
//!   query's GROUP BY key, or for an insert-only query its first column; deletes of the query
//!   delete the key's row).
//! - `'partition_by'`: comma-separated partition columns (new tables).
//! - `'commit_interval_ms'` (default 0: one commit per epoch): gather epochs into one commit.
//! - `'schema_evolution'` (default true): columns of the query the table lacks are added to it.
//! - `'compaction.every_commits'` (default 0: never) and `'compaction.target_file_size'`
//!   (bytes, default 128 MiB): OPTIMIZE (bin-packing small files) after every N commits.
//! - `'vacuum.every_commits'` (default 0: never) and `'vacuum.retention_hours'` (default 168):
//!   delete files no version within the retention needs.
//! - `'app_id'`: the application id of the sink's `txn` actions (default `laminardb-<sink>`).
//!
//! # Guarantees
//! Every commit records the epoch in its commit info (`laminardb.epoch`). With
//! `'delivery.guarantee' = 'exactly-once'` (checkpoints on, replayable sources), the data files of
//! the epochs up to a checkpoint barrier are written at the barrier, listed in the checkpoint,
//! and committed once the checkpoint is durable together with a `txn` action (`app_id`,
//! checkpoint epoch). A restart reads the table's `txn` version for the `app_id`: a checkpoint
//! the table already holds is not committed again, one it lacks is committed from the files the
//! checkpoint lists. At-least-once (the default) commits each epoch when it is written.
//!
//! # Failure handling
//! A bad option fails at CREATE naming the key; an unreachable or malformed table fails
//! `start()` (source) or the sink's open with the table URI; a commit that loses a race with
//! another writer is retried by delta-rs' conflict checker; other write errors fail the sink.
//! Credentials for object stores are read from the environment (`AWS_*`, `AZURE_*`,
//! `GOOGLE_*`), never from the options.

#[cfg(feature = "delta-lake-azure")]
mod azure;
#[cfg(any(feature = "delta-lake-s3", feature = "delta-lake-azure", feature = "delta-lake-gcs"))]
mod cloud;
#[cfg(feature = "delta-lake-gcs")]
mod gcs;
#[cfg(feature = "delta-lake-s3")]
mod s3;
mod sink;
mod source;
mod table;

pub use sink::SINK;
pub use source::SOURCE;
