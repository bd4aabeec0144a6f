//! LaminarDB: an embeddable streaming SQL database.
//!
//! Declare sources and continuous queries in SQL; the engine compiles them into incremental
//! timely dataflows over Arrow batches. Results can be subscribed to, queried ad hoc, or
//! (with connectors) written to external systems.
//!
//! ```
//! use laminardb::Database;
//! let db = Database::open(":memory:")?;
//! db.execute("CREATE SOURCE clicks (user_id BIGINT, url VARCHAR)")?;
//! db.execute("CREATE MATERIALIZED VIEW per_user AS SELECT user_id, COUNT(*) AS n FROM clicks GROUP BY user_id")?;
//! db.start()?;
//! db.insert_json("clicks", r#"{"user_id": 7, "url": "/a"}
//! {"user_id": 7, "url": "/b"}"#)?;
//! db.flush()?;
//! assert_eq!(db.query("SELECT n FROM per_user")?.num_rows(), 1);
//! db.shutdown()?;
//! # Ok::<(), laminardb::LaminarError>(())
//! ```

pub mod catalog;
pub mod checkpoint;
pub mod cli;
pub mod database;
pub mod error;
pub mod info;
pub mod ingest;
pub mod output;

pub use checkpoint::CheckpointResult;
pub use database::{ClusterConfig, Connection, Database, LaminarConfig, WatermarkSpec, Writer};
pub use error::{codes, LaminarError, Result};
pub use info::*;
/// The connector framework (traits, formats, callback connectors), for programs that add their own.
pub use laminar_adapters as connectors;
pub use output::{ChangeBatch, Subscription, SubscriptionMode};
