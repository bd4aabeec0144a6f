//! The event-time watermark of a partitioned input: the minimum over its partitions, where a
//! partition that has been silent for the idle timeout no longer holds it back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Per-partition largest event time and last activity.
pub struct PartitionWatermarks {
    idle: Duration,
    /// Partition → (largest event time seen, if any; when a message last arrived).
    parts: BTreeMap<i32, (Option<i64>, Instant)>,
    /// Never goes back.
    last: Option<i64>,
}

impl PartitionWatermarks {
    /// A tracker whose partitions count as idle after `idle` without messages.
    pub fn new(idle: Duration) -> Self {
        Self { idle, parts: BTreeMap::new(), last: None }
    }

    /// A message arrived on `partition`.
    pub fn touch(&mut self, partition: i32) {
        self.touch_at(partition, Instant::now());
    }

    fn touch_at(&mut self, partition: i32, at: Instant) {
        self.parts.entry(partition).or_insert((None, at)).1 = at;
    }

    /// Messages of `partition` carried event times up to `max` (ms).
    pub fn observe(&mut self, partition: i32, max: i64) {
        let e = self.parts.entry(partition).or_insert((None, Instant::now()));
        e.0 = Some(e.0.map_or(max, |m| m.max(max)));
    }

    /// The watermark before the delay: the minimum over active partitions (or, when every
    /// partition is idle, the maximum over all); it never decreases.
    pub fn current(&mut self) -> Option<i64> {
        self.current_at(Instant::now())
    }

    fn current_at(&mut self, now: Instant) -> Option<i64> {
        let active: Vec<Option<i64>> =
            self.parts.values().filter(|(_, at)| now.duration_since(*at) < self.idle).map(|(m, _)| *m).collect();
        let candidate = if active.is_empty() {
            self.parts.values().filter_map(|(m, _)| *m).max()
        } else if active.iter().any(Option::is_none) {
            // An active partition without event times yet holds the watermark where it is.
            None
        } else {
            active.into_iter().flatten().min()
        };
        if let Some(c) = candidate {
            self.last = Some(self.last.map_or(c, |l| l.max(c)));
        }
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slowest_active_partition_holds_the_watermark_until_idle() {
        let t0 = Instant::now();
        let mut w = PartitionWatermarks::new(Duration::from_secs(5));
        w.touch_at(0, t0);
        w.observe(0, 100);
        w.touch_at(1, t0);
        w.observe(1, 40);
        assert_eq!(w.current_at(t0), Some(40));
        w.touch_at(0, t0 + Duration::from_secs(4));
        w.observe(0, 200);
        assert_eq!(w.current_at(t0 + Duration::from_secs(4)), Some(40), "partition 1 is still active");
        // Partition 1 has been silent for 5 s: only partition 0 counts.
        assert_eq!(w.current_at(t0 + Duration::from_secs(6)), Some(200));
        // It comes back with old data: the watermark does not go back.
        w.touch_at(1, t0 + Duration::from_secs(7));
        w.observe(1, 50);
        assert_eq!(w.current_at(t0 + Duration::from_secs(7)), Some(200));
    }
}
