//! `datagen`: a generator source that needs no outside service — the embedded default for demos,
//! tests and benchmarks.
//!
//! # Options
//! - `'rows_per_second'`: rate limit (default 1000; `0` = as fast as the pipeline takes rows).
//! - `'max_rows'`: stop after this many rows (default: unbounded).
//! - `'seed'`: seed of the random values (default 0). The same seed gives the same rows.
//! - `'batch_size'`: rows per generated batch (default: a tenth of a second's worth, 1–8192).
//! - Per column `c`: `'fields.c.kind'` = `random` (default) or `sequence`; `'fields.c.min'` /
//!   `'fields.c.max'` (numbers, random range); `'fields.c.start'` (sequence start; for
//!   timestamps an RFC 3339 time); `'fields.c.step'` (sequence step; for timestamps in ms);
//!   `'fields.c.length'` (string length, default 8); `'fields.c.values'` (comma-separated list
//!   to pick from); `'fields.c.null_rate'` (0–1).
//! - Timestamp columns are event times: `start` (default: the time `start()` was called; in a
//!   cluster, process 0's clock when the run began, the same on every process) plus
//!   `step` per row (default: `1000 / rows_per_second` ms), minus a random
//!   `'fields.c.jitter_ms'` (default 0) to simulate out-of-order events.
//! - `'flavour'` = `nexmark` with `'nexmark.table'` = `person` | `auction` | `bid`: the Nexmark
//!   benchmark's event stream ([`nexmark`]); `rows_per_second` and `max_rows` then count events
//!   of all three kinds, so three sources with the same seed describe one consistent auction site.
//!
//! # Guarantees
//! Replayable: the position is the number of rows produced, and rows are a pure function of
//! (seed, row number) — except default timestamps, which start at the wall clock.
//! In a cluster of processes every process runs the generator over the same row numbers and
//! keeps every `processes`-th row (row `n` goes to process `n % processes`), so the processes
//! together produce the one-process input once; the rate and `max_rows` count the whole input.
//!
//! # Error handling
//! Unknown columns in `fields.*` options, types it cannot generate and bad values fail at CREATE.

pub mod generate;
pub mod nexmark;
mod source;

pub use source::SOURCE;
