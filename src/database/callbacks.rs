//! Sources and sinks registered at run time (`connector = 'python'`): the embedding program
//! (the Python package, or a Rust program) supplies the code, SQL refers to it by name.

use arrow::datatypes::SchemaRef;
use laminar_adapters::callback::{SinkBuilder, SourceBuilder, NAME};

use super::{Database, SourceEntry};
use crate::error::{LaminarError, Result};

/// The event-time column of a registered source and how far its watermark trails it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatermarkSpec {
    /// The column.
    pub column: String,
    /// Delay in milliseconds.
    pub delay_ms: i64,
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The SQL column list of `schema`, one `name TYPE [NOT NULL]` per field.
fn columns(schema: &SchemaRef) -> Result<Vec<String>> {
    schema
        .fields()
        .iter()
        .map(|f| {
            let t = laminar_sql::types::arrow_to_sql_type(f.data_type());
            // Only types the SQL front end reads back are allowed.
            laminar_sql::types::sql_type_to_arrow(&t).map_err(|_| LaminarError::Schema {
                code: crate::error::codes::INVALID_SCHEMA,
                message: format!("column '{}' has type {}, which a source cannot hold", f.name(), f.data_type()),
            })?;
            Ok(format!("{} {t}{}", quote(f.name()), if f.is_nullable() { "" } else { " NOT NULL" }))
        })
        .collect()
}

/// The `CREATE SOURCE` statement of a registered source (stored in the catalog, so that streams
/// reading it survive a reopen; the code is registered again by the program).
fn source_ddl(
    name: &str,
    schema: &SchemaRef,
    watermark: Option<&WatermarkSpec>,
    options: &[(String, String)],
) -> Result<String> {
    let mut items = columns(schema)?;
    if let Some(w) = watermark {
        if schema.field_with_name(&w.column).is_err() {
            return Err(LaminarError::Schema {
                code: crate::error::codes::INVALID_SCHEMA,
                message: format!("watermark column '{}' is not in the schema", w.column),
            });
        }
        let c = quote(&w.column);
        items.push(if w.delay_ms > 0 {
            format!("WATERMARK FOR {c} AS {c} - {}", w.delay_ms)
        } else {
            format!("WATERMARK FOR {c}")
        });
    }
    let extra: String = options.iter().map(|(k, v)| format!(", {} = {}", literal(k), literal(v))).collect();
    Ok(format!(
        "CREATE SOURCE {} ({}) WITH (connector = '{NAME}', 'name' = {}{extra})",
        quote(name),
        items.join(", "),
        literal(name)
    ))
}

fn bound_to(src: &SourceEntry, name: &str) -> bool {
    src.connector.as_ref().is_some_and(|spec| {
        spec.options.get("connector").map(String::as_str) == Some(NAME)
            && spec.options.get("name").map(String::as_str) == Some(name)
    })
}

impl Database {
    /// Registers a source whose rows come from the program (`builder` makes its connector at
    /// every `start()`), and creates the source `name` with `schema` if it does not exist yet
    /// (`options`: more `WITH` options of the created source, such as `'retention'` or
    /// `'dlq'`). A source of that name restored from the catalog is bound to `builder` (its
    /// columns must match). Registering a name twice fails unless `replace`; a replaced source
    /// restarts.
    pub fn register_source_callback(
        &self,
        name: &str,
        schema: SchemaRef,
        watermark: Option<WatermarkSpec>,
        options: &[(String, String)],
        builder: SourceBuilder,
        replace: bool,
    ) -> Result<()> {
        self.check_open()?;
        let ddl = source_ddl(name, &schema, watermark.as_ref(), options)?;
        let existing = self.inner.state.lock().sources.get(name).cloned();
        let Some(src) = existing else {
            self.inner.callbacks.register_source(name, builder, replace)?;
            if let Err(e) = self.execute(&ddl) {
                self.inner.callbacks.unregister_source(name);
                return Err(e);
            }
            return Ok(());
        };
        if !bound_to(&src, name) {
            return Err(LaminarError::AlreadyExists(format!(
                "a source named '{name}' already exists and is not a Python source"
            )));
        }
        let theirs: Vec<String> = columns(&src.schema)?;
        let ours = columns(&schema)?;
        if theirs != ours {
            return Err(LaminarError::Schema {
                code: crate::error::codes::SCHEMA_MISMATCH,
                message: format!(
                    "source '{name}' has columns ({}), the registered schema has ({})",
                    theirs.join(", "),
                    ours.join(", ")
                ),
            });
        }
        self.inner.callbacks.register_source(name, builder, replace)?;
        if src.run.lock().is_some() {
            self.stop_source(&src);
            self.start_source(&src)?;
        }
        Ok(())
    }

    /// Registers a sink callback under `name`, for `CREATE SINK … WITH (connector = 'python',
    /// 'name' = …)`. Registering a name twice fails unless `replace` (running sinks keep the
    /// old callback until the next `start()`).
    pub fn register_sink_callback(&self, name: &str, builder: SinkBuilder, replace: bool) -> Result<()> {
        self.check_open()?;
        Ok(self.inner.callbacks.register_sink(name, builder, replace)?)
    }

    /// Names of the registered source and sink callbacks.
    pub fn registered_callbacks(&self) -> (Vec<String>, Vec<String>) {
        (self.inner.callbacks.source_names(), self.inner.callbacks.sink_names())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;

    #[test]
    fn ddl_of_a_registered_source() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("sym bol", DataType::Utf8, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]));
        let w = WatermarkSpec { column: "ts".into(), delay_ms: 500 };
        assert_eq!(
            source_ddl("it's", &schema, Some(&w), &[("retention".into(), "10 rows".into())]).expect("ddl"),
            "CREATE SOURCE \"it's\" (\"sym bol\" VARCHAR NOT NULL, \"ts\" TIMESTAMP, WATERMARK FOR \"ts\" AS \"ts\" - 500) \
             WITH (connector = 'python', 'name' = 'it''s', 'retention' = '10 rows')"
        );
        let bad = Arc::new(Schema::new(vec![Field::new("x", DataType::Null, true)]));
        assert!(source_ddl("s", &bad, None, &[]).is_err());
    }
}
