//! `kafka`: Apache Kafka and Kafka-protocol brokers, through librdkafka.
//!
//! # Source options
//! - `'bootstrap.servers'`, `'topic'`, `'group.id'` (all required).
//! - `'format'`: `json` (default), `csv`, `avro` (`'schema.registry.url'` for the Confluent wire
//!   format, or `'avro.schema'` for plain records), `raw`, `debezium` (needs a PRIMARY KEY;
//!   `c`/`r` insert, `u` updates, `d` deletes; tombstones are skipped).
//! - `'auto.offset.reset'`: `earliest` or `latest` (default), for partitions with neither a
//!   checkpointed nor a committed offset.
//! - `'batch_size'` (default 10,000 messages per poll), `'watermark.idle_timeout_ms'` (default
//!   5,000), `'dlq.topic'` (dead letters are produced there, with `laminar.source.position` and
//!   `laminar.error` headers; default: the source's `<name>_errors` collection).
//! - Security: `'security.protocol'` (`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT`, `SASL_SSL`),
//!   `'sasl.mechanism'` (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`), `'sasl.username'`,
//!   `'sasl.password'` (never shown back). Any librdkafka setting as `'kafka.<setting>'`
//!   (e.g. `'kafka.ssl.ca.location'`), except the ones the connector manages.
//!
//! The source reads every partition of the topic (in a cluster of processes, partition `p` is read by
//! process `p % processes`; a process left without a partition moves its watermark to the end of
//! time, so that it does not hold the cluster's back). It starts from the checkpointed offsets
//! (restart after a crash), else the group's committed offsets, else `auto.offset.reset`.
//! With `WATERMARK FOR`, the watermark is the minimum over partitions of their largest event time
//! (minus the delay); a partition silent for the idle timeout stops holding it back.
//!
//! # Sink options
//! - `'bootstrap.servers'`, `'topic'` (required); `'format'`: `json` (default), `csv`, `avro`
//!   (with `'schema.registry.url'`: the value schema is registered under `<topic>-value` and
//!   records are framed with its id).
//! - `'partitioner'`: `round-robin` (default), `key-hash` (by `'key.columns'`, default the
//!   query's key or else its first column), `sticky` (each epoch to one partition).
//! - `'delivery.guarantee'`: `at-least-once` (default) or `exactly-once` (a transactional
//!   producer, `'transactional.id'` default `laminardb-<sink name>`; process `i` of a cluster
//!   appends `-p<i>`).
//!
//! Every message carries the epoch that produced it in a `laminar.epoch` header. An updating
//! query writes keyed upserts: the key is the key columns (JSON), the value the row, and a
//! deleted key becomes a tombstone (no value).
//!
//! # Guarantees
//! Source: replayable; offsets are part of each checkpoint and committed to the group once the
//! checkpoint is durable (and at shutdown). A full source buffer pauses the partitions until the
//! pipeline drains. Sink, at-least-once: an epoch counts as written once every message of it is
//! acknowledged. Exactly-once: each checkpoint interval is one Kafka transaction, committed when
//! the checkpoint is durable; the messages of the interval are kept in the checkpoint, and a
//! restart that finds the transaction not committed (the epochs in the headers of the topic's
//! committed messages tell; over plain connections the log is read with its transaction markers,
//! see [`txnlog`], so this holds also on brokers that show aborted records to read_committed
//! consumers) writes them again in a new one, so a read_committed consumer sees every message
//! once. A producer still running with the same `transactional.id` (a zombie) is fenced when the
//! new one starts.
//!
//! # Error handling
//! Unreachable brokers fail `start()` after 10 s with the brokers named (and are retried with
//! backoff while running); a message that cannot be decoded goes to the dead letters with its
//! `topic/partition@offset`; delivery failures fail the sink's epoch (retried, then reported).

mod config;
mod pending;
mod sink;
mod source;
pub mod txnlog;
mod watermark;

pub use sink::SINK;
pub use source::SOURCE;
