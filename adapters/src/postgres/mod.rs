//! `postgres-cdc`: a Postgres table's changes, through logical replication (the built-in
//! `pgoutput` plugin), as a source whose rows are kept by key and updated as the table is.
//!
//! # Options
//! - `'connection'` (required): `postgresql://user:password@host:5432/database`, with
//!   `?sslmode=disable|prefer|require|verify-ca|verify-full` (default `prefer`, as libpq) and
//!   `&sslrootcert=/path/ca.pem`. A user or password missing from the URI is taken from `PGUSER`
//!   / `PGPASSWORD`; the password is never shown back. The user needs the `REPLICATION`
//!   attribute, `SELECT` on the table, and (to create the publication) ownership of the table.
//! - `'table'` (required): `schema.table` (`public` when unqualified; double quotes keep case).
//! - `'slot.name'`: the replication slot (default `laminar_<source>`); created at the first
//!   start. `'publication.name'`: the publication (default `laminar_<source>`), created for the
//!   table if it does not exist; an existing one must include the table.
//! - `'snapshot.mode'`: `initial` (default: the table's current rows first) or `never` (only
//!   changes from the first start on). `'batch_size'`: rows per poll at most (default 8,192).
//!
//! # Protocol
//! A `replication=database` session ([`wire`]) checks `wal_level`, the table and the declared
//! columns ([`upstream`]), then at the first start creates the slot inside a REPEATABLE READ
//! transaction with `USE_SNAPSHOT` and reads the table through a cursor in that transaction: the
//! snapshot is exactly the state at the slot's consistent point, so no change is missed or seen
//! twice. The same session then runs `START_REPLICATION … (proto_version '1',
//! publication_names …)` and decodes the pgoutput stream ([`pgoutput`], values in [`values`]):
//! inserts and updates replace the row of their key, deletes remove it (an update that changes
//! the key does both), `TRUNCATE` removes every row. Unchanged TOAST values of an update are
//! taken from the old row when the table has `REPLICA IDENTITY FULL`; otherwise the update is a
//! dead letter saying so.
//!
//! # Keys and schema
//! Rows are matched by the DDL's PRIMARY KEY if declared (it must equal the key the table
//! sends), else by the table's primary key or replica identity index, or by all declared
//! columns for a `REPLICA IDENTITY FULL` table without a key. Declared columns are checked at
//! `start()`: a missing column or a type that cannot hold the upstream values fails with the
//! column named. Columns added upstream while running are ignored and a dropped declared column
//! reads as NULL; either is counted in `schema_changes` and described in the last error, and
//! streaming goes on.
//!
//! # Guarantees and failure handling
//! The position is the end LSN of the last applied transaction (keepalives move it on while
//! the table is idle). The server is told an LSN is applied (so it may recycle WAL) only once a
//! checkpoint holding it is durable, or right away without periodic checkpoints. A restart
//! resumes streaming from the checkpointed LSN, and since changes are applied by key, a
//! transaction seen again is harmless: no loss, no duplicates. A restart in the middle of the
//! snapshot, or with the slot gone, takes a fresh snapshot after removing the rows held. A lost
//! connection is retried with backoff. Metrics in `details`: `connected`, `snapshot_rows`,
//! `transactions`, `lsn`, `acked_lsn`, `schema_changes`, `resnapshots`.

pub mod config;
pub mod pgoutput;
mod source;
pub mod upstream;
pub use crate::text_values as values;
pub mod wire;

pub use source::{PostgresCdcSource, SOURCE};
