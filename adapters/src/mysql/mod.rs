//! `mysql-cdc`: a MySQL or MariaDB table's changes, read from the server's binary log as a
//! replica would, as a source whose rows are kept by key and updated as the table is.
//!
//! # Options
//! - `'connection'` (required): `mysql://user:password@host:3306/database`, with
//!   `?ssl-mode=disabled|required|verify_ca|verify_identity` (default `disabled`) and
//!   `&ssl-ca=/path/ca.pem` (TLS through rustls). A user or password missing from the URI is
//!   taken from `MYSQL_USER` / `MYSQL_PWD`; the password is never shown back. The user needs
//!   `REPLICATION SLAVE` and `REPLICATION CLIENT` (MariaDB: `BINLOG MONITOR`), `SELECT` on the
//!   table, and on MySQL `RELOAD` for the snapshot's short global read lock.
//! - `'table'` (required): `table` (in the URI's database) or `database.table`.
//! - `'server_id'`: the replica id the source registers with, unique among the server's
//!   replicas (default: derived from the source, its table and the process).
//! - `'snapshot.mode'`: `initial` (default: the table's current rows first) or `never`.
//!   `'batch_size'`: rows per poll at most (default 8,192).
//!
//! # Protocol
//! The server must log rows (`log_bin` on, `binlog_format = ROW`, `binlog_row_image = FULL`:
//! checked at `start()`). The snapshot is a `START TRANSACTION WITH CONSISTENT SNAPSHOT` whose
//! binlog position MariaDB reports (`binlog_snapshot_file`/`_position`, and its GTID through
//! `BINLOG_GTID_POS`); on MySQL a brief `FLUSH TABLES WITH READ LOCK` pins it. The table is read
//! in pages in primary-key order within that transaction; then a second connection registers
//! as a replica and streams the binary log from that position (mysql_async's binlog stream),
//! keeping the row events of this table: `WRITE_ROWS` insert, `UPDATE_ROWS` replace the row
//! of their key (an update that changes the key deletes the old one), `DELETE_ROWS` delete,
//! `TRUNCATE` removes every row. Values are converted to the declared types: unsigned integers
//! from the table's definition, ENUM and SET as their labels, TIMESTAMP in UTC, binary columns
//! as bytes, MySQL's binary JSON as JSON text.
//!
//! # Positions and guarantees
//! The checkpointed position is the binlog file and offset after the last applied transaction,
//! with the GTID state after it: MariaDB's `domain-server-sequence` list (resumed with
//! `@slave_connect_state`) or MySQL's executed GTID set (resumed with `COM_BINLOG_DUMP_GTID`
//! when `gtid_mode` is on); without GTIDs, the file and offset. Changes are applied by key, so
//! a transaction seen again after a restart is harmless: no loss, no duplicates. A restart in
//! the middle of the snapshot, or after the binary log it needs was purged, takes a fresh
//! snapshot after removing the rows held. A lost connection is retried with backoff.
//!
//! # Keys and schema
//! Rows are matched by the DDL's PRIMARY KEY if declared, else the table's primary key, else by
//! all declared columns (row images hold whole rows). Declared columns are checked at `start()`
//! against `information_schema` (a missing column or an incompatible type fails naming it).
//! `ALTER TABLE` while running (its DDL event, or row images of another width) makes the
//! source describe the table again; the declared columns keep streaming, and the change is
//! counted in `schema_changes` and described in the last error. With `binlog_row_metadata =
//! FULL` (MySQL 8, MariaDB 10.5+) row images are matched to the declared columns by name, which
//! stays exact when events written before a DDL are read after it (after a restart); without
//! it, by position, which is exact for columns added at the end. Metrics in `details`: `connected`, `snapshot_rows`,
//! `transactions`, `binlog_pos`, `schema_changes`, `resnapshots`.

pub mod config;
pub mod position;
mod source;
pub mod upstream;

pub use source::{MysqlCdcSource, SOURCE};
