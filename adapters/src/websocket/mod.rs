//! `websocket`: WebSocket (RFC 6455) sources and sinks, as a client or as a server, through
//! tokio-tungstenite (`wss://` with rustls).
//!
//! # Source options
//! - `'mode'`: `client` (default: connect to `'url'`, `ws://` or `wss://`) or `server` (listen on
//!   `'bind_address'`, e.g. `'0.0.0.0:8080'`, and read every client that connects).
//! - `'format'`: `json` (default), `csv`, `raw`. A message holds one record, several JSON/CSV
//!   lines, or a JSON array of records.
//! - Client mode: `'auth'` (sent as the `Authorization` header, never shown back),
//!   `'ping_interval_ms'` (default 30,000; 0 = no pings; a peer silent for two intervals is
//!   considered gone), `'reconnect.initial_delay_ms'` (default 1,000) doubling up to
//!   `'reconnect.max_delay_ms'` (default 30,000), `'reconnect.max_retries'` (failed attempts in a
//!   row before the source fails; default 0 = forever; the delay resets after a successful
//!   connection), `'tls.ca_file'` (PEM certificates to trust besides the web's roots).
//! - `'batch_size'` (messages per poll, default 10,000), `'max_message_bytes'` (default 16 MiB).
//!
//! # Sink options
//! - `'mode'`: `server` (default: listen on `'bind_address'` and send every change to every
//!   connected client) or `client` (connect to `'url'` and push), `'format'` `json` (default),
//!   `csv` or `raw` (one text column, append-only queries).
//! - Server mode: `'replay_buffer_size'` (recent messages a new client receives first; default
//!   0), `'client_queue_size'` (messages queued per client, default 4,096),
//!   `'slow_client_policy'` `drop` (default: a client whose queue is full misses the messages
//!   that do not fit, counted in `slow_client_drops`) or `disconnect` (it is disconnected),
//!   `'snapshot_on_connect'` (updating queries: a new client first receives every current row as
//!   an insert; default true).
//! - Client mode: the client options above, and `'buffer_size'` (messages held while the peer is
//!   unreachable, default 10,000; when full, the pipeline waits).
//! - `'key.columns'`: the key of an updating query (default its GROUP BY columns or the
//!   source's primary key; when neither is known, the whole row).
//!
//! # Messages
//! An append-only query sends one message per row: the row as a JSON object (or a CSV line, or
//! the raw value). An updating query sends, once per epoch and key, what changed:
//! `{"op":"insert"|"update"|"delete","key":{…},"row":{…}}` (for a delete, `row` is the row that
//! was removed); in CSV the row's line with the op as its last field.
//!
//! # Guarantees and failure handling
//! The source is not replayable: what a peer sent while LaminarDB was down is not seen again, so
//! with checkpoints it is at-most-once. When the pipeline's buffer is full the source stops
//! reading its sockets and TCP flow control pushes back on the senders. A lost client-mode
//! connection is re-established with backoff (state `retrying`, the `reconnects` counter and
//! `retries`); a record that cannot be decoded goes to the dead letters with its origin
//! (`url#n` or `address#n`, the n-th message of that connection).
//! The server-mode sink never waits for a client: each has its own bounded queue and the slow
//! client policy applies to it alone. The client-mode sink holds messages while reconnecting and
//! an epoch counts as delivered once all its messages are written to the socket (at-least-once
//! from the pipeline's side; what was in flight when a connection broke may be lost unless the
//! peer acknowledges at the application level). Metrics: `connected`, `clients`, `connections`,
//! `messages`, `reconnects`, `slow_client_drops`, `slow_client_disconnects`, `port` (the bound
//! port in server mode) in the connector's `details`.

mod client;
mod config;
mod sink;
mod source;

pub use sink::SINK;
pub use source::SOURCE;
