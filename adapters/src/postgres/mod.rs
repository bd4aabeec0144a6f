//! Postgres logical replication: the protocol layer of the `postgres-cdc` source.
//!
//! [`pgoutput`] decodes the streaming replication messages (XLogData, keepalives) and the
//! `pgoutput` plugin's messages (transactions, relations, inserts, updates, deletes, truncates)
//! and encodes the standby status updates that acknowledge an applied LSN; [`values`] turns the
//! text-format column values into Arrow arrays of the declared types. Neither does I/O; the
//! source wiring (slot, publication, snapshot, acknowledging checkpointed LSNs) builds on them.

pub mod pgoutput;
pub mod values;
