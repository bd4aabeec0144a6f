//! `python`: sources and sinks whose code is registered at run time by the embedding program
//! (the Python package registers generator functions and callbacks; a Rust program can register
//! closures). SQL refers to them by name:
//! `CREATE SINK s AS SELECT … WITH (connector = 'python', 'name' = 'my_callback')`.
//!
//! # Source options
//! - `'name'` (required): the registered source.
//!
//! # Sink options
//! - `'name'` (required): the registered callback.
//! - `'batch_size'`: at most this many rows per call (default: one call per epoch with all of
//!   the epoch's rows).
//! - `'max_delay_ms'`: with `'batch_size'`, rows wait at most this long for a full batch
//!   (default 0: the rest of an epoch is delivered at its end).
//! - `'retries'`: a failing call is retried this many times with backoff (default 3) before the
//!   sink fails.
//!
//! # Guarantees
//! Batches are delivered in epoch order, one call at a time. An updating query's rows carry an
//! `op` column (`insert`/`delete`). Nothing is replayed after a restart (at-most-once).
//!
//! # Error handling
//! An unknown name fails at CREATE. When the catalog is replayed at open the callbacks are not
//! registered yet: the check moves to `start()`, which fails with a `ConnectorError` naming the
//! missing registration. A callback that keeps failing fails the sink (state `failed`, the error
//! in its metrics, and raised by `shutdown()`).

mod sink;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::RwLock;

use crate::connector::{Poll, SinkConnector, SinkSpec, SourceCapabilities, SourceConnector, SourceSpec};
use crate::options::OptionReader;
use crate::registry::{BuildContext, SinkFactory, SourceFactory};
use crate::{ConnectorError, Result};

pub use sink::{CallbackSink, Deliver};

/// The SQL name of the callback connectors.
pub const NAME: &str = "python";

/// Creates a registered source's connector (called at every `start()`).
pub type SourceBuilder = Arc<dyn Fn(&SourceSpec) -> Result<Box<dyn SourceConnector>> + Send + Sync>;
/// Creates a registered sink's delivery (called at every `start()`).
pub type SinkBuilder = Arc<dyn Fn(&SinkSpec) -> Result<Box<dyn Deliver>> + Send + Sync>;

/// The callbacks registered with one database, by name.
#[derive(Default)]
pub struct Callbacks {
    sources: RwLock<BTreeMap<String, SourceBuilder>>,
    sinks: RwLock<BTreeMap<String, SinkBuilder>>,
}

fn register<T: Clone>(map: &RwLock<BTreeMap<String, T>>, what: &str, name: &str, v: T, replace: bool) -> Result<()> {
    let mut m = map.write();
    if m.contains_key(name) && !replace {
        return Err(ConnectorError::Config(format!(
            "a {what} named '{name}' is already registered (pass replace=True to replace it)"
        )));
    }
    m.insert(name.to_string(), v);
    Ok(())
}

impl Callbacks {
    /// Registers a source builder under `name`.
    pub fn register_source(&self, name: &str, builder: SourceBuilder, replace: bool) -> Result<()> {
        register(&self.sources, "Python source", name, builder, replace)
    }

    /// Registers a sink builder under `name`.
    pub fn register_sink(&self, name: &str, builder: SinkBuilder, replace: bool) -> Result<()> {
        register(&self.sinks, "Python sink", name, builder, replace)
    }

    /// Removes a source registration (returns whether there was one).
    pub fn unregister_source(&self, name: &str) -> bool {
        self.sources.write().remove(name).is_some()
    }

    /// Removes a sink registration.
    pub fn unregister_sink(&self, name: &str) -> bool {
        self.sinks.write().remove(name).is_some()
    }

    /// The builder of source `name`.
    pub fn source(&self, name: &str) -> Option<SourceBuilder> {
        self.sources.read().get(name).cloned()
    }

    /// The builder of sink `name`.
    pub fn sink(&self, name: &str) -> Option<SinkBuilder> {
        self.sinks.read().get(name).cloned()
    }

    /// Registered source names.
    pub fn source_names(&self) -> Vec<String> {
        self.sources.read().keys().cloned().collect()
    }

    /// Registered sink names.
    pub fn sink_names(&self) -> Vec<String> {
        self.sinks.read().keys().cloned().collect()
    }
}

fn missing(kind: &str, call: &str, name: &str, registered: Vec<String>) -> ConnectorError {
    let list = if registered.is_empty() { "none".to_string() } else { registered.join(", ") };
    ConnectorError::Config(format!(
        "no Python {kind} named '{name}' is registered (registered: {list}); register it with db.{call}('{name}', fn)"
    ))
}

/// Registration of the source side.
pub const SOURCE: SourceFactory = SourceFactory { name: NAME, keys: &["name"], build: build_source };

/// Registration of the sink side.
pub const SINK: SinkFactory =
    SinkFactory { name: NAME, keys: &["name", "batch_size", "max_delay_ms", "retries"], build: build_sink };

fn build_source(
    spec: &SourceSpec,
    r: &mut OptionReader<'_>,
    ctx: &BuildContext<'_>,
) -> Result<Box<dyn SourceConnector>> {
    let name = r.required_str("name")?;
    match ctx.callbacks.source(&name) {
        Some(b) => b(spec),
        None if !ctx.resolve => Ok(Box::new(Unregistered { kind: "source", call: "register_source", name })),
        None => Err(missing("source", "register_source", &name, ctx.callbacks.source_names())),
    }
}

fn build_sink(spec: &SinkSpec, r: &mut OptionReader<'_>, ctx: &BuildContext<'_>) -> Result<Box<dyn SinkConnector>> {
    let name = r.required_str("name")?;
    let options = sink::Options::pull(r)?;
    let deliver: Box<dyn Deliver> = match ctx.callbacks.sink(&name) {
        Some(b) => b(spec)?,
        None if !ctx.resolve => Box::new(Unregistered { kind: "sink", call: "register_sink", name: name.clone() }),
        None => return Err(missing("sink", "register_sink", &name, ctx.callbacks.sink_names())),
    };
    Ok(Box::new(CallbackSink::new(spec, name, options, deliver)?))
}

/// Stands in for a callback that is not registered yet (while the catalog is replayed at open).
struct Unregistered {
    kind: &'static str,
    call: &'static str,
    name: String,
}

impl Unregistered {
    fn error(&self) -> ConnectorError {
        ConnectorError::Config(format!(
            "the Python {} '{}' is not registered in this process: call db.{}('{}', fn) before start()",
            self.kind, self.name, self.call, self.name
        ))
    }
}

#[async_trait]
impl SourceConnector for Unregistered {
    fn capabilities(&self) -> SourceCapabilities {
        SourceCapabilities::default()
    }

    async fn open(&mut self) -> Result<()> {
        Err(self.error())
    }

    async fn poll(&mut self) -> Result<Poll> {
        Err(self.error())
    }

    fn describe(&self) -> String {
        format!("python {} '{}'", self.kind, self.name)
    }
}

#[async_trait]
impl Deliver for Unregistered {
    async fn open(&mut self) -> Result<()> {
        Err(self.error())
    }

    async fn deliver(&mut self, _batch: arrow::array::RecordBatch) -> std::result::Result<(), String> {
        Err(self.error().to_string())
    }

    fn describe(&self) -> String {
        format!("python {} '{}'", self.kind, self.name)
    }
}
