//! `blackhole`: a sink that discards everything it receives — for benchmarks, and (with
//! `'delay_ms'`) to simulate a slow peer.
//!
//! # Options
//! - `'delay_ms'`: wait this long in every epoch's commit (default 0).
//!
//! Accepts updating queries. Guarantees: none (nothing is kept). Error handling: none needed.

use std::time::Duration;

use async_trait::async_trait;
use laminar_dataflow::batch::DiffBatch;

use crate::connector::{SinkCapabilities, SinkConnector, SinkSpec};
use crate::options::OptionReader;
use crate::registry::SinkFactory;
use crate::Result;

/// Registration.
pub const SINK: SinkFactory = SinkFactory { name: "blackhole", keys: &["delay_ms"], build };

fn build(
    _spec: &SinkSpec,
    r: &mut OptionReader<'_>,
    _ctx: &crate::registry::BuildContext<'_>,
) -> Result<Box<dyn SinkConnector>> {
    let delay = Duration::from_millis(r.opt_u64("delay_ms")?.unwrap_or(0));
    Ok(Box::new(Blackhole { delay }))
}

/// Discards rows.
pub struct Blackhole {
    delay: Duration,
}

#[async_trait]
impl SinkConnector for Blackhole {
    fn capabilities(&self) -> SinkCapabilities {
        SinkCapabilities { upsert: true, changelog: true, exactly_once: false, parallel: true }
    }

    async fn write(&mut self, _batch: &DiffBatch) -> Result<()> {
        Ok(())
    }

    async fn commit(&mut self, _epoch: u64) -> Result<()> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        "blackhole".into()
    }
}
