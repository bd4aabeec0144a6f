//! Counters shared between a dataflow's operators and the engine that reports them.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use std::sync::Arc;

use parking_lot::Mutex;

/// Per-dataflow counters: rows that could not be processed and the last reason.
#[derive(Debug, Default)]
pub struct DataflowStats {
    dropped: AtomicU64,
    errors: AtomicU64,
    late: AtomicU64,
    state_rows: AtomicI64,
    last_error: Mutex<Option<String>>,
}

impl DataflowStats {
    /// Records that `rows` rows were dropped because of `error`.
    pub fn record_error(&self, operator: &str, rows: usize, error: &dyn std::fmt::Display) {
        self.dropped.fetch_add(rows as u64, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = Some(format!("{operator}: {error}"));
    }

    /// Records `rows` rows that arrived behind the watermark and were dropped.
    pub fn record_late(&self, rows: usize) {
        self.late.fetch_add(rows as u64, Ordering::Relaxed);
    }

    /// Rows dropped because they arrived behind the watermark (windows and time-bounded joins).
    pub fn late_rows(&self) -> u64 {
        self.late.load(Ordering::Relaxed)
    }

    /// Adds `delta` to the rows held in join and window state (operators report changes).
    pub fn add_state_rows(&self, delta: i64) {
        self.state_rows.fetch_add(delta, Ordering::Relaxed);
    }

    /// Rows held in join and window state across workers.
    pub fn state_rows(&self) -> u64 {
        self.state_rows.load(Ordering::Relaxed).max(0) as u64
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

/// An operator's contribution to [`DataflowStats::state_rows`], withdrawn when the operator goes.
pub struct StateGauge {
    stats: Arc<DataflowStats>,
    rows: i64,
}

impl StateGauge {
    /// A gauge reporting into `stats`.
    pub fn new(stats: Arc<DataflowStats>) -> Self {
        Self { stats, rows: 0 }
    }

    /// Reports that the operator now holds `rows` rows.
    pub fn set(&mut self, rows: usize) {
        let rows = rows as i64;
        if rows != self.rows {
            self.stats.add_state_rows(rows - self.rows);
            self.rows = rows;
        }
    }
}

impl Drop for StateGauge {
    fn drop(&mut self) {
        self.stats.add_state_rows(-self.rows);
    }
}
