//! Counters shared between a dataflow's operators and the engine that reports them.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// Per-dataflow counters: rows that could not be processed and the last reason.
#[derive(Debug, Default)]
pub struct DataflowStats {
    dropped: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl DataflowStats {
    /// Records that `rows` rows were dropped because of `error`.
    pub fn record_error(&self, operator: &str, rows: usize, error: &dyn std::fmt::Display) {
        self.dropped.fetch_add(rows as u64, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = Some(format!("{operator}: {error}"));
    }

    /// Rows dropped by evaluation errors.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Number of errors recorded.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The most recent error, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }
}
