//! `iceberg`: rows into an Apache Iceberg table (sink), through iceberg-rust.
//!
//! # Protocol
//! An Iceberg table is a tree of files under the table's location: Parquet data files, Avro
//! manifests listing them, a manifest list per snapshot and a JSON metadata file per table
//! version holding the schema, partition spec and snapshots. A catalog maps the table's name to
//! its current metadata file; a commit writes a new metadata file and swaps the catalog's
//! pointer if nobody else moved it first.
//!
//! # Sink options
//! - `'catalog_uri'` (required): the catalog. `sqlite:////abs/path/catalog.db` is a SQL catalog
//!   in that SQLite database, with the tables pyiceberg's `SqlCatalog` uses (a database pyiceberg
//!   made works, and pyiceberg reads what the sink commits); `postgresql://user:pw@host/db`
//!   (also SQLAlchemy's `postgresql+psycopg2://…`) is the same catalog in Postgres. An
//!   `http://` or `https://` URL is a REST catalog (the Iceberg REST protocol: the server checks
//!   and applies every commit), except `https://glue.<region>.amazonaws.com`: the AWS Glue Data
//!   Catalog (databases as namespaces, Iceberg tables as Glue tables with `table_type = ICEBERG`
//!   and `metadata_location`, updates guarded by Glue's `VersionId`; credentials from
//!   `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`).
//! - `'catalog.type'`: `sql`, `rest` or `glue` overrides the guess from the URI (e.g. a Glue
//!   stand-in at `http://localhost:5000`); `hms` is refused with a clear error by this build.
//! - `'glue.region'` (default: the endpoint's, else `AWS_REGION`), `'glue.id'` (the account
//!   whose catalog is used; default the caller's).
//! - `'catalog.token'` (REST): a bearer token sent with every call.
//! - `'catalog.credential'` (REST): `client_id:client_secret`, exchanged for a token with the
//!   OAuth2 client-credentials grant at the server's `v1/oauth/tokens` (or at
//!   `'catalog.oauth2-server-uri'`), scope `'catalog.scope'` (default `catalog`).
//! - `'catalog.name'` (default `default`): the catalog's name in the SQL catalog's tables.
//! - `'table'` (required): `namespace.table` (namespaces may have several levels: `a.b.t`).
//! - `'write_mode'`: `append` (default; the query must be insert-only) or `upsert`: each
//!   commit replaces the table's rows of every key it changes and drops the rows of keys the
//!   query deleted (merge semantics on `'merge_key_columns'`).
//! - `'merge_key_columns'` (upsert): comma-separated key columns; default the query's key (its
//!   GROUP BY columns or the source's primary key), else, for an insert-only query, its first
//!   column.
//! - `'warehouse'`: SQL catalog: where a table the sink creates goes (a path or `file://` URL;
//!   default: the namespace's `location` property, else the catalog database's directory), laid
//!   out as pyiceberg does: `<warehouse>/<namespace>.db/<table>`. REST catalog: the warehouse
//!   the server is asked for (its config call's `warehouse`); the server places new tables.
//!   Glue: where new tables go (`s3://bucket/prefix`) unless the database has a location.
//! - `'commit_interval_ms'` (default 0: one snapshot per epoch): gather epochs into one
//!   snapshot.
//! - `'target_file_size'` (bytes, default 128 MiB): roll to a new data file past this size.
//! - `'partition_by'`: the partition spec of a table the sink creates, comma-separated fields:
//!   `col` (identity), `year(col)`, `month(col)`, `day(col)`, `hour(col)`, `bucket(N, col)`,
//!   `truncate(W, col)` (hidden partitioning: the values are computed from the column). Rows are
//!   split by partition and each partition gets its own data files. An existing table keeps its
//!   own spec.
//! - `'schema_evolution'` (default true): columns of the query an existing table lacks are added
//!   to it (optional, new field ids) as a new current schema when the sink opens.
//! - `'app_id'` (default `laminardb-<sink>`): the writer id recorded in the sink's snapshots.
//!
//! # Storage
//! Table files live on local paths or, with the `iceberg-s3` feature (on by default), in S3 and
//! S3-compatible stores (`'warehouse' = 's3://bucket/prefix'`, or tables whose location is
//! `s3://…`); credentials and endpoint come from the `AWS_*` environment variables.
//!
//! A missing table is created from the query's columns (all optional; small integers become
//! `int`, unsigned 32/64-bit integers `long`, timestamps microsecond `timestamp`/`timestamptz`).
//! An existing table's columns are filled by name (cast to the table's types, NULL for columns
//! the query lacks); a required column the query lacks fails the sink's open.
//!
//! # Upserts
//! Upserts are written as position deletes (merge-on-read), which pyiceberg, Spark, Trino and
//! DuckDB apply: the sink knows which row of which data file holds each key (read from the
//! table's live data and position delete files when it first upserts), and a commit adds the
//! new rows' data files plus a position delete file per partition retiring the old rows, as one
//! `overwrite` snapshot. Equality deletes are not written because several readers (pyiceberg
//! among them) cannot apply them. Upserts need a format-version 2 table; a table holding
//! equality deletes from another writer is refused. Another writer may append to the table
//! meanwhile (a commit that loses the race is rebuilt, retiring the appended rows whose keys it
//! changes); a snapshot of another writer that rewrites or deletes rows fails the sink, whose
//! view of the rows would be stale. Delete files accumulate until the table is compacted (by
//! table maintenance such as Spark's `rewrite_data_files`).
//!
//! # Guarantees
//! Every snapshot records the epoch (`laminardb.epoch`) and the writer (`laminardb.app-id`) in
//! its summary. With `'delivery.guarantee' = 'exactly-once'` (checkpoints on, replayable
//! sources) the data files of the epochs up to a checkpoint barrier are written at the barrier,
//! listed in the checkpoint and committed as one snapshot once the checkpoint is durable; a
//! restart commits a checkpoint's files only if no snapshot of this writer records that epoch
//! or a later one. Data file names are unique (a time-ordered UUID plus the epoch), so a replay
//! never overwrites a file a live snapshot points to. At-least-once (the default) commits each
//! epoch when it is written.
//!
//! # Metrics
//! `iceberg_commits`, `iceberg_snapshot_id`, `iceberg_commit_conflicts` (commits rebuilt after
//! another writer's), `schema_changes`; upsert: `iceberg_keys` (keys in the table) and
//! `iceberg_retired_rows` (rows retired by position deletes).
//!
//! # Failure handling
//! A bad option or a query column Iceberg cannot hold fails at CREATE naming it; an unreadable
//! catalog or table fails the sink's open; a commit that loses a race with another writer is
//! rebuilt on the new current snapshot and retried (20 attempts); other errors fail the sink.

mod catalog;
#[cfg(feature = "iceberg-glue")]
mod glue;
mod merge;
mod rest;
#[cfg(feature = "iceberg-glue")]
mod sigv4;
mod sink;
#[cfg(feature = "iceberg-s3")]
mod storage;

pub use sink::SINK;
