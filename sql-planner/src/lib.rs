//! LaminarDB's SQL layer: parsing of the streaming DDL, binding against the catalog, and
//! planning of continuous queries into dataflow plans.
//!
//! Pure: no network or file I/O; the same input gives the same plan.

pub mod ddl;
pub mod error;
pub mod exprs;
pub mod interval;
mod join;
pub mod planner;
pub mod types;
mod window;

pub use ddl::{parse_statement, Statement};
pub use error::{PlanError, Result};
pub use planner::{bind, plan_query, plan_query_with, CatalogView, PlannedQuery, SourceBinding, StreamBinding};
