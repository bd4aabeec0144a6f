//! `rabbitmq`: RabbitMQ (AMQP 0.9.1) queues as sources and exchanges as sinks, through lapin
//! (`amqps://` with rustls).
//!
//! # Source options
//! - `'uri'` (required): `amqp://user:password@host:5672/vhost` (the vhost URL-encoded, `%2f`
//!   for `/`) or `amqps://…`; `'tls.ca_file'` (PEM certificates to trust besides the web's
//!   roots). The password is never shown back.
//! - `'queue'` (required); nothing is declared unless `'queue.declare'` = `'true'` (a durable
//!   queue of that name, if absent).
//! - `'format'`: `json` (default), `csv`, `raw`, `avro` (`'avro.schema'` or
//!   `'schema.registry.url'`). One message holds one record (or several JSON/CSV lines).
//! - `'prefetch_count'` (default 1,000): at most that many deliveries are unacknowledged at a
//!   time; the broker stops sending until some are acknowledged (flow control).
//! - `'ack_mode'`: `auto` (default: deliveries are acknowledged on receipt, at most half the
//!   prefetch count at a time, so the broker keeps sending; at-most-once, like RabbitMQ's
//!   automatic acknowledgement but with flow control) or `manual` (acknowledged once a checkpoint
//!   holding them is durable; without periodic checkpoints, once taken in by the pipeline). In `manual` mode with checkpoints every `t` seconds
//!   the source reads at most `prefetch_count` messages per `t`: raise the prefetch count with
//!   the interval.
//! - `'batch_size'`: deliveries per poll at most (default 10,000).
//!
//! # Sink options
//! - `'uri'`, `'tls.ca_file'` as for the source.
//! - `'exchange'` (default `''`, the default exchange, which routes to the queue named by the
//!   routing key); it must exist (checked at `start()`).
//! - `'routing_key'` (the same for every message) or `'routing_key.column'` (a column of the
//!   query holds each message's key; NULL is the empty key).
//! - `'format'`: `json` (default), `csv`, `raw` (one text or binary column, append-only).
//! - `'mandatory'` (default false): the broker returns messages that no queue is bound for;
//!   they are counted (`returned`) and reported as the sink's last error, and the pipeline goes on.
//! - `'persistent'` (default true: delivery mode 2), `'max_in_flight'` (publishes awaiting a
//!   confirm before publishing waits, default 10,000), `'key.columns'` (the key of an updating
//!   query; default its GROUP BY columns or the source's primary key, else the whole row).
//!
//! # Messages
//! An append-only query sends each row as one message (a JSON object, a CSV line or the raw
//! value). An updating query sends, once per epoch and key, what changed: the row with an `op`
//! field, `"insert"`, `"update"` or `"delete"` (for a delete, the row that was removed), e.g.
//! `{"region":"eu","total":42,"op":"update"}`; in CSV the op is the last field. Every message
//! carries the epoch that produced it in a `laminar.epoch` header (and updates the op in
//! `laminar.op`), and a content type.
//!
//! # Guarantees and failure handling
//! Source: deliveries are acknowledged with `multiple` up to the last delivery tag received
//! (`auto`) or held by a durable checkpoint (`manual`); what is unacknowledged when the
//! pipeline crashes or the connection drops is redelivered by the broker (`manual`: at-least-once;
//! with checkpoints and an idempotent or upserting sink, effectively once). The broker cannot
//! seek, so the source is not replayable and `'delivery.guarantee' = 'exactly-once'` sinks
//! refuse it. A lost connection is re-established with backoff (state `retrying`, counters
//! `connections` and `redelivered`); a message that cannot be decoded goes to the dead letters
//! as `queue#delivery_tag`. Wrong credentials, a missing queue or exchange fail `start()` with
//! the broker named (password masked).
//! Sink: publisher confirms are always on; an epoch counts as delivered once the broker has
//! confirmed every message of it. A refused message (nack) or a lost connection fails the epoch,
//! which is sent again after reconnecting (at-least-once: consumers may see a message twice).
//! Metrics in the connector's `details`: `connected`, `connections`, `messages`, `unacked`,
//! `redelivered` (source); `connected`, `connections`, `messages`, `returned`, `nacked` (sink).

mod client;
mod config;
mod sink;
mod source;

pub use sink::SINK;
pub use source::SOURCE;
